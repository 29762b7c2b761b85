"""MODEL_CARD.md: what the model is, what it was trained on, how every artifact
scored, which one to ship and why, its known limits, and how to load it in an app
(Android and iOS with MediaPipe Tasks, iOS with ONNX Runtime, Android with LiteRT,
Python), each snippet resizing photos the way the model was trained."""
from __future__ import annotations

from pathlib import Path

import yaml

from edgetl import artifacts, rundir
from edgetl.escape import md
from edgetl.report.snippets import snippets
from edgetl.runtime.evaluate import INLINE_MAX
from edgetl.stats import fmt_acc
from edgetl.types import Echo, PathLike


def write_card(run_dir: PathLike, pipeline: object = None, echo: Echo = print) -> Path:
    from edgetl.verify.verifier import table

    run = rundir.open_run(run_dir)
    d = run.dir
    metrics = rundir.read_json(d / rundir.METRICS)
    cfg = run.config.to_dict()
    labels = run.labels
    report = rundir.read_json(d / rundir.REPORT_JSON) if (d / rundir.REPORT_JSON).exists() else None
    data = metrics.get("data", {})
    h = w = cfg["img_size"]
    L = [f"# Model card: {md(d.name)}", ""]
    L += [f"An image classifier for {len(labels)} classes ({', '.join(md(c) for c in labels)}), "
          f"{cfg['backbone']}" + (f" alpha {cfg['alpha']}" if cfg.get("alpha") else "")
          + f" at {h}x{w} px, fine-tuned by edgetl from `{cfg['weights']}` weights. "
          f"Input: RGB 0-255 at {h}x{w} ({cfg.get('resize', 'crop')} resize), preprocessing inside the model; "
          "output: class probabilities in `labels.txt` order.", ""]
    head = metrics.get("headline")
    if head:
        L += [f"**Headline accuracy: {fmt_acc(head['accuracy'], head.get('ci95'), head['n'])} on the "
              f"{head['split']} split** (95% Wilson interval) — {head['note']}.", ""]
    if metrics.get("distillation"):
        dist = metrics["distillation"]
        L += [f"Distilled from `{dist['teacher']}` (kd_alpha {dist['kd_alpha']}, temperature {dist['temperature']})"
              + (f": {dist['gain_points']:+.2f} points over the student alone on {dist.get('n', '?')} "
                 f"{dist.get('split', 'val')} images, 95% CI [{dist['gain_ci95_points'][0]:+.2f}, "
                 f"{dist['gain_ci95_points'][1]:+.2f}]" if dist.get("gain_ci95_points") else "") + ".", ""]
    # data
    L += ["## Data", "", f"Source: {md(data.get('root'))} ({data.get('layout')} layout).", "",
          "| class | train | val |" + (" test |" if data.get("test_counts") else ""),
          "|---|---|---|" + ("---|" if data.get("test_counts") else "")]
    for i, c in enumerate(labels):
        row = f"| {md(c)} | {data['train_counts'][i]} | {data['val_counts'][i]} |"
        if data.get("test_counts"):
            row += f" {data['test_counts'][i]} |"
        L.append(row)
    skipped = data.get("skipped") or []
    L += ["", f"Skipped files: {len(skipped)}" + (":" if skipped else ".")]
    L += [f"- {md(s['file'])}: {md(s['reason'])}" for s in skipped[:20]]
    # training
    L += ["", "## Training", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).strip(), "```", "",
          "Validation accuracies below were used for model selection (early stopping, the phase kept), so "
          "they are optimistic; the test split, when there is one, was never used for any choice.", "",
          f"Phase 1 (frozen base, head on cached features): val accuracy {metrics['phase1']['accuracy']:.4f}."]
    if metrics.get("phase2"):
        L.append(f"Phase 2 (last layers unfrozen, BatchNorm frozen): val accuracy {metrics['phase2']['accuracy']:.4f}.")
    L += [f"Kept: {metrics['selected_phase']} (val accuracy {metrics['val_accuracy']:.4f}); "
          f"{metrics['params']['total']:,} parameters."]
    if metrics.get("test"):
        t = metrics["test"]
        L.append(f"Test accuracy of the kept model: {fmt_acc(t['accuracy'], t.get('ci95'), t['n'])} ({t.get('source')}).")
    L += ["", f"![training curves]({rundir.CURVES})", ""]
    # adaptation
    if (d / rundir.ADAPT).exists():
        from edgetl.training.adapt import table as adapt_table

        ad = rundir.read_json(d / rundir.ADAPT)
        L += ["## Domain adaptation", "",
              f"The training above is the source run `{ad['source_run']}`; its model was adapted to "
              f"{ad['target_images']} unlabelled target images ({md(ad['target'])}) with **{ad['chosen']}** "
              f"(`--method {ad['method']}`). Source accuracy is on the run's {ad['source_split']} split; target "
              "accuracy (when labelled target images were given, for evaluation only) on those images; "
              "95% Wilson intervals.", "", adapt_table(ad, markdown=True), ""]
    # artifacts
    L += ["## Artifacts", ""]
    rec = None
    if report:
        L += [f"Scored on {report['n_images']} held-out images ({report['data']}), timed with "
              f"{report['threads']} thread(s) on {report['machine']['cpu']}.", "", table(report, markdown=True), "",
              f"![accuracy vs latency]({rundir.VERIFY_PLOTS['accuracy_latency']}) "
              f"![sizes]({rundir.VERIFY_PLOTS['sizes']})", ""]
        if report.get("robustness"):
            from edgetl.verify.robustness import table as rob_table

            L += ["Accuracy under common corruptions (`edgetl verify --robustness`):", "",
                  rob_table(report["robustness"], markdown=True), "", f"![robustness]({rundir.ROBUSTNESS_PLOT})", ""]
        rec = report["recommended"]
        L += ["## Recommended artifact", ""]
        if rec.get("fastest"):
            L += [f"**`{rundir.EXPORT}/{rec['fastest']}`** — {rec['why']}.", "",
                  "Fastest passing per runtime: " + ", ".join(f"{k}: `{v}`" for k, v in rec["fastest_per_runtime"].items())
                  + ".", ""]
        else:
            L += ["None: no artifact passes every gate. See the failed gates above.", ""]
    else:
        L += ["Not verified yet: run `edgetl verify` for the per-artifact table.", ""]
    # limits
    final = metrics.get("test") or metrics["final"]
    where = "test" if metrics.get("test") else "validation"
    per = sorted(final["per_class"].items(), key=lambda kv: kv[1]["recall"])
    n_val = final.get("n") or sum(v["support"] for v in final["per_class"].values())
    ci = final.get("ci95") or [float("nan"), float("nan")]
    L += ["## Known limits", "",
          f"- The {where} set has {n_val} images; one image is {100 / max(n_val, 1):.1f} points of accuracy and "
          f"the 95% interval of the accuracy is [{ci[0]:.3f}, {ci[1]:.3f}], so differences of a point or two "
          "between artifacts are within noise.",
          f"- Accuracy per class (recall on the {where} set):"]
    shown = per if len(per) <= INLINE_MAX else per[:10]  # many classes: the weakest ten, then the confusions
    L += [f"  - {md(c)}: {v['recall']:.3f} (precision {v['precision']:.3f}, {v['support']} images)" for c, v in shown]
    if len(shown) < len(per):
        L.append(f"  - ... {len(per) - len(shown)} more classes in metrics.json")
    if len(per) > INLINE_MAX and final.get("top_confusions"):
        L.append("- Most-confused pairs (true → predicted, images): "
                 + ", ".join(f"{md(t['true'])} → {md(t['predicted'])} ({t['count']})" for t in final["top_confusions"][:10]))
    worst = per[0]
    if worst[1]["recall"] < final["accuracy"] - 0.05:
        L.append(f"- {md(worst[0])} is the weakest class; collect more of its images before relying on it.")
    L += ["- The model only knows these classes: any other image is forced into one of them.",
          "- Images must be resized the way the card says; a different crop or colour order lowers accuracy.", "",
          f"![confusion]({rundir.CONFUSION})", ""]
    # snippets
    fastest = (rec or {}).get("fastest_per_runtime", {})
    L += ["## Using the model", "", snippets(d, fastest, h, w, len(labels), cfg.get("resize", "crop"))]
    dest = artifacts.write_text(d / rundir.CARD, "\n".join(L) + "\n")
    echo(f"model card: {dest}")
    return dest

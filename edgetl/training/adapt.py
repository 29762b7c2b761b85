"""`edgetl adapt`: unsupervised domain adaptation of a finished run to unlabelled
target images (the device's own camera, light, compression).

* ``adabn`` — AdaBN (Li et al., 2016): the backbone's BatchNorm moving statistics are
  re-estimated on the target images. No labels, no training; nothing else changes.
* ``pseudo`` — self-training: confident, class-balanced target predictions become
  labels, refreshed over a few rounds, trained together with the source labels.
* ``dann`` — DANN (Ganin & Lempitsky, 2015): a domain classifier behind a
  gradient-reversal layer on the pooled features of the trained suffix, so the
  features stop telling source from target while the source labels keep them useful.
* ``auto`` — all three, then the one chosen by a criterion that needs no target labels.

pseudo and dann reuse the trainer's view cache: the base is cut before the first
trained unit, its frozen part runs once per image and view (source training images
and target images alike), and training runs on those cached activations.

Labelled target images (``target_labels``) are for evaluation only: they are read after
every candidate is trained and the choice is made. The result is an ordinary run
directory, so export, verify, bundle and the model card work on it unchanged."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import artifacts, rundir
from edgetl.config import AdaptOptions
from edgetl.errors import EdgetlError
from edgetl.training.adaptation import (  # noqa: F401  (part of this module's API)
    accuracy_row,
    adabn,
    agreement,
    bn_layers,
    classifier_parts,
    gradient_reversal,
    label_free,
    select_pseudo,
    wilson,
)
from edgetl.training.adapter import Adapter

__all__ = ["AdaptOptions", "Adapter", "adabn", "adapt", "gradient_reversal", "label_free", "select_pseudo", "wilson"]

TRAINED = ("pseudo", "dann")



# --------------------------------------------------------------- the command ----
def _target_files(opts: AdaptOptions, run) -> list[str]:
    from edgetl.data.dataset import readable_images, same_images

    files = [str(p) for p in readable_images(Path(opts.target).expanduser())]
    if not files:
        raise EdgetlError(f"--target {opts.target}: no readable images in it; give a folder of target images "
                          f"(any depth, jpg/png/...)")
    held = [f for name in ("val", "test") for f in run.split_files(name)[0]]
    clash = same_images(files, held)
    if clash:
        f, v = clash[0]
        raise EdgetlError(f"--target {opts.target}: {len(clash)} image(s) are the run's held-out images (e.g. {f} = {v}); "
                          f"the source scores would be measured on images adaptation saw; remove them from the target folder")
    return files


def _target_labelled(opts: AdaptOptions, run, target: list[str]) -> tuple[list[str], np.ndarray] | None:
    from edgetl.data.dataset import same_images, scan

    if opts.target_labels is None:
        return None
    ds = scan(Path(opts.target_labels).expanduser(), val_split=0.5)
    if ds.classes != run.labels:
        raise EdgetlError(f"--target-labels {opts.target_labels}: classes {ds.classes} differ from the model's "
                          f"labels {run.labels}; use class folders named like labels.txt")
    if ds.layout == "folders":
        paths, labels = ds.train.paths + ds.val.paths, np.concatenate([ds.train.labels, ds.val.labels])
    else:
        split = ds.held_out
        paths, labels = split.paths, split.labels
    clash = same_images(paths, target)
    if clash:
        f, t = clash[0]
        raise EdgetlError(f"--target-labels {opts.target_labels}: {len(clash)} image(s) are also in the unlabelled "
                          f"target set (e.g. {f} = {t}); target accuracy would be measured on images adaptation saw; "
                          f"keep the labelled evaluation images out of --target")
    return list(paths), np.asarray(labels)


def _out_dir(opts: AdaptOptions, run) -> Path:
    out = Path(opts.out).expanduser() if opts.out else run.dir.parent / f"{run.dir.name}-adapt"
    if out.resolve() == run.dir.resolve():
        raise EdgetlError(f"--out {out}: is the source run; choose a new folder for the adapted run")
    if out.exists() and any(out.iterdir()):
        raise EdgetlError(f"--out {out}: exists and is not empty; choose a new folder for the adapted run")
    return out


def choose(cands: dict[str, dict], source: dict) -> tuple[str, str]:
    """The auto choice, from label-free signals only: (method, why).

    A candidate is eligible when its predicted class shares on the target stay within
    0.15 (total variation) of the source prior and it keeps its source training accuracy
    (plain views, labels it trained on: no held-out image) within 3 points of the source
    model's. Among those, the lowest mean prediction entropy on the target wins. Without an
    eligible candidate the source model is kept, unchanged ("source")."""
    rows = []
    for name, c in cands.items():
        ok_bal = c["target"]["balance_gap"] <= 0.15
        ok_src = c["source_train_accuracy"] >= source["source_train_accuracy"] - 0.03
        rows.append((not (ok_bal and ok_src), c["target"]["entropy"], name, ok_bal, ok_src))
    rows.sort()
    bad, ent, name, _, _ = rows[0]
    if bad:
        return "source", ("warning: no method kept both the source prior's class balance on the target and its "
                          "source training accuracy; the adapted run keeps the source model unchanged")
    others = ", ".join(f"{n} {e:.3f}" + ("" if b and s else " (ineligible: " + ", ".join(
        w for w, ok in (("class balance", b), ("source accuracy", s)) if not ok) + ")")
        for _, e, n, b, s in rows[1:])
    return name, (f"{name} has the lowest mean target entropy ({ent:.3f}; {others}) with its target class shares "
                  f"within 0.15 of the source prior and its source training accuracy within 3 points")


def adapt(run_dir, opts: AdaptOptions, echo=print) -> dict:
    """Adapt the finished run ``run_dir`` to the images of ``opts.target``; writes a new run
    directory and returns the report (also in its adapt.json)."""
    from edgetl.data.tfdata import load_array

    t0 = time.perf_counter()
    opts = opts.validate()
    run = rundir.open_run(run_dir)
    target = _target_files(opts, run)
    labelled = _target_labelled(opts, run, target)
    out = _out_dir(opts, run)
    with rundir.writing(out, "edgetl adapt", echo=echo):
        methods = ("adabn", "pseudo", "dann") if opts.method == "auto" else (opts.method,)
        echo(f"adapt: {run.dir} to {len(target)} unlabelled target images from {opts.target}; "
             f"method {opts.method}" + (f" ({', '.join(methods)})" if opts.method == "auto" else ""))

        ad = Adapter(run, opts, target, echo=echo)
        try:
            ad.prepare()
            ad.build()
            size, resize = ad.cfg.size, ad.cfg.resize
            x_tgt = load_array(target, size, resize)
            x_src = load_array(ad.ds.train.paths, size, resize)
            prior = ad.prior()

            import tensorflow as tf

            forward = tf.function(lambda a: tf.nn.softmax(ad.model(a, training=False)),
                                  input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])

            def probs_of(x: np.ndarray) -> np.ndarray:
                return np.concatenate([forward(x[i:i + 64].astype(np.float32)).numpy() for i in range(0, len(x), 64)]) \
                    if len(x) else np.zeros((0, len(prior)))

            def signals(weights) -> dict:
                ad.model.set_weights(weights)
                pt = probs_of(x_tgt)
                ps = probs_of(x_src)
                return {"target": label_free(pt, prior), "target_probs": pt,
                        "source_train_accuracy": float((ps.argmax(1) == ad.ds.train.labels).mean())}

            weights: dict[str, list] = {"source": ad.initial}
            history: dict[str, list] = {}
            details: dict[str, dict] = {}
            # AdaBN: always computed (the baseline, and the pseudo-labeller's first round)
            ad.reset()
            n_bn = adabn(ad.model, x_tgt)
            weights["adabn"] = ad.model.get_weights()
            details["adabn"] = {"batchnorm_layers": n_bn, "images": len(target)}
            echo(f"adabn: re-estimated the moving statistics of {n_bn} BatchNorm layers on {len(target)} target images")
            if any(m in TRAINED for m in methods):
                ad.reset()
                ad.load_views()
            for m in methods:
                if m == "adabn":
                    continue
                t1 = time.perf_counter()
                ad.reset()
                history[m] = []
                if m == "pseudo":
                    ad.model.set_weights(weights["adabn"])
                    start = probs_of(x_tgt)
                    ad.reset()
                    details[m] = ad.run_pseudo(start, history[m])
                else:
                    details[m] = ad.run_dann(history[m])
                details[m]["seconds"] = round(time.perf_counter() - t1, 1)
                weights[m] = ad.model.get_weights()
            # label-free signals of every candidate, then the choice: no target label read so far
            sig = {name: signals(w) for name, w in weights.items()}
            if opts.method == "auto":
                chosen, why = choose({m: sig[m] for m in methods}, sig["source"])
            else:
                chosen, why = opts.method, "chosen with --method"
            for a in list(sig):
                sig[a]["agreement"] = {b: agreement(sig[a]["target_probs"], sig[b]["target_probs"]) for b in sig if b != a}
            echo(f"adapt: chosen {chosen}: {why}")
            report = _evaluate(ad, run, opts, weights, sig, chosen, labelled, probs_of)
            report.update(method=opts.method, chosen=chosen, why=why, details=details,
                          source_run=str(run.dir.resolve()), target=str(Path(opts.target).resolve()),
                          target_images=len(target), options=dataclasses.asdict(opts),
                          seconds=round(time.perf_counter() - t0, 1))
            ad.model.set_weights(weights[chosen])
            _write_run(ad, run, out, report, history, target, labelled)
        finally:
            ad.cleanup()
        echo("")
        echo(table(report))
        echo(f"adapted run: {out}")
        return report


def _evaluate(ad, run, opts, weights, sig, chosen, labelled, probs_of) -> dict:
    """Scores of the source model and every candidate: source held-out accuracy, target
    accuracy when labels were given (read only now), and the label-free signals."""
    from edgetl.data.tfdata import load_array

    split, files, labels = run.held_out()
    x_held = load_array(files, ad.cfg.size, ad.cfg.resize)
    x_tl = load_array(labelled[0], ad.cfg.size, ad.cfg.resize) if labelled is not None else None
    rows = {}
    for name, w in weights.items():
        ad.model.set_weights(w)
        row: dict[str, Any] = {"source": accuracy_row(probs_of(x_held), labels, run.labels)}
        if x_tl is not None and labelled is not None:
            row["target"] = accuracy_row(probs_of(x_tl), labelled[1], run.labels)
        s = sig[name]
        row["label_free"] = {**s["target"], "agreement": s["agreement"],
                             "source_train_accuracy": s["source_train_accuracy"]}
        rows[name] = row
    return {"source_split": split, "source_images": len(files),
            "target_labelled_images": None if labelled is None else len(labelled[0]),
            "candidates": rows}


def table(report: dict, markdown: bool = False) -> str:
    """The before/after table: source and target accuracy with 95% Wilson intervals and
    image counts when target labels exist, and the label-free signals."""
    c = report["candidates"]
    has_t = bool(report.get("target_labelled_images"))

    def acc(r):
        return f"{r['accuracy']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] n={r['n']}"

    heads = ["model", f"source acc ({report['source_split']}) [95% CI]"] + (["target acc [95% CI]"] if has_t else []) \
        + ["target entropy", "target class shares", "agreement with source", f"agreement with {report['chosen']}"]
    cells = []
    for name, r in c.items():
        lf = r["label_free"]
        cells.append([name + (" *" if name == report["chosen"] else ""), acc(r["source"])]
                     + ([acc(r["target"])] if has_t else [])
                     + [f"{lf['entropy']:.3f}", "/".join(f"{x:.2f}" for x in lf["balance"]),
                        *("-" if name == other else f"{lf['agreement'].get(other, float('nan')):.3f}"
                          for other in ("source", report["chosen"]))])
    src, ch = c["source"], c[report["chosen"]]
    delta = f"source {100 * (ch['source']['accuracy'] - src['source']['accuracy']):+.1f} points"
    if has_t:
        delta = f"target {100 * (ch['target']['accuracy'] - src['target']['accuracy']):+.1f}, " + delta
    foot = [f"* chosen: {report['chosen']} ({delta} against the source model): {report['why']}"]
    if not has_t:
        foot.append("no --target-labels: target accuracy unknown; entropy, class shares and agreement need no labels")
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)] + ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines + [""] + foot)
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(heads)]
    fmt = lambda cs: "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(cs, widths)))  # noqa: E731
    return "\n".join([fmt(heads)] + [fmt(r) for r in cells] + foot)


def _write_run(ad: Adapter, run, out: Path, report: dict, history: dict, target: list[str], labelled) -> None:
    """An ordinary run directory: model, labels, config, split, history, metrics, plots,
    adapt.json, then the manifest last."""
    from edgetl.nets.model import count_params
    from edgetl.report import plots

    out.mkdir(parents=True, exist_ok=True)
    with artifacts.atomic_path(out / rundir.MODEL, suffix=".keras") as tmp:
        ad.model.save(str(tmp))
    artifacts.copy_file(run.dir / rundir.LABELS, out / rundir.LABELS)
    artifacts.write_yaml(out / rundir.CONFIG, dataclasses.replace(run.config, out=str(out)).to_dict())
    split = dict(run.split)
    split["target"] = [str(Path(f).resolve()) for f in target]  # unlabelled, used for adaptation
    artifacts.write_json(out / rundir.SPLIT, split)
    artifacts.write_json(out / rundir.HISTORY, {"phase1": [], "phase2": [], "adapt": history})
    src_metrics = rundir.read_json(run.dir / rundir.METRICS)
    chosen = report["candidates"][report["chosen"]]
    name, files, labels = run.held_out()
    final = {**src_metrics.get("final", {}), "accuracy": chosen["source"]["accuracy"],
             "confusion_matrix": chosen["source"]["confusion_matrix"], "n": chosen["source"]["n"],
             "per_class": _per_class(chosen["source"]["confusion_matrix"], run.labels)}
    metrics = {**src_metrics, "final": final, "val_accuracy": final["accuracy"], "selected_phase": f"adapt:{report['chosen']}",
               "params": count_params(ad.model), "adaptation": _brief(report)}
    artifacts.write_json(out / rundir.METRICS, metrics)
    curves = {m: [{"epoch": i + 1, "loss": h["loss"]} for i, h in enumerate(rows)] for m, rows in history.items()}
    plots.training_curves(curves or {"adapt": []}, out / rundir.CURVES)
    plots.confusion(final["confusion_matrix"], run.labels, out / rundir.CONFUSION,
                    f"{name} confusion (adapted: {report['chosen']})")
    artifacts.write_json(out / rundir.ADAPT, report)
    man = rundir.read_manifest(run.dir).get("train", {})
    rundir.update_manifest(out, "train", {
        **man, "kind": "adapt", "config": dataclasses.replace(run.config, out=str(out)).to_dict(),
        "files": artifacts.file_hashes(out, (*rundir.TRAIN_FILES, rundir.ADAPT)),
        "adapted_from": {"run": str(run.dir.resolve()), "model_sha256": artifacts.sha256_file(run.model_path),
                         "method": report["chosen"], "target": report["target"], "target_images": len(target)},
    })


def _per_class(cm, classes) -> dict:
    cm = np.asarray(cm, np.float64)
    out = {}
    for i, c in enumerate(classes):
        tp = cm[i, i]
        sup = cm[i].sum()
        pred = cm[:, i].sum()
        p = tp / pred if pred else 0.0
        r = tp / sup if sup else 0.0
        out[c] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": int(sup)}
    return out


def _brief(report: dict) -> dict:
    """The adaptation summary kept in metrics.json (the model card reads it)."""
    keep = ("method", "chosen", "why", "source_run", "target", "target_images", "target_labelled_images",
            "source_split", "source_images")
    cands = {n: {"source": {k: r["source"][k] for k in ("accuracy", "ci95", "n")},
                 **({"target": {k: r["target"][k] for k in ("accuracy", "ci95", "n")}} if "target" in r else {}),
                 "label_free": {k: r["label_free"][k] for k in ("entropy", "balance", "balance_gap")}}
             for n, r in report["candidates"].items()}
    return {**{k: report.get(k) for k in keep}, "candidates": cands}

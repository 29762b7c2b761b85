"""`edgetl verify`: every artifact of a run, the Keras reference included, scored
on held-out data and timed through the same Runner interface, with pass/fail
gates, one table, report.json, report.md and plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl import artifacts
from edgetl.config import VerifyOptions
from edgetl.errors import EdgetlError
from edgetl.escape import md
from edgetl.report.recommend import RULE as NOISE_RULE
from edgetl.report.recommend import per_runtime_text, recommend
from edgetl.rundir import REPORT_JSON, REPORT_MD, ROBUSTNESS_PLOT, list_artifacts, open_run
from edgetl.rundir import VERIFY_PLOTS as PLOTS
from edgetl.types import Echo, PathLike
from edgetl.verify.device_results import device_rows
from edgetl.verify.gates import Gates


def held_out_data(run, data=None):
    """(images uint8, labels, source) from --data or the run's held-out split."""
    from edgetl.data.tfdata import load_array

    if data:
        from edgetl.data.dataset import scan

        ds = scan(data, val_split=0.5, test_split=0)
        split = ds.test if ds.test is not None and len(ds.test) else ds.val
        if ds.layout == "folders":  # a plain folder given for verification: use all of it
            paths = ds.train.paths + ds.val.paths
            labels = np.concatenate([ds.train.labels, ds.val.labels])
        else:
            paths, labels = split.paths, split.labels
        if ds.classes != run.labels:
            raise EdgetlError(f"{data}: classes {ds.classes} differ from the model's labels {run.labels}; "
                              f"use folders named like labels.txt")
        src = str(data)
    else:
        name, paths, labels = run.held_out()
        src = f"the run's {name} split" + ("" if name == "test" else
                                          ", which also chose the model (no test split), so optimistic")
    return load_array(paths, run.img_size, run.resize), np.asarray(labels), src


def measure(entry: dict, x: np.ndarray, y: np.ndarray, ref: np.ndarray | None, threads: int, runs: int,
            batch: int, classes: list[str], isolated: bool = True) -> tuple[dict, np.ndarray]:
    from edgetl.runtime.evaluate import classification_metrics
    from edgetl.runtime.runners import open_runner
    from edgetl.runtime.timing import isolated_timing, latency, rss_mb, throughput

    before = rss_mb()
    r = open_runner(entry["path"], threads=threads, runtime=entry.get("runtime"))
    probs = np.concatenate([r.predict(x[i:i + 32]) for i in range(0, len(x), 32)])
    if probs.shape[1] != len(classes) or (len(y) and int(np.max(y)) >= len(classes)):
        from edgetl.rundir import LABELS, run_of

        where = run_of(entry["path"])
        raise EdgetlError(f"{where / LABELS if where else LABELS}: {len(classes)} label(s), but {entry['name']} has "
                          f"{probs.shape[1]} outputs" + (f" and the images' labels reach {int(np.max(y))}" if len(y)
                                                          else "")
                          + "; labels.txt was edited or replaced: restore it (one class per line, in training order)")
    m = classification_metrics(y, probs, classes)
    row = {"artifact": entry["name"], "format": entry["format"], "runtime": r.runtime, "quant": entry["quant"],
           "input_dtype": r.input_dtype, "size_bytes": r.describe()["size_bytes"], "accuracy": m["accuracy"], "ci95": m["ci95"],
           "top5_accuracy": m.get("top5_accuracy"), "threads": threads}
    if entry.get("runtime"):
        row["extra_runtime"] = True  # a second runtime on the same file (extra_runtimes of its format in edgetl.formats)
    if ref is not None:
        row["agreement"] = float((probs.argmax(1) == ref.argmax(1)).mean())
        d = np.abs(probs - ref)
        row["max_abs_dprob"], row["mean_abs_dprob"] = float(d.max()), float(d.mean())
    if isolated and entry["format"] != "keras":
        row.update(isolated_timing(entry["path"], threads, runs, r.input_size, runtime=entry.get("runtime")))
    else:
        row.update(latency(r, x[:1], runs=runs))
    row["throughput_ips"] = throughput(r, x[:batch] if len(x) >= batch else np.resize(x, (batch, *x.shape[1:])))
    row["batch"] = batch
    if "memory_mb" not in row:  # in-process (Keras): growth of resident memory, its runtime already imported
        row["memory_mb"] = round(max(0.0, rss_mb() - before), 1)
        row["memory_basis"] = "in-process"
    row["confusion_matrix"], row["top_confusions"] = m["confusion_matrix"], m["top_confusions"]
    return row, probs


def verify(run_dir: PathLike, opts: VerifyOptions | None = None, device_results: tuple[PathLike, ...] | list[PathLike] = (),
           echo: Echo = print,
           isolated: bool = True) -> dict:
    """Score and time every artifact of the run against its Keras model; see :class:`VerifyOptions`.
    The report's folder (``--out``, else the run) is locked meanwhile."""
    from edgetl.rundir import writing

    o = (opts or VerifyOptions()).validate()
    with writing(o.out or run_dir, "edgetl verify", echo=echo, create=bool(o.out)):
        return _verify(run_dir, o, device_results, echo, isolated)


def _verify(run_dir: PathLike, o: VerifyOptions, device_results, echo: Echo, isolated: bool) -> dict:
    from edgetl.runtime.timing import machine_info

    gates = Gates.of(o)
    threads, runs, batch = o.threads, o.runs, o.batch
    run = open_run(run_dir)
    out = Path(o.out) if o.out else run.dir
    device = [r for f in device_results for r in device_rows(f, gates, run.dir)]  # refused before any timing
    if not device and all(e["format"] == "keras" for e in list_artifacts(run.dir)):
        raise EdgetlError(f"{run.dir}: nothing exported to verify (no models in {run.export_dir.name}/); "
                          f"run: edgetl export {run.dir}")
    x, y, src = held_out_data(run, o.data)
    entries, skipped = with_extra_runtimes(list_artifacts(run.dir))
    echo(f"verify: {len(entries)} model(s) on {len(x)} images from {src}, {threads} thread(s), batch-1 latency "
         f"over {runs} runs after warm-up")
    for note in skipped:
        echo(f"  skipped: {note}")
    rows, ref = [], None
    for e in entries:
        try:
            row, probs = measure(e, x, y, ref, threads, runs, batch, run.labels, isolated)
        except EdgetlError as err:
            if e["format"] == "keras":  # the reference: nothing can be compared without it
                raise
            row = {"artifact": e["name"], "format": e["format"], "quant": e["quant"], "status": "fail",
                   "runtime": e.get("runtime"), "failed_gates": [f"load ({err.message})"]}
            rows.append(row)
            continue
        if ref is None:
            ref, keras_acc = probs, row["accuracy"]
            row.update(agreement=1.0, max_abs_dprob=0.0, mean_abs_dprob=0.0)
        row["delta_accuracy_points"] = round(100 * (row["accuracy"] - keras_acc), 3)
        if e["format"] != "keras":
            from edgetl.stats import paired_drop

            row["paired"] = paired_drop(y, ref.argmax(1), probs.argmax(1)).to_dict()
        fails = gates.check(row) if e["format"] != "keras" else []
        row["status"] = "reference" if e["format"] == "keras" else ("fail" if fails else "pass")
        row["failed_gates"] = fails
        rows.append(row)
        echo(f"  {_label(row):<24} acc {row['accuracy']:.4f}  agree {row['agreement']:.3f}  "
             f"p50 {row['p50_ms']:.2f} ms  {row['status']}" + (f" ({'; '.join(fails)})" if fails else ""))
    rows += device
    from edgetl.stats import images_needed

    report = {
        "run": str(run.dir), "data": src, "n_images": int(len(x)), "labels": run.labels,
        "gates": {"max_drop": gates.max_drop, "min_agreement": gates.min_agreement,
                  "max_latency_ms": gates.max_latency_ms,
                  "max_drop_rule": "fails when the one-sided 95% lower bound of the paired drop exceeds max_drop",
                  "images_to_resolve_max_drop": images_needed(gates.max_drop)},
        "machine": machine_info(), "threads": threads, "created": artifacts.now_iso(),
        "rows": rows, "recommended": recommend(rows), "skipped": skipped,
    }
    # a model the device skipped (its runtime is not installed there) is neither a pass nor a failure
    report["passed"] = all(r["status"] in ("pass", "reference", "skipped") for r in rows)
    if o.robustness:
        from edgetl.verify import robustness

        report["robustness"] = robustness.robustness([e for e in entries if not e.get("runtime")], x, y, threads, out / ROBUSTNESS_PLOT, echo=echo)
    write_report(report, out)
    echo("")
    echo(table(report))
    if len(x) < report["gates"]["images_to_resolve_max_drop"]:
        echo(f"note: {len(x)} images cannot resolve a {gates.max_drop:g}-point accuracy budget (one image is "
             f"{100 / max(len(x), 1):.2f} points); a drop fails only when it is above the budget with 95% "
             f"confidence. About {report['gates']['images_to_resolve_max_drop']} images would resolve it.")
    if report.get("robustness"):
        from edgetl.verify.robustness import table as rob_table

        echo("\naccuracy under corruptions (severity 1-3):\n" + rob_table(report["robustness"]))
    echo(f"\nreport: {out / REPORT_MD}, {out / REPORT_JSON}")
    return report


def with_extra_runtimes(entries: list[dict]) -> tuple[list[dict], list[str]]:
    """Each artifact, then one entry per extra runtime that runs it (its format's extra_runtimes, edgetl.formats),
    and a note for each extra runtime that cannot run it here."""
    from edgetl.runtime.runners import extra_runtimes

    out, skipped = [], []
    for e in entries:
        out.append(e)
        for rt, why in extra_runtimes(e["path"]):
            if why:
                skipped.append(f"{e['name']} under {rt}: {why}")
            else:
                out.append({**e, "runtime": rt})
    return out, skipped


def _where(row: dict) -> str:
    return row["artifact"] + (f" on {row['device']}" if row.get("device") else "")


def _label(row: dict) -> str:
    return row["artifact"] + (f" ({row['runtime']})" if row.get("extra_runtime") else "")


COLUMNS = [("artifact", "artifact", "{}"), ("runtime", "runtime", "{}"), ("quant", "quant", "{}"),
           ("size KiB", "size_bytes", "kib"), ("acc", "accuracy", "{:.4f}"), ("95% CI", "ci95", "ci"),
           ("Δacc pt", "delta_accuracy_points", "{:+.2f}"), ("drop 95% CI", "paired", "dropci"), ("agree", "agreement", "{:.3f}"),
           ("maxΔp", "max_abs_dprob", "{:.1e}"), ("p50 ms", "p50_ms", "{:.2f}"), ("p90 ms", "p90_ms", "{:.2f}"),
           ("p99 ms", "p99_ms", "{:.2f}"), ("p90/p50", "spread_p90_p50", "{:.2f}"),
           ("img/s", "throughput_ips", "{:.0f}"), ("mem MB", "memory_mb", "{:.0f}"),
           ("import MB", "import_mb", "{:.0f}"), ("status", "status", "{}")]


def _cell(row, key, fmt) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    if fmt == "kib":
        return f"{v / 1024:.0f}"
    if fmt == "ci":
        return f"[{v[0]:.3f}, {v[1]:.3f}]"
    if fmt == "dropci":
        lo, hi = v["ci95_points"]
        return f"[{lo:+.2f}, {hi:+.2f}]"
    if key == "artifact" and row.get("device"):
        return f"{v} @ {row['device']}"
    return fmt.format(v)


def table(report: dict, markdown: bool = False) -> str:
    rows = report["rows"]
    heads = [h for h, _, _ in COLUMNS]
    cells = [[_cell(r, k, f) for _, k, f in COLUMNS] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        text = [f == "{}" for _, _, f in COLUMNS]  # the cells that show names (artifact @ device, runtime)
        lines += ["| " + " | ".join(md(x) if t else x for x, t in zip(c, text)) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    fmt = lambda cs: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cs, widths)))  # noqa
    lines = [fmt(heads)] + [fmt(c) for c in cells]
    for r in rows:
        if r.get("failed_gates"):
            lines.append(f"FAIL {r['artifact']}: {'; '.join(r['failed_gates'])}")
        if r.get("status") == "skipped":
            lines.append(f"skipped {_where(r)}: {r.get('skipped_reason', '?')}")
    rec = report["recommended"]
    if rec.get("fastest"):
        lines.append("fastest passing, per runtime: " + per_runtime_text(rec))
        lines.append(f"recommended: {rec['why']}")
        lines.append(f"(rule: {rec.get('noise_rule', NOISE_RULE)})")
    else:
        lines.append("recommended: none - no artifact passes every gate")
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    from edgetl.report import plots
    from edgetl.runtime.evaluate import json_row

    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in report["rows"] if r.get("p50_ms") is not None]
    local = [r for r in rows if not r.get("device")]
    g = report["gates"]
    keras = next((r for r in local if r.get("status") == "reference" and r.get("accuracy") is not None), None)
    floor = keras["accuracy"] - g["max_drop"] / 100 if keras is not None else None
    plots.accuracy_latency([{**r, "label": _label(r)} for r in local], out / PLOTS["accuracy_latency"],
                           f"accuracy vs latency: {report['n_images']} held-out images, {report['threads']} "
                           f"thread(s)", max_latency_ms=g.get("max_latency_ms"),
                           accuracy_floor=floor if floor is not None and floor > 0 else None,
                           floor_label=f"gate: Keras accuracy - max-drop {g['max_drop']:g} pt\n(tested on the "
                                       f"paired drop, 95% confidence)")
    plots.bars([_label(r) for r in local], [r["size_bytes"] / 1024 for r in local], out / PLOTS["sizes"],
               "KiB", "artifact size")
    best = report["recommended"].get("fastest")
    best_row = next((r for r in local if r["artifact"] == best), local[0] if local else None)
    if best_row is not None and best_row.get("confusion_matrix") is not None:
        plots.confusion(best_row["confusion_matrix"], report["labels"], out / PLOTS["confusion"],
                        f"confusion: {best_row['artifact']}", best_row.get("top_confusions"))
    # above 30 classes report.json keeps each row's top_confusions, not its matrix
    artifacts.write_json(out / REPORT_JSON, {**report, "rows": [json_row(r) for r in report["rows"]]}, note=True)
    artifacts.write_text(out / REPORT_MD, markdown_report(report))


def markdown_report(report: dict) -> str:
    m = report["machine"]
    g = report["gates"]
    lines = [
        f"# Verification report: {md(Path(report['run']).name)}", "",
        f"{report['n_images']} held-out images ({report['data']}); created {report['created']}.", "",
        f"Gates: accuracy drop ≤ {g['max_drop']} points with 95% confidence (an artifact fails only when the "
        f"one-sided 95% lower bound of its paired drop against Keras is above it; "
        f"{g.get('images_to_resolve_max_drop', '?')} images resolve this budget), top-1 agreement with Keras "
        f"≥ {g['min_agreement']}"
        + (f", p50 latency ≤ {g['max_latency_ms']} ms" if g["max_latency_ms"] is not None else "") + ". "
        "Accuracies carry 95% Wilson intervals; the drop interval is paired (same images).", "",
        f"Machine: {m['cpu']} ({m['cores']} cores, {m['machine']}), {report['threads']} thread(s); "
        + ", ".join(f"{k} {v}" for k, v in m["runtimes"].items()) + ".", "",
        "Latency is batch 1 after warm-up, each exported model timed in its own process (numpy and its "
        "runtime only); p90/p50 shows the timing noise. \"mem MB\" is the model's own memory: the peak "
        "resident memory while loading and running it, above the resident memory once its runtime is imported "
        "(for Keras, in-process: the growth of resident memory). \"import MB\" is what importing the runtime "
        "costs, paid once per app whatever the model (MediaPipe's import pulls in TensorFlow).", "",
        table(report, markdown=True), "",
        f"**Recommended:** {report['recommended'].get('why', 'none: no artifact passes every gate')}", "",
        "Fastest passing per runtime: " + (per_runtime_text(report["recommended"]) or "none") + ".", "",
        f"Timing noise: {report['recommended'].get('noise_rule', NOISE_RULE)}.", "",
        f"![accuracy vs latency]({PLOTS['accuracy_latency']})", f"![sizes]({PLOTS['sizes']})",
        f"![confusion]({PLOTS['confusion']})", "",
    ]
    if report.get("robustness"):
        from edgetl.verify.robustness import table as rob_table

        lines += ["## Accuracy under corruptions", "", rob_table(report["robustness"], markdown=True), "",
                  f"![robustness]({ROBUSTNESS_PLOT})", ""]
    skipped = [r for r in report["rows"] if r.get("status") == "skipped"]
    if skipped:
        lines += ["## Skipped on devices", "", "Not run there, so neither passed nor failed:", ""]
        lines += [f"- {md(r['artifact'])} on {md(r.get('device', '?'))}: {md(r.get('skipped_reason', '?'))}" for r in skipped]
        lines += [""]
    fails = [r for r in report["rows"] if r.get("failed_gates")]
    if fails:
        lines += ["## Failed gates", ""] + [f"- {md(_cell(r, 'artifact', '{}'))}: {md('; '.join(r['failed_gates']))}"
                                            for r in fails]
    return "\n".join(lines) + "\n"

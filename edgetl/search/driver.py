"""`edgetl search`: measure every variant, filter by the budget, train by successive halving,
pick on validation, then score the pick on test once."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from edgetl import artifacts, formats, rundir
from edgetl.config import SearchOptions, TrainConfig
from edgetl.errors import EdgetlError
from edgetl.search import front as F
from edgetl.search import report as R
from edgetl.search.halving import successive_halving
from edgetl.search.measure import DeviceScale, Measurements, device_scale
from edgetl.search.space import Candidate, build_space
from edgetl.types import Echo


def candidate_config(o: SearchOptions, c: Candidate, out: Path) -> TrainConfig:
    """An ordinary training config: export, verify and bundle take its run directory as any other."""
    return TrainConfig(data=o.data, backbone=c.arch.backbone, alpha=c.arch.alpha, img_size=c.arch.size,
                       weights=o.weights, val_split=o.val_split, test_split=o.test_split, seed=o.seed,
                       batch_size=o.batch_size, epochs_head=o.epochs_head,
                       epochs_finetune=o.epochs_finetune if c.depth else 0, recipe=o.recipe,
                       unfreeze_blocks=c.depth if c.depth else None, views=o.views,
                       out=str(rundir.search_candidate_dir(out, c.key)))


def _trainer_class() -> Any:
    from edgetl.training.train import Trainer

    class SearchTrainer(Trainer):
        """A candidate's training, with the test split left unread: the search scores only its
        pick on test, once, after the choice (:func:`test_accuracy`)."""
        kind = "search"

        def evaluate_test(self) -> None:
            return None

        def near_duplicates(self) -> Any:
            test, self.ds.test = self.ds.test, None
            try:
                return super().near_duplicates()
            finally:
                self.ds.test = test
    return SearchTrainer


def check_same_options(o: SearchOptions, c: Candidate, out: Path, d: Path) -> None:
    """A candidate already in the search folder is read back (or resumed) only when it was trained
    with the options this search would train it with."""
    from edgetl.training.train import absolute_paths

    want = absolute_paths(candidate_config(o, c, out).validate().resolved()).to_dict()
    have = rundir.load_run_config(d).to_dict()
    diff = [k for k in want if k != "out" and want[k] != have.get(k)]
    if diff:
        k = diff[0]
        raise EdgetlError(f"{d}: this candidate was trained with {k} = {have.get(k)!r}, this search asks for "
                          f"{want[k]!r}; use another --out for a search with other options (or delete the folder)")


def train_candidate(o: SearchOptions, c: Candidate, out: Path, echo: Echo) -> dict[str, Any]:
    """Train (or read back, when finished) one candidate; returns its val accuracy and run."""
    d = rundir.search_candidate_dir(out, c.key)
    if rundir.is_run_dir(d):
        check_same_options(o, c, out, d)
    if rundir.is_finished(d):
        m = rundir.read_json(d / rundir.METRICS)
        echo(f"  finished before: val accuracy {m['val_accuracy']:.4f} (read back, not retrained)")
        return {"val_accuracy": float(m["val_accuracy"]), "run_dir": str(d), "resumed": True,
                "seconds": float((m.get("timings") or {}).get("total_s", 0.0))}
    resume = (d / rundir.CHECKPOINTS).exists()
    t0 = time.perf_counter()
    def progress(line: str) -> None:  # a candidate's phases and warnings, not its whole log
        if line.startswith(("phase 1:", "phase 2:", "warning:", "resuming")):
            echo("  " + line)

    res = _trainer_class()(candidate_config(o, c, out), resume=resume, echo=progress).run()
    secs = time.perf_counter() - t0
    echo(f"  val accuracy {res.metrics['val_accuracy']:.4f} ({secs:.0f} s)")
    return {"val_accuracy": float(res.metrics["val_accuracy"]), "run_dir": str(d), "resumed": False,
            "seconds": secs}


TEST_NOTE = "read once, after the pick; never used for any choice"


def test_accuracy(run_dir: str | Path, echo: Echo = print) -> dict[str, Any] | None:
    """The run's model on its test split (None without one). The search calls it once, for the
    pick, after the choice, and writes it into the pick's metrics.json as train would (``test``
    and the headline), so export, verify, card and bundle see the pick's held-out score. A
    re-run of the search reads that score back instead of scoring test again."""
    from edgetl.data.tfdata import load_array
    from edgetl.runtime.evaluate import classification_metrics
    from edgetl.runtime.runners import KerasRunner

    run = rundir.open_run(run_dir)
    m = rundir.read_json(run.dir / rundir.METRICS)
    if isinstance(m.get("test"), dict) and m["test"].get("scored_by") == "edgetl search":
        return _summary(m["test"])
    files, labels = run.split_files("test")
    if not files:
        return None
    x = load_array(files, run.img_size, run.resize)
    te = {**classification_metrics(labels, KerasRunner(run.model_path).predict(x), rundir.read_labels(run.dir)),
          "split": "test", "scored_by": "edgetl search", "note": TEST_NOTE}
    with rundir.writing(run.dir, "edgetl search", echo=echo):
        m["test"] = te
        m["headline"] = {"split": "test", "accuracy": te["accuracy"], "ci95": te["ci95"], "n": te["n"],
                         "note": "test split: held out, scored once by edgetl search after its pick; never used "
                                 "for any choice"}
        artifacts.write_json(run.dir / rundir.METRICS, m, note=True)
        man = rundir.read_manifest(run.dir)
        files_ = {**man.get("train", {}).get("files", {}), **artifacts.file_hashes(run.dir, (rundir.METRICS,))}
        rundir.update_manifest(run.dir, "train", {**man.get("train", {}), "files": files_})
    return _summary(te)


def _summary(te: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": te["accuracy"], "ci95": te["ci95"], "n": te["n"], "split": "test", "note": TEST_NOTE}


def quantized_file_ok(row: dict[str, Any], echo: Echo) -> str | None:
    """Export the row's quantized file from its trained run, as ``edgetl export`` does (its accuracy
    budget, judged on val): None when it is written, else why not. fp32 files are the Keras model."""
    if row["quant"] == "fp32":
        return None
    from edgetl.config import ExportOptions
    from edgetl.export.exporter import export as run_export

    echo(f"checking the pick's {row['quant']} {row['fmt']} file on val: {row['key']}")
    arts = run_export(row["run_dir"], ExportOptions(formats=(row["fmt"],), quants=(row["quant"],)).validate(),
                      echo=lambda line: None)
    failed = [a for a in arts if a.status == "failed"]
    return failed[0].reason if failed else None


def pick_deliverable(rows: list[dict[str, Any]], echo: Echo, check=None) -> dict[str, Any] | None:
    """The most accurate row on val within the budget whose file can be made: a quantized file that
    misses export's accuracy budget on val (an int8 model can lose 20 points where the float one
    does not) is refused and the next row is tried. Val only: test stays unread."""
    check = check or quantized_file_ok
    while (chosen := F.pick(rows)) is not None:
        why = check(chosen, echo)
        if why is None:
            return chosen
        chosen["eligible"] = False
        chosen["refused"] = f"its {chosen['quant']} file misses export's accuracy budget on val: {why}"
        echo(f"  refused: {chosen['key']}: {chosen['refused']}")
    return None


def search(o: SearchOptions, echo: Echo = print) -> dict[str, Any]:
    """Search into ``o.out``, holding its lock (the run directory's, see :func:`rundir.writing`):
    a second search into the same folder is refused in one line naming the holder."""
    o.validate()
    with rundir.writing(o.out, "edgetl search", echo=echo):
        return _search(o, echo)


def _search(o: SearchOptions, echo: Echo) -> dict[str, Any]:
    import logging

    from edgetl.data.dataset import scan

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing warnings: one model after another

    t_start = time.monotonic()
    out = Path(o.out)
    sp = build_space(o)
    notes = list(sp.notes)
    for n in notes:
        echo(f"note: {n}")
    if not sp.archs:
        raise EdgetlError(f"{o.data}: no architecture of the space can be trained here (see the notes above); "
                          f"install weights (edgetl weights list) or widen --backbones/--alphas/--sizes")
    ds = scan(o.data, o.val_split, o.seed, test_split=o.test_split)
    n_classes = len(ds.classes)
    out.mkdir(parents=True, exist_ok=True)
    budget = F.Budget(float(o.max_latency_ms or 0), o.max_size_kb, o.max_ram_kb)
    scale: DeviceScale | None = None
    if o.device:
        echo(f"device: timing here the models the device timed ({o.device})")
        scale = device_scale(o.device, [out / rundir.SEARCH_CANDIDATES, Path.cwd()], o.threads, o.runs, echo)
        echo(scale.describe())
    basis = f"{scale.device} (predicted)" if scale else "this machine's"
    meas = Measurements(out / rundir.SEARCH_MEASUREMENTS)
    echo(f"measuring {len(sp.variants)} variant(s) of {len(sp.archs)} architecture(s) before training "
         f"({o.threads} threads, {o.runs} runs each, random weights of the same shape)")
    vrows: dict[str, list[dict[str, Any]]] = {}
    for i, v in enumerate(sp.variants, 1):
        m = meas.get(v, n_classes, o.threads, o.runs, out / rundir.SEARCH_MEASURE)
        lat = m["local_p50_ms"] * (scale.scale(v.fmt) if scale else 1.0)
        size_kb = m["size_bytes"] / 1024
        over = budget.violations(lat, size_kb, m.get("memory_kb"))
        echo(f"  [{i}/{len(sp.variants)}] {v.key}: {lat:.2f} ms, {size_kb:.0f} KiB"
             + ("" if meas.fresh else " (measured before)")
             + (f"  over budget ({'; '.join(over)})" if over else ""))
        vrows.setdefault(v.arch.key, []).append({"variant": v, "latency_ms": lat, "local_ms": m["local_p50_ms"],
                                                 "size_kb": size_kb, "ram_kb": m.get("memory_kb"),
                                                 "over_budget": over})
    fits = [a for a in sp.archs if any(not r["over_budget"] for r in vrows[a.key])]
    not_trained = []
    for a in sp.archs:
        if a not in fits:
            best = min(vrows[a.key], key=lambda r: r["latency_ms"])
            not_trained.append({"candidate": a.key, "arch": a.key, "rung": 0,
                                "reason": "over budget before training: every variant, e.g. "
                                          f"{best['variant'].quant} {best['variant'].fmt}: "
                                          + "; ".join(best["over_budget"])})
    echo(f"{len(fits)} of {len(sp.archs)} architecture(s) fit the budget in at least one variant")
    if not fits:
        raise EdgetlError(f"no architecture fits the budget (fastest: "
                          f"{min(r['latency_ms'] for rs in vrows.values() for r in rs):.2f} ms, smallest: "
                          f"{min(r['size_kb'] for rs in vrows.values() for r in rs):.0f} KiB); raise "
                          f"--max-latency-ms/--max-size-kb or add smaller --sizes/--alphas", exit_code=1)
    fits.sort(key=lambda a: min(r["latency_ms"] for r in vrows[a.key]))
    deadline = t_start + 60 * o.budget_minutes if o.budget_minutes else None
    done, log = successive_halving(fits, sp.depths, o.eta, lambda c: train_candidate(o, c, out, echo), deadline, echo)
    not_trained += log
    rows = []
    for rec in done.values():
        c: Candidate = rec["candidate"]
        for vr in vrows[c.arch.key]:
            v = vr["variant"]
            rows.append({"key": f"{c.key}-{v.quant}-{v.fmt}", "candidate": c.key, "arch": c.arch.key,
                         "backbone": c.arch.backbone, "alpha": c.arch.alpha, "size": c.arch.size, "depth": c.depth,
                         "fmt": v.fmt, "quant": v.quant, "val_accuracy": rec["val_accuracy"],
                         "latency_ms": vr["latency_ms"], "local_ms": vr["local_ms"], "size_kb": vr["size_kb"],
                         "ram_kb": vr["ram_kb"], "over_budget": vr["over_budget"], "rung": rec["rung"],
                         "run_dir": rec["run_dir"], "train_seconds": rec["seconds"], "resumed": rec["resumed"],
                         "eligible": not vr["over_budget"] and c.depth in sp.depths})
    chosen = pick_deliverable(rows, echo)  # on val only: no test number exists yet
    F.explain(rows, chosen)
    pick_rec = None
    if chosen is not None:
        chosen["picked"] = True
        pick_rec = {k: chosen[k] for k in ("key", "candidate", "fmt", "quant", "val_accuracy", "latency_ms",
                                           "size_kb", "ram_kb", "run_dir", "depth", "backbone", "alpha", "size")}
        pick_rec["test"] = test_accuracy(chosen["run_dir"], echo)  # once, after the choice
    search_s = time.monotonic() - t_start
    rep: dict[str, Any] = {
        "data": str(Path(o.data).resolve()), "options": dataclasses.asdict(o),
        "budget": dataclasses.asdict(budget), "latency_basis": basis,
        "device_scale": scale.to_dict() if scale else None,
        "pick": pick_rec, "rows": [{k: v for k, v in r.items()} for r in rows], "not_trained": not_trained,
        "notes": notes, "search_seconds": search_s,
        "train_seconds": sum(r["seconds"] for r in done.values()),
        "plot": str(out / rundir.SEARCH_PLOT),
    }
    R.plot(rows, out / rundir.SEARCH_PLOT, budget.max_latency_ms, basis)
    artifacts.write_json(out / rundir.SEARCH_JSON, rep)
    artifacts.write_text(out / rundir.SEARCH_MD, R.markdown(rep))
    echo("")
    echo(R.table(rows))
    for r in not_trained:
        echo(f"not trained: {r['candidate']}: {r['reason']}")
    if pick_rec is None:
        echo("no trained candidate fits the budget")
    else:
        te = pick_rec["test"]
        from edgetl.stats import fmt_acc

        echo(f"pick: {pick_rec['candidate']} as {pick_rec['quant']} {pick_rec['fmt']}: val "
             f"{pick_rec['val_accuracy']:.4f}, {pick_rec['latency_ms']:.2f} ms ({basis}), "
             f"{pick_rec['size_kb']:.0f} KiB")
        echo(f"test accuracy of the pick's Keras model (once, after the choice): {fmt_acc(te['accuracy'], te['ci95'], te['n'])}"
             if te else "no test split: the pick's val accuracy chose it (optimistic)")
        echo(f"run directory of the pick: {pick_rec['run_dir']}")
    echo(f"report: {out / rundir.SEARCH_MD}, {out / rundir.SEARCH_JSON}, plot {out / rundir.SEARCH_PLOT}")
    return rep


THEN = ("export", "verify")


def parse_then(spec: str | None) -> tuple[str, ...]:
    items = tuple(s.strip() for s in (spec or "").split(",") if s.strip())
    bad = [s for s in items if s not in THEN]
    if bad:
        raise EdgetlError(f"--then {spec}: unknown step '{bad[0]}'; use a comma list of {','.join(THEN)}")
    if "verify" in items and "export" not in items:
        items = ("export", *items)  # verify scores exported artifacts: export first
    return tuple(s for s in THEN if s in items)


def continue_with_pick(rep: dict[str, Any], steps: tuple[str, ...], o: SearchOptions, echo: Echo) -> dict[str, Any]:
    """``--then export,verify``: the same functions as the export and verify commands, on the pick's
    run, for its format and quantization. Verify's latency gate is the budget (on this machine;
    with --device the budget is the device's, so verify has no latency gate)."""
    from edgetl.config import ExportOptions, VerifyOptions

    out: dict[str, Any] = {}
    p = rep.get("pick")
    if not steps:
        return out
    if p is None:
        raise EdgetlError("--then: no candidate fits the budget, so there is nothing to continue with", exit_code=1)
    run = p["run_dir"]
    if "export" in steps:
        from edgetl.export.exporter import export as run_export

        echo(f"export: {run} as {p['quant']} {p['fmt']}")
        arts = run_export(run, ExportOptions(formats=(p["fmt"],), quants=(p["quant"],)).validate(), echo=echo)
        failed = [a for a in arts if a.status == "failed"]
        if failed:
            raise EdgetlError(f"export of the pick failed: {failed[0].name}: {failed[0].reason}", exit_code=1)
        out["export"] = [a.name for a in arts]
    if "verify" in steps:
        from edgetl.card import write_card
        from edgetl.verify.verifier import verify as run_verify

        gate = None if rep.get("device_scale") else float(o.max_latency_ms or 0)
        # the budget is the runtime the search timed (the format's own), not a second one such as MediaPipe
        timed = (formats.get(p["fmt"]).runtime,)
        v = run_verify(run, VerifyOptions(threads=o.threads, max_latency_ms=gate, latency_runtimes=timed).validate(),
                       echo=echo)
        write_card(run, echo=echo)
        out["verify"] = {"passed": v["passed"]}
        if not v["passed"]:
            raise EdgetlError(f"verify of the pick: a gate failed (see {run}/{rundir.REPORT_MD})", exit_code=1)
    return out

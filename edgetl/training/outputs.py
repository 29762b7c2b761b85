"""Writing a finished run: the model, history, metrics, curves, confusion matrix and manifest
(written last), the working folders removed; and the summary table a user reads at the end."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgetl import artifacts, rundir
from edgetl.config import TrainConfig
from edgetl.data.dataset import Dataset
from edgetl.types import Echo


def write_outputs(cfg: TrainConfig, kind: str, ds: Dataset, model, metrics: dict, history: dict, run: Path,
                  ckpt: Path, cache_dir: Path, num_workers: int) -> None:
    """Write the run's files atomically, ``manifest.json`` last; adds params and data to ``metrics``."""
    from edgetl.nets.model import count_params
    from edgetl.report import plots
    from edgetl.runtime.evaluate import confusion_of, move_confusions

    metrics["params"] = count_params(model)
    metrics["data"] = ds.summary()
    with artifacts.atomic_path(run / rundir.MODEL, suffix=".keras") as tmp:
        model.save(str(tmp))
    artifacts.write_json(run / rundir.HISTORY, history)
    cm = confusion_of(metrics["final"])
    side = move_confusions(metrics, run)  # above 30 classes the matrices go to confusion.npz
    artifacts.write_json(run / rundir.METRICS, metrics, note=True)
    plots.training_curves({"phase 1": history["phase1"], "phase 2": history["phase2"]}, run / rundir.CURVES)
    plots.confusion(cm, ds.classes, run / rundir.CONFUSION, f"val confusion ({metrics['selected_phase']})",
                    metrics["final"].get("top_confusions"))
    files = [*rundir.TRAIN_FILES, *([side.name] if side else [])]
    shutil.rmtree(ckpt, ignore_errors=True)
    shutil.rmtree(cache_dir, ignore_errors=True)  # a --cache-dir outside the checkpoints
    if cfg.cache_dir and num_workers > 1:
        shutil.rmtree(cache_dir.parent / f"{run.name}.{rundir.WORKERS}", ignore_errors=True)
    rundir.update_manifest(run, "train", {
        "kind": kind,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "data_fingerprint": ds.fingerprint(),
        "files": artifacts.file_hashes(run, files),
        "weights": cfg.weights,
    })


def summary(metrics: dict, history: dict, timings: dict, run_dir: Path, echo: Echo) -> None:
    """The table at the end of a run: each phase's epochs, best epoch, val accuracy, loss and time;
    the selected phase, val and test accuracy with intervals, near-duplicate notes."""
    echo("")
    echo(f"{'phase':<8}{'epochs':>8}{'best':>6}{'val_acc':>9}{'val_loss':>10}{'time':>9}")
    for name, key, tkey in (("1 head", "phase1", "phase1_train_s"), ("2 tune", "phase2", "phase2_s")):
        rows = history.get(key) or []
        m = metrics.get(key)
        if not rows or m is None:
            skipped = key == "phase2" and ((metrics.get("recipe") or {}).get("phase2") or {}).get("skipped")
            echo(f"{name:<8}{'-':>8}" + ("  skipped: no candidate beat phase 1 on val" if skipped else ""))
            continue
        best = min(rows, key=lambda r: r.get("val_loss", np.inf))
        t = timings.get(tkey)
        t_s = "-" if t is None else f"{t + (timings.get('features_s', 0.0) if key == 'phase1' else 0):.1f}s"
        echo(f"{name:<8}{len(rows):>8}{best['epoch']:>6}{m['accuracy']:>9.4f}"
             f"{best.get('val_loss', float('nan')):>10.4f}{t_s:>9}")
    from edgetl.stats import fmt_acc

    f = metrics["final"]
    echo(f"selected: {metrics['selected_phase']}  params {metrics['params']['total']:,}")
    echo(f"val accuracy  {fmt_acc(f['accuracy'], f.get('ci95'), f['n'])}  (used for model selection)")
    te = metrics.get("test")
    if te:
        echo(f"test accuracy {fmt_acc(te['accuracy'], te.get('ci95'), te['n'])}  (held out; the headline)")
    for name, d in ((metrics.get("near_duplicates") or {}).get("splits") or {}).items():
        if d["count"]:
            echo(f"note: {d['count']} of {d['n']} {name} images have a near-duplicate in train "
                 f"(metrics.json: near_duplicates); {name} accuracy may be optimistic")
    echo(f"run directory: {run_dir}")

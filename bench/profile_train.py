"""Where `edgetl train`'s time goes, on hymenoptera (MobileNetV2 0.35 ImageNet, 128 px,
20 + 10 epochs, 2 TF threads): process start and imports (fresh subprocesses), then one
training run with timers around each stage (scan, build, decode, the frozen base per
view batch, tracing, each epoch of both phases, evaluation, outputs) and, with
--cprofile, the functions that hold the most time.

    python bench/profile_train.py [--img-size 128] [--seed 1] [--cprofile prof.out]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "datasets" / "hymenoptera"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"

IMPORTS = """
import time, json
t = [time.perf_counter()]
import numpy; t.append(time.perf_counter())
import tensorflow; t.append(time.perf_counter())
import keras; t.append(time.perf_counter())
import edgetl.cli; t.append(time.perf_counter())
import edgetl.training.train, edgetl.data.tfdata, edgetl.nets.weights; t.append(time.perf_counter())
print(json.dumps([b - a for a, b in zip(t, t[1:])]))
"""


def import_times(repeats: int = 3) -> dict:
    """Median over fresh processes: bare interpreter, then each import in turn."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    bare, parts, whole = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
        bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", IMPORTS], check=True, env=env, capture_output=True, text=True)
        whole.append(time.perf_counter() - t0)
        parts.append(json.loads(p.stdout.strip().splitlines()[-1]))
    med = np.median(np.array(parts), 0)
    return {"interpreter start": float(np.median(bare)), "import numpy": med[0], "import tensorflow": med[1],
            "import keras (after tensorflow)": med[2], "import edgetl.cli": med[3],
            "import edgetl.training.train/tfdata/weights": med[4], "process total (start + imports + exit)": float(np.median(whole))}


def profile_run(img: int, seed: int, e1: int, e2: int, out: Path, cprofile: str | None) -> tuple[dict, dict]:
    import keras

    import edgetl.data.tfdata as T
    from edgetl.config import TrainConfig
    from edgetl.training.train import Trainer

    t: dict[str, float] = {}
    hooks: list[tuple[int, float]] = []
    epochs: dict[str, list[float]] = {"phase 1": [], "phase 2": []}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                t[name] = t.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    real_decode = T.decode_batches

    def timed_decode(*a, **k):  # a generator: time each batch it hands out
        it = real_decode(*a, **k)
        while True:
            t0 = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                return
            finally:
                t["decode (PIL thread pool)"] = t.get("decode (PIL thread pool)", 0.0) + time.perf_counter() - t0
            yield b

    T.decode_batches = timed_decode

    class EpochClock(keras.callbacks.Callback):
        phase = "phase 1"

        def on_train_begin(self, logs=None):
            self.phase = "phase 1" if self.model.name == "head" else "phase 2"

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epochs[self.phase].append(time.perf_counter() - self.t0)

    from edgetl.training import train as TT
    from edgetl.training.methods import TrainMethod
    from edgetl.training.search import RecipeSearch

    class Hooked(TrainMethod):  # each batch of each training view, as the view cache extracts it
        def sources(self, part, view, images):
            if part == "train":
                hooks.append((view, time.perf_counter()))
            return None

    class Timed(Trainer):
        pass

    for name in ("prepare", "build", "start", "cached_views", "phase1", "phase2", "evaluate", "evaluate_test",
                 "write_outputs"):
        setattr(Timed, name, timed(name, getattr(Trainer, name)))
    real_plan_cut, real_choose = TT.plan_cut, RecipeSearch.choose
    TT.plan_cut = timed("plan_cut", real_plan_cut)
    RecipeSearch.choose = timed("choose_candidate", real_choose)
    cfg = TrainConfig(data=str(DATA), alpha=0.35, img_size=img, weights=str(WEIGHTS), epochs_head=e1,
                      epochs_finetune=e2, seed=seed, out=str(out))
    tr = Timed(cfg, callbacks=[EpochClock()], echo=lambda *a: None, method=Hooked())
    prof = None
    if cprofile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    r = tr.run()
    t["run"] = time.perf_counter() - t0
    if prof is not None:
        prof.disable()
        prof.dump_stats(cprofile)
    T.decode_batches = real_decode
    TT.plan_cut, RecipeSearch.choose = real_plan_cut, real_choose
    detail = {"timings": r.metrics["timings"], "epochs": epochs, "hooks": hooks,
              "train_rows": tr.cache_stats["rows"], "batch": cfg.batch_size, "n_train": len(tr.ds.train)}
    return t, detail


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--epochs-head", type=int, default=20)
    ap.add_argument("--epochs-finetune", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cprofile", default=None, help="Also write cProfile stats here and print the top functions.")
    a = ap.parse_args()
    if not DATA.is_dir() or not WEIGHTS.is_file():
        sys.exit(f"needs ../shared at {SHARED}")
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    imp = import_times()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t, d = profile_run(a.img_size, a.seed, a.epochs_head, a.epochs_finetune, Path(tmp) / "run", a.cprofile)
    print("\nprocess start and imports (fresh processes, median of 3):")
    for k, v in imp.items():
        print(f"  {k:<42}{v:>7.2f} s")

    hooks = d["hooks"]
    gaps = [(v, b - a) for (v, a), (_, b) in zip(hooks, hooks[1:])]
    v0 = [g for v, g in gaps if v == 0]
    decode = t.get("decode (PIL thread pool)", 0.0)
    features = d["timings"].get("features_s", 0.0)
    per_batch_v0 = float(np.median(v0[1:])) if len(v0) > 1 else float("nan")
    first_v0 = v0[0] if v0 else float("nan")
    e1, e2 = d["epochs"]["phase 1"], d["epochs"]["phase 2"]
    steps = -(-d["train_rows"] // d["batch"])
    print(f"\none training run ({d['n_train']} train images, {d['train_rows']} cached rows = {steps} steps/epoch at "
          f"batch {d['batch']}):")
    rows = [
        ("scan: list and check-decode every file", t.get("prepare", 0.0)),
        ("build: base + weights + head", t.get("build", 0.0)),
        ("write config/labels/split", t.get("start", 0.0)),
        ("plan the cut (prefix/suffix models)", t.get("plan_cut", 0.0)),
        ("decode (PIL thread pool; waits only: it runs ahead)", decode),
        ("frozen prefix over 4 views + val into the cache (incl. tracing)", features - decode),
        ("  of which: first batch of view 0 (trace + run)", first_v0),
        ("  of which: a later view-0 batch (run only)", per_batch_v0),
        ("phase 1 total (cache + fit)", t.get("phase1", 0.0)),
        (f"phase 1 fit: epoch 1 (incl. tracing), {steps} steps", e1[0] if e1 else 0.0),
        (f"phase 1 fit: later epochs, median x {max(len(e1) - 1, 0)}",
         float(np.median(e1[1:])) if len(e1) > 1 else 0.0),
        ("phase 1 fit: all epochs", float(np.sum(e1))),
        ("phase 2 total", t.get("phase2", 0.0)),
        ("  of which: auto recipe search (4 candidates)", t.get("choose_candidate", 0.0)),
        (f"phase 2 fit: epoch 1 (incl. tracing), {steps} steps", e2[0] if e2 else 0.0),
        (f"phase 2 fit: later epochs, median x {max(len(e2) - 1, 0)}",
         float(np.median(e2[1:])) if len(e2) > 1 else 0.0),
        ("phase 2 fit: all epochs", float(np.sum(e2))),
        ("evaluate val (twice) + test", t.get("evaluate", 0.0) + t.get("evaluate_test", 0.0)),
        ("write outputs (model, plots, manifest)", t.get("write_outputs", 0.0)),
        ("whole run (in process)", t["run"]),
    ]
    for k, v in rows:
        print(f"  {k:<52}{v:>7.2f} s")
    if e1:
        print(f"  phase 1: {1000 * np.median(e1[1:] or e1) / steps:.1f} ms per step (head on pooled features, "
              f"steps_per_execution 16, incl. the val pass)")
    if e2:
        print(f"  phase 2: {1000 * np.median(e2[1:] or e2) / steps:.1f} ms per step (suffix + head on cached "
              f"activations, incl. the val pass)")
    if a.cprofile:
        import pstats

        print("\ncProfile, top 15 by own time:")
        pstats.Stats(a.cprofile).sort_stats("tottime").print_stats(15)
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()

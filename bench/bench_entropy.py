"""Entropy (KL) calibration: onnxruntime's threshold search against edgetl's
``convert.entropy_threshold`` on the same 2,048-bin histograms (MobileNetV2 0.35, random
weights and calibration images: the search's cost depends on the number of tensors and bins,
not on the values). onnxruntime's search is timed on every tenth tensor and scaled up.

    python bench/bench_entropy.py [--img-size 128]

Writes bench/results/entropy.json.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--img-size", type=int, default=128)
    img = ap.parse_args().img_size
    from results import Recorder

    rec = Recorder("entropy")

    import keras
    import numpy as np
    import onnx
    import tensorflow as tf
    import tf2onnx
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgetl.export.convert import ENTROPY_BINS, entropy_threshold

    m = keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(img, img, 3), classes=2)
    proto, _ = tf2onnx.convert.from_keras(m, input_signature=(tf.TensorSpec((None, img, img, 3), tf.float32, name="image"),),
                                          opset=17)
    d = Path(tempfile.mkdtemp())
    onnx.save(proto, d / "f.onnx")
    quant_pre_process(str(d / "f.onnx"), str(d / "p.onnx"), skip_symbolic_shape=True)
    calib = np.random.default_rng(0).uniform(0, 255, (64, img, img, 3)).astype("float32")
    batches = iter([{"image": calib[i:i + 16]} for i in range(0, len(calib), 16)])

    class Reader:
        def get_next(self):
            return next(batches, None)

    cal = create_calibrator(d / "p.onnx", sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
                            augmented_model_path=str(d / "a.onnx"), calibrate_method=CalibrationMethod.Entropy,
                            extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": 128})
    cal.collect_data(Reader())
    hists = cal.collector.histogram_dict
    t0 = time.perf_counter()
    ours = {k: entropy_threshold(h, 128) for k, h in hists.items()}
    t_ours = time.perf_counter() - t0
    sample = list(hists)[::10]
    t0 = time.perf_counter()
    theirs = {k: cal.collector.get_entropy_threshold(hists[k], 128) for k in sample}
    t_theirs = (time.perf_counter() - t0) * len(hists) / len(sample)
    same = all(tuple(map(float, theirs[k])) == tuple(map(float, ours[k])) for k in sample)
    print(f"MobileNetV2 0.35 @{img}: {len(hists)} tensors, {ENTROPY_BINS} bins")
    print(f"edgetl search {t_ours:.1f} s; onnxruntime search {t_theirs:.1f} s (timed on {len(sample)} tensors); "
          f"identical ranges on those: {same}")
    row = {"img_size": img, "tensors": len(hists), "bins": ENTROPY_BINS, "edgetl_s": round(t_ours, 2),
           "onnxruntime_s_scaled": round(t_theirs, 2), "onnxruntime_timed_tensors": len(sample),
           "identical_ranges": same}
    rec.write([row], {**row, "table": {
        "columns": ["model", "tensors × bins", "edgetl search s", "onnxruntime search s (scaled from every 10th)",
                    "identical ranges"],
        "rows": [[f"MobileNetV2 0.35 @{img}", f"{len(hists)} × {ENTROPY_BINS}", f"{t_ours:.1f}", f"{t_theirs:.1f}",
                  "yes" if same else "no"]]}})


if __name__ == "__main__":
    main()

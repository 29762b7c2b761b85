"""Format converters. Each takes the float Keras model (softmax appended, RGB
0-255 input with preprocessing baked in) and returns bytes; nothing here writes
files or decides policy.

The format registry (:mod:`edgetl.formats`) names each format's converter per
quantization mode, so a new mode or format is one entry there plus its converter here; int8 converters take typed :class:`Int8Settings` (compare
onnxruntime.quantization's configs)."""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import formats
from edgetl.errors import EdgetlError

OPSET = 17
_ONNX, _ORT = formats.ONNX.suffix, formats.ORT.suffix  # file names the onnx tools read and write


class Serving:
    """The float model as every converter sees it: (N, H, W, 3) float32 0-255 in,
    class probabilities out."""

    def __init__(self, keras_model):
        import keras
        import tensorflow as tf

        h, w = int(keras_model.inputs[0].shape[1]), int(keras_model.inputs[0].shape[2])
        inp = keras.Input((h, w, 3), name="image")
        self.model = keras.Model(inp, keras.layers.Softmax(name="probabilities")(keras_model(inp)), name="serving")
        self.size = (h, w)
        self.spec = [tf.TensorSpec([None, h, w, 3], tf.float32, name="image")]
        self.fn = tf.function(lambda x: self.model(x, training=False), input_signature=self.spec)

    @functools.cached_property
    def frozen(self):
        """Concrete function with variables folded in (the TFLite calibrator needs this)."""
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        return convert_variables_to_constants_v2(self.fn.get_concrete_function())


def _rep(calib: np.ndarray):
    def gen():
        for x in calib:
            yield [x[None].astype(np.float32)]
    return gen


def tflite_converter(serving: Serving, quant: str, io_type: str = "float32", calib: np.ndarray | None = None):
    import tensorflow as tf

    c = tf.lite.TFLiteConverter.from_concrete_functions([serving.frozen], serving.model)
    if quant == "fp16":
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.target_spec.supported_types = [tf.float16]
    elif quant == "dynamic":
        c.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quant == "int8":
        full_integer(c, calib, io_type)
    elif quant != "fp32":
        raise ValueError(f"unknown quantization {quant}")
    return c


def full_integer(c, calib: np.ndarray | None, io_type: str = "float32"):
    """Set a TFLite converter up for full-integer int8 from calibration images."""
    import tensorflow as tf

    if calib is None or not len(calib):
        raise ValueError("int8 needs calibration images")
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = _rep(calib)
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    dt = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[io_type]
    c.inference_input_type = dt
    c.inference_output_type = dt
    return c


def tflite_bytes(serving: Serving, quant: str, io_type: str = "float32", calib=None) -> bytes:
    return bytes(tflite_converter(serving, quant, io_type, calib).convert())


def tflite_sensitive_layers(serving: Serving, io_type: str, calib: np.ndarray, n_layers: int) -> list[str]:
    """The ``n_layers`` most quantization-sensitive layers, by TFLite's quantization
    debugger (RMSE / scale per layer)."""
    import tensorflow as tf

    conv = tflite_converter(serving, "int8", io_type, calib)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    dbg = tf.lite.experimental.QuantizationDebugger(converter=conv, debug_dataset=_rep(calib[: min(len(calib), 32)]))
    dbg.run()
    scores = []
    for name, st in dbg.layer_statistics.items():
        scale = st.get("scale") or 0
        if scale and "mean_squared_error" in st:
            scores.append((float(np.sqrt(st["mean_squared_error"]) / scale), name))
    return [n for _, n in sorted(scores, reverse=True)[:n_layers]]


def tflite_int8_denylist(serving: Serving, io_type: str, calib: np.ndarray, deny: list[str]) -> bytes:
    """int8 with the layers in ``deny`` kept in float."""
    import tensorflow as tf

    conv = tflite_converter(serving, "int8", io_type, calib)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    opts = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=deny)
    dbg = tf.lite.experimental.QuantizationDebugger(converter=conv, debug_dataset=_rep(calib[: min(len(calib), 32)]),
                                                    debug_options=opts)
    return bytes(dbg.get_nondebug_quantized_model())


def onnx_fp32(serving: Serving, metadata: dict[str, str]):
    import tf2onnx

    model, _ = tf2onnx.convert.from_function(serving.fn, input_signature=serving.spec, opset=OPSET)
    set_onnx_metadata(model, metadata)
    return model


def set_onnx_metadata(model, metadata: dict[str, str]) -> None:
    del model.metadata_props[:]
    for k, v in metadata.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v


def onnx_fp16(fp32_model, metadata):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = convert_float_to_float16(fp32_model, keep_io_types=True)
    set_onnx_metadata(m, metadata)
    return m


def onnx_dynamic(fp32_model, metadata):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / ("f" + _ONNX), Path(d) / ("q" + _ONNX)
        onnx.save(fp32_model, src)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8, per_channel=False)
        m = onnx.load(str(dst))
    set_onnx_metadata(m, metadata)
    return m


class _Reader:
    def __init__(self, name, calib):
        self.name, self.it = name, iter([x[None].astype(np.float32) for x in calib])

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {self.name: x}


def onnx_int8(fp32_model, metadata, calib: np.ndarray, method: str = "minmax", fmt: str = "qoperator",
              per_channel: bool = True, exclude: list[str] | None = None):
    """Static int8 through onnxruntime.quantization: quant_pre_process, then quantize_static
    (uint8 activations, int8 weights: the fast combination on x86 CPUs)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory() as d:
        src, pre, dst = Path(d) / ("f" + _ONNX), Path(d) / ("p" + _ONNX), Path(d) / ("q" + _ONNX)
        onnx.save(fp32_model, src)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        name = fp32_model.graph.input[0].name
        extra = {}
        if method == "entropy":
            extra["calibration_cache_path"] = _entropy_ranges(pre, Path(d), _Reader(name, calib))
        quantize_static(str(pre), str(dst), _Reader(name, calib),
                        quant_format=QuantFormat.QOperator if fmt == "qoperator" else QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], nodes_to_exclude=exclude or [], **extra)
        m = onnx.load(str(dst))
    set_onnx_metadata(m, metadata)
    return m


def onnx_to_ort(onnx_bytes: bytes) -> bytes:
    """The ORT format (onnxruntime's mobile format, a flatbuffer) of an ONNX model, through
    ``onnxruntime.tools.convert_onnx_models_to_ort``: fixed optimizations applied at
    conversion, platform-neutral (no x86-only NCHWc layout), metadata_props kept."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory() as d, _quiet("ort_format_model"):
        src, out = Path(d) / ("model" + _ONNX), Path(d) / "out"
        src.write_bytes(onnx_bytes)
        convert_onnx_models_to_ort(src, output_dir=out, optimization_styles=[OptimizationStyle.Fixed])
        return (out / ("model" + _ORT)).read_bytes()


def ort_required_operators(ort_bytes: bytes, name: str) -> str:
    """The required-operators config of an ORT model (input to a reduced onnxruntime build:
    ``build.sh --minimal_build --include_ops_by_config FILE``); ``name`` labels its source."""
    from onnxruntime.tools.ort_format_model import create_config_from_models

    with tempfile.TemporaryDirectory() as d, _quiet("ort_format_model"):
        src, cfg = Path(d) / ("model" + _ORT), Path(d) / "model.config"
        src.write_bytes(ort_bytes)
        create_config_from_models([src], cfg, False)
        return cfg.read_text().replace(str(src), name)


@contextlib.contextmanager
def _quiet(logger: str):
    """Silence a converter's prints and INFO logs (its errors still raise)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        log.setLevel(level)


ENTROPY_BINS = 2048  # histogram bins of the entropy (KL) calibration, as TensorRT's


def _entropy_ranges(model: Path, tmp: Path, reader) -> Path:
    """Activation ranges by entropy (KL) calibration, as a calibration cache for quantize_static.

    quantize_static builds its entropy calibrator with 128 histogram bins and 128 quantized
    bins and offers no option to change them; with as many bins as quantized bins the KL
    search has a single candidate, the whole histogram, so "entropy" gives exactly the
    min/max ranges. Here the histogram has ENTROPY_BINS bins (128 quantized bins, uint8
    activations), and the ranges reach quantize_static through its calibration cache."""
    import inspect

    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise EdgetlError("--calib-method entropy needs an onnxruntime whose quantize_static takes a calibration "
                          "cache (calibration_cache_path); upgrade onnxruntime, or use minmax or percentile")
    ops = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))  # quantize_static's default op types
    cal = create_calibrator(model, ops, augmented_model_path=str(tmp / ("augmented" + _ONNX)),
                            calibrate_method=CalibrationMethod.Entropy,
                            extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": 128})
    cal.collect_data(reader)
    cal.collector.get_entropy_threshold = entropy_threshold  # the same search, without Python loops
    cache = tmp / "entropy_ranges.json"
    save_tensors_data(cal.compute_data(), cache)
    return cache


def entropy_threshold(histogram: tuple, num_quantized_bins: int) -> tuple:
    """onnxruntime's ``HistogramCollector.get_entropy_threshold``, result for result: for each
    symmetric window of the histogram around zero, the KL divergence between the window (its
    outliers folded into the end bins) and its ``num_quantized_bins``-level quantization; the
    window with the least divergence gives the range. onnxruntime builds every candidate with
    Python loops and builtin ``sum`` over numpy slices (about 2 ms each, ~1,000 candidates per
    tensor at 2,048 bins: minutes per model); here the integer parts are numpy reductions and
    cumulative sums, which are exact, and the floating-point parts are onnxruntime's own
    ``smooth_distribution`` and ``entropy`` on the same arrays, so the ranges are identical
    (tests/test_export.py compares them)."""
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    hist, edges = histogram[0], histogram[1]
    n, nq = hist.size, num_quantized_bins
    zero, half = n // 2, nq // 2
    dtype = edges.dtype
    csum = np.concatenate([[0], np.cumsum(hist)])
    divs, windows = [], []
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, n)
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += csum[start]
        p[-1] += csum[-1] - csum[end]
        m = sliced.size // nq
        qbins = sliced[:nq * m].reshape(nq, m).sum(1)
        qbins[-1] += sliced[nq * m:].sum()
        norm = (p[:nq * m] != 0).reshape(nq, m).sum(1)
        vals = np.zeros(nq, np.int64)
        ok = norm != 0
        vals[ok] = (qbins[ok] / norm[ok]).astype(np.int64)  # onnxruntime stores them in an int64 array
        q = np.zeros(p.size, np.int64)
        q[:nq * m] = np.repeat(vals, m)
        ps, qs = smooth_distribution(p), smooth_distribution(q)
        divs.append(np.array(np.inf if ps is None or qs is None else entropy(ps, qs), dtype=dtype))
        windows.append((edges[start], edges[end]))
    lo, hi = windows[int(np.argmin(np.array(divs, dtype=dtype)))]
    if lo < histogram[2]:
        lo = histogram[2]
    if hi > histogram[3]:
        hi = histogram[3]
    return lo, hi


def onnx_sensitive_nodes(fp32_model) -> list[str]:
    """Nodes most sensitive to int8 by construction: the first convolution (raw pixel
    range) and the classifier (a few large logits)."""
    nodes = list(fp32_model.graph.node)
    out = []
    first = next((n for n in nodes if n.op_type == "Conv"), None)
    if first is not None:
        out.append(first.name)
    out += [n.name for n in nodes if n.op_type in ("MatMul", "Gemm")][-1:]
    return out


# ------------------------------------------------------------------ the table ----
@dataclass(frozen=True)
class Int8Settings:
    """How to quantize to full integer. TFLite reads io_type and float_layers; ONNX reads
    calib_method, onnx_format, per_channel and exclude."""

    io_type: str = "float32"                 # TFLite I/O: float32 | int8 | uint8
    calib_method: str = "minmax"             # ONNX: minmax | entropy | percentile
    onnx_format: str = "qoperator"           # ONNX: qoperator | qdq
    per_channel: bool = True                 # ONNX weights
    exclude: tuple[str, ...] = ()            # ONNX nodes kept in float
    float_layers: tuple[str, ...] = ()       # TFLite layers kept in float


class Source:
    """What every converter starts from: the serving model, and its float ONNX graph
    (converted once, on first use)."""

    def __init__(self, serving: Serving):
        self.serving = serving

    @functools.cached_property
    def onnx_fp32(self) -> Any:
        return onnx_fp32(self.serving, {})


Meta = dict[str, str]  # key/value metadata written into ONNX models
Converter = Callable[[Source, "np.ndarray | None", Int8Settings, Meta], bytes]


def _tflite(quant: str) -> Converter:
    def conv(src: Source, calib: np.ndarray | None, s: Int8Settings, meta: Meta) -> bytes:
        return tflite_bytes(src.serving, quant)
    return conv


def _tflite_int8(src: Source, calib: np.ndarray | None, s: Int8Settings, meta: Meta) -> bytes:
    if s.float_layers:
        return tflite_int8_denylist(src.serving, s.io_type, _need(calib), list(s.float_layers))
    return tflite_bytes(src.serving, "int8", s.io_type, _need(calib))


def _onnx(make: Callable[[Any, Meta], Any] | None) -> Converter:
    def conv(src: Source, calib: np.ndarray | None, s: Int8Settings, meta: Meta) -> bytes:
        if make is None:
            import onnx

            m = onnx.ModelProto()
            m.CopyFrom(src.onnx_fp32)
            set_onnx_metadata(m, meta)
        else:
            m = make(src.onnx_fp32, meta)
        return bytes(m.SerializeToString())
    return conv


def _onnx_int8(src: Source, calib: np.ndarray | None, s: Int8Settings, meta: Meta) -> bytes:
    m = onnx_int8(src.onnx_fp32, meta, _need(calib), s.calib_method, s.onnx_format, s.per_channel, list(s.exclude))
    return bytes(m.SerializeToString())


def _ort(quant: str) -> Converter:
    """ORT format from the ONNX converter's bytes of the same mode (int8: the same settings)."""
    def conv(src: Source, calib: np.ndarray | None, s: Int8Settings, meta: Meta) -> bytes:
        return onnx_to_ort(formats.ONNX.converter(quant)(src, calib, s, meta))
    return conv


def _need(calib: np.ndarray | None) -> np.ndarray:
    if calib is None or not len(calib):
        raise ValueError("int8 needs calibration images")
    return calib


# the converters the format registry (edgetl.formats) names: to_<format>_<quant>
to_tflite_fp32, to_tflite_fp16, to_tflite_dynamic = _tflite("fp32"), _tflite("fp16"), _tflite("dynamic")
to_tflite_int8 = _tflite_int8
to_onnx_fp32, to_onnx_fp16, to_onnx_dynamic, to_onnx_int8 = _onnx(None), _onnx(onnx_fp16), _onnx(onnx_dynamic), _onnx_int8
to_ort_fp32, to_ort_fp16, to_ort_dynamic, to_ort_int8 = _ort("fp32"), _ort("fp16"), _ort("dynamic"), _ort("int8")


def convert(src: Source, fmt: str, quant: str, calib: np.ndarray | None = None,
            settings: Int8Settings | None = None, metadata: Meta | None = None) -> bytes:
    """The model in ``fmt`` at ``quant``, as bytes (``metadata``: ONNX and ORT metadata_props)."""
    if fmt not in formats.FORMATS:
        raise ValueError(f"no converter for {fmt} {quant}; known formats: {', '.join(formats.NAMES)}")
    return formats.FORMATS[fmt].converter(quant)(src, calib, settings or Int8Settings(), metadata or {})

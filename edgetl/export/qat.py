"""Quantization-aware training (tensorflow-model-optimization).

tfmot accepts only flat functional tf_keras (Keras 2) models, so the trained
Keras 3 model is rebuilt layer for layer as a flat tf_keras model (the
backbone built on the input tensor, not nested), its weights copied by layer
name, annotated for quantization (preprocessing left in float), fine-tuned
briefly on the training split with BatchNorm frozen, and converted to a
full-integer int8 TFLite model. Its held-out accuracy is reported next to
post-training int8 from the same float model."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl import artifacts, backbones, formats, rundir
from edgetl.config import QatOptions, default
from edgetl.errors import EdgetlError
from edgetl.rundir import open_run
from edgetl.types import Echo, PathLike

QAT_FILE = rundir.artifact_file(formats.TFLITE.name, "qat_int8")  # QAT exports int8 TFLite only


@dataclass
class QatResult:
    file: Path
    accuracy: float | None
    ptq_accuracy: float | None
    keras_accuracy: float | None
    agreement: float | None
    size_bytes: int
    epochs: int


def _keras3_layers(model) -> dict:
    """Every leaf layer of a (possibly nested) Keras 3 model, by name."""
    out = {}
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            out.update(_keras3_layers(layer))
        out[layer.name] = layer
    return out


def flat_tf_keras_model(run, keras3_model):
    """The run's classifier as a flat functional tf_keras model, with the same weights."""
    import tf_keras as tfk

    cfg = run.config
    bb = backbones.get(cfg.backbone)
    if bb.preprocess not in ("tf", "none"):
        raise EdgetlError(f"QAT supports backbones with tf-style or built-in preprocessing "
                          f"(mobilenetv2, efficientnet*), not {bb.name}")
    h = w = run.img_size
    inp = tfk.Input((h, w, 3), name="image")
    x = tfk.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(inp) if bb.preprocess == "tf" else inp
    if not hasattr(tfk.applications, bb.builder):
        raise EdgetlError(f"QAT rebuilds the backbone from tf_keras.applications, which has no {bb.name}; "
                          f"use post-training int8 (edgetl export --quants int8)")
    kw = dict(include_top=False, weights=None, input_tensor=x)
    if bb.has_alpha:
        kw["alpha"] = float(cfg.alpha)
    base = getattr(tfk.applications, bb.builder)(**kw)
    y = tfk.layers.GlobalAveragePooling2D(name="pool")(base.output)
    src = _keras3_layers(keras3_model)
    if "head_dense" in src:
        y = tfk.layers.Dense(src["head_dense"].units, activation="relu", name="head_dense")(y)
    y = tfk.layers.Dense(len(run.labels), name="logits")(y)
    model = tfk.Model(inp, y, name="edgetl_flat")
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in src:
            raise EdgetlError(f"QAT: no layer '{layer.name}' in the trained model to copy weights from")
        ws = src[layer.name].get_weights()
        if [a.shape for a in ws] != [a.shape for a in layer.get_weights()]:
            raise EdgetlError(f"QAT: weight shapes differ at '{layer.name}'")
        layer.set_weights(ws)
    return model


def quantize_aware(flat):
    import tensorflow_model_optimization as tfmot
    import tf_keras as tfk

    q = tfmot.quantization.keras

    def annotate(layer):
        if isinstance(layer, (tfk.layers.Rescaling, tfk.layers.Normalization, tfk.layers.InputLayer)):
            return layer  # preprocessing stays float; the converter quantizes its output
        return q.quantize_annotate_layer(layer)

    annotated = tfk.models.clone_model(flat, clone_function=annotate)
    annotated.set_weights(flat.get_weights())
    with q.quantize_scope():
        qmodel = q.quantize_apply(annotated)
    for layer in qmodel.layers:  # BatchNorm stays in inference mode with frozen statistics
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, tfk.layers.BatchNormalization):
            layer.trainable = False
    return qmodel


def init_ranges(qmodel, flat, images: np.ndarray) -> int:
    """Set the activation quantizers' ranges from the float model's activations on
    ``images``. tfmot starts every range at [-6, 6] and moves it by an EMA of 0.999
    per step, so a pretrained model would spend thousands of steps wrongly clipped.
    Returns the number of ranges set."""
    import tf_keras as tfk

    names = [l.name for l in flat.layers if not isinstance(l, tfk.layers.InputLayer)]
    probe = tfk.Model(flat.input, [flat.get_layer(n).output for n in names])
    outs = probe.predict(images, verbose=0, batch_size=32)
    ranges = {n: (min(0.0, float(o.min())), max(0.0, float(o.max()))) for n, o in zip(names, outs)}
    n_set = 0
    inbound: dict[str, str | None] = {}
    for layer in qmodel.layers:  # which float layer feeds each quantize_layer
        for node in layer._inbound_nodes:
            for t in node.input_tensors if isinstance(node.input_tensors, list) else [node.input_tensors]:
                inbound.setdefault(layer.name, t.node.layer.name if hasattr(t, "node") else None)
    for layer in qmodel.layers:
        inner = getattr(layer, "layer", None)
        src = inner.name if inner is not None else inbound.get(layer.name)
        if layer.__class__.__name__ == "QuantizeLayer":
            src = inbound.get(layer.name)
            src = getattr(qmodel.get_layer(src), "layer", qmodel.get_layer(src)).name if src else None
        if src not in ranges:
            continue
        lo, hi = ranges[src]
        for v in layer.weights:
            short = v.name.split("/")[-1].split(":")[0]
            if "kernel" in short or not short.endswith(("_min", "_max")):
                continue
            v.assign(np.full(v.shape, lo if short.endswith("_min") else hi, np.float32))
            n_set += 1
    return n_set


def to_int8_tflite(qmodel, img_size: int, calib: np.ndarray, io_type: str = "float32") -> bytes:
    import tensorflow as tf
    import tf_keras as tfk
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    serving = tfk.Model(qmodel.input, tfk.layers.Softmax(name="probabilities")(qmodel.output))
    spec = [tf.TensorSpec([None, img_size, img_size, 3], tf.float32, name="image")]
    fn = tf.function(lambda x: serving(x, training=False), input_signature=spec)
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    from edgetl.export.convert import full_integer

    c = tf.lite.TFLiteConverter.from_concrete_functions([frozen], serving)
    return bytes(full_integer(c, calib, io_type).convert())


def qat(run_dir: PathLike, epochs: int = default(QatOptions, "epochs"), lr: float = default(QatOptions, "lr"),
        batch_size: int = default(QatOptions, "batch_size"), io_type: str = default(QatOptions, "io_type"),
        calibration: str | None = default(QatOptions, "calibration"), echo: Echo = print) -> QatResult:
    """Quantization-aware fine-tuning of the run's model (its directory locked meanwhile);
    defaults and checks: :class:`edgetl.config.QatOptions`."""
    from edgetl.rundir import writing

    QatOptions(epochs, lr, batch_size, io_type, calibration).validate()
    with writing(run_dir, "edgetl qat", echo=echo, create=False):
        return _qat(run_dir, epochs, lr, batch_size, io_type, calibration, echo)


def _qat(run_dir: PathLike, epochs: int, lr: float, batch_size: int, io_type: str, calibration: str | None,
         echo: Echo) -> QatResult:
    import tensorflow as tf
    import tf_keras as tfk

    from edgetl.config import parse_augment
    from edgetl.data.tfdata import augmenter, image_dataset
    from edgetl.export.exporter import Exporter, ExportOptions

    run = open_run(run_dir)
    t0 = time.perf_counter()
    exp = Exporter(run_dir, ExportOptions(formats=(formats.TFLITE.name,), quants=("int8",), io_type=io_type,
                                          calibration=calibration), echo)
    keras3 = run.load_model()
    flat = flat_tf_keras_model(run, keras3)
    qmodel = quantize_aware(flat)
    k = len(run.labels)
    files, labels = run.split_files("train")
    if not files:
        raise EdgetlError(f"{run.dir}: split.json lists no training images to fine-tune on")
    aug = augmenter(parse_augment(run.config.augment), run.config.seed + 7)
    ds = image_dataset(files, labels, run.img_size, run.resize).map(lambda x, y: (x, tf.one_hot(y, k)))
    ds = (ds.shuffle(len(files), seed=run.config.seed).batch(batch_size)
          .map(lambda x, y: (tf.clip_by_value(aug(tf.cast(x, tf.float32), training=True), 0.0, 255.0), y))
          .prefetch(2))
    calib, calib_hash, _ = exp.calibration()
    n = init_ranges(qmodel, flat, calib[:128].astype(np.float32))
    echo(f"qat: {n} activation ranges initialised from the float model on {min(len(calib), 128)} calibration images")
    qmodel.compile(optimizer=tfk.optimizers.Adam(lr),
                   loss=tfk.losses.CategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    for e in range(epochs):
        t = time.perf_counter()
        h = qmodel.fit(ds, epochs=1, verbose=0)
        loss = h.history["loss"][0]
        if not np.isfinite(loss):
            raise EdgetlError(f"QAT: the loss became {loss} at epoch {e + 1}; lower --lr (now {lr})", exit_code=1)
        echo(f"qat epoch {e + 1}/{epochs}  loss {loss:.4f}  acc {h.history['accuracy'][0]:.4f}  "
             f"{time.perf_counter() - t:.1f}s")
    data = to_int8_tflite(qmodel, run.img_size, calib, io_type)
    from edgetl.export.exporter import Artifact

    a = Artifact(formats.TFLITE.name, "int8", QAT_FILE, io_type=io_type)
    exp.score(data, a)
    ptq = Artifact(formats.TFLITE.name, "int8", "ptq")
    from edgetl.export import convert as C

    exp.score(C.tflite_bytes(exp.serving, "int8", io_type, calib), ptq)
    dest = run.dir / QAT_FILE
    if a.drop_points is not None and a.drop_points > 25:
        raise EdgetlError(f"QAT int8 accuracy collapsed ({a.accuracy:.3f} vs Keras {a.keras_accuracy:.3f}); "
                          f"not written. Try more --epochs or a lower --lr", exit_code=1)
    data = exp.with_metadata(a, data)
    with artifacts.atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    meta = exp.metadata("int8-qat", io_type)
    meta["settings"] = {"qat_epochs": epochs, "lr": lr}
    from edgetl.export.exporter import with_io_names

    with_io_names(meta, dest)
    artifacts.write_json(rundir.sidecar(dest), meta)
    res = QatResult(dest, a.accuracy, ptq.accuracy, a.keras_accuracy, a.agreement, dest.stat().st_size, epochs)
    rundir.update_manifest(run.dir, "qat", {
        "file": QAT_FILE, "sha256": artifacts.sha256_file(dest), "epochs": epochs, "lr": lr, "io_type": io_type,
        "calibration_hash": calib_hash, "accuracy": a.accuracy, "ptq_int8_accuracy": ptq.accuracy,
        "keras_accuracy": a.keras_accuracy, "agreement": a.agreement, "seconds": round(time.perf_counter() - t0, 1)})
    echo("")
    echo(f"{'model':<22}{'held-out acc':>13}")
    echo(f"{'keras float':<22}{a.keras_accuracy:>13.4f}")
    echo(f"{'post-training int8':<22}{ptq.accuracy:>13.4f}")
    echo(f"{'QAT int8':<22}{a.accuracy:>13.4f}   -> {dest} ({res.size_bytes / 1024:.0f} KiB)")
    return res

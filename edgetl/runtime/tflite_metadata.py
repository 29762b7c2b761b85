"""Standard TFLite metadata for an exported classifier: model bytes in, model bytes out.

App runtimes read a classifier's contract from the model file itself, not from a sidecar:
MediaPipe Tasks' ImageClassifier (Android, iOS, web, Python) and the TFLite Task Library
refuse a model without it, and Android Studio's ML model binding generates no typed
wrapper. This writes what they read, as the metadata schema defines it
(``metadata_schema.fbs``, file identifier ``M001``, parser version 1.0.0 features only):

- model: name, description, version, author, license;
- input: an RGB image at the model's size; for float input the normalisation MediaPipe
  applies before the model, mean 0 and std 1 (edgetl bakes the backbone's preprocessing
  into the graph, so the model takes 0-255 pixels as they are); for int8/uint8 input the
  tensor's own quantization parameters carry the scale (no normalisation is written);
- output: class probabilities (feature content, range 0-1) with ``labels.txt`` attached
  as TENSOR_AXIS_LABELS.

How it is stored is what tflite-support's ``MetadataPopulator`` does: the metadata
flatbuffer becomes one more buffer of the model, named ``TFLITE_METADATA`` in the model's
``metadata`` list, and the associated files are appended after the flatbuffer as a zip
archive (stored, not deflated), so the .tflite file is also a valid zip holding
labels.txt. Running the model is unaffected.

The metadata tables are written with ``flatbuffers.Builder`` directly (the schema's ten
tables, by field slot); the model goes through the TFLite schema's generated object API
(``ai_edge_litert`` or TensorFlow's copy), re-packed with 16-byte aligned buffers."""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetl import rundir

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
MODEL_IDENTIFIER = b"TFL3"
MIN_PARSER_VERSION = "1.0.0"   # only fields of schema 1.0.0 are written
LABELS_FILE = rundir.LABELS    # packed into the model under the run's own name for it

# enums of metadata_schema.fbs
COLOR_RGB = 1
CONTENT_FEATURE, CONTENT_IMAGE = 1, 2           # ContentProperties union
PROCESS_NORMALIZATION = 1                       # ProcessUnitOptions union
FILE_TENSOR_AXIS_LABELS = 2                     # AssociatedFileType
# TensorType of the TFLite schema
_FLOAT32, _UINT8, _INT8 = 0, 3, 9
_TYPE_NAMES = {_FLOAT32: "float32", _UINT8: "uint8", _INT8: "int8"}


@dataclass(frozen=True)
class ModelInfo:
    """What the metadata says about the model besides what the graph already knows."""

    name: str
    description: str
    version: str
    author: str
    labels: tuple[str, ...]
    license: str = ""


def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated as s
    except ImportError:  # pragma: no cover - older ai-edge-litert
        from tensorflow.lite.python import schema_py_generated as s
    return s


# ------------------------------------------------------------- metadata tables ----
class _Tables:
    """The few metadata_schema.fbs tables a classifier needs, written by field slot.
    A union field takes two slots: its type (ubyte), then its value."""

    def __init__(self) -> None:
        import flatbuffers

        self.b = flatbuffers.Builder(1024)

    def table(self, fields: list[tuple[int, str, Any]]) -> int:
        """fields: (slot, kind, value) with kind 'offset' | 'byte' | 'uint'; None values are left out."""
        b = self.b
        b.StartObject(max(s for s, _, _ in fields) + 1)
        for slot, kind, value in fields:
            if value is None:
                continue
            if kind == "offset":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "byte":
                b.PrependUint8Slot(slot, value, 0)
            else:
                b.PrependUint32Slot(slot, value, 0)
        return b.EndObject()

    def string(self, s: str | None) -> int | None:
        return None if s is None else self.b.CreateString(s)

    def floats(self, values) -> int:
        return self.b.CreateNumpyVector(np.asarray(values, np.float32))

    def offsets(self, offs: list[int]) -> int:
        b = self.b
        b.StartVector(4, len(offs), 4)
        for o in reversed(offs):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()

    # -- the schema's tables
    def associated_file(self, name: str, description: str, ftype: int) -> int:
        n, d = self.string(name), self.string(description)
        return self.table([(0, "offset", n), (1, "offset", d), (2, "byte", ftype)])

    def normalization(self, mean, std) -> int:
        m, s = self.floats(mean), self.floats(std)
        opts = self.table([(0, "offset", m), (1, "offset", s)])
        return self.table([(0, "byte", PROCESS_NORMALIZATION), (1, "offset", opts)])      # ProcessUnit

    def stats(self, lo, hi) -> int:
        mx, mn = self.floats(hi), self.floats(lo)
        return self.table([(0, "offset", mx), (1, "offset", mn)])

    def image_content(self, w: int, h: int) -> int:
        size = self.table([(0, "uint", w), (1, "uint", h)])                              # ImageSize
        props = self.table([(0, "byte", COLOR_RGB), (1, "offset", size)])                # ImageProperties
        return self.table([(0, "byte", CONTENT_IMAGE), (1, "offset", props)])            # Content

    def feature_content(self) -> int:
        props = self._empty()                                                           # FeatureProperties
        return self.table([(0, "byte", CONTENT_FEATURE), (1, "offset", props)])

    def _empty(self) -> int:
        self.b.StartObject(0)
        return self.b.EndObject()

    def tensor(self, name: str, description: str, content: int, process_units: list[int] | None = None,
               stats: int | None = None, files: list[int] | None = None) -> int:
        n, d = self.string(name), self.string(description)
        pu = self.offsets(process_units) if process_units else None
        fs = self.offsets(files) if files else None
        return self.table([(0, "offset", n), (1, "offset", d), (3, "offset", content), (4, "offset", pu),
                           (5, "offset", stats), (6, "offset", fs)])

    def finish(self, root: int) -> bytes:
        self.b.Finish(root, file_identifier=METADATA_IDENTIFIER)
        return bytes(self.b.Output())


def metadata_flatbuffer(info: ModelInfo, height: int, width: int, input_type: str,
                        input_quant: tuple[float, int] | None = None) -> bytes:
    """The ModelMetadata flatbuffer of an image classifier (``input_type``: float32 | uint8 | int8)."""
    t = _Tables()
    k = len(info.labels)
    labels = t.associated_file(LABELS_FILE, f"The {k} class labels, one a line, in output order.",
                               FILE_TENSOR_AXIS_LABELS)
    if input_type == "float32":
        in_desc = (f"RGB image, {width}x{height}, float32 pixel values 0-255. The backbone's preprocessing is "
                   "inside the model, so the normalisation before it is mean 0, std 1.")
        units = [t.normalization([0.0], [1.0])]
        in_stats = t.stats([0.0], [255.0])
    else:
        scale, zp = input_quant or (1.0, 0)
        info_t = np.iinfo(np.int8 if input_type == "int8" else np.uint8)
        in_desc = (f"RGB image, {width}x{height}, {input_type} values quantized from pixels 0-255: "
                   f"q = pixel / {scale:.6g} + {zp}. The backbone's preprocessing is inside the model.")
        units = []
        in_stats = t.stats([float(info_t.min)], [float(info_t.max)])
    in_content = t.image_content(width, height)
    image = t.tensor("image", in_desc, in_content, units, in_stats)
    out_stats = t.stats([0.0], [1.0])
    out_content = t.feature_content()
    probs = t.tensor("probability", f"Probabilities of the {k} classes, in the order of {LABELS_FILE}.",
                     out_content, None, out_stats, [labels])
    ins, outs = t.offsets([image]), t.offsets([probs])
    subgraph = t.table([(2, "offset", ins), (3, "offset", outs)])
    subgraphs = t.offsets([subgraph])
    name, desc, version = t.string(info.name), t.string(info.description), t.string(info.version)
    author, lic = t.string(info.author), t.string(info.license or None)
    parser = t.string(MIN_PARSER_VERSION)
    root = t.table([(0, "offset", name), (1, "offset", desc), (2, "offset", version), (3, "offset", subgraphs),
                    (4, "offset", author), (5, "offset", lic), (7, "offset", parser)])
    return t.finish(root)


# ----------------------------------------------------------------- the model ----
def _aligned_buffer_class(schema):
    class AlignedBuffer(schema.BufferT):
        """A model buffer whose data starts on a 16-byte boundary (schema: force_align 16)."""

        def Pack(self, builder):
            data = None
            if self.data is not None and len(self.data):
                raw = np.asarray(self.data, np.uint8).tobytes()
                builder.StartVector(1, len(raw), 16)
                builder.head -= len(raw)
                builder.Bytes[builder.head:builder.head + len(raw)] = raw
                data = builder.EndVector()
            schema.BufferStart(builder)
            if data is not None:
                schema.BufferAddData(builder, data)
            schema.BufferAddOffset(builder, self.offset)
            schema.BufferAddSize(builder, self.size)
            return schema.BufferEnd(builder)

    return AlignedBuffer


def _model(model: bytes) -> tuple[Any, Any]:
    s = _schema()
    if len(model) < 8 or model[4:8] != MODEL_IDENTIFIER:
        raise ValueError("not a TFLite model (no TFL3 identifier)")
    return s, s.ModelT.InitFromObj(s.Model.GetRootAsModel(model, 0))


def io_contract(model: bytes) -> dict:
    """Input size, input type and quantization, and output width of a single-input classifier."""
    s, m = _model(model)
    if len(m.subgraphs or []) != 1:
        raise ValueError(f"expected one subgraph, found {len(m.subgraphs or [])}")
    g = m.subgraphs[0]
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise ValueError(f"expected one input and one output, found {len(g.inputs)} and {len(g.outputs)}")
    inp, out = g.tensors[g.inputs[0]], g.tensors[g.outputs[0]]
    shape = [int(v) for v in inp.shape]
    if len(shape) != 4 or shape[3] != 3:
        raise ValueError(f"expected an NHWC RGB image input, found shape {shape}")
    if inp.type not in _TYPE_NAMES:
        raise ValueError(f"unsupported input type {inp.type}")
    q = inp.quantization
    quant = (float(q.scale[0]), int(q.zeroPoint[0])) if q is not None and q.scale is not None and len(q.scale) else None
    return {"height": shape[1], "width": shape[2], "input_type": _TYPE_NAMES[inp.type], "input_quant": quant,
            "classes": int(out.shape[-1])}


def add_metadata(model: bytes, info: ModelInfo) -> bytes:
    """The model with ``info`` as TFLite metadata and labels.txt packed in; any metadata and
    packed files it already had are replaced."""
    c = io_contract(model)
    if c["classes"] != len(info.labels):
        raise ValueError(f"the model outputs {c['classes']} classes but {len(info.labels)} labels were given")
    meta = metadata_flatbuffer(info, c["height"], c["width"], c["input_type"], c["input_quant"])
    s, m = _model(model)
    if any((b.offset or 0) > 1 for b in m.buffers or []):
        raise ValueError("the model keeps buffers outside the flatbuffer (over 2 GB); metadata is not supported")
    aligned = _aligned_buffer_class(s)
    buffers = []
    for b in m.buffers or []:
        a = aligned()
        a.data, a.offset, a.size = b.data, b.offset, b.size
        buffers.append(a)
    m.buffers = buffers
    entry = aligned()
    entry.data = np.frombuffer(meta, np.uint8)
    m.metadata = list(m.metadata or [])
    for md in m.metadata:
        if _text(md.name) == METADATA_NAME:
            m.buffers[md.buffer] = entry
            break
    else:
        m.buffers.append(entry)
        md = s.MetadataT()
        md.name, md.buffer = METADATA_NAME, len(m.buffers) - 1
        m.metadata.append(md)
    import flatbuffers

    b = flatbuffers.Builder(len(model) + len(meta) + 1024)
    b.Finish(m.Pack(b), file_identifier=MODEL_IDENTIFIER)
    out = io.BytesIO()
    out.write(bytes(b.Output()))
    with zipfile.ZipFile(out, "a", zipfile.ZIP_STORED) as z:   # appended after the flatbuffer
        z.writestr(LABELS_FILE, "\n".join(info.labels) + "\n")
    return out.getvalue()


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v or "")


# ------------------------------------------------------------------ reading ----
def metadata_buffer(model: bytes) -> bytes | None:
    """The ModelMetadata flatbuffer stored in the model, or None."""
    s = _schema()
    m = s.Model.GetRootAsModel(model, 0)
    for i in range(m.MetadataLength()):
        md = m.Metadata(i)
        if _text(md.Name()) == METADATA_NAME:
            buf = m.Buffers(md.Buffer())
            if buf.DataLength():
                return buf.DataAsNumpy().tobytes()
    return None


def packed_files(model: bytes) -> dict[str, bytes]:
    """The associated files packed after the flatbuffer (empty when there are none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as z:
            return {n: z.read(n) for n in z.namelist()}
    except zipfile.BadZipFile:
        return {}


def packed_labels(path) -> list[str] | None:
    """labels.txt packed into a .tflite file, or None."""
    try:
        with zipfile.ZipFile(path) as z:
            text = z.read(LABELS_FILE).decode("utf-8")
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError):
        return None
    return [line for line in text.splitlines() if line.strip()] or None

"""The export formats: one record per format, the one place that knows them.

Every module that varies by format reads its record here instead of comparing format
strings: the converters of each quantization mode (:mod:`edgetl.export.convert`), the runner and
the runtimes that run the file (:mod:`edgetl.runtime.runners`), the metadata written into it, the
files written beside it, whether the device check, the bundle and the browser check handle
it, and its line in the CLI's help. Converters, runners and sidecar writers are named as
``"module:attribute"`` and imported when used, so reading the registry stays light (no
TensorFlow, no onnxruntime).

Adding a format: one ``Format(...)`` entry in ``FORMATS`` plus the module that converts and
runs it (its converters and its ``Runner``); the registry-driven tests
(tests/test_formats.py) then export it in every mode, run it in every runtime, bundle it and
read its device results back. See docs/development.md.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgetl.errors import EdgetlError

QUANTS = ("fp32", "fp16", "dynamic", "int8")

# int8 toolchains: which settings an int8 export takes and which remedies its budget ladder tries
TFLITE_CONVERTER = "tflite-converter"          # io_type, layers kept in float (quantization debugger)
ORT_QUANTIZATION = "onnxruntime-quantization"  # calib_method, onnx_format, per_channel, excluded nodes

# metadata writers: what an exported file carries besides the graph
TFLITE_METADATA = "tflite-metadata"  # standard TFLite metadata with labels.txt packed in (edgetl.runtime.tflite_metadata)
ONNX_PROPS = "onnx-metadata-props"   # labels and the edgetl contract as ONNX metadata_props (edgetl.export.convert)


@dataclass(frozen=True)
class Format:
    name: str                      # --formats value and the "format" of manifests, sidecars and results.json
    suffix: str                    # file suffix of export/model_<quant><suffix>
    summary: str                   # one line for --help and the docs
    converters: Mapping[str, str]  # quantization mode -> "module:function" (edgetl.export.convert.Converter)
    runner: str                    # "module:Class": the Runner that opens the file by its suffix
    runtime: str                   # that runner's runtime name (verify rows, the card, device results)
    int8: str                      # int8 toolchain (TFLITE_CONVERTER or ORT_QUANTIZATION)
    metadata: str                  # metadata writer (TFLITE_METADATA or ONNX_PROPS)
    int8_io_type: bool = False     # int8 input/output dtype follows --io-type (else float32)
    extra_runtimes: Mapping[str, str] = field(default_factory=dict)  # runtime -> Runner: a verify row each
    sidecars: Mapping[str, str] = field(default_factory=dict)  # file suffix -> "module:function"(bytes, name) -> text
    default: bool = False          # exported (and bundled) when --formats is not given
    device_check: str = ""         # runtime edgetl_check.py opens it with on a device ("" = not handled)
    web: str = ""                  # the browser check's runtime for it (edgetl serve, bundle --web; "" = not handled)
    card: str = ""                 # "module:function"(App) -> the model card's app snippets for it ("" = none)

    def converter(self, quant: str) -> Any:
        try:
            return resolve(self.converters[quant])
        except KeyError:
            raise ValueError(f"no converter for {self.name} {quant}; known: {sorted(self.converters)}") from None

    def sidecar_name(self, model_name: str, suffix: str) -> str:
        """File name of a sidecar beside ``model_name`` (export/model_int8.ort -> model_int8<suffix>)."""
        return model_name[: -len(self.suffix)] + suffix if model_name.endswith(self.suffix) else model_name + suffix


def _modes(prefix: str) -> dict[str, str]:
    return {q: f"edgetl.export.convert:to_{prefix}_{q}" for q in QUANTS}


TFLITE = Format(
    name="tflite", suffix=".tflite", summary="LiteRT (TensorFlow Lite), with TFLite metadata and labels packed in",
    converters=_modes("tflite"), runner="edgetl.runtime.runners:LiteRTRunner", runtime="litert",
    extra_runtimes={"mediapipe": "edgetl.runtime.runners:MediaPipeRunner"},
    int8=TFLITE_CONVERTER, int8_io_type=True, metadata=TFLITE_METADATA, default=True, device_check="litert",
    web="litert.js", card="edgetl.report.snippets:tflite")
ONNX = Format(
    name="onnx", suffix=".onnx", summary="ONNX (tf2onnx), for onnxruntime",
    converters=_modes("onnx"), runner="edgetl.runtime.runners:OnnxRunner", runtime="onnxruntime",
    int8=ORT_QUANTIZATION, metadata=ONNX_PROPS, default=True, device_check="onnxruntime",
    web="onnxruntime-web", card="edgetl.report.snippets:onnx")
ORT = Format(
    name="ort", suffix=".ort", summary="onnxruntime's mobile format, from the ONNX model of the same mode",
    converters=_modes("ort"), runner="edgetl.runtime.runners:OrtRunner", runtime="onnxruntime",
    int8=ORT_QUANTIZATION, metadata=ONNX_PROPS, device_check="onnxruntime", web="onnxruntime-web",
    sidecars={".required_operators.config": "edgetl.export.convert:ort_required_operators"})

FORMATS: dict[str, Format] = {f.name: f for f in (TFLITE, ONNX, ORT)}
NAMES = tuple(FORMATS)
DEFAULT = tuple(f.name for f in FORMATS.values() if f.default)
SUFFIXES = tuple(f.suffix for f in FORMATS.values())
BY_SUFFIX: dict[str, Format] = {f.suffix: f for f in FORMATS.values()}
# every runtime that runs an exported file -> its Runner ("module:Class")
RUNTIMES: dict[str, str] = {**{f.runtime: f.runner for f in FORMATS.values()},
                            **{rt: r for f in FORMATS.values() for rt, r in f.extra_runtimes.items()}}
# every sidecar suffix a format writes beside its model (besides the JSON sidecar of every format)
SIDECAR_SUFFIXES = tuple(s for f in FORMATS.values() for s in f.sidecars)


def get(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise EdgetlError(f"unknown format '{name}'; use one of {', '.join(NAMES)}") from None


def of_file(path: Any) -> Format | None:
    """The format of a model file by its suffix, or None."""
    from pathlib import Path

    return BY_SUFFIX.get(Path(path).suffix.lower())


def runtimes_of(fmt: Format) -> tuple[str, ...]:
    """Every runtime that runs files of ``fmt``: its own, then the extra ones."""
    return (fmt.runtime, *fmt.extra_runtimes)


def help_text() -> str:
    """``tflite (LiteRT ...); onnx (...); ort (...)`` for --formats."""
    return "; ".join(f"{f.name}: {f.summary}" for f in FORMATS.values())


def resolve(ref: str) -> Any:
    """The attribute named by ``"module:attribute"``."""
    mod, _, attr = ref.partition(":")
    return getattr(importlib.import_module(mod), attr)

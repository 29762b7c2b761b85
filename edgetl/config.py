"""Configuration: one dataclass per stage, the only source of defaults and checks.

The command line, the pipeline file (``edgetl run``), its starter template
(``edgetl init``) and the Python API all take their defaults from these classes
and validate through them. A bad value is an :class:`OptionError`, which each
front end words in its own vocabulary (``--max-drop -1: ...`` or
``pipeline.yaml: export.max_drop = -1: ...``). Importing or validating any of
this loads no TensorFlow."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgetl import formats
from edgetl.errors import EdgetlError, OptionError

AUGMENTATIONS = ("flip", "rotate", "zoom", "translate", "contrast")
FORMATS = formats.NAMES                      # the format registry (edgetl.formats)
DEFAULT_FORMATS = formats.DEFAULT
BUNDLE_FORMATS = tuple(f.name for f in formats.FORMATS.values() if f.device_check)  # what edgetl_check.py runs
FORMATS_HELP = "comma list of " + ",".join(FORMATS) + " (" + formats.help_text() + ")"
QUANTS = ("fp32", "fp16", "dynamic", "int8")
IO_TYPES = ("float32", "int8", "uint8")
CALIB_METHODS = ("minmax", "entropy", "percentile")
ONNX_FORMATS = ("qoperator", "qdq")
RESIZES = ("crop", "squash")
STRATEGIES = ("auto", "mirrored", "multiworker")
CACHE_DTYPES = ("float16", "float32")
RECIPES = ("auto", "fixed")
DEFAULT_MAX_DROP = 1.0  # points of top-1 an artifact may lose against the Keras model (export and verify)


def doc(text: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A dataclass field with a one-line description (the starter template's comment)."""
    if default is dataclasses.MISSING:
        return field(metadata={"doc": text}, **kw)
    return field(default=default, metadata={"doc": text}, **kw)


def parse_augment(spec: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """'default', 'none' or a comma list of AUGMENTATIONS -> a tuple of names."""
    if spec is None or spec == "default":
        return AUGMENTATIONS
    items = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    names = tuple(items)
    if names in ((), ("none",)):
        return ()
    bad = [s for s in names if s not in AUGMENTATIONS]
    if bad:
        raise OptionError("augment", ",".join(names),
                          f"unknown '{bad[0]}'; use none or a list of {','.join(AUGMENTATIONS)}")
    return names


def parse_list(v: str | list[str] | tuple[str, ...], allowed: tuple[str, ...], name: str,
               flag: str | None = None) -> tuple[str, ...]:
    items = [s.strip() for s in v.split(",")] if isinstance(v, str) else [str(s) for s in v]
    items = [s for s in items if s]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise OptionError(name, ",".join(items) or "(empty)", f"use a comma list of {','.join(allowed)}", flag)
    return tuple(dict.fromkeys(items))


class Checks:
    """Collects every problem of one options object (so that all are reported at once)."""

    def __init__(self, obj: Any):
        self.obj = obj
        self.errors: list[OptionError] = []

    def require(self, name: str, ok: bool, problem: str) -> None:
        if not ok:
            self.errors.append(OptionError(name, getattr(self.obj, name), problem))

    def positive(self, *names: str) -> None:
        for n in names:
            self.require(n, getattr(self.obj, n) > 0, "must be positive")

    def non_negative(self, *names: str) -> None:
        for n in names:
            self.require(n, getattr(self.obj, n) >= 0, "must be >= 0")

    def one_of(self, name: str, allowed: tuple[str, ...]) -> None:
        self.require(name, getattr(self.obj, name) in allowed, f"use one of {', '.join(allowed)}")

    def run(self, name: str, fn: Any) -> Any:
        try:
            return fn()
        except OptionError as e:
            self.errors.append(e)
        except EdgetlError as e:
            self.errors.append(OptionError(name, getattr(self.obj, name), e.message))
        return None


class Options:
    """Mixin of the option dataclasses: ``problems()`` lists them all, ``validate()``
    raises the first (and normalises values in place), ``to_dict()`` serialises."""

    def problems(self) -> list[OptionError]:
        raise NotImplementedError

    def validate(self) -> typing.Self:
        errs = self.problems()
        if errs:
            raise errs[0]
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> typing.Self:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise EdgetlError(f"{where}: unknown key '{unknown[0]}'; allowed: {', '.join(sorted(names))}")
        kinds = field_types(cls)
        for k, v in d.items():  # a file edited by hand: each value of its field's type, named when not
            kind = kinds[k][0]
            if v is None and kind.endswith("?"):
                continue
            if not TYPE_OK[kind.rstrip("?")](v):
                shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
                raise EdgetlError(f"{where}: {k} = {shown} has the wrong type (expected {TYPE_NAMES[kind.rstrip('?')]}"
                                  f"{' or null' if kind.endswith('?') else ''}); it was edited: restore the value "
                                  "or train the run again")
        return cls(**d)


@dataclass
class TrainConfig(Options):
    data: str = doc("DATA/<class>/<images>, or DATA/train|val[|test]/<class>/", "")
    backbone: str = doc("see `edgetl backbones`", "mobilenetv2")
    alpha: float | None = doc("MobileNetV2 width multiplier (null: the backbone's default)", None)
    img_size: int | None = doc("input size in px (null: the backbone's default)", None)
    weights: str = doc("imagenet | none | path/to/weights.h5", "imagenet")
    resize: str = doc("crop (central crop to the aspect ratio, then resize) | squash", "crop")
    val_split: float = doc("validation fraction when DATA has no train/ and val/", 0.2)
    test_split: float | None = doc("untouched test fraction carved when DATA has no test/ (null: auto, 0.15 when "
                                   "every class keeps >= 10 test images; 0: none)", None)
    seed: int = doc("same seed, same machine: same result", 42)
    batch_size: int = doc("training batch size", 32)
    epochs_head: int = doc("phase 1: frozen base, head on cached features", 20)
    epochs_finetune: int = doc("phase 2: last layers unfrozen; 0 skips it", 10)
    lr_head: float = doc("Adam learning rate, phase 1", 1e-3)
    lr_finetune: float | None = doc("Adam learning rate, phase 2 (null: 1e-5 with the fixed recipe; auto tries "
                                    "1e-5 and 1e-4; given: auto keeps it)", None)
    recipe: str = doc("auto (phase 2 picks depth and learning rate on val; a minimum step budget) | fixed", "auto")
    unfreeze: int | None = doc("phase 2 trains the last N layers, widened to whole blocks where the unit is a block "
                               "(null: 20 with the fixed recipe; auto tries 2 and 5 units; given: auto keeps it)",
                               None)
    unfreeze_blocks: int | None = doc("or the last K blocks (given: auto keeps it)", None)
    lr_decay: float = doc("discriminative learning rates: each unit deeper gets lr x decay (1: one rate)", 1.0)
    accumulate: int = doc("average gradients over N batches per update (effective batch = batch_size x N)", 1)
    min_steps: int = doc("auto recipe: optimizer steps phase 1 runs at least (phase 2: half)", 300)
    dropout: float = doc("dropout before the classifier", 0.2)
    dense: int = doc("hidden units in the head (0: none)", 0)
    label_smoothing: float = doc("label smoothing of the cross-entropy", 0.0)
    l2: float = doc("L2 penalty on head weights", 0.0)
    views: int = doc("cached views per image in phase 1 (1 plain + views-1 augmented)", 4)
    mixup: float = doc("blend augmented views in pairs, weight ~ Beta(a, a); 0: off", 0.0)
    augment: str = doc("default | none | comma list of " + ",".join(AUGMENTATIONS), "default")
    class_weights: str = doc("none | auto (balances the loss for imbalanced classes)", "none")
    patience: int = doc("early-stopping patience (epochs)", 5)
    strict: bool = doc("fail on the first unusable image instead of skipping it", False)
    strategy: str = doc("auto | mirrored | multiworker (tf.distribute; multiworker reads TF_CONFIG)", "auto")
    cache_dir: str | None = doc("folder of the on-disk view cache (null: inside the run's checkpoints/; "
                                "multiworker: on storage every worker shares)", None)
    cache_budget: float = doc("disk the view cache may take, in GB; a larger cache is refused, saying what it needs",
                              50.0)
    cache_dtype: str = doc("storage of cached features and activations: float16 | float32", "float16")
    out: str | None = doc("run directory (null: a new folder under models/)", None)

    def problems(self) -> list[OptionError]:
        from edgetl import backbones

        c = Checks(self)
        bb = c.run("backbone", lambda: backbones.get(self.backbone))
        if bb is not None:
            self.backbone = bb.name
            if self.alpha is not None:
                c.require("alpha", bb.has_alpha, f"width multipliers apply to mobilenetv2, not {bb.name}")
            if self.img_size is not None:
                c.require("img_size", self.img_size >= bb.min_size, f"{bb.name} needs at least {bb.min_size} px")
        if self.alpha is not None:
            c.require("alpha", 0.0 < self.alpha <= 2.0, "must be in (0, 2]")
        c.positive("batch_size", "epochs_head", "views", "lr_head")
        c.non_negative("epochs_finetune", "dense", "patience", "l2", "mixup")
        if self.lr_finetune is not None:
            c.positive("lr_finetune")
        if self.unfreeze is not None:
            c.non_negative("unfreeze")
            c.require("unfreeze", self.unfreeze_blocks is None,
                      f"--unfreeze-blocks {self.unfreeze_blocks} is given too; give one of them")
        c.require("dropout", 0.0 <= self.dropout < 1.0, "must be in [0, 1)")
        c.require("label_smoothing", 0.0 <= self.label_smoothing < 1.0, "must be in [0, 1)")
        c.require("val_split", 0.0 < self.val_split < 1.0, "must be between 0 and 1 (exclusive)")
        if self.test_split is not None:
            c.require("test_split", 0.0 <= self.test_split < 1.0, "must be in [0, 1)")
        c.one_of("resize", RESIZES)
        c.one_of("class_weights", ("none", "auto"))
        c.one_of("recipe", RECIPES)
        c.require("lr_decay", 0.0 < self.lr_decay <= 1.0, "must be in (0, 1]")
        c.require("accumulate", self.accumulate >= 1, "must be >= 1")
        c.non_negative("min_steps")
        c.one_of("strategy", STRATEGIES)
        c.one_of("cache_dtype", CACHE_DTYPES)
        c.require("cache_budget", self.cache_budget > 0, "must be positive (GB)")
        if self.unfreeze_blocks is not None:
            c.require("unfreeze_blocks", self.unfreeze_blocks >= 0, "must be >= 0")
        c.run("augment", lambda: parse_augment(self.augment))
        return c.errors

    @property
    def size(self) -> int:
        """The input size in px, once resolved (see :meth:`resolved`)."""
        if self.img_size is None:
            raise ValueError("img_size is not resolved yet; call resolved() first")
        return int(self.img_size)

    def resolved(self) -> TrainConfig:
        """A copy with the backbone defaults filled in."""
        from edgetl import backbones

        bb = backbones.get(self.backbone)
        c = dataclasses.replace(self)
        if c.img_size is None:
            c.img_size = bb.default_size
        if bb.has_alpha and c.alpha is None:
            c.alpha = bb.default_alpha
        return c


@dataclass
class DistillConfig(Options):
    teacher: str = doc("an edgetl run directory or a Keras classifier file", "")
    kd_alpha: float = doc("weight of the hard-label loss; 1 - kd_alpha weighs the teacher's soft targets", 0.1)
    temperature: float = doc("softmax temperature T", 4.0)
    sweep: bool = doc("try kd_alpha in {0.1, 0.5} x T in {2, 4}; keep the best on validation", False)
    compare: bool = doc("also train the student alone (same budget and seed) for the report", True)
    unlabeled: str | None = doc("transfer set: a folder of unlabelled images the teacher labels", None)

    def problems(self) -> list[OptionError]:
        c = Checks(self)
        c.require("teacher", bool(self.teacher), "give an edgetl run directory or a .keras file")
        c.require("kd_alpha", 0.0 <= self.kd_alpha <= 1.0, "must be between 0 and 1")
        c.require("temperature", self.temperature > 0, "must be > 0")
        if self.unlabeled is not None:
            c.require("unlabeled", Path(self.unlabeled).expanduser().is_dir(),
                      "not a folder; give a folder of images (any depth)")
        return c.errors


@dataclass
class CalibrateOptions(Options):
    size: int = doc("training images sampled for int8 calibration (never val/test)", 200)
    seed: int = doc("sampling seed", 42)
    val_split: float = doc("for DATA without train/ and val/: the same split as training", 0.2)
    test_split: float | None = doc("the same test split as training (null: auto)", None)

    def problems(self) -> list[OptionError]:
        c = Checks(self)
        c.require("size", self.size >= 1, "must be at least 1")
        c.require("val_split", 0.0 < self.val_split < 1.0, "must be between 0 and 1 (exclusive)")
        return c.errors


@dataclass
class ExportOptions(Options):
    formats: tuple[str, ...] = doc(FORMATS_HELP, DEFAULT_FORMATS)
    quants: tuple[str, ...] = doc("comma list of " + ",".join(QUANTS), ("fp32", "int8"))
    io_type: str = doc("int8 TFLite input/output type: float32 | int8 | uint8", "float32")
    calibration: str | None = doc("folder of calibration images (null: the run's own calibration/ from "
                                   "`edgetl calibrate RUN`, else a training sample)", None)
    calib_size: int = doc("images sampled from the training split when no calibration folder exists", 200)
    calib_method: str = doc("ONNX int8 calibration: minmax | entropy | percentile", "minmax")
    onnx_format: str = doc("ONNX int8 graph form: qoperator | qdq", "qoperator")
    per_channel: bool = doc("ONNX int8 weights per channel (false: per tensor)", True)
    max_drop: float = doc("points of top-1 any artifact may lose on val (int8: before remedies); "
                                "above it, not written", DEFAULT_MAX_DROP)
    force: bool = doc("redo artifacts whose inputs did not change", False)
    seed: int = doc("seed of the calibration sample", 42)

    def problems(self) -> list[OptionError]:
        c = Checks(self)
        fm = c.run("formats", lambda: parse_list(self.formats, FORMATS, "formats", "--formats"))
        qs = c.run("quants", lambda: parse_list(self.quants, QUANTS, "quants", "--quants"))
        if fm is not None:
            self.formats = fm
        if qs is not None:
            self.quants = qs
        c.one_of("io_type", IO_TYPES)
        c.one_of("calib_method", CALIB_METHODS)
        c.one_of("onnx_format", ONNX_FORMATS)
        c.non_negative("max_drop")
        c.require("calib_size", self.calib_size >= 1, "must be >= 1")
        return c.errors


@dataclass
class VerifyOptions(Options):
    threads: int = doc("threads of every runtime (the target device's)", 2)
    max_drop: float = doc("gate: points of top-1 an artifact may lose against Keras", DEFAULT_MAX_DROP)
    min_agreement: float = doc("gate: top-1 agreement with Keras", 0.95)
    max_latency_ms: float | None = doc("gate: p50 latency at batch 1 (null: none)", None)
    runs: int = doc("timed runs after warm-up (>= 100)", 100)
    batch: int = doc("batch size for throughput", 8)
    data: str | None = doc("folder of labelled images (null: the run's held-out split)", None)
    out: str | None = doc("report folder (null: the run directory)", None)
    robustness: bool = doc("also score every artifact under common corruptions at 3 severities", False)
    latency_runtimes: tuple[str, ...] | None = doc("max_latency_ms gates only rows of these runtimes (e.g. [litert], "
                                                   "what edgetl search measures); null: every runtime", None)

    def problems(self) -> list[OptionError]:
        c = Checks(self)
        c.require("threads", self.threads >= 1, "must be >= 1")
        c.require("runs", self.runs >= 100, "at least 100 timed runs are needed for stable percentiles")
        c.require("batch", self.batch >= 1, "must be >= 1")
        c.require("min_agreement", 0.0 <= self.min_agreement <= 1.0, "must be between 0 and 1")
        c.non_negative("max_drop")
        c.require("max_latency_ms", self.max_latency_ms is None or self.max_latency_ms > 0, "must be positive")
        c.require("latency_runtimes", not self.latency_runtimes or set(self.latency_runtimes) <= set(formats.RUNTIMES),
                  f"each must be one of {', '.join(formats.RUNTIMES)}")
        return c.errors


@dataclass
class QatOptions(Options):
    epochs: int = doc("quantization-aware fine-tuning epochs", 3)
    lr: float = doc("learning rate of the fine-tuning", 1e-5)
    batch_size: int = doc("batch size of the fine-tuning", 32)
    io_type: str = doc("int8 TFLite input/output type: float32 | int8 | uint8", "float32")
    calibration: str | None = doc("calibration folder for the float parts (null: as for export)", None)

    def problems(self) -> list[OptionError]:
        c = Checks(self)
        c.non_negative("epochs")
        return c.errors


@dataclass
class BundleOptions(Options):
    formats: tuple[str, ...] = doc("comma list of the exported formats to include", DEFAULT_FORMATS)
    samples: int = doc("held-out sample images with reference outputs", 16)
    threads: int = doc("suggested threads in the bundle's README", 2)

    def problems(self) -> list[OptionError]:
        c = Checks(self)
        c.require("samples", self.samples >= 1, "must be >= 1")
        return c.errors


@dataclass
class PredictOptions(Options):
    top_k: int = doc("labels shown per image", 5)
    threads: int | None = doc("threads of the runtime (null: the runtime's default)", None)

    def problems(self) -> list[OptionError]:
        c = Checks(self)
        c.require("top_k", self.top_k >= 1, "must be >= 1")
        return c.errors


ADAPT_METHODS = ("adabn", "pseudo", "dann", "auto")


@dataclass
class AdaptOptions(Options):
    target: str = doc("folder of unlabelled target images (any depth): the images the device will see", "")
    method: str = doc("adabn | pseudo | dann | auto (all three, chosen without target labels)", "auto")
    target_labels: str | None = doc("folder of labelled target images (class folders), for evaluation only", None)
    out: str | None = doc("the adapted run directory (null: RUN-adapt beside the run)", None)
    seed: int = doc("seed of views, pseudo-label order and training", 42)
    epochs: int = doc("fine-tuning epochs (pseudo: per round)", 5)
    rounds: int = doc("pseudo-labelling rounds (labels refreshed each round)", 3)
    threshold: float = doc("pseudo-labelling: least confidence of a target prediction to be used", 0.8)
    max_fraction: float = doc("pseudo-labelling: most of the target set labelled in the last round", 0.8)
    dann_weight: float = doc("DANN: final weight of the reversed domain gradient", 0.3)
    lr: float = doc("Adam learning rate of the fine-tuning", 1e-4)
    unfreeze: int = doc("last N layers of the base trained by pseudo and dann (BatchNorm stays frozen)", 20)
    views: int = doc("cached views per image (1 plain + views-1 augmented)", 4)
    batch_size: int = doc("rows per step (source and target together)", 64)

    def problems(self) -> list[OptionError]:
        c = Checks(self)
        c.require("target", bool(self.target) and Path(self.target).expanduser().is_dir(),
                  "not a folder; give a folder of target images (any depth)")
        c.one_of("method", ADAPT_METHODS)
        if self.target_labels is not None:
            c.require("target_labels", Path(self.target_labels).expanduser().is_dir(),
                      "not a folder; give a folder with one sub-folder of images per class")
        c.positive("epochs", "rounds", "views", "batch_size", "lr")
        c.non_negative("unfreeze", "dann_weight")
        c.require("threshold", 0.0 <= self.threshold < 1.0, "must be in [0, 1)")
        c.require("max_fraction", 0.0 < self.max_fraction <= 1.0, "must be in (0, 1]")
        return c.errors


SEARCH_BACKBONES = "mobilenetv2,efficientnet_lite0,efficientnetb0"


def parse_numbers(v: str | list | tuple, name: str, kind: type = float) -> tuple:
    """'0.35,0.5' (or a list) -> a tuple of positive numbers of ``kind``."""
    items = [s.strip() for s in v.split(",")] if isinstance(v, str) else [str(s) for s in v]
    items = [s for s in items if s]
    try:
        out = tuple(dict.fromkeys(kind(float(s)) if kind is int else kind(s) for s in items))
    except ValueError:
        raise OptionError(name, ",".join(items), f"use a comma list of numbers, e.g. "
                          f"{'96,128,160' if kind is int else '0.35,1.0'}") from None
    if not out or any(x <= 0 for x in out) or (kind is int and any(float(s) != int(float(s)) for s in items)):
        raise OptionError(name, ",".join(items) or "(empty)", f"use a comma list of positive "
                          f"{'integers' if kind is int else 'numbers'}")
    return out


@dataclass
class SearchOptions(Options):
    data: str = doc("DATA/<class>/<images>, or DATA/train|val[|test]/<class>/", "")
    max_latency_ms: float | None = doc("budget: p50 latency at batch 1 in ms (this machine, or the device with --device)", None)
    max_size_kb: float | None = doc("budget: size of the exported model file in KiB (null: none)", None)
    max_ram_kb: float | None = doc("budget: memory the model takes to load and run, in KiB (null: none)", None)
    device: str | None = doc("device results JSON (bundle or browser check) to scale latencies to that device", None)
    budget_minutes: float | None = doc("stop training new candidates after this many minutes (null: no limit)", None)
    backbones: str = doc("comma list of backbones of the registry", SEARCH_BACKBONES)
    alphas: str = doc("MobileNetV2 widths to try", "0.35,0.5,0.75,1.0")
    sizes: str = doc("input sizes in px to try", "96,128,160,224")
    depths: str = doc("phase-2 depths in blocks to try on the survivors (0: head only)", "0,2")
    quants: str = doc("quantization modes to try: comma list of " + ",".join(QUANTS), "fp32,int8")
    formats: str = doc("formats to try: comma list of " + ",".join(FORMATS), formats.TFLITE.name)
    weights: str = doc("imagenet | none (random init, for tests)", "imagenet")
    eta: int = doc("successive halving: keep the best 1/eta of the head-only candidates", 3)
    recipe: str = doc("every candidate's recipe (train --recipe): auto (phase 1 >= min_steps updates; phase 2 picks its lr on val) | fixed", "auto")
    epochs_head: int = doc("phase-1 epochs of every candidate", 20)
    epochs_finetune: int = doc("phase-2 epochs of candidates with depth > 0", 10)
    views: int = doc("cached views per image (as train --views)", 4)
    batch_size: int = doc("training batch size", 32)
    seed: int = doc("seed of the split and of every candidate", 42)
    val_split: float = doc("validation fraction when DATA has no train/ and val/", 0.2)
    test_split: float | None = doc("test fraction (null: train's auto rule); test is read once, after the pick", None)
    threads: int = doc("threads of every runtime when timing", 2)
    runs: int = doc("timed runs per model", 50)
    out: str = doc("the search's folder: candidates, measurements, report", "search")

    def problems(self) -> list[OptionError]:
        from edgetl import backbones as B

        c = Checks(self)
        if self.max_latency_ms is None:
            c.errors.append(OptionError("max_latency_ms", "(missing)", "a latency budget is required, e.g. "
                                        "--max-latency-ms 5"))
        for name in ("max_latency_ms", "max_size_kb", "max_ram_kb", "budget_minutes"):
            v = getattr(self, name)
            if v is not None:
                c.require(name, isinstance(v, (int, float)) and v > 0 and v == v and v != float("inf"),
                          "must be a positive number")
        if self.device is not None:
            c.require("device", Path(self.device).expanduser().is_file(),
                      "no such file; give the results.json of a bundle or browser check run on the device")
        names = [s.strip() for s in self.backbones.split(",") if s.strip()]
        c.require("backbones", bool(names), "give a comma list of backbones (see `edgetl backbones`)")
        for n in names:
            c.run("backbones", lambda n=n: B.get(n))
        c.run("alphas", lambda: parse_numbers(self.alphas, "alphas"))
        c.run("sizes", lambda: parse_numbers(self.sizes, "sizes", int))
        depths = [s.strip() for s in self.depths.split(",") if s.strip()]
        c.require("depths", bool(depths) and all(s.isdigit() for s in depths),
                  "use a comma list of integers >= 0 (blocks unfrozen in phase 2; 0: head only)")
        c.run("quants", lambda: parse_list(self.quants, QUANTS, "quants"))
        c.run("formats", lambda: parse_list(self.formats, FORMATS, "formats"))
        c.require("weights", self.weights in ("imagenet", "none"), "use imagenet or none")
        c.require("eta", self.eta >= 2, "must be >= 2")
        c.one_of("recipe", RECIPES)
        c.positive("epochs_head", "views", "batch_size")
        c.non_negative("epochs_finetune")
        c.require("val_split", 0.0 < self.val_split < 1.0, "must be between 0 and 1 (exclusive)")
        if self.test_split is not None:
            c.require("test_split", 0.0 <= self.test_split < 1.0, "must be in [0, 1)")
        c.require("threads", self.threads >= 1, "must be >= 1")
        c.require("runs", self.runs >= 10, "at least 10 timed runs")
        return c.errors


# ------------------------------------------------------------ introspection ----
TYPE_OK = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
           "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
           "str": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool),
           "list": lambda v: isinstance(v, (list, tuple, str))}
TYPE_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false", "list": "a list"}


def field_types(cls: type, exclude: tuple[str, ...] = ()) -> dict[str, tuple[str, Any]]:
    """{field: (kind, default)} of an options dataclass; kind is int, float, str, bool or list, with '?' when None is allowed."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        if f.name in exclude:
            continue
        h = hints[f.name]
        args = [a for a in typing.get_args(h) if a is not type(None)]
        optional = type(None) in typing.get_args(h)
        base = typing.get_origin(h) or h
        if optional:
            base = typing.get_origin(args[0]) or args[0]
        kind = {int: "int", float: "float", str: "str", bool: "bool", tuple: "list", list: "list"}[base]
        default = f.default if f.default is not dataclasses.MISSING else None
        out[f.name] = (kind + ("?" if optional else ""), default)
    return out


def field_doc(cls: type, name: str) -> str:
    return next(f.metadata.get("doc", "") for f in fields(cls) if f.name == name)


def default(cls: type, name: str) -> Any:
    """A field's default, for the command line's options."""
    f = next(f for f in fields(cls) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else None

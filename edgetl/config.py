"""Training configuration: one dataclass, validated, serialisable to YAML."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from edgetl.errors import EdgetlError


@dataclass
class TrainConfig:
    data: str = ""
    backbone: str = "mobilenetv2"
    alpha: float | None = None          # width multiplier (MobileNetV2); None: the backbone's default
    img_size: int | None = None         # None: the backbone's default
    weights: str = "imagenet"           # imagenet | none | PATH
    resize: str = "crop"                # crop (central crop to the aspect ratio, then resize) | squash
    val_split: float = 0.2
    seed: int = 42
    batch_size: int = 32
    epochs_head: int = 20
    epochs_finetune: int = 10
    lr_head: float = 1e-3
    lr_finetune: float = 1e-5
    unfreeze: int = 20                  # last N layers (widened to whole blocks where the unit is a block)
    unfreeze_blocks: int | None = None  # or the last K blocks
    dropout: float = 0.2
    dense: int = 0                      # optional hidden Dense layer in the head (0: none)
    label_smoothing: float = 0.0
    l2: float = 0.0
    views: int = 4                      # cached views per image in phase 1 (1 plain + views-1 augmented)
    mixup: float = 0.0                  # Beta(a, a) mixup of augmented cached views; 0: off
    augment: str = "default"            # default | none | comma list of flip,rotate,zoom,translate,contrast
    class_weights: str = "none"         # none | auto
    patience: int = 5
    strict: bool = False
    strategy: str = "auto"              # auto | mirrored | multiworker
    out: str | None = None

    def validate(self) -> "TrainConfig":
        from edgetl import backbones
        from edgetl.tfdata import parse_augment

        bb = backbones.get(self.backbone)
        self.backbone = bb.name
        if self.alpha is not None and not bb.has_alpha:
            raise EdgetlError(f"--alpha {self.alpha}: width multipliers apply to mobilenetv2, not {bb.name}")
        if self.alpha is not None and not 0.0 < self.alpha <= 2.0:
            raise EdgetlError(f"--alpha {self.alpha}: must be in (0, 2]")
        if self.img_size is not None and self.img_size < bb.min_size:
            raise EdgetlError(f"--img-size {self.img_size}: {bb.name} needs at least {bb.min_size} px")
        _positive(self, "batch_size", "epochs_head", "views")
        _non_negative(self, "epochs_finetune", "unfreeze", "dense", "patience", "l2", "mixup")
        if not 0.0 <= self.dropout < 1.0:
            raise EdgetlError(f"--dropout {self.dropout}: must be in [0, 1)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise EdgetlError(f"--label-smoothing {self.label_smoothing}: must be in [0, 1)")
        if not 0.0 < self.val_split < 1.0:
            raise EdgetlError(f"--val-split {self.val_split}: must be between 0 and 1 (exclusive)")
        for k in ("lr_head", "lr_finetune"):
            if not getattr(self, k) > 0:
                raise EdgetlError(f"--{k.replace('_', '-')} {getattr(self, k)}: must be positive")
        if self.resize not in ("crop", "squash"):
            raise EdgetlError(f"--resize {self.resize}: use crop or squash")
        if self.class_weights not in ("none", "auto"):
            raise EdgetlError(f"--class-weights {self.class_weights}: use none or auto")
        if self.strategy not in ("auto", "mirrored", "multiworker"):
            raise EdgetlError(f"--strategy {self.strategy}: use auto, mirrored or multiworker")
        if self.unfreeze_blocks is not None and self.unfreeze_blocks < 0:
            raise EdgetlError(f"--unfreeze-blocks {self.unfreeze_blocks}: must be >= 0")
        parse_augment(self.augment)
        return self

    def resolved(self) -> "TrainConfig":
        """A copy with the backbone defaults filled in."""
        from edgetl import backbones

        bb = backbones.get(self.backbone)
        c = dataclasses.replace(self)
        if c.img_size is None:
            c.img_size = bb.default_size
        if bb.has_alpha and c.alpha is None:
            c.alpha = bb.default_alpha
        return c

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise EdgetlError(f"{where}: unknown key '{unknown[0]}'; allowed: {', '.join(sorted(names))}")
        return cls(**d)


def _positive(c, *names):
    for n in names:
        if not getattr(c, n) > 0:
            raise EdgetlError(f"--{n.replace('_', '-')} {getattr(c, n)}: must be positive")


def _non_negative(c, *names):
    for n in names:
        if getattr(c, n) < 0:
            raise EdgetlError(f"--{n.replace('_', '-')} {getattr(c, n)}: must be >= 0")

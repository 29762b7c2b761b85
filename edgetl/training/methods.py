"""Training methods: what changes between `train`, `distill` and `adapt` while the schedule, the
view cache, checkpoints and outputs stay the same.

A method says what a cached row's targets are, which extra sources the view cache extracts with
each view (the teacher's logits), the loss and metrics on those targets, which unlabelled images
join the training views, and which extra files the run gets. The registry of methods is
:data:`edgetl.training.registry.METHODS`."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgetl.config import TrainConfig
from edgetl.data.dataset import Dataset
from edgetl.types import Echo


class Method(Protocol):
    """One training method (see the module's docstring)."""
    kind: str

    def check_inputs(self, ds: Dataset, echo: Echo) -> None:
        """Checks of further inputs once the data is scanned, before anything is written."""

    def extra_paths(self) -> list[str]:
        """Unlabelled images added to every view: no hard label (zero label vector)."""

    def teacher_dim(self) -> int:
        """Width of the cache's teacher column (0: none)."""

    def teacher_key(self) -> str | None:
        """What the teacher column depends on, for the cache's key."""

    def view_size(self, size: int) -> int:
        """Side of the cached views before they are resized to the input ``size``."""

    def sources(self, part: str, view: int, images) -> dict | None:
        """Extra columns of a batch of views (0-255 float) of cache part ``part`` ("train" or
        "val"), view ``view``: {"teacher": logits} or None."""

    def extend_targets(self, y, teacher):
        """A batch's targets from its label vectors and teacher column (tf.data graph)."""

    def head_targets(self, soft: np.ndarray, teacher: Callable[[], np.ndarray]) -> np.ndarray:
        """The same in numpy, for all cached training rows (``teacher()`` reads the column)."""

    def loss(self, cfg: TrainConfig, n_classes: int) -> Any:
        """The Keras loss on those targets and the logits."""

    def metrics(self, n_classes: int) -> list:
        """The Keras metrics (one named "accuracy")."""

    def write_extra(self, run_dir: Path) -> None:
        """Extra files of the run, written with its config (chief only)."""


class TrainMethod:
    """Plain transfer learning: one-hot (or mixup-blended) labels, cross-entropy."""
    kind = "train"

    def check_inputs(self, ds: Dataset, echo: Echo) -> None:
        return None

    def extra_paths(self) -> list[str]:
        return []

    def teacher_dim(self) -> int:
        return 0

    def teacher_key(self) -> str | None:
        return None

    def view_size(self, size: int) -> int:
        return size

    def sources(self, part: str, view: int, images) -> dict | None:
        return None

    def extend_targets(self, y, teacher):
        return y

    def head_targets(self, soft: np.ndarray, teacher: Callable[[], np.ndarray]) -> np.ndarray:
        return soft

    def loss(self, cfg: TrainConfig, n_classes: int) -> Any:
        import keras

        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing)

    def metrics(self, n_classes: int) -> list:
        import keras

        return [keras.metrics.CategoricalAccuracy(name="accuracy")]

    def write_extra(self, run_dir: Path) -> None:
        return None

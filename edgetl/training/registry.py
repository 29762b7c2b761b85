"""The training methods, by name: each says what a row's targets are, which extra sources the
view cache extracts, the loss and metrics, extra images and extra outputs
(:class:`edgetl.training.methods.Method`)."""
from __future__ import annotations

from edgetl.training.adapter import AdaptMethod
from edgetl.training.distill import DistillMethod
from edgetl.training.methods import TrainMethod

METHODS: dict[str, type] = {"train": TrainMethod, "distill": DistillMethod, "adapt": AdaptMethod}

"""The fine-tuning recipe: how long each phase trains, how deep phase 2 reaches and how fast
each part of it learns.

- ``fixed``: phase 2 unfreezes ``--unfreeze`` layers (or ``--unfreeze-blocks``; default 20
  layers) at ``--lr-finetune`` (default 1e-5), for the epochs given.
- ``auto`` (the default): each phase runs at least a minimum number of optimizer steps (small
  data sets otherwise stop underfitted: 100 images at batch 32 are 4 steps an epoch), and
  phase 2 picks its depth and learning rate from a small grid by successive halving on the
  cached activations of the plain view of each image, scored on the validation split (never
  on test): every candidate trains RUNG_STEPS updates from the phase-1 model and is compared
  with that model image by image (:func:`pays`); when none beats it beyond the noise of the
  val set, phase 2 is skipped (it could not pay: the time goes to nothing); otherwise the better
  half continue to PROBE_STEPS and the best of them is fine-tuned. A depth or learning rate the
  user gave is kept: the grid searches only what was left open (explicit options win).

Both take ``--lr-decay`` (discriminative learning rates: each unit deeper from the top gets
the rate times the decay) and ``--accumulate`` (gradients averaged over N batches before an
update: a large effective batch on small memory)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

GRID_BLOCKS = (2, 5)              # units from the top (MobileNetV2: top conv + 1 or 4 inverted-residual blocks)
GRID_LRS = (1e-5, 1e-4)
RUNG_STEPS = 20                   # optimizer steps of every candidate in the search's first rung (plain views)
PROBE_STEPS = 40                  # ... of the better half, in total, in its second rung
PAYS_Z = 1.0                      # a candidate beats the phase-1 model when its val loss gain exceeds this many SEs
ACC_Z = 1.645                     # ... or its val accuracy gain this many (sign test, one-sided ~5%)
DEFAULT_UNFREEZE = 20             # fixed recipe, when neither --unfreeze nor --unfreeze-blocks is given
DEFAULT_LR = 1e-5                 # fixed recipe, when --lr-finetune is not given


@dataclass
class Candidate:
    """One phase-2 setting: the layers it trains and its base learning rate."""

    name: str
    blocks: int | None
    lr: float
    layers: list[Any]
    val_accuracy: float | None = None
    val_loss: float | None = None
    rung: int = 1

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("layers")
        d["trained_layers"] = len(self.layers)
        return d


def budget_epochs(epochs: int, rows: int, batch: int, min_steps: int, accumulate: int = 1) -> int:
    """Epochs so that the phase makes at least ``min_steps`` optimizer updates (never fewer
    than asked)."""
    steps = max(1, math.ceil(rows / batch) // max(1, accumulate))
    return max(epochs, math.ceil(min_steps / steps))


def given(cfg: Any) -> dict[str, Any]:
    """The phase-2 options the user set (None means "not set"): both recipes use them. With ``auto``
    they restrict its grid (``--unfreeze-blocks 3``: only depth 3, both learning rates;
    ``--lr-finetune 1e-4``: every depth at 1e-4), so an explicit option is never silently ignored."""
    return {k: getattr(cfg, k) for k in ("unfreeze", "unfreeze_blocks", "lr_finetune") if getattr(cfg, k) is not None}


def fixed_lr(cfg: Any) -> float:
    return DEFAULT_LR if cfg.lr_finetune is None else float(cfg.lr_finetune)


def candidates(base: Any, bb: Any, cfg: Any) -> list[Candidate]:
    """The phase-2 settings to try: one for ``fixed``; for ``auto`` the grid, restricted to the
    depth and learning rate the user gave (see :func:`given`)."""
    from edgetl.backbones import layers_to_unfreeze, units

    def fixed() -> Candidate:
        n = DEFAULT_UNFREEZE if cfg.unfreeze is None else cfg.unfreeze
        layers = layers_to_unfreeze(base, bb, n, cfg.unfreeze_blocks) if cfg.epochs_finetune else []
        return Candidate("fixed", cfg.unfreeze_blocks, fixed_lr(cfg), layers)

    if cfg.recipe == "fixed" or not cfg.epochs_finetune:
        return [fixed()]
    lrs = GRID_LRS if cfg.lr_finetune is None else (float(cfg.lr_finetune),)
    if cfg.unfreeze_blocks is not None:
        depths = [(f"last {cfg.unfreeze_blocks} units", cfg.unfreeze_blocks,
                   layers_to_unfreeze(base, bb, n_blocks=cfg.unfreeze_blocks))]
    elif cfg.unfreeze is not None:
        depths = [(f"last {cfg.unfreeze} layers", None, layers_to_unfreeze(base, bb, n_layers=cfg.unfreeze))]
    else:
        n_units = len(units(base, bb))
        depths = [(f"last {k} units", k, layers_to_unfreeze(base, bb, n_blocks=k)) for k in GRID_BLOCKS if k < n_units]
    out = [Candidate(f"{name} at {lr:g}", k, lr, layers) for name, k, layers in depths for lr in lrs]
    return out or [fixed()]


def choose(cands: list[Candidate]) -> Candidate:
    """Best validation accuracy, then lowest validation loss, then the shallower and slower."""
    scored = [c for c in cands if c.val_accuracy is not None]
    if not scored:
        return cands[0]
    return min(scored, key=lambda c: (-round(c.val_accuracy or 0.0, 6), c.val_loss if c.val_loss is not None
                                      else math.inf, c.blocks or 0, c.lr))


def pays(base_loss: Any, base_ok: Any, scored: list[tuple[Candidate, Any, Any]], z: float = PAYS_Z) -> dict[str, Any]:
    """Can phase 2 pay? Each candidate ``(candidate, per-image val loss, per-image correct)``
    against the phase-1 model on the same val images (paired). It beats phase 1 when its mean
    loss is lower by more than ``z`` standard errors of the per-image differences, or, at a loss
    no worse, when the images it gains outnumber those it loses by more than ``ACC_Z`` times the
    square root of the images they disagree on (a one-sided sign test near 5%: 3 gained and 0
    lost passes, 2 and 0 does not). ``skip`` when none does: every candidate ties
    with phase 1 within the noise of the val set, so a full phase 2 is not worth its time."""
    import numpy as np

    base_loss, base_ok = np.asarray(base_loss, np.float64), np.asarray(base_ok, bool)
    n = len(base_loss)
    rows = []
    for c, loss, ok in scored:
        d = np.asarray(loss, np.float64) - base_loss
        se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
        ok = np.asarray(ok, bool)
        gained, lost = int((ok & ~base_ok).sum()), int((~ok & base_ok).sum())
        on_loss = bool(d.mean() < -z * se)
        on_acc = bool(d.mean() <= 0 and gained - lost > ACC_Z * math.sqrt(gained + lost)) if gained + lost else False
        rows.append({"name": c.name, "loss_diff": round(float(d.mean()), 6), "loss_se": round(se, 6),
                     "gained": gained, "lost": lost, "beats": on_loss or on_acc})
    return {"skip": n > 1 and not any(r["beats"] for r in rows), "z": z, "n_val": n, "candidates": rows}


def lr_multipliers(base: Any, bb: Any, trained_layers: list[Any], decay: float) -> dict[str, float]:
    """{variable path: factor}: the top unit learns at the base rate, each unit deeper at
    ``decay`` times the one above it. Empty when decay is 1 (one rate for all)."""
    from edgetl.backbones import units

    if decay == 1.0:
        return {}
    keep = {id(layer) for layer in trained_layers}
    out: dict[str, float] = {}
    depth = 0
    for _, layers in reversed(units(base, bb)):
        mine = [layer for layer in layers if id(layer) in keep]
        if not mine:
            continue
        for layer in mine:
            for v in layer.trainable_weights:
                out[v.path] = decay ** depth
        depth += 1
    return out


def unit_rates(base: Any, bb: Any, trained_layers: list[Any], lr: float, decay: float) -> list[dict[str, Any]]:
    """The learning rate each trained unit gets, top unit first (what the run records):
    [{"unit", "lr", "variables"}], from the same factors the optimizer applies."""
    from edgetl.backbones import units

    mult = lr_multipliers(base, bb, trained_layers, decay)
    keep = {id(layer) for layer in trained_layers}
    out = []
    for name, layers in reversed(units(base, bb)):
        paths = [v.path for layer in layers if id(layer) in keep for v in layer.trainable_weights]
        if paths:
            out.append({"unit": name, "lr": lr * mult.get(paths[0], 1.0), "variables": len(paths)})
    return out


def optimizer(lr: float, multipliers: dict[str, float] | None = None, accumulate: int = 1,
              switchable: bool = False) -> Any:
    """Adam with per-variable learning-rate factors and optional gradient accumulation.

    ``switchable``: the factors are optimizer variables instead of constants, so one compiled
    (traced) training step serves several settings: ``switch(lr, factors)`` resets Adam's state
    and sets new factors, and a factor of 0 freezes a variable (Adam's step is lr × factor ×
    m̂ / (√v̂ + ε), so it stays exactly where it is). The auto recipe's search trains every
    candidate this way instead of recompiling the model for each."""
    import keras

    class LayerwiseAdam(keras.optimizers.Adam):
        """Adam whose update of each variable uses lr times that variable's factor."""

        def __init__(self, factors: dict[str, float], switchable: bool = False, **kw: Any):
            super().__init__(**kw)
            self.factors = dict(factors)  # by variable path
            self.switchable = switchable
            self._by_key: dict[Any, float] = {}
            self._switch: dict[Any, Any] = {}       # optimizer key -> factor variable
            self._switch_path: dict[str, Any] = {}  # variable path -> factor variable

        def build(self, variables: Any) -> None:
            super().build(variables)
            # the backend hands update_step its own variable objects: map them by the optimizer's key
            self._by_key = {self._var_key(v): self.factors.get(v.path, 1.0) for v in variables}
            if self.switchable:
                for i, v in enumerate(variables):
                    f = self.add_variable((), initializer="ones", name=f"lr_factor_{i}")
                    f.assign(self.factors.get(v.path, 1.0))
                    self._switch[self._var_key(v)] = f
                    self._switch_path[v.path] = f

        def switch(self, learning_rate: float, factors: dict[str, float]) -> None:
            """Start over (Adam's moments and step count at zero) at ``learning_rate`` with
            ``factors`` by variable path (1.0 where missing)."""
            for v in self.variables:
                v.assign(keras.ops.zeros(v.shape, v.dtype))
            self.learning_rate = learning_rate
            for path, f in self._switch_path.items():
                f.assign(factors.get(path, 1.0))

        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
            key = self._var_key(variable)
            if key in self._switch:
                learning_rate = learning_rate * self._switch[key]
            else:
                f = self._by_key.get(key, 1.0)
                learning_rate = learning_rate * f if f != 1.0 else learning_rate
            super().update_step(gradient, variable, learning_rate)

    kw: dict[str, Any] = {"learning_rate": lr}
    if accumulate > 1:
        kw["gradient_accumulation_steps"] = int(accumulate)
    return LayerwiseAdam(multipliers or {}, switchable=switchable, **kw)


def search_factors(base: Any, bb: Any, cand: Candidate, trained_layers: list[Any], decay: float) -> dict[str, float]:
    """A candidate's factors when the model trains ``trained_layers`` (the deepest candidate's,
    a superset of ``cand.layers``): its own layer-wise factors, 0 for the layers it leaves
    frozen, 1 (missing) for the rest (the head)."""
    mult = lr_multipliers(base, bb, cand.layers, decay)
    mine = {id(layer) for layer in cand.layers}
    out = {v.path: 0.0 for layer in trained_layers if id(layer) not in mine for v in layer.trainable_weights}
    for layer in cand.layers:
        for v in layer.trainable_weights:
            out[v.path] = mult.get(v.path, 1.0)
    return out

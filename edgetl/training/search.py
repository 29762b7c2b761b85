"""The auto recipe's phase-2 search: which candidate (depth, learning rate) phase 2 trains, chosen
on validation by successive halving on the cached activations (one worker) or a fixed number of
synchronised steps each (multi-worker), or no phase 2 when no candidate beats the phase-1 model
beyond the noise of the validation set. One compiled step serves the search and the final fit."""
from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from edgetl import artifacts
from edgetl.config import TrainConfig
from edgetl.training import recipe
from edgetl.training.cache import CutPlan
from edgetl.training.setup import Prepared
from edgetl.types import Echo


class RecipeSearch:
    """Chooses phase 2's candidate and compiles its model. ``log`` and ``timings`` are the run's
    recipe log and timings (this writes its entries into them)."""

    def __init__(self, cfg: TrainConfig, bb, base, cut: CutPlan, p: Prepared, cache, ckpt, loss, metrics,
                 row_targets, log: dict, timings: dict, echo: Echo):
        self.cfg, self.bb, self.base, self.cut, self.p, self.cache, self.ckpt = cfg, bb, base, cut, p, cache, ckpt
        self.loss, self.metrics, self.row_targets = loss, metrics, row_targets
        self.log, self.timings, self.echo = log, timings, echo
        self.opt: Any = None  # the switchable optimizer of the search's compiled step (see compile_search)

    @property
    def candidates(self) -> list:
        return self.cut.candidates

    def searched(self) -> bool:
        """Whether phase 2 trains through the search's switchable step (auto recipe, a grid, a cut)."""
        return self.cfg.recipe == "auto" and len(self.candidates) > 1 and self.cut.cut_tensor is not None

    def compile_search(self, model):
        """Compile ``model`` with the deepest candidate's layers trainable and a switchable
        optimizer (:func:`edgetl.training.recipe.optimizer`): one traced step for every candidate."""
        from edgetl.nets import model as M

        M.set_trainable(self.base, self.cut.deepest.layers)
        with self.p.strategy.scope():
            opt = recipe.optimizer(self.candidates[0].lr, accumulate=self.cfg.accumulate, switchable=True)
            model.compile(optimizer=opt, loss=self.loss(), metrics=self.metrics(),
                          steps_per_execution=steps_per_execution())
            opt.build(model.trainable_variables)
        return opt

    def factors(self, c):
        return recipe.search_factors(self.base, self.bb, c, self.cut.deepest.layers, self.cfg.lr_decay)

    def compile_chosen(self, model, chosen) -> int:
        """Compile ``model`` to train ``chosen``; returns how many of its layers have trainable weights."""
        from edgetl.nets import model as M

        cfg = self.cfg
        if self.searched():
            # the search's compiled step serves the final fit too (no second tracing): the deepest
            # candidate's layers stay trainable in the graph, those the chosen one leaves frozen at factor 0.
            # A resumed run that chose in an earlier process compiles the same step, so its optimizer
            # state has the same variables as the checkpoint's.
            if self.opt is None or model.optimizer is not self.opt:
                self.opt = self.compile_search(model)
            n = M.count_trainable(self.base, chosen.layers)
            self.opt.switch(chosen.lr, self.factors(chosen))
            return n
        n = M.set_trainable(self.base, chosen.layers)
        with self.p.strategy.scope():
            mult = recipe.lr_multipliers(self.base, self.bb, chosen.layers, cfg.lr_decay)
            model.compile(optimizer=recipe.optimizer(chosen.lr, mult, cfg.accumulate), loss=self.loss(),
                          metrics=self.metrics(), steps_per_execution=steps_per_execution())
        return n

    def choose(self, model, tr, va):
        """The phase-2 setting: the only one (fixed recipe), or the grid's best on validation.
        None: phase 2 cannot pay (see :func:`edgetl.training.recipe.pays`). The choice is kept in
        the checkpoints, so a resumed run does not search again.

        The search (one worker) is successive halving on the plain view of each image: every
        candidate trains ``RUNG_STEPS`` updates from the phase-1 model and is scored on val
        against that model, image by image; if none beats it beyond the noise of the val set,
        phase 2 is skipped. Otherwise the better half continue to ``PROBE_STEPS`` and the best
        of them is chosen. One compiled step serves the whole search and the final fit."""
        cands = self.candidates
        saved = self.ckpt / "recipe_choice.json"
        if len(cands) == 1:
            self.log["phase2"] = {"chosen": cands[0].record(), "grid": []}
            return cands[0]
        earlier = json.loads(saved.read_text()) if saved.exists() else None
        if earlier and earlier.get("skipped"):
            self.log["phase2"] = earlier
            self.echo("phase 2: skipped in an earlier run (no candidate beat the phase-1 model on val)")
            return None
        found = [c for c in cands if earlier and c.name == (earlier.get("chosen") or {}).get("name")]
        if earlier and found:
            self.log["phase2"] = earlier
            self.echo(f"phase 2: recipe chosen in an earlier run: {found[0].name}")
            return found[0]
        if self.cut.cut_tensor is None:  # on images a search costs whole trainings: use the middle setting
            chosen = cands[len(cands) // 2]
            self.log["phase2"] = {"chosen": chosen.record(), "grid": [], "note": "no search: no cached cut"}
            return chosen
        t0 = time.perf_counter()
        start = model.get_weights()
        r = self.cache.rows("train")
        n_plain = int((r.ok & (r.view == 0)).sum())
        # one compiled step for the whole grid: the deepest candidate's layers are trainable, and each
        # candidate sets its learning rate and per-variable factors (0 for the layers it leaves frozen)
        opt = self.compile_search(model)
        if self.p.num_workers > 1:
            chosen = self.in_step(model, opt, start, tr, va)
            skipped = None
        else:
            chosen, skipped = self.halving(model, opt, start, va, n_plain)
        model.set_weights(start)
        self.opt = opt
        self.timings["recipe_search_s"] = time.perf_counter() - t0
        log = {"chosen": chosen.record() if chosen else None, "grid": [c.record() for c in cands],
               "scored_on": "val", "probe_rows": n_plain, **(skipped or {})}
        self.log["phase2"] = log
        if self.p.is_chief:
            artifacts.write_json(saved, log)
        if chosen is None:
            self.echo(f"phase 2: skipped: no candidate beats the phase-1 model on val beyond its noise "
                      f"({self.timings['recipe_search_s']:.1f}s; --recipe fixed always runs phase 2)")
        else:
            self.echo(f"phase 2: auto recipe chose {chosen.name} ({self.timings['recipe_search_s']:.1f}s)")
        return chosen

    def in_step(self, model, opt, start, tr, va):
        """Multi-worker: every candidate, a fixed number of synchronised steps on each worker's
        own shards (the workers stay in step: no data-dependent early exit)."""
        cands = self.candidates
        self.echo(f"phase 2: auto recipe: {len(cands)} candidates, {recipe.PROBE_STEPS} steps each, scored on "
                  f"the validation split")
        for c in cands:
            model.set_weights(start)
            opt.switch(c.lr, self.factors(c))
            h = model.fit(tr[0], steps_per_epoch=recipe.PROBE_STEPS * max(1, self.cfg.accumulate),
                          validation_data=va[0], validation_steps=va[1], epochs=1, verbose=0, shuffle=False)
            c.val_accuracy = float(h.history["val_accuracy"][-1])
            c.val_loss = float(h.history["val_loss"][-1])
            self.echo(f"  {c.name:<28} val acc {c.val_accuracy:.4f}  val loss {c.val_loss:.4f}")
        return recipe.choose(cands)

    def halving(self, model, opt, start, va, n_plain):
        """(chosen or None, what the log records about a skip); see :meth:`choose`."""
        cands, cfg = self.candidates, self.cfg
        probe = self.cache.dataset("train", "acts", cfg.batch_size, self.row_targets, shuffle=True,
                                   seed=cfg.seed, drop_remainder=self.p.replicas > 1, view=0)
        e1 = recipe.budget_epochs(1, n_plain, cfg.batch_size, recipe.RUNG_STEPS, cfg.accumulate)
        e2 = recipe.budget_epochs(1, n_plain, cfg.batch_size, recipe.PROBE_STEPS, cfg.accumulate)
        vr = self.cache.rows("val")
        y = vr.y[vr.ok]

        def score():
            logits = model.predict(va[0], verbose=0)
            z = logits - logits.max(-1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            return -logp[np.arange(len(y)), y], (logits.argmax(-1) == y)

        base_loss, base_ok = score()
        self.echo(f"phase 2: auto recipe: {len(cands)} candidates, {e1} epoch(s) each on the cached activations "
                  f"of the {n_plain:,} plain views, scored on the {len(y)} val images against the phase-1 model "
                  f"(val acc {base_ok.mean():.4f}, loss {base_loss.mean():.4f})")
        states, losses = {}, {}
        for c in cands:
            model.set_weights(start)
            opt.switch(c.lr, self.factors(c))
            model.fit(probe, epochs=e1, verbose=0, shuffle=False)
            loss, ok = score()
            c.val_accuracy, c.val_loss = float(ok.mean()), float(loss.mean())
            losses[c.name] = (loss, ok)
            states[c.name] = (model.get_weights(), [v.numpy() for v in opt.variables])
            self.echo(f"  {c.name:<28} val acc {c.val_accuracy:.4f}  val loss {c.val_loss:.4f}")
        verdict = recipe.pays(base_loss, base_ok, [(c, *losses[c.name]) for c in cands])
        if verdict["skip"]:
            return None, {"skipped": True, "rung_epochs": [e1], "phase1_val": {
                "accuracy": float(base_ok.mean()), "loss": float(base_loss.mean())}, "verdict": verdict}
        keep = sorted(cands, key=lambda c: (c.val_loss, -(c.val_accuracy or 0)))[:max(1, len(cands) // 2)]
        if e2 > e1:
            self.echo(f"phase 2: auto recipe: {len(keep)} continue to {e2} epoch(s)")
            for c in keep:
                weights, opt_vars = states[c.name]
                model.set_weights(weights)
                opt.switch(c.lr, self.factors(c))
                for v, val in zip(opt.variables, opt_vars):
                    v.assign(val)
                model.fit(probe, epochs=e2, initial_epoch=e1, verbose=0, shuffle=False)
                loss, ok = score()
                c.val_accuracy, c.val_loss = float(ok.mean()), float(loss.mean())
                self.echo(f"  {c.name:<28} val acc {c.val_accuracy:.4f}  val loss {c.val_loss:.4f}")
        for c in cands:
            c.rung = 2 if c in keep and e2 > e1 else 1
        return recipe.choose(keep), {"rung_epochs": [e1, e2], "verdict": verdict}


def steps_per_execution() -> int:
    """Batches per call into phase 2's compiled step: 1. (8 was tried: no faster for phase 2's
    heavier step here, and batch callbacks then see one batch in 8.)"""
    return 1

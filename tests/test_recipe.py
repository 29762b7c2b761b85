"""The fine-tuning recipe: step budget, phase-2 grid chosen on validation, layer-wise
learning rates, gradient accumulation."""
import json

import numpy as np
import pytest

from edgetl.training import recipe

from common import TINY


def test_step_budget_raises_epochs_for_small_data_only():
    assert recipe.budget_epochs(20, rows=100, batch=32, min_steps=300) == 75     # 4 steps an epoch
    assert recipe.budget_epochs(20, rows=10_000, batch=32, min_steps=300) == 20  # already enough
    assert recipe.budget_epochs(20, rows=100, batch=32, min_steps=300, accumulate=2) == 150


@pytest.fixture(scope="module")
def small_base():
    from edgetl import backbones

    bb = backbones.get("mobilenetv2")
    return bb.build(32, 0.35, weights=None), bb


def test_lr_decay_gives_each_unit_its_own_rate(small_base):
    from edgetl.backbones import layers_to_unfreeze, units

    base, bb = small_base
    layers = layers_to_unfreeze(base, bb, n_blocks=3)
    mult = recipe.lr_multipliers(base, bb, layers, 0.5)
    top3 = [u for u in units(base, bb)][-3:]
    for depth, (_, ls) in enumerate(reversed(top3)):
        paths = [v.path for layer in ls for v in layer.trainable_weights]
        assert paths and all(mult[p] == 0.5 ** depth for p in paths), depth
    assert recipe.lr_multipliers(base, bb, layers, 1.0) == {}
    # the optimizer applies them: Adam's first step moves each variable by about lr x factor
    import keras

    a, b = keras.Variable(np.zeros(4, "float32"), name="a"), keras.Variable(np.zeros(4, "float32"), name="b")
    opt = recipe.optimizer(1e-2, {a.path: 1.0, b.path: 0.25})
    opt.apply([np.ones(4, "float32"), np.ones(4, "float32")], [a, b])
    step_a, step_b = -np.asarray(a)[0], -np.asarray(b)[0]
    assert step_a == pytest.approx(1e-2, rel=1e-3) and step_b == pytest.approx(0.25e-2, rel=1e-3)


def test_accumulate_4_at_batch_8_matches_batch_32():
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = (x @ rng.normal(size=(5, 1)) + 0.1).astype("float32")

    def fit(batch, accumulate):
        keras.utils.set_random_seed(1)
        m = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
        m.compile(optimizer=recipe.optimizer(0.05, accumulate=accumulate), loss="mse")
        m.fit(x, y, batch_size=batch, epochs=3, shuffle=False, verbose=0)
        return [np.asarray(w) for w in m.get_weights()]

    acc, big, small = fit(8, 4), fit(32, 1), fit(8, 1)
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(acc, big))
    assert not all(np.allclose(a, b, atol=1e-3) for a, b in zip(small, big))  # the toy tells them apart


@pytest.fixture
def compiled(monkeypatch):
    """The names of the Keras models compiled while the test runs (each compile traces anew)."""
    import keras

    names: list[str] = []
    real_compile = keras.Model.compile
    monkeypatch.setattr(keras.Model, "compile", lambda self, *a, **k: (names.append(self.name),
                                                                       real_compile(self, *a, **k))[1])
    return names


def test_auto_recipe_searches_on_val_and_records_its_choice(tiny_data, imagenet_mnv2_100, tmp_path, monkeypatch,
                                                            compiled):
    """A planted grid: the learning rates 1e-4 (sane) and 10 (wrecks the model within its trial),
    the wrecking one first in each depth. The search must score them apart on val and pick a
    sane one, and phase 2 must then train with the setting it picked."""
    from edgetl.config import TrainConfig
    from edgetl.training.train import train

    assert recipe.GRID_BLOCKS == (2, 5) and recipe.GRID_LRS == (1e-5, 1e-4)  # the real grid

    monkeypatch.setattr(recipe, "GRID_LRS", (10.0, 1e-4))
    cfg = TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), **{**TINY, "recipe": "auto", "min_steps": 40,
                                                                        "epochs_head": 2})
    lines = []
    res = train(cfg, echo=lines.append)
    # the search's compiled step served the final fine-tuning too: no second compile (and tracing) of phase 2
    assert compiled == ["head", "edgetl_classifier"], compiled
    m = json.loads((res.run_dir / "metrics.json").read_text())
    r = m["recipe"]
    assert r["recipe"] == "auto" and r["phase2"]["scored_on"] == "val"
    grid = r["phase2"]["grid"]
    assert [(g["blocks"], g["lr"]) for g in grid] == [(2, 10.0), (2, 1e-4), (5, 10.0), (5, 1e-4)]
    assert r["phase2"]["probe_rows"] == 39  # the plain view of each training image
    assert r["phase2"]["verdict"]["skip"] is False  # the sane rate beats phase 1: phase 2 runs
    sane = [g["val_accuracy"] for g in grid if g["lr"] == 1e-4]
    wrecked = [g["val_accuracy"] for g in grid if g["lr"] == 10.0]
    print("planted grid", [(g["name"], g["val_accuracy"], g["val_loss"]) for g in grid])
    # scored apart by at least 3 of the 9 val images (counted in images: 6/9 + 3/9 is above 1.0 in float32)
    assert round(min(sane) * 9) >= round(max(wrecked) * 9) + 3, grid
    chosen = r["phase2"]["chosen"]
    assert chosen["lr"] == 1e-4 and chosen["val_accuracy"] == max(sane), chosen
    # phase 2 trained with the chosen setting: its depth and rate, and it kept a working model
    assert any(f"phase 2: fine-tuning the {chosen['name']}:" in line and line.endswith("lr 0.0001") for line in lines)
    assert chosen["trained_layers"] == next(g["trained_layers"] for g in grid if g["name"] == chosen["name"])
    assert m["val_accuracy"] >= 8 / 9
    # 39 training images x 2 views at batch 16: 5 steps an epoch, so 2 epochs became 8 for 40 steps
    assert m["data"]["train_counts"] == [13, 13, 13] and r["phase1_epochs"] == 8
    assert any("auto recipe chose" in line for line in lines)


def test_switchable_optimizer_trains_each_setting_as_a_fresh_compile_would():
    """The auto recipe's search compiles once for the whole grid: a factor of 0 leaves a layer
    exactly where it was, switch() starts Adam over, and each setting ends where a model
    compiled with only its own layers trainable ends."""
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x @ rng.normal(size=(6, 2))).astype("float32")

    def build():
        keras.utils.set_random_seed(3)
        inp = keras.Input((6,))
        a = keras.layers.Dense(8, name="deep")(inp)
        return keras.Model(inp, keras.layers.Dense(2, name="top")(a))

    def fit(m):
        m.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)

    start = build().get_weights()
    settings = [(1e-2, []), (1e-3, ["deep"])]  # (lr, deep layers it trains; "top" always trains)
    expected = []
    for lr, deep in settings:
        m = build()
        m.get_layer("deep").trainable = bool(deep)
        m.compile(optimizer=recipe.optimizer(lr), loss="mse")
        fit(m)
        expected.append(m.get_weights())

    m = build()
    opt = recipe.optimizer(settings[0][0], switchable=True)
    m.compile(optimizer=opt, loss="mse")
    opt.build(m.trainable_variables)
    deep_paths = [v.path for v in m.get_layer("deep").trainable_weights]
    functions = set()
    for (lr, deep), want in zip(settings, expected):
        m.set_weights(start)
        opt.switch(lr, {p: (1.0 if deep else 0.0) for p in deep_paths})
        fit(m)
        functions.add(id(m.train_function))
        got = m.get_weights()
        if not deep:  # frozen by its factor: bit for bit where it started
            assert all(np.array_equal(g, s) for g, s in zip(got[:2], start[:2]))
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert len(functions) == 1  # one traced training step served both settings


@pytest.mark.parametrize("given,depths,lrs", [
    ({}, {2, 5}, {1e-5, 1e-4}),
    ({"unfreeze_blocks": 3}, {3}, {1e-5, 1e-4}),
    ({"lr_finetune": 3e-4}, {2, 5}, {3e-4}),
    ({"unfreeze_blocks": 1, "lr_finetune": 3e-4}, {1}, {3e-4}),
], ids=["nothing given", "depth given", "rate given", "both given"])
def test_auto_recipe_keeps_explicit_depth_and_rate(small_base, given, depths, lrs):
    """Explicit options win: with --recipe auto, a depth or learning rate the user gave restricts the grid
    instead of being ignored (they were: auto always searched 2/5 units x 1e-5/1e-4)."""
    from edgetl.backbones import layers_to_unfreeze
    from edgetl.config import TrainConfig

    base, bb = small_base
    cfg = TrainConfig(data="x", **given)
    cands = recipe.candidates(base, bb, cfg)
    assert {c.blocks for c in cands} == depths and {c.lr for c in cands} == lrs
    assert len(cands) == len(depths) * len(lrs)
    assert recipe.given(cfg) == given
    if "unfreeze_blocks" in given:
        assert all(c.layers == layers_to_unfreeze(base, bb, n_blocks=given["unfreeze_blocks"]) for c in cands)
    layers = recipe.candidates(base, bb, TrainConfig(data="x", unfreeze=7))
    assert {len(c.layers) for c in layers} == {len(layers_to_unfreeze(base, bb, n_layers=7))} and len(layers) == 2
    fixed = recipe.candidates(base, bb, TrainConfig(data="x", recipe="fixed"))  # defaults: 20 layers at 1e-5
    assert [(c.lr, len(c.layers)) for c in fixed] == [(1e-5, len(layers_to_unfreeze(base, bb, n_layers=20)))]


def test_auto_run_uses_and_records_the_options_given(tiny_data, imagenet_mnv2_100, tmp_path):
    """`edgetl train --lr-finetune 3e-4 --unfreeze-blocks 1` (default recipe auto): phase 2 trains the last unit at
    3e-4, says so, and metrics.json records the options as used."""
    from click.testing import CliRunner

    from edgetl.cli import main

    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", str(tiny_data), "--alpha", "1.0", "--img-size", "32", "--views", "2",
                                  "--batch-size", "16", "--epochs-head", "2", "--epochs-finetune", "1",
                                  "--min-steps", "10", "--seed", "1", "--lr-finetune", "3e-4",
                                  "--unfreeze-blocks", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "phase 2: auto recipe: --unfreeze-blocks 1 and --lr-finetune 0.0003 as given" in r.output
    rec = json.loads((out / "metrics.json").read_text())["recipe"]
    assert rec["recipe"] == "auto" and rec["given"] == {"unfreeze_blocks": 1, "lr_finetune": 3e-4}
    chosen = rec["phase2"]["chosen"]
    assert (chosen["blocks"], chosen["lr"], chosen["name"]) == (1, 3e-4, "last 1 units at 0.0003")


@pytest.mark.parametrize("args,line", [
    (["--recipe", "fixed", "--min-steps", "50"],
     "error: --min-steps 50: is ignored by --recipe fixed, which runs the epochs as given; drop it or use "
     "--recipe auto"),
    (["--unfreeze", "30", "--unfreeze-blocks", "2"],
     "error: --unfreeze 30: --unfreeze-blocks 2 is given too; give one of them"),
    (["--resume", "--epochs-head", "5"],
     "error: --epochs-head: --resume continues the run with the options saved in its config.yaml, so "
     "--epochs-head would be ignored; drop it (or start a new run with another --out)"),
], ids=["min-steps with fixed", "unfreeze and blocks", "options with resume"])
def test_an_option_another_overrides_is_refused_in_one_line(tiny_data, tmp_path, args, line):
    from click.testing import CliRunner

    from edgetl.cli import main

    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(out), *args])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [line]
    assert not out.exists()


def test_pays_needs_a_gain_beyond_the_noise_of_val():
    """The auto recipe's early exit: phase 2 is skipped when every candidate ties with the
    phase-1 model on val (paired, image by image), and runs when one beats it on loss by more
    than a standard error, or gains images at a loss no worse (3 gained, 0 lost: yes; 2: no)."""
    rng = np.random.default_rng(0)
    n = 150
    base = rng.uniform(0.05, 1.0, n)
    ok = rng.uniform(size=n) < 0.85
    cand = recipe.Candidate("c", 2, 1e-4, [])

    def verdict(loss, cok):
        return recipe.pays(base, ok, [(cand, loss, cok)])

    tie = base + rng.normal(0, 0.05, n)  # noise around phase 1: mean change far below its SE
    tie -= tie.mean() - base.mean()
    assert verdict(tie, ok)["skip"]
    assert not verdict(base - 0.05, ok)["skip"]  # every image a little better: far beyond the SE
    wrong = np.flatnonzero(~ok)
    for gained, skip in ((2, True), (3, False)):
        cok = ok.copy()
        cok[wrong[:gained]] = True
        v = verdict(base, cok)
        assert v["skip"] is skip and v["candidates"][0]["gained"] == gained, v
    cok = ok.copy()
    cok[wrong[:5]] = True
    assert verdict(base + 0.01, cok)["skip"]  # images gained at a worse loss: not a gain
    # any one candidate that beats phase 1 is enough
    v = recipe.pays(base, ok, [(cand, tie, ok), (recipe.Candidate("d", 5, 1e-4, []), base - 0.05, ok)])
    assert not v["skip"] and [c["beats"] for c in v["candidates"]] == [False, True]


def test_auto_recipe_skips_phase_2_that_cannot_pay_and_resume_keeps_the_verdict(tiny_data, imagenet_mnv2_100,
                                                                                tmp_path, monkeypatch, compiled):
    """A grid whose learning rates cannot move the model (1e-12): every candidate ties with phase 1, so
    phase 2 is skipped (no fine-tuning fit, phase 1 kept, the verdict recorded), and the search compiled
    one model for itself, nothing more."""

    from edgetl.config import TrainConfig
    from edgetl.training.train import train

    monkeypatch.setattr(recipe, "GRID_LRS", (1e-12, 2e-12))
    cfg = TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), **{**TINY, "recipe": "auto", "min_steps": 20,
                                                                        "epochs_head": 2})
    lines = []
    res = train(cfg, echo=lines.append)
    m = json.loads((res.run_dir / "metrics.json").read_text())
    p2 = m["recipe"]["phase2"]
    assert p2["skipped"] is True and p2["chosen"] is None and p2["verdict"]["skip"] is True
    assert all(not c["beats"] for c in p2["verdict"]["candidates"]) and len(p2["grid"]) == 4
    assert m["selected_phase"] == "phase1" and m["phase2"] is None
    assert json.loads((res.run_dir / "history.json").read_text())["phase2"] == []
    assert any(line.startswith("phase 2: skipped: no candidate beats the phase-1 model on val") for line in lines)
    assert not any("phase 2: fine-tuning" in line or line.startswith("phase 2 epoch") for line in lines)
    assert any("skipped: no candidate beat phase 1 on val" in line for line in lines)  # the summary table
    assert compiled == ["head", "edgetl_classifier"], compiled

"""The training package's shape: every registered training method builds, trains a tiny run and
writes a run directory; no training class sets an attribute first outside ``__init__`` (the
schedule's state is explicit: each step's result is declared where the object is made)."""
import ast
import json

import pytest

from edgetl.config import AdaptOptions, DistillConfig, TrainConfig
from edgetl.training.registry import METHODS

from common import ROOT, TINY, quiet

TRAINING = ROOT / "edgetl" / "training"
FAST = {**TINY, "weights": "none", "epochs_head": 2, "epochs_finetune": 1}


def _self_attrs(fn: ast.FunctionDef) -> set[str]:
    """Attributes of ``self`` that ``fn`` assigns (plain, annotated, augmented, tuple targets)."""
    out = set()
    for node in ast.walk(fn):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for t in targets:
            for e in ast.walk(t):
                if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "self" \
                        and isinstance(e.ctx, ast.Store):
                    out.add(e.attr)
    return out


def attributes_set_outside_init(source: str) -> list[str]:
    """``Class.method: self.attr`` for every attribute a method other than ``__init__`` assigns
    that neither the class's ``__init__`` nor a base class's (in the same source) declares."""
    classes = {n.name: n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef)}

    def declared(name: str) -> set[str]:
        c = classes.get(name)
        if c is None:
            return set()
        got = {t.id for n in c.body if isinstance(n, (ast.Assign, ast.AnnAssign))
               for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
        for f in c.body:
            if isinstance(f, ast.FunctionDef) and f.name == "__init__":
                got |= _self_attrs(f)
        for b in c.bases:
            if isinstance(b, ast.Name):
                got |= declared(b.id)
        return got

    bad = []
    for name, c in classes.items():
        ok = declared(name)
        for f in c.body:
            if isinstance(f, ast.FunctionDef) and f.name != "__init__":
                bad += [f"{name}.{f.name}: self.{a}" for a in sorted(_self_attrs(f) - ok)]
    return bad


# attributes a base class outside the package declares: Keras' optimizer's learning rate (a property)
OUTSIDE = ["LayerwiseAdam.switch: self.learning_rate"]


def test_no_training_class_sets_an_attribute_first_outside_init():
    source = "\n".join(p.read_text() for p in sorted(TRAINING.glob("*.py")))  # bases may live in another module
    assert attributes_set_outside_init(source) == OUTSIDE


def test_the_scan_finds_an_attribute_set_along_the_way():
    src = """
class A:
    def __init__(self):
        self.a = 1
    def step(self):
        self.a, self.b = 2, 3
class B(A):
    def more(self):
        self.a += 1
        self.c: int = 4
"""
    assert attributes_set_outside_init(src) == ["A.step: self.b", "B.more: self.c"]


def _train(name, tiny_data, tiny_run, tmp_path):
    from edgetl.training.train import Trainer

    out = tmp_path / name
    r = Trainer(TrainConfig(data=str(tiny_data), out=str(out), **FAST), echo=quiet, method=METHODS[name]()).run()
    return out, r.metrics


def _distill(name, tiny_data, tiny_run, tmp_path):
    from edgetl.training.train import Trainer

    out = tmp_path / name
    method = METHODS[name](DistillConfig(str(tiny_run.run_dir)))
    r = Trainer(TrainConfig(data=str(tiny_data), out=str(out), **FAST), echo=quiet, method=method).run()
    assert (out / "distill_config.json").exists() and method.teacher.calls > 0
    return out, r.metrics


def _adapt(name, tiny_data, tiny_run, tmp_path):
    from edgetl.training.adapt import adapt

    from synth import make_dataset

    target = make_dataset(tmp_path / "target", per_class=4, seed=7)
    out = tmp_path / name
    rep = adapt(tiny_run.run_dir, AdaptOptions(target=str(target), out=str(out), method="pseudo", epochs=1,
                                               rounds=1, seed=1), echo=quiet)
    assert (out / "adapt.json").exists() and rep["chosen"] == "pseudo"
    return out, json.loads((out / "metrics.json").read_text())


RUNS = {"train": _train, "distill": _distill, "adapt": _adapt}


def test_every_registered_method_has_a_run_test():
    assert sorted(RUNS) == sorted(METHODS)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_builds_trains_and_writes_a_run(name, tiny_data, tiny_run, tmp_path):
    m = METHODS[name].__new__(METHODS[name])
    assert m.kind == name
    out, metrics = RUNS[name](name, tiny_data, tiny_run, tmp_path)
    assert (out / "model.keras").exists() and (out / "manifest.json").exists()
    assert (out / "labels.txt").read_text().split() == ["blue", "green", "red"]
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and not (out / "checkpoints").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["train"]["kind"] == name

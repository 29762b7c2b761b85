"""Knowledge distillation: a large teacher makes the compact student better.

The student trains with the same two-phase schedule as `edgetl train`; its
loss on logits, with alpha = kd_alpha and T = temperature, is

    alpha * CE(y, student) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The teacher runs once per training image and cached view (and once over the
validation images); its logits are stored with the cached views and reused by
every epoch of both phases. The run directory is an ordinary run.

A transfer set (``unlabeled``: a folder of images without labels) gets the same
views; the teacher labels them and their rows carry only the distillation term
(Hinton et al.'s transfer set). Only the distilled student can learn from it."""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import artifacts, rundir
from edgetl.config import DistillConfig, TrainConfig
from edgetl.data.dataset import Dataset
from edgetl.errors import EdgetlError
from edgetl.training.methods import TrainMethod
from edgetl.training.train import Trainer
from edgetl.types import Echo

__all__ = ["DistillConfig", "DistillMethod", "Distiller", "Teacher", "distill", "kd_loss_value", "make_loss"]

SWEEP_GRID = [(0.1, 2.0), (0.1, 4.0), (0.5, 2.0), (0.5, 4.0)]


def kd_loss_value(y_onehot, student_logits, teacher_logits, alpha: float, temperature: float) -> np.ndarray:
    """The loss per example, in numpy (the reference the Keras loss is tested against)."""
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    ce = -(y_onehot * log_softmax(student_logits)).sum(-1)
    T = temperature
    pt = np.exp(log_softmax(teacher_logits / T))
    kl = (pt * (log_softmax(teacher_logits / T) - log_softmax(student_logits / T))).sum(-1)
    return alpha * ce + (1 - alpha) * T * T * kl


def make_loss(n_classes: int, alpha: float, temperature: float):
    """Keras loss on y_true = [one-hot labels | teacher logits] and the student's logits."""
    import keras
    from keras import ops

    T = float(temperature)

    @keras.saving.register_keras_serializable(package="edgetl")
    class DistillationLoss(keras.losses.Loss):
        def __init__(self, name="distillation", **kw):
            super().__init__(name=name, **kw)

        def call(self, y_true, y_pred):
            y, t = y_true[:, :n_classes], y_true[:, n_classes:]
            ce = -ops.sum(y * ops.log_softmax(y_pred, axis=-1), axis=-1)
            log_ps = ops.log_softmax(y_pred / T, axis=-1)
            log_pt = ops.log_softmax(t / T, axis=-1)
            kl = ops.sum(ops.exp(log_pt) * (log_pt - log_ps), axis=-1)
            return alpha * ce + (1.0 - alpha) * (T * T) * kl

    return DistillationLoss()


class Teacher:
    """An edgetl run or any Keras classifier file, as a logits function."""

    def __init__(self, source, echo=print):

        import edgetl.nets.layers  # noqa: F401

        p = Path(source)
        from edgetl.nets.model import load_keras

        p = Path(source)
        if p.is_dir():
            model_path = rundir.open_run(p).model_path  # a finished run only
        else:
            model_path = p
        if not model_path.exists():
            raise EdgetlError(f"{source}: no teacher model; give an edgetl run directory or a .keras file")
        self.model = load_keras(model_path)
        self.path = model_path
        self.labels = rundir.labels_near(model_path)
        shape = self.model.inputs[0].shape
        self.size = (int(shape[1]), int(shape[2]))
        self.n_classes = int(self.model.outputs[0].shape[-1])
        last = self.model.layers[-1]
        act = getattr(getattr(last, "activation", None), "__name__", "")
        self.outputs_probs = act == "softmax" or last.__class__.__name__ == "Softmax"
        if self.outputs_probs:
            echo("teacher outputs probabilities: converting to logits as log(clip(p, 1e-7, 1))")
        self.calls = 0
        import tensorflow as tf

        self._fn = tf.function(lambda x: self.model(tf.image.resize(x, self.size), training=False),
                               input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])

    def check_classes(self, classes: list[str]) -> None:
        if self.n_classes != len(classes):
            raise EdgetlError(f"{self.path}: the teacher has {self.n_classes} classes, the data {len(classes)} "
                              f"({', '.join(classes)}); teacher and student must share their classes")
        if self.labels is not None and self.labels != classes:
            raise EdgetlError(f"{self.path}: teacher classes {self.labels} differ from the data's {classes} "
                              f"(names or order); train the teacher on the same class folders")

    def check_leak(self, held_paths, echo) -> int:
        """Warn when the teacher (an edgetl run) trained on images the student is scored on
        (its validation or test split), compared by content: a copy under another name counts."""
        from edgetl.data.dataset import same_images

        split = self.path.parent / rundir.SPLIT
        if not split.exists():
            return 0
        seen = [r["file"] for r in rundir.read_json(split).get("train", [])]
        n = len({f for f, _ in same_images(held_paths, seen)})
        if n:
            echo(f"warning: the teacher trained on {n} of the {len(held_paths)} images the student is scored on "
                 f"(same content); its accuracy and the distilled student's are optimistic: train the teacher "
                 f"without them (the same data split and seed for both)")
        return n

    def logits(self, images) -> np.ndarray:
        self.calls += 1
        out = self._fn(images).numpy().astype(np.float32)
        if self.outputs_probs:
            out = np.log(np.clip(out, 1e-7, 1.0))
        return out


class DistillMethod(TrainMethod):
    """Knowledge distillation : targets are [labels | teacher
    logits], the teacher runs once per image and cached view, a transfer set joins as extra paths."""
    kind = "distill"

    def __init__(self, dcfg: DistillConfig, teacher=None, echo: Echo = print):
        self.dcfg = dcfg
        self._teacher = teacher
        self.echo = echo
        self.unlabeled: list[str] = []

    @property
    def teacher(self):
        if self._teacher is None:
            self._teacher = Teacher(self.dcfg.teacher, self.echo)
        return self._teacher

    def check_inputs(self, ds: Dataset, echo: Echo) -> None:
        self.teacher.check_classes(ds.classes)
        self.teacher.check_leak(ds.val.paths + (ds.test.paths if ds.test is not None else []), echo)
        self.unlabeled = self._transfer_set(ds, echo)

    def _transfer_set(self, ds: Dataset, echo: Echo) -> list[str]:
        from edgetl.errors import EdgetlError

        if self.dcfg.unlabeled is None:
            return []
        from edgetl.data.dataset import readable_images, same_images

        files = [str(p) for p in readable_images(self.dcfg.unlabeled)]
        if not files:
            raise EdgetlError(f"--unlabeled {self.dcfg.unlabeled}: no readable images in it")
        test = ds.test.paths if ds.test is not None else []
        clash = same_images(files, ds.val.paths + test)
        if clash:
            f, v = clash[0]
            raise EdgetlError(f"--unlabeled {self.dcfg.unlabeled}: {len(clash)} image(s) are validation or test images "
                              f"(e.g. {f} = {v}); the student would be scored on images it learned from; "
                              f"remove them from the transfer set")
        echo(f"transfer set: {len(files)} unlabelled images from {self.dcfg.unlabeled}, labelled by the teacher")
        return files

    def extra_paths(self) -> list[str]:
        return self.unlabeled

    def teacher_dim(self) -> int:
        return self.teacher.n_classes

    def teacher_key(self) -> str | None:
        from edgetl.artifacts import sha256_file

        return f"{self.teacher.path}:{sha256_file(self.teacher.path)}"

    def view_size(self, size: int) -> int:
        return max(size, *self.teacher.size)

    def sources(self, part: str, view: int, images) -> dict | None:
        return {"teacher": self.teacher.logits(images)}

    def extend_targets(self, y, teacher):
        import tensorflow as tf

        return tf.concat([y, teacher], 1)

    def head_targets(self, soft: np.ndarray, teacher: Callable[[], np.ndarray]) -> np.ndarray:
        return np.concatenate([soft, teacher()], 1)

    def loss(self, cfg: TrainConfig, n_classes: int) -> Any:
        return make_loss(n_classes, self.dcfg.kd_alpha, self.dcfg.temperature)

    def metrics(self, n_classes: int) -> list:
        import keras
        from keras import ops

        k = n_classes

        def accuracy(y_true, y_pred):
            # against the label; for transfer-set rows (no label), against the teacher's top class
            y, t = y_true[:, :k], y_true[:, k:]
            target = ops.where(ops.sum(y, -1) > 0, ops.argmax(y, -1), ops.argmax(t, -1))
            return ops.cast(ops.equal(target, ops.argmax(y_pred, -1)), "float32")

        return [keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")]

    def write_extra(self, run_dir: Path) -> None:
        artifacts.write_json(run_dir / rundir.DISTILL_CONFIG, dataclasses.asdict(self.dcfg))



class Distiller(Trainer):
    """The two-phase schedule with the distillation method (:class:`DistillMethod`): the same
    Trainer, no hooks overridden."""

    def __init__(self, config: TrainConfig, dcfg: DistillConfig, resume=False, callbacks=(), echo=print,
                 root="models", teacher: Teacher | None = None, force: bool = False):
        self.distill_method = DistillMethod(dcfg, teacher, echo)
        super().__init__(config, resume=resume, callbacks=callbacks, echo=echo, root=root, force=force,
                         method=self.distill_method)
        dcfg.validate()

    @property
    def unlabeled(self) -> list[str]:
        """The transfer set's images (once the inputs were checked)."""
        return self.distill_method.unlabeled


def _latency_ms(model_path) -> float:
    from edgetl.runtime.runners import KerasRunner
    from edgetl.runtime.timing import latency

    r = KerasRunner(model_path)
    x = np.zeros((1, *r.input_size, 3), np.float32)
    return latency(r, x, runs=100, warmup=10)["p50_ms"]


def _row(name, path, probs, labels, params, split) -> dict:
    from edgetl.stats import accuracy_interval

    m = Path(path) / rundir.MODEL if Path(path).is_dir() else Path(path)
    correct = int((probs.argmax(-1) == labels).sum())
    return {"model": name, "path": str(m), "split": split, "n": int(len(labels)), "accuracy": correct / len(labels),
            "ci95": accuracy_interval(correct, len(labels)), "params": params,
            "size_bytes": m.stat().st_size, "keras_p50_ms": _latency_ms(m)}


def _student_probs(model_path, paths, resize: str) -> np.ndarray:
    from edgetl.data.tfdata import decode_batches
    from edgetl.runtime.runners import KerasRunner

    r = KerasRunner(model_path)
    return np.concatenate([r.predict(b.images) for b in decode_batches(paths, r.input_size[0], resize, 64)])


def distill(config: TrainConfig, dcfg: DistillConfig, resume: bool = False, echo: Echo = print,
            callbacks: tuple = (), force: bool = False) -> dict[str, Any]:
    """Distil ``dcfg.teacher`` into the student of ``config``; returns the side-by-side report.
    The run directory is locked from training to the last report; ``force`` retrains a
    finished run in place (as ``train --force``)."""
    from edgetl.data.tfdata import decode_batches

    dcfg.validate()
    results: list[dict] = []
    t0 = time.perf_counter()
    teacher = Teacher(dcfg.teacher, echo)
    swept = dcfg.sweep  # dcfg is replaced by the chosen settings below
    if dcfg.sweep:
        best: tuple[float, float, float] | None = None
        base_out = Path(config.out) if config.out else None
        for a, T in SWEEP_GRID:
            sub = dataclasses.replace(config, out=str((base_out or Path("models/distill")) / "sweep" / f"a{a}-T{T:g}"))
            d = Distiller(sub, dataclasses.replace(dcfg, kd_alpha=a, temperature=T, sweep=False), echo=echo,
                          teacher=teacher, force=force)
            r = d.run()
            results.append({"kd_alpha": a, "temperature": T, "val_accuracy": r.metrics["val_accuracy"],
                            "run": str(r.run_dir)})
            echo(f"sweep: kd_alpha {a}, T {T:g}: val accuracy {r.metrics['val_accuracy']:.4f}")
            if best is None or r.metrics["val_accuracy"] > best[0]:
                best = (r.metrics["val_accuracy"], a, T)
        assert best is not None
        _, a, T = best
        echo(f"sweep: best kd_alpha {a}, temperature {T:g}")
        dcfg = dataclasses.replace(dcfg, kd_alpha=a, temperature=T, sweep=False)
    d = Distiller(config, dcfg, resume=resume, echo=echo, teacher=teacher, callbacks=callbacks, force=force)
    with rundir.writing(d.run_dir, "edgetl distill", echo=echo) if d.chief else contextlib.nullcontext():
        res = d.run()
        run_dir = res.run_dir
        ds = d.ds
        # every model is scored on the same held-out images: test when there is one, else val
        split_name, split = ("test", ds.test) if ds.test is not None and len(ds.test) else ("val", ds.val)
        y = np.asarray(split.labels)
        t_logits = np.concatenate([teacher.logits(b.images.astype(np.float32))  # at the teacher's own size
                                   for b in decode_batches(split.paths, teacher.size[0], d.cfg.resize, 64)])
        t_probs = np.exp(t_logits - t_logits.max(-1, keepdims=True))
        t_probs /= t_probs.sum(-1, keepdims=True)
        rows = [_row("teacher", teacher.path, t_probs, y, sum(int(np.prod(w.shape)) for w in teacher.model.weights),
                     split_name)]
        probs = {}
        if dcfg.compare:
            alone_dir = run_dir / rundir.STUDENT_ALONE
            shutil.rmtree(alone_dir, ignore_errors=True)
            alone = Trainer(dataclasses.replace(d.cfg, out=str(alone_dir)), echo=lambda *a: None).run()
            probs["alone"] = _student_probs(alone_dir / rundir.MODEL, split.paths, d.cfg.resize)
            rows.append(_row("student alone", alone_dir, probs["alone"], y, alone.metrics["params"]["total"], split_name))
        probs["distilled"] = _student_probs(run_dir / rundir.MODEL, split.paths, d.cfg.resize)
        rows.append(_row("distilled student", run_dir, probs["distilled"], y, res.metrics["params"]["total"], split_name))
        report: dict[str, Any] = {"teacher": str(dcfg.teacher), "kd_alpha": dcfg.kd_alpha, "temperature": dcfg.temperature,
                  "seed": d.cfg.seed, "transfer_set": {"folder": dcfg.unlabeled, "images": len(d.unlabeled)},
                  "split": split_name, "n": int(len(y)),
                  "split_note": ("test: held out, never used for any choice" if split_name == "test" else
                                 "val: also used for model selection (early stopping, phase choice), so optimistic"),
                  "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
        if swept:
            report["sweep"] = {"chosen_on": "val", "grid": results}
        if dcfg.compare:
            from edgetl.stats import paired_drop

            pd = paired_drop(y, probs["alone"].argmax(-1), probs["distilled"].argmax(-1))  # drop of distilled vs alone
            report["gain_points"] = round(-pd.drop_points, 2)
            report["gain_ci95_points"] = [round(-pd.ci95_points[1], 2), round(-pd.ci95_points[0], 2)]
            report["gain_mcnemar_p"] = pd.p_value
            report["discordant"] = {"only_distilled_right": pd.c, "only_alone_right": pd.b}
        artifacts.write_json(run_dir / rundir.DISTILL, report)
        metrics = rundir.read_json(run_dir / rundir.METRICS)
        metrics["distillation"] = report
        artifacts.write_json(run_dir / rundir.METRICS, metrics)
        man = rundir.read_manifest(run_dir)
        man_files = man.get("train", {}).get("files", {})
        man_files.update(artifacts.file_hashes(run_dir, (rundir.METRICS, rundir.DISTILL)))
        rundir.update_manifest(run_dir, "train", {**man.get("train", {}), "files": man_files})
        echo("")
        echo(f"scored on the {split_name} split ({len(y)} images; {report['split_note']})")
        echo(f"{'model':<20}{split_name + ' acc':>9} {'95% CI':>15}{'params':>12}{'size KiB':>10}{'keras p50 ms':>14}")
        for row in rows:
            ci = f"[{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]"
            echo(f"{row['model']:<20}{row['accuracy']:>9.4f} {ci:>15}{row['params']:>12,}"
                 f"{row['size_bytes'] / 1024:>10.0f}{row['keras_p50_ms']:>14.2f}")
        if dcfg.compare:
            extra = f", transfer set of {len(d.unlabeled)} images" if d.unlabeled else ""
            lo, hi = report["gain_ci95_points"]
            echo(f"distillation bought {report['gain_points']:+.2f} points over the student alone, 95% CI "
                 f"[{lo:+.2f}, {hi:+.2f}], McNemar p={report['gain_mcnemar_p']:.3g} on {len(y)} {split_name} images "
                 f"(kd_alpha {dcfg.kd_alpha}, T {dcfg.temperature:g}, seed {d.cfg.seed}{extra})")
        return report

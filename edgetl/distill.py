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

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl import artifacts
from edgetl.config import TrainConfig
from edgetl.errors import EdgetlError
from edgetl.train import Trainer

SWEEP_GRID = [(0.1, 2.0), (0.1, 4.0), (0.5, 2.0), (0.5, 4.0)]


@dataclass
class DistillConfig:
    teacher: str
    kd_alpha: float = 0.1
    temperature: float = 4.0
    sweep: bool = False
    compare: bool = True      # also train the student alone (same budget and seed) for the report
    unlabeled: str | None = None  # transfer set: a folder of unlabelled images the teacher labels

    def validate(self) -> "DistillConfig":
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise EdgetlError(f"--kd-alpha {self.kd_alpha}: must be between 0 and 1")
        if not self.temperature > 0:
            raise EdgetlError(f"--temperature {self.temperature}: must be > 0")
        if self.unlabeled is not None and not Path(self.unlabeled).is_dir():
            raise EdgetlError(f"--unlabeled {self.unlabeled}: not a folder; give a folder of images (any depth)")
        return self


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
        from edgetl.runners import load_keras

        p = Path(source)
        if p.is_dir():
            model_path, labels_path = p / "model.keras", p / "labels.txt"
        else:
            model_path, labels_path = p, p.parent / "labels.txt"
        if not model_path.exists():
            raise EdgetlError(f"{source}: no teacher model; give an edgetl run directory or a .keras file")
        self.model = load_keras(model_path)
        self.path = model_path
        self.labels = ([l for l in labels_path.read_text().splitlines() if l.strip()]
                       if labels_path.exists() else None)
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

    def check_leak(self, val_paths, echo) -> int:
        """Warn when the teacher (an edgetl run) trained on the student's validation images."""
        split = self.path.parent / "split.json"
        if not split.exists():
            return 0
        seen = {r["file"] for r in json.loads(split.read_text()).get("train", [])}
        n = sum(str(Path(p).resolve()) in seen for p in val_paths)
        if n:
            echo(f"warning: the teacher trained on {n} of the student's {len(val_paths)} validation images; "
                 f"its accuracy below is optimistic (use the same data split and seed for both)")
        return n

    def logits(self, images) -> np.ndarray:
        self.calls += 1
        out = self._fn(images).numpy().astype(np.float32)
        if self.outputs_probs:
            out = np.log(np.clip(out, 1e-7, 1.0))
        return out


class Distiller(Trainer):
    kind = "distill"

    def __init__(self, config: TrainConfig, dcfg: DistillConfig, resume=False, callbacks=(), echo=print,
                 root="models", teacher: Teacher | None = None):
        super().__init__(config, resume=resume, callbacks=callbacks, echo=echo, root=root)
        self.dcfg = dcfg.validate()
        self.teacher = teacher
        self._t_views: dict[int, list] = {}
        self.unlabeled: list[str] = []

    def check_inputs(self) -> None:
        if self.teacher is None:
            self.teacher = Teacher(self.dcfg.teacher, self.echo)
        self.teacher.check_classes(self.ds.classes)
        self.teacher.check_leak(self.ds.val.paths, self.echo)
        self.unlabeled = self._transfer_set()

    def prepare(self) -> None:
        super().prepare()
        artifacts.write_json(self.run_dir / "distill_config.json", dataclasses.asdict(self.dcfg))

    def _transfer_set(self) -> list[str]:
        if self.dcfg.unlabeled is None:
            return []
        from edgetl.data import readable_images, same_images

        files = [str(p) for p in readable_images(self.dcfg.unlabeled)]
        if not files:
            raise EdgetlError(f"--unlabeled {self.dcfg.unlabeled}: no readable images in it")
        clash = same_images(files, self.ds.val.paths)
        if clash:
            f, v = clash[0]
            raise EdgetlError(f"--unlabeled {self.dcfg.unlabeled}: {len(clash)} image(s) are validation images "
                              f"(e.g. {f} = {v}); the student would be scored on images it learned from; "
                              f"remove them from the transfer set")
        self.echo(f"transfer set: {len(files)} unlabelled images from {self.dcfg.unlabeled}, labelled by the teacher")
        return files

    def n_extra(self) -> int:
        return len(self.unlabeled)

    def extra_images(self, size: int):
        from edgetl.tfdata import load_array

        return load_array(self.unlabeled, size, self.cfg.resize) if self.unlabeled else None

    hard_labels_only = False

    def loss(self):
        if self.hard_labels_only:
            return super().loss()
        return make_loss(len(self.ds.classes), self.dcfg.kd_alpha, self.dcfg.temperature)

    def metrics(self):
        import keras
        from keras import ops

        if self.hard_labels_only:
            return super().metrics()
        k = len(self.ds.classes)

        def accuracy(y_true, y_pred):
            # against the label; for transfer-set rows (no label), against the teacher's top class
            y, t = y_true[:, :k], y_true[:, k:]
            target = ops.where(ops.sum(y, -1) > 0, ops.argmax(y, -1), ops.argmax(t, -1))
            return ops.cast(ops.equal(target, ops.argmax(y_pred, -1)), "float32")

        return [keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")]

    def view_size(self) -> int:
        return max(self.cfg.img_size, *self.teacher.size)

    def view_hook(self, view: int, images) -> None:
        self._t_views.setdefault(view, []).append(self.teacher.logits(images))

    def view_extras(self) -> dict:
        from edgetl.tfdata import image_dataset

        import tensorflow as tf

        t = np.concatenate([np.concatenate(self._t_views[v]) for v in sorted(self._t_views)])
        val = image_dataset(self.ds.val.paths, self.ds.val.labels, self.view_size(), self.cfg.resize)
        tv = np.concatenate([self.teacher.logits(tf.cast(x, tf.float32)) for x, _ in val.batch(64)])
        self.t_logits, self.t_val = t, tv
        return {"teacher_logits": t, "teacher_val_logits": tv}

    def load_view_extras(self, z) -> None:
        self.t_logits, self.t_val = z["teacher_logits"], z["teacher_val_logits"]

    def head_targets(self):
        return np.concatenate([self.view_labels(), self.t_logits], 1)

    def val_targets(self, labels):
        return np.concatenate([np.eye(len(self.ds.classes), dtype=np.float32)[labels], self.t_val], 1)

    def phase2(self):
        # without cached activations phase 2 runs on fresh images, which have no teacher logits
        self.hard_labels_only = bool(self.cfg.epochs_finetune and self.cut_tensor is None)
        if self.hard_labels_only:
            self.echo("phase 2: cached activations unavailable; fine-tuning on hard labels only")
        return super().phase2()


def _latency_ms(model_path) -> float:
    from edgetl.runners import KerasRunner
    from edgetl.timing import latency

    r = KerasRunner(model_path)
    x = np.zeros((1, *r.input_size, 3), np.float32)
    return latency(r, x, runs=100, warmup=10)["p50_ms"]


def _row(name, run_dir, accuracy, params) -> dict:
    m = Path(run_dir) / "model.keras" if Path(run_dir).is_dir() else Path(run_dir)
    return {"model": name, "path": str(m), "accuracy": accuracy, "params": params,
            "size_bytes": m.stat().st_size, "keras_p50_ms": _latency_ms(m)}


def distill(config: TrainConfig, dcfg: DistillConfig, resume: bool = False, echo=print, callbacks=()) -> dict:
    """Distil ``dcfg.teacher`` into the student of ``config``; returns the side-by-side report."""
    from edgetl.evaluate import classification_metrics
    from edgetl.tfdata import load_array

    dcfg.validate()
    t0 = time.perf_counter()
    teacher = Teacher(dcfg.teacher, echo)
    if dcfg.sweep:
        best = None
        base_out = Path(config.out) if config.out else None
        results = []
        for a, T in SWEEP_GRID:
            sub = dataclasses.replace(config, out=str((base_out or Path("models/distill")) / "sweep" / f"a{a}-T{T:g}"))
            d = Distiller(sub, dataclasses.replace(dcfg, kd_alpha=a, temperature=T, sweep=False), echo=echo,
                          teacher=teacher)
            r = d.run()
            results.append({"kd_alpha": a, "temperature": T, "val_accuracy": r.metrics["val_accuracy"],
                            "run": str(r.run_dir)})
            echo(f"sweep: kd_alpha {a}, T {T:g}: val accuracy {r.metrics['val_accuracy']:.4f}")
            if best is None or r.metrics["val_accuracy"] > best[0]:
                best = (r.metrics["val_accuracy"], a, T)
        _, a, T = best
        echo(f"sweep: best kd_alpha {a}, temperature {T:g}")
        dcfg = dataclasses.replace(dcfg, kd_alpha=a, temperature=T, sweep=False)
    d = Distiller(config, dcfg, resume=resume, echo=echo, teacher=teacher, callbacks=callbacks)
    res = d.run()
    run_dir = res.run_dir
    ds = d.ds
    x_val = load_array(ds.val.paths, d.cfg.img_size, d.cfg.resize)
    t_probs = np.exp(teacher.logits(x_val.astype(np.float32)))
    t_probs /= t_probs.sum(-1, keepdims=True)
    t_acc = classification_metrics(ds.val.labels, t_probs, ds.classes)["accuracy"]
    rows = [_row("teacher", teacher.path, t_acc, sum(int(np.prod(w.shape)) for w in teacher.model.weights))]
    if dcfg.compare:
        alone_dir = run_dir / "student_alone"
        shutil.rmtree(alone_dir, ignore_errors=True)
        alone = Trainer(dataclasses.replace(d.cfg, out=str(alone_dir)), echo=lambda *a: None).run()
        rows.append(_row("student alone", alone_dir, alone.metrics["val_accuracy"], alone.metrics["params"]["total"]))
    rows.append(_row("distilled student", run_dir, res.metrics["val_accuracy"], res.metrics["params"]["total"]))
    report = {"teacher": str(dcfg.teacher), "kd_alpha": dcfg.kd_alpha, "temperature": dcfg.temperature,
              "seed": d.cfg.seed, "transfer_set": {"folder": dcfg.unlabeled, "images": len(d.unlabeled)},
              "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
    if dcfg.compare:
        report["gain_points"] = round(100 * (rows[-1]["accuracy"] - rows[-2]["accuracy"]), 2)
    artifacts.write_json(run_dir / "distill.json", report)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["distillation"] = report
    artifacts.write_json(run_dir / "metrics.json", metrics)
    man = artifacts.read_manifest(run_dir)
    man_files = man.get("train", {}).get("files", {})
    man_files["metrics.json"] = artifacts.sha256_file(run_dir / "metrics.json")
    man_files["distill.json"] = artifacts.sha256_file(run_dir / "distill.json")
    artifacts.update_manifest(run_dir, "train", {**man.get("train", {}), "files": man_files})
    echo("")
    echo(f"{'model':<20}{'val acc':>9}{'params':>12}{'size KiB':>10}{'keras p50 ms':>14}")
    for r in rows:
        echo(f"{r['model']:<20}{r['accuracy']:>9.4f}{r['params']:>12,}{r['size_bytes'] / 1024:>10.0f}"
             f"{r['keras_p50_ms']:>14.2f}")
    if dcfg.compare:
        extra = f", transfer set of {len(d.unlabeled)} images" if d.unlabeled else ""
        echo(f"distillation bought {report['gain_points']:+.2f} points over the student alone "
             f"(kd_alpha {dcfg.kd_alpha}, T {dcfg.temperature:g}, seed {d.cfg.seed}{extra})")
    return report

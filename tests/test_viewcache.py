"""The on-disk view cache: shards, resume after a kill, float16 storage, the disk budget,
distillation and mixup read back through the streamed cache."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.config import TrainConfig
from edgetl.data import viewcache as V
from edgetl.training.methods import TrainMethod
from edgetl.training.train import Trainer

from common import TINY, quiet


@pytest.mark.parametrize("memory_mb", ["64", "0"], ids=["from memory", "streamed from disk"])
def test_shards_round_trip_and_stream(tmp_path, monkeypatch, memory_mb):
    """Columns written shard by shard come back in order through numpy (memory-mapped) and
    through the tf.data pipeline, held in memory (small parts) or streamed from the shards;
    a shard without its marker counts as missing."""
    import tensorflow as tf

    monkeypatch.setenv("EDGETL_CACHE_IN_MEMORY_MB", memory_mb)

    layout = V.Layout((2, 2, 3), 4, teacher_dim=2, dtype="float16")
    shards = V.plan(n_train=10, n_extra=3, n_val=5, views=2, shard_rows=4)
    assert [(s.part, s.view, s.source, s.lo, s.hi) for s in shards][:5] == [
        ("train", 0, "train", 0, 4), ("train", 0, "train", 4, 8), ("train", 0, "train", 8, 10),
        ("train", 0, "extra", 0, 3), ("train", 1, "train", 0, 4)]
    assert sum(s.rows for s in shards if s.part == "train") == 26 and sum(s.rows for s in shards if s.part == "val") == 5
    c = V.ViewCache.open(tmp_path / "c", layout, shards, "k1", echo=quiet)
    rng = np.random.default_rng(0)
    for s in shards:
        idx = np.arange(s.lo, s.hi)
        c.write(s, {"feats": rng.normal(size=(s.rows, 4)), "acts": rng.normal(size=(s.rows, 2, 2, 3)),
                    "teacher": np.full((s.rows, 2), s.index, np.float32),
                    "meta": V.meta_rows(idx, s.view, idx % 2, labeled=np.full(s.rows, s.source != "extra"))})
    assert c.missing() == [] and c.written == len(shards)
    rows = c.rows("train")
    assert len(rows) == 26 and rows.labeled.sum() == 20 and list(rows.view[:13]) == [0] * 13
    feats = c.column("train", "feats")
    assert feats.dtype == np.float16 and feats.shape == (26, 4)

    def targets(meta, teacher):
        return (tf.concat([meta[:, :1], teacher], 1),)

    got = np.concatenate([x.numpy() for x, _ in c.dataset("train", "feats", 5, targets)])
    np.testing.assert_array_equal(got, feats.astype(np.float32))  # in order when not shuffled
    assert c.in_memory(c.part("train"), "feats") is (memory_mb != "0")
    shuf = np.concatenate([x.numpy() for x, _ in c.dataset("train", "feats", 5, targets, shuffle=True, buffer=8)])
    assert not np.array_equal(shuf, got) and np.array_equal(np.sort(shuf, 0), np.sort(got, 0))
    # an epoch's order is drawn from (seed, epoch) alone: the same in a new pipeline, another for another epoch
    epoch = tf.Variable(3, dtype=tf.int64)

    def read(e):
        epoch.assign(e)
        ds = c.dataset("train", "feats", 5, targets, shuffle=True, buffer=8, seed=7, epoch=epoch)
        return np.concatenate([x.numpy() for x, _ in ds])

    assert np.array_equal(read(3), read(3)) and not np.array_equal(read(3), read(4))
    assert np.array_equal(np.sort(read(4), 0), np.sort(got, 0))
    # per_epoch: an epoch reads the first rows of its order only (phase 2: one image's worth across the views)
    part = c.dataset("train", "feats", 5, targets, shuffle=True, buffer=8, seed=7, epoch=epoch, per_epoch=13)
    rows13 = np.concatenate([x.numpy() for x, _ in part])
    assert len(rows13) == 13 and len(list(part)) == 3 and len({r.tobytes() for r in rows13}) == 13
    # a shard whose marker is gone (a kill between its files and its marker) is redone
    c.marker(shards[2]).unlink()
    again = V.ViewCache.open(tmp_path / "c", layout, shards, "k1", echo=quiet)
    assert again.missing() == [shards[2]] and again.reused == len(shards) - 1
    # other inputs: the stale cache is cleared
    said = []
    other = V.ViewCache.open(tmp_path / "c", layout, shards, "k2", echo=said.append)
    assert other.reused == 0 and "made for other inputs" in said[0]


KILL = textwrap.dedent("""
    import os, signal, sys
    import edgetl.data.viewcache as V
    V.shard_rows_for = lambda layout, target_bytes=0, batch=64: 16
    real = V.ViewCache.write
    def write(self, shard, cols):
        n = real(self, shard, cols)
        if self.written == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # killed during extraction, after 3 shards
        return n
    V.ViewCache.write = write
    from edgetl.config import TrainConfig
    from edgetl.training.train import Trainer
    Trainer(TrainConfig(**{cfg!r}), echo=print).run()
""")


def test_killed_extraction_resumes_at_the_first_missing_shard(tiny_data, imagenet_mnv2_100, keras_home, tmp_path,
                                                              monkeypatch):
    """A real SIGKILL during extraction; --resume reuses the 3 finished shards, extracts only
    the others, and ends with exactly the weights of an uninterrupted run (each shard is
    seeded on its own, so a redone shard is the shard it would have been)."""
    kw = {**TINY, "epochs_head": 3, "epochs_finetune": 1}
    out = tmp_path / "run"
    cfg = dict(data=str(tiny_data), out=str(out), **kw)
    env = {**os.environ, "KERAS_HOME": str(keras_home)}
    p = subprocess.run([sys.executable, "-c", KILL.format(cfg=cfg)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == -9, p.stderr[-2000:]
    cache = out / "checkpoints" / "view-cache"
    assert len(list(cache.rglob("*.done"))) == 3 and not (out / "manifest.json").exists()

    monkeypatch.setattr(V, "shard_rows_for", lambda layout, target_bytes=0, batch=64: 16)
    seen = []

    class Counting(TrainMethod):
        def sources(self, part, view, images):
            if part == "train":
                seen.append(int(images.shape[0]))

    lines = []
    t = Trainer(TrainConfig(out=str(out)), resume=True, echo=lines.append, method=Counting())
    r = t.run()
    n = len(t.ds.train)  # 39 training images, 2 views, shards of 16: 3 + 3 shards, + 1 val shard
    st = r.metrics["view_cache"]
    assert st["shards"] == 7 and st["reused"] == 3 and st["written"] == 4
    assert any("reusing 3 of 7 finished shards" in line for line in lines)
    # the 3 finished shards were view 0's (16 + 16 + 7 images): only view 1 (and val) ran again
    assert sum(seen) == 2 * n - n
    assert (out / "manifest.json").exists() and not (out / "checkpoints").exists()

    fresh = Trainer(TrainConfig(data=str(tiny_data), out=str(tmp_path / "fresh"), **kw), echo=quiet).run()
    assert all(np.array_equal(a, b) for a, b in zip(r.model.get_weights(), fresh.model.get_weights()))


def test_too_small_disk_budget_is_a_one_line_error(tiny_data, tmp_path):
    out = tmp_path / "r"
    r = CliRunner().invoke(main, ["train", str(tiny_data), "--alpha", "1.0", "--img-size", "32", "--weights", "none",
                                  "--cache-budget", "0.0001", "--out", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error: --cache-budget 0.0001: the view cache needs") and "MB" in line
    assert "raise --cache-budget to at least" in line
    assert not out.exists()  # refused before anything was written


def test_cache_dir_holds_the_shards_while_training_and_is_cleared_after(tiny_data, imagenet_mnv2_100, tmp_path):
    """--cache-dir DIR: the shards go to DIR/<run>.view-cache (not into the run), and a
    finished run removes them."""
    seen = {}

    class Peek(Trainer):
        def phase2(self):
            cache_dir = self.view_plan.cache_dir
            seen["dir"] = cache_dir
            seen["npy"] = sorted(p.name for p in cache_dir.rglob("*.npy"))
            return super().phase2()

    cache_root, out = tmp_path / "fast-disk", tmp_path / "run"
    r = Peek(TrainConfig(data=str(tiny_data), out=str(out), cache_dir=str(cache_root), **TINY), echo=quiet).run()
    assert seen["dir"] == cache_root / "run.view-cache"
    assert seen["npy"] and not (out / "checkpoints" / "view-cache").exists()
    assert r.metrics["view_cache"]["dir"] == str(cache_root / "run.view-cache")
    assert not (cache_root / "run.view-cache").exists() and (out / "manifest.json").exists()


@pytest.mark.parametrize("budget", ["0", "-1"])
def test_cache_options_are_validated(tiny_data, tmp_path, budget):
    r = CliRunner().invoke(main, ["train", str(tiny_data), "--cache-budget", budget, "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "--cache-budget" in r.output and "must be positive" in r.output


def test_distillation_with_mixup_streams_from_several_shards(tiny_run, tiny_data, tmp_path, monkeypatch):
    """Distillation and mixup on the streamed cache, spread over several shards: every row
    carries the teacher's logits of the exact (blended) image it was made from, in row
    order, and the student learns."""
    from edgetl.training.distill import DistillConfig, DistillMethod, Teacher

    monkeypatch.setattr(V, "shard_rows_for", lambda layout, target_bytes=0, batch=64: 16)
    teacher = Teacher(tiny_run.run_dir, quiet)
    hooked = []

    class Hooked(DistillMethod):
        def sources(self, part, view, images):
            out = super().sources(part, view, images)
            if part == "train":
                hooked.append(out["teacher"])
            return out

    class Snapshot(Trainer):
        def write_outputs(self, *a):
            self.snap = (self.cache.rows("train"), self.head_targets(), np.asarray(self.cache.column("train", "teacher")),
                         self.cache_stats)
            super().write_outputs(*a)

    cfg = TrainConfig(data=str(tiny_data), out=str(tmp_path / "d"), mixup=0.4, **{**TINY, "epochs_finetune": 2})
    d = Snapshot(cfg, echo=quiet, method=Hooked(DistillConfig(str(tiny_run.run_dir), kd_alpha=0.5), teacher))
    r = d.run()
    rows, targets, t_logits, stats = d.snap
    n, k = len(d.ds.train), 3
    assert stats["shards"] == 7 and len(rows) == 2 * n
    np.testing.assert_array_equal(t_logits, np.concatenate(hooked))  # the teacher saw each row's image
    mixed = (rows.view == 1) & (rows.lam < 0.99) & (rows.y != rows.y2)
    assert mixed.any()
    np.testing.assert_allclose(targets[mixed, rows.y[mixed]], rows.lam[mixed], rtol=1e-6)
    assert np.all(targets[:, k:] == t_logits)
    assert r.metrics["val_accuracy"] >= 0.55 and r.metrics["phase2"] is not None


@pytest.mark.slow
def test_float16_cache_within_half_a_point_of_float32(imagenet_mnv2_100, tmp_path):
    """A small real task (scikit-learn's handwritten digits, 10 classes, 800 validation
    scans): the float16 cache (half the disk) trains to within 0.5 points of float32."""
    import shutil

    from edgetl.demo_data import write_digits
    from edgetl.training.train import train

    src, full = write_digits(tmp_path / "all", size=32), tmp_path / "digits"
    rng = np.random.default_rng(0)
    for c in sorted(p.name for p in src.iterdir() if p.is_dir()):  # 80 val scans per class, the rest train
        files = sorted((src / c).glob("*.png"))
        for k, i in enumerate(rng.permutation(len(files))):
            dest = full / ("val" if k < 80 else "train") / c
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files[i], dest / files[i].name)
    acc, disk = {}, {}
    for dtype in ("float32", "float16"):
        cfg = TrainConfig(data=str(full), out=str(tmp_path / dtype), alpha=1.0, img_size=32, views=2, epochs_head=15,
                          epochs_finetune=3, augment="rotate,zoom,translate,contrast", recipe="fixed", unfreeze=40,
                          lr_finetune=1e-4, seed=3, cache_dtype=dtype)
        m = train(cfg, echo=quiet).metrics
        acc[dtype], disk[dtype] = m["final"]["accuracy"], m["view_cache"]["disk_bytes"]
    print(json.dumps({"accuracy": acc, "disk_bytes": disk}))
    assert m["final"]["n"] == 800
    assert abs(acc["float16"] - acc["float32"]) <= 0.005, acc
    assert disk["float16"] < 0.6 * disk["float32"]


def _doctor(root, **changes):
    kf = root / V.KEY_FILE
    rec = json.loads(kf.read_text())
    for k, v in changes.items():
        if v is None:
            rec.pop(k, None)
        else:
            rec[k] = v
    kf.write_text(json.dumps(rec))


@pytest.mark.parametrize("changes,why", [
    ({"format": None}, "was written by an older edgetl (no format version); this edgetl reads format"),
    ({"format": V.FORMAT_VERSION - 1}, f"was written by format {V.FORMAT_VERSION - 1}; this edgetl reads format"),
    ({"meta": ["image", "view", "y", "lam", "ok"]}, "holds rows laid out as ['image', 'view', 'y', 'lam', 'ok']"),
    ({"layout": {"act_shape": None, "n_features": 4}}, "holds rows of another layout"),
], ids=["no version", "older version", "other meta columns", "other layout"])
def test_a_cache_of_another_format_or_layout_is_not_reused(tmp_path, changes, why):
    """The same key but a cache.json of another format version / META / layout: cleared, all shards missing,
    one line saying why."""
    layout = V.Layout(None, 4)
    shards = V.plan(n_train=8, n_extra=0, n_val=4, views=1, shard_rows=4)
    c = V.ViewCache.open(tmp_path / "c", layout, shards, "k", echo=quiet)
    for s in shards:
        c.write(s, {"feats": np.zeros((s.rows, 4)), "meta": V.meta_rows(np.arange(s.lo, s.hi), 0, np.zeros(s.rows))})
    assert V.ViewCache.open(tmp_path / "c", layout, shards, "k", echo=quiet).reused == len(shards)
    _doctor(tmp_path / "c", **changes)
    said = []
    again = V.ViewCache.open(tmp_path / "c", layout, shards, "k", echo=said.append)
    assert again.reused == 0 and again.missing() == shards
    assert len(said) == 1 and why in said[0] and said[0].endswith("clearing it and extracting again"), said
    assert json.loads((tmp_path / "c" / V.KEY_FILE).read_text())["format"] == V.FORMAT_VERSION


def test_key_carries_format_version_and_row_layout(monkeypatch):
    k = V.ViewCache.make_key(a=1)
    monkeypatch.setattr(V, "FORMAT_VERSION", V.FORMAT_VERSION + 1)
    assert V.ViewCache.make_key(a=1) != k
    monkeypatch.undo()
    monkeypatch.setattr(V, "META", V.META + ("extra",))
    assert V.ViewCache.make_key(a=1) != k


def test_resumed_run_re_extracts_a_cache_of_another_version(tiny_data, tmp_path):
    """A run whose view cache was written by another format version: --resume extracts every view again
    (counted) with one line saying why; with the current version it extracts nothing."""
    seen: list[int] = []

    class Counting(TrainMethod):
        def sources(self, part, view, images):
            if part == "train":
                seen.append(int(images.shape[0]))

    def open_cache(lines, **kw):
        t = Trainer(TrainConfig(**kw), resume=not kw.get("data"), echo=lines.append, method=Counting())
        t.prepare(), t.build(), t.start()
        return t, t.cached_views()

    out = tmp_path / "run"
    t, _ = open_cache([], data=str(tiny_data), out=str(out), **{**TINY, "weights": "none"})
    n = 2 * len(t.ds.train)
    assert sum(seen) == n
    seen.clear()
    lines: list[str] = []
    open_cache(lines, out=str(out))
    assert sum(seen) == 0 and any("reusing" in x for x in lines)  # same version: nothing extracted
    _doctor(out / "checkpoints" / "view-cache", format=1)
    lines.clear()
    open_cache(lines, out=str(out))
    assert sum(seen) == n  # every view extracted again
    stale = [x for x in lines if x.startswith("view cache:")]
    assert stale == [f"view cache: {out / 'checkpoints' / 'view-cache'} was written by format 1; this edgetl reads "
                     f"format {V.FORMAT_VERSION}; clearing it and extracting again"]

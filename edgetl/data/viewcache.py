"""The view cache: the frozen prefix's outputs, on disk, written shard by shard.

Phase 1 runs the frozen layers once per image and view; what they produce is kept here and
read back by every epoch of both phases:

* ``feats``   pooled features (what the phase-1 head trains on),
* ``acts``    activations at the cut (what phase 2 trains the suffix on; absent without a cut),
* ``meta``    per row: image index, view, label, mixup partner's label, mixup weight, labelled
              (0 for transfer-set rows), ok (0 for a file that failed to decode),
* ``teacher`` the teacher's logits of the exact image the row was made from (distillation).

A shard is a fixed range of images of one view of one source (training images, transfer
set, validation images); each column is one ``.npy`` file, memory-mapped for reading, and a
shard counts only once its ``.done`` marker exists (written last, after every column was
renamed into place). A killed extraction therefore restarts at the first missing shard, and
workers on several machines can each write their own shards into one shared folder.

Training reads the shards back through tf.data without Python in the graph (an ``.npy``
file is a header followed by fixed-size records: :class:`tf.data.FixedLengthRecordDataset`
reads it natively), shuffled by shard and then through a bounded buffer."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgetl.data.epochs import epoch_keys, epoch_order, epoch_rows
from edgetl.errors import EdgetlError

DTYPES = ("float16", "float32")
META = ("image", "view", "y", "y2", "lam", "labeled", "ok")  # float32 columns of ``meta``
KEY_FILE = "cache.json"
# the on-disk format of a shard: bump it whenever what a row holds or how it is stored changes
# (a cache written by another version is cleared and extracted again, never read)
FORMAT_VERSION = 2


@dataclass(frozen=True)
class Layout:
    """What one row holds: the shapes and storage types of its columns."""
    act_shape: tuple[int, ...] | None  # activations at the cut; None: no cut (features only)
    n_features: int
    teacher_dim: int = 0               # 0: no teacher
    dtype: str = "float16"             # storage of the features (meta and logits: float32)
    act_dtype: str = "float16"         # storage of the activations (uint8 when they are the view's image)

    def columns(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """{column: (row shape, dtype)}."""
        cols: dict[str, tuple[tuple[int, ...], str]] = {"feats": ((self.n_features,), self.dtype),
                                                         "meta": ((len(META),), "float32")}
        if self.act_shape is not None:
            cols["acts"] = (tuple(self.act_shape), self.act_dtype)
        if self.teacher_dim:
            cols["teacher"] = ((self.teacher_dim,), "float32")
        return cols

    def row_bytes(self) -> int:
        return sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in self.columns().values())


@dataclass(frozen=True)
class Shard:
    """Images ``lo .. hi`` of one source (``train``, ``extra``: the transfer set, or ``val``),
    seen as view ``view``, stored in ``part`` (``train`` or ``val``) as shard ``index``."""
    part: str
    index: int
    view: int
    source: str
    lo: int
    hi: int

    @property
    def rows(self) -> int:
        return self.hi - self.lo

    @property
    def name(self) -> str:
        return f"{self.part}/{self.index:05d}"


def plan(n_train: int, n_extra: int, n_val: int, views: int, shard_rows: int) -> list[Shard]:
    """Every shard of a cache, in row order: for each view the training images then the
    transfer set (never mixed in one shard), then the validation images (plain view)."""
    out: list[Shard] = []
    for v in range(views):
        for source, n in (("train", n_train), ("extra", n_extra)):
            for lo in range(0, n, shard_rows):
                out.append(Shard("train", len(out), v, source, lo, min(n, lo + shard_rows)))
    for k, lo in enumerate(range(0, n_val, shard_rows)):
        out.append(Shard("val", k, 0, "val", lo, min(n_val, lo + shard_rows)))
    return out


def shard_rows_for(layout: Layout, target_bytes: int = 32 << 20, batch: int = 64) -> int:
    """Rows per shard: about ``target_bytes`` of data, a multiple of the extraction batch."""
    rows = max(batch, target_bytes // max(1, layout.row_bytes()))
    return int(rows // batch * batch)


def _npy_header(path: Path) -> int:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        return f.tell()


@dataclass
class Rows:
    """The small per-row columns of one part, as numpy arrays (one entry per cached row)."""
    image: np.ndarray
    view: np.ndarray
    y: np.ndarray
    y2: np.ndarray
    lam: np.ndarray
    labeled: np.ndarray
    ok: np.ndarray

    @classmethod
    def from_meta(cls, meta: np.ndarray) -> Rows:
        m = np.asarray(meta, np.float32).reshape(-1, len(META))
        c = {name: m[:, i] for i, name in enumerate(META)}
        return cls(image=c["image"].astype(np.int64), view=c["view"].astype(np.int64), y=c["y"].astype(np.int64),
                   y2=c["y2"].astype(np.int64), lam=c["lam"], labeled=c["labeled"] > 0.5, ok=c["ok"] > 0.5)

    def __len__(self) -> int:
        return len(self.y)


def meta_rows(image, view, y, y2=None, lam=None, labeled=None, ok=None) -> np.ndarray:
    """A ``meta`` column block from its fields (defaults: no mixup, labelled, decoded)."""
    n = len(image)
    ones = np.ones(n, np.float32)
    cols = [image, np.full(n, view) if np.ndim(view) == 0 else view, y, y if y2 is None else y2,
            ones if lam is None else lam, ones if labeled is None else labeled, ones if ok is None else ok]
    return np.stack([np.asarray(c, np.float32) for c in cols], 1)


@dataclass
class ViewCache:
    """A folder of shards. ``open`` checks that it was made for the same inputs (``key``) and
    clears it otherwise; ``missing`` lists what is left to extract; ``write`` stores a shard
    atomically; ``dataset`` streams a part back for training."""
    root: Path
    layout: Layout
    shards: list[Shard]
    key: str
    reused: int = 0  # shards found complete when the cache was opened
    written: int = 0  # shards written by this process
    _rows: dict[str, Rows] = field(default_factory=dict, repr=False)

    # ---- opening ----------------------------------------------------------
    @staticmethod
    def make_key(**inputs) -> str:
        """A short hash of ``inputs``, the cache's format version and its row layout (``META``):
        a cache made by another edgetl version never matches."""
        inputs = {**inputs, "_format": FORMAT_VERSION, "_meta": list(META)}
        return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @staticmethod
    def stale(record: dict | None, key: str, layout: Layout) -> str | None:
        """Why a cache whose ``cache.json`` holds ``record`` cannot serve ``key`` (None: it can)."""
        if not isinstance(record, dict):
            return f"has an unreadable {KEY_FILE}"
        fmt = record.get("format")
        if fmt != FORMAT_VERSION:
            was = f"format {fmt}" if fmt is not None else "an older edgetl (no format version)"
            return f"was written by {was}; this edgetl reads format {FORMAT_VERSION}"
        if record.get("meta") != list(META):
            return f"holds rows laid out as {record.get('meta')}; this edgetl writes {list(META)}"
        if record.get("layout") != json.loads(json.dumps(asdict(layout))):
            return "holds rows of another layout (cut, features, dtype or teacher)"
        if record.get("key") != key:
            return "was made for other inputs"
        return None

    @classmethod
    def open(cls, root, layout: Layout, shards: list[Shard], key: str, writer: bool = True,
             echo: Callable[[str], None] = print) -> ViewCache:
        """The cache in ``root``. A cache made for other inputs (another config, other images)
        is cleared by a writer (``writer=False``: a worker that must not clear what the
        chief is writing just waits for it)."""
        root = Path(root)
        kf = root / KEY_FILE
        record = {"key": key, "format": FORMAT_VERSION, "meta": list(META), "layout": asdict(layout),
                  "shards": len(shards)}
        if kf.exists():
            try:
                old = json.loads(kf.read_text())
            except (ValueError, OSError):
                old = None
            why = cls.stale(old, key, layout)
            if why and writer:
                echo(f"view cache: {root} {why}; clearing it and extracting again")
                shutil.rmtree(root, ignore_errors=True)
        if writer:
            root.mkdir(parents=True, exist_ok=True)
            if not kf.exists():
                from edgetl.artifacts import write_json

                write_json(kf, record)
        c = cls(root, layout, shards, key)
        c.reused = sum(c.done(s) for s in shards)
        return c

    # ---- writing ----------------------------------------------------------
    def path(self, shard: Shard, column: str) -> Path:
        return self.root / f"{shard.name}.{column}.npy"

    def marker(self, shard: Shard) -> Path:
        return self.root / f"{shard.name}.done"

    def done(self, shard: Shard) -> bool:
        return self.marker(shard).exists()

    def missing(self, shards: Iterable[Shard] | None = None) -> list[Shard]:
        return [s for s in (self.shards if shards is None else shards) if not self.done(s)]

    def write(self, shard: Shard, columns: dict[str, np.ndarray]) -> int:
        """Store one shard: each column to a temporary file renamed into place, then the
        marker. A process killed half-way leaves no marker, so the shard is redone."""
        spec = self.layout.columns()
        if set(columns) != set(spec):
            raise ValueError(f"shard columns {sorted(columns)} != layout {sorted(spec)}")
        (self.root / shard.part).mkdir(parents=True, exist_ok=True)
        total = 0
        for name, a in columns.items():
            shape, dtype = spec[name]
            a = np.ascontiguousarray(a, dtype=dtype)
            if a.shape != (shard.rows, *shape):
                raise ValueError(f"{shard.name}.{name}: shape {a.shape}, expected {(shard.rows, *shape)}")
            dest = self.path(shard, name)
            tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
            try:
                with open(tmp, "wb") as f:
                    np.save(f, a)
                os.replace(tmp, dest)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise EdgetlError(f"{dest}: writing the view cache failed ({e.strerror or e}); it needs about "
                                  f"{self.estimate_bytes() / 2**20:,.0f} MB in all; free some space or choose "
                                  f"another --cache-dir, then resume", exit_code=1) from None
            total += dest.stat().st_size
        self.marker(shard).write_text(str(shard.rows))
        self.written += 1
        self._rows.pop(shard.part, None)
        return total

    # ---- sizes ------------------------------------------------------------
    def estimate_bytes(self) -> int:
        return estimate_bytes(self.layout, self.shards)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*.npy")) if self.root.exists() else 0

    # ---- reading ----------------------------------------------------------
    def part(self, part: str) -> list[Shard]:
        return [s for s in self.shards if s.part == part]

    def offset(self, shard: Shard) -> int:
        """The first row of ``shard`` in its part."""
        return sum(s.rows for s in self.part(shard.part) if s.index < shard.index)

    def column(self, part: str, name: str) -> np.ndarray:
        """One column of a part, concatenated over its shards (for the small columns: meta,
        teacher; the large ones are streamed by :meth:`dataset`)."""
        arrays = [np.load(self.path(s, name), mmap_mode="r") for s in self.part(part)]
        shape, dtype = self.layout.columns()[name]
        return np.concatenate(arrays) if arrays else np.zeros((0, *shape), dtype)

    def rows(self, part: str) -> Rows:
        if part not in self._rows:
            self._rows[part] = Rows.from_meta(np.array(self.column(part, "meta")))
        return self._rows[part]

    def dataset(self, part: str, x: str, batch: int, targets: Callable, shuffle: bool = False, seed: int = 0,
                buffer: int = 4096, shard_index: int = 0, num_shards: int = 1, repeat: bool = False,
                drop_remainder: bool = False, take: int | None = None, view: int | None = None, epoch=None,
                per_epoch: int | None = None):
        """Batches ``(x, targets[, weights])`` of ``part`` as a tf.data pipeline.

        ``x``: the column the model reads (``feats`` or ``acts``), as float32. ``targets``
        maps a batch's ``(meta, teacher)`` tensors to ``(y,)`` or ``(y, w)``. With
        ``shuffle``, each epoch reads its rows in the order :func:`epoch_rows` gives: the shards
        in an order of their own, four read interleaved, rows through a ``buffer``-row shuffle
        buffer (memory holds the buffer, not the part), all drawn from ``(seed, epoch)`` alone.
        ``epoch``: a ``tf.Variable`` holding the epoch that the next iterator reads (training
        sets it at each epoch's start: :class:`edgetl.training.callbacks.EpochKey`), so that a resumed
        run reads epoch k as the uninterrupted run did; None: each new iterator reads another
        order, the same sequence of orders in every run. ``repeat``: one endless stream of epochs 0, 1, 2, ...
        ``per_epoch`` (with ``shuffle``): an epoch reads only the first that many rows of its order
        (phase 2 reads one image's worth of rows per epoch, drawn across the views).
        ``num_shards``/``shard_index``: this worker's share of the
        shards (multi-worker training). ``view``: only that view's shards (the
        auto recipe probes on view 0, the plain one). Rows whose image failed to decode are dropped."""
        import tensorflow as tf

        shards = [s for s in self.part(part) if view is None or s.view == view][shard_index::num_shards]
        spec = self.layout.columns()
        cols = [x, "meta"] + (["teacher"] if self.layout.teacher_dim else [])
        if self.in_memory(shards, x):
            return self._dataset_in_memory(shards, cols, batch, targets, shuffle, seed, repeat, drop_remainder, take,
                                           epoch, per_epoch)
        files = {c: tf.constant([str(self.path(s, c)) for s in shards]) for c in cols}
        headers = {c: tf.constant([_npy_header(self.path(s, c)) for s in shards], tf.int64) for c in cols}
        rec = {c: int(np.prod(spec[c][0])) * np.dtype(spec[c][1]).itemsize for c in cols}

        def open_shard(i):
            return tf.data.Dataset.zip(tuple(
                tf.data.FixedLengthRecordDataset(files[c][i], rec[c], header_bytes=headers[c][i]) for c in cols))

        ok_col = META.index("ok")
        plain = tf.autograph.experimental.do_not_convert  # plain TensorFlow ops: nothing to convert
        n_ok = int(sum(self.rows(part).ok[self.offset(s):self.offset(s) + s.rows].sum() for s in shards))

        def records(order, interleave: int):
            ds = tf.data.Dataset.from_tensor_slices(order).interleave(open_shard, cycle_length=interleave,
                                                                       block_length=16)
            ds = ds.filter(plain(lambda xr, mr, *t: tf.io.decode_raw(mr, tf.float32)[ok_col] > 0.5))
            return ds if take is None else ds.take(take)

        if shuffle:
            def one_epoch(e):
                rows = epoch_rows(records, len(shards), seed, e, buffer)
                return rows if per_epoch is None else rows.take(per_epoch)

            ds = epoch_keys(seed, repeat, epoch).flat_map(plain(one_epoch))
        else:
            ds = records(tf.range(len(shards), dtype=tf.int64), 1)
            if repeat:
                ds = ds.repeat()
        if take is not None:
            n_ok = min(n_ok, take)
        if shuffle and per_epoch is not None:
            n_ok = min(n_ok, per_epoch)
        ds = ds.batch(batch, drop_remainder=drop_remainder)
        if not repeat:  # the filter hides the length from tf.data; Keras wants it for its epochs
            ds = ds.apply(tf.data.experimental.assert_cardinality(n_ok // batch if drop_remainder else -(-n_ok // batch)))
        x_shape, x_dtype = spec[x]

        def decode(xr, mr, *t):
            xb = tf.cast(tf.reshape(tf.io.decode_raw(xr, tf.as_dtype(x_dtype)), (-1, *x_shape)), tf.float32)
            meta = tf.reshape(tf.io.decode_raw(mr, tf.float32), (-1, len(META)))
            teacher = tf.reshape(tf.io.decode_raw(t[0], tf.float32), (-1, self.layout.teacher_dim)) if t else None
            return (xb, *targets(meta, teacher))

        opts = tf.data.Options()
        opts.deterministic = True
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.map(plain(decode), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2).with_options(opts)

    def in_memory(self, shards: list[Shard], x: str) -> bool:
        """Whether :meth:`dataset` holds these shards' rows in memory (see :func:`in_memory_budget`)."""
        spec = self.layout.columns()
        cols = [x, "meta"] + (["teacher"] if self.layout.teacher_dim else [])
        return sum(s.rows for s in shards) * sum(_row_bytes(spec[c]) for c in cols) <= in_memory_budget()

    def _dataset_in_memory(self, shards, cols, batch, targets, shuffle, seed, repeat, drop_remainder, take, epoch,
                           per_epoch):
        """:meth:`dataset` for rows that fit in memory: the same rows, batches and targets, read
        from the shards once instead of streamed from disk every epoch (the per-epoch cost of
        opening, interleaving and filtering files dominates the step of a small head). Each
        epoch's order is :func:`epoch_order` of ``(seed, epoch)`` over the rows, keyed as on disk."""
        import tensorflow as tf

        spec = self.layout.columns()
        arrays = {c: np.concatenate([np.load(self.path(s, c)) for s in shards]) if shards
                  else np.zeros((0, *spec[c][0]), spec[c][1]) for c in cols}
        ok = Rows.from_meta(arrays["meta"]).ok
        arrays = {c: a[ok] for c, a in arrays.items()}
        if take is not None:
            arrays = {c: a[:take] for c, a in arrays.items()}
        n = len(arrays["meta"])
        plain = tf.autograph.experimental.do_not_convert
        if shuffle:
            tensors = tuple(tf.constant(arrays[c]) for c in cols)

            def one_epoch(e):
                order = epoch_order(seed, e, n, per_epoch)
                return tf.data.Dataset.from_tensor_slices(tuple(tf.gather(t, order) for t in tensors))

            ds = epoch_keys(seed, repeat, epoch).flat_map(plain(one_epoch))
            n = n if per_epoch is None else min(n, per_epoch)
        else:
            ds = tf.data.Dataset.from_tensor_slices(tuple(arrays[c] for c in cols))
            if repeat:
                ds = ds.repeat()
        ds = ds.batch(batch, drop_remainder=drop_remainder)
        if not repeat:
            ds = ds.apply(tf.data.experimental.assert_cardinality(n // batch if drop_remainder else -(-n // batch)))

        def decode(xb, meta, *t):
            return (tf.cast(xb, tf.float32), *targets(meta, t[0] if t else None))

        opts = tf.data.Options()
        opts.deterministic = True
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.map(plain(decode), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2).with_options(opts)


def in_memory_budget() -> int:
    """Bytes of cached rows a pipeline may hold in memory instead of streaming them from disk
    (``EDGETL_CACHE_IN_MEMORY_MB``, default 64; 0 always streams): small data sets train
    from memory, large ones stream, so peak memory stays bounded whatever the number of photos."""
    try:
        return int(float(os.environ.get("EDGETL_CACHE_IN_MEMORY_MB", "64")) * 2**20)
    except ValueError:
        return 64 << 20


def _row_bytes(spec: tuple[tuple[int, ...], str]) -> int:
    shape, dtype = spec
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def estimate_bytes(layout: Layout, shards: Iterable[Shard]) -> int:
    """Disk space of a complete cache: its rows, plus each file's header."""
    shards = list(shards)
    rows = sum(s.rows for s in shards)
    return rows * layout.row_bytes() + len(shards) * len(layout.columns()) * 128


def check_budget(cache_dir: Path, need: int, budget_gb: float, have: int = 0) -> None:
    """Refuse, in one line saying how much space it needs, a cache over the disk budget or
    over the free space of its folder (``have``: bytes already written there)."""
    budget = int(budget_gb * 2**30)
    if need > budget:
        raise EdgetlError(f"--cache-budget {budget_gb:g}: the view cache needs {need / 2**20:,.0f} MB "
                          f"({need / 2**30:.2f} GB) in {cache_dir}; raise --cache-budget to at least "
                          f"{need / 2**30:.2f}, or use fewer --views or a smaller --img-size")
    probe = cache_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need - have > free:
        raise EdgetlError(f"{cache_dir}: the view cache needs {(need - have) / 2**20:,.0f} MB more, "
                          f"{free / 2**20:,.0f} MB are free; free some space or choose another --cache-dir",
                          exit_code=1)

"""Multi-worker training (tf.distribute.MultiWorkerMirroredStrategy) with Keras 3.

Keras 3's ``Model.fit`` (measured: Keras 3.15, TensorFlow 2.21) fails under
MultiWorkerMirroredStrategy in two places, each a one-line reduction meant for one machine:

1. ``TensorFlowTrainer._maybe_symbolic_build`` takes the first batch to build the model and
   averages it over replicas with ``strategy.reduce("MEAN", batch, axis=None)``; across
   workers that reduction receives a structure of ``PerReplica`` values and dies in
   ``_make_tensor_into_per_replica`` with ``ValueError: Attempt to convert a value
   (PerReplica:{...}) with an unsupported type (<class '...values.PerReplica'>) to a
   Tensor`` — the crash of the issue. Building needs the batch's shapes only, so edgetl
   builds from this worker's own part of the batch.
2. ``reduce_per_replica`` averages every step's logs with ``strategy.reduce("MEAN", v,
   axis=0)``; the logs are scalars, so across workers that is ``Invalid reduction dimension
   0 for input with 0 dimensions``. edgetl reduces scalars with ``axis=None`` (the mean over
   workers of each worker's value: the same number on every worker, so early stopping and
   the learning-rate schedule decide alike everywhere).

:func:`patch_keras` applies both fixes (idempotent, only to those two functions, only under
a multi-worker strategy: every other path runs Keras' own code). Everything else — the
gradient all-reduce, variable mirroring, checkpoints — is tf.distribute's own."""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from edgetl.errors import EdgetlError

_PATCHED = False


def _is_multi_worker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()


def patch_keras() -> None:
    """Make Keras 3's ``fit`` work under MultiWorkerMirroredStrategy (see the module doc)."""
    global _PATCHED
    if _PATCHED:
        return
    import keras
    import tensorflow as tf

    try:
        from keras.src.backend.tensorflow import trainer as KT

        trainer_cls = KT.TensorFlowTrainer
        original_build = trainer_cls._maybe_symbolic_build
        original_reduce = KT.reduce_per_replica
    except (ImportError, AttributeError):
        raise EdgetlError(f"--strategy multiworker: Keras {keras.__version__} lacks the internals edgetl adapts for "
                          f"multi-worker training (tested with Keras 3.15); use --strategy mirrored on one machine",
                          exit_code=1) from None

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or iterator is None or not _is_multi_worker(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tf.nest.map_structure(
                lambda v: strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues) else v, batch)
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction="auto"):
        if reduction in ("auto", "mean") and _is_multi_worker(strategy):
            def one(v):
                rank = getattr(getattr(v, "shape", None), "rank", None)
                if rank is None and isinstance(v, tf.distribute.DistributedValues):
                    rank = strategy.experimental_local_results(v)[0].shape.rank
                return strategy.reduce("MEAN", v, axis=0 if rank else None)

            return tf.nest.map_structure(one, values)
        return original_reduce(values, strategy, reduction)

    trainer_cls._maybe_symbolic_build = _maybe_symbolic_build
    KT.reduce_per_replica = reduce_per_replica
    _PATCHED = True


def worker_of(strategy) -> tuple[int, int, bool]:
    """(this worker's rank, number of workers, is it the chief) from TF_CONFIG's cluster:
    the chief task (if any) is rank 0, then the workers in order."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not strategy.extended._in_multi_worker_mode():
        return 0, 1, True
    spec = resolver.cluster_spec().as_dict()
    n_chief = len(spec.get("chief", []))
    n = n_chief + len(spec.get("worker", []))
    rank = (0 if resolver.task_type == "chief" else n_chief + int(resolver.task_id))
    return rank, n, bool(strategy.extended.should_checkpoint)


def tf_config_is_chief() -> bool:
    """Whether TF_CONFIG names this process the chief (the "chief" task, else worker 0),
    read without starting TensorFlow."""
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    except ValueError:
        raise EdgetlError("TF_CONFIG: not valid JSON; see docs/train.md, 'Several machines'") from None
    task = tf_config.get("task", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and not tf_config.get("cluster", {}).get("chief")


def tf_config_rank() -> tuple[int, int]:
    """(this worker's rank, number of workers) from TF_CONFIG, read without starting TensorFlow;
    the same numbering as :func:`worker_of` (the chief task, if any, is rank 0, then the workers)."""
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    except ValueError:
        raise EdgetlError("TF_CONFIG: not valid JSON; see docs/train.md, 'Several machines'") from None
    cluster, task = tf_config.get("cluster", {}), tf_config.get("task", {})
    n_chief, n_workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    if not task:
        return 0, max(1, n_chief + n_workers)
    rank = 0 if task.get("type") == "chief" else n_chief + int(task.get("index", 0))
    return rank, n_chief + n_workers


def announce_before_connect(folder: Path, option: str, echo) -> None:
    """Announce this worker in ``folder`` and wait for every worker's announcement *before*
    TensorFlow connects to the cluster: that connect waits for absent workers in C++, holding the
    GIL, where SIGTERM and Ctrl-C cannot end it; this wait is Python's, so a signal ends it within
    a second. Interrupted, the worker takes its announcement back (and the folders it made, when
    empty), so nothing is left of the run."""
    index, num = tf_config_rank()
    if num < 2:
        return
    folder = Path(folder)
    made = [d for d in (folder.parent, folder) if not d.exists()]
    try:
        announce(folder, index, num, option, echo, peer_timeout())
    except BaseException:
        (folder / f"worker-{index}.json").unlink(missing_ok=True)
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def describe_cluster() -> str:
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    cluster = tf_config.get("cluster", {})
    task = tf_config.get("task", {})
    n = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
    return f"{task.get('type', '?')} {task.get('index', '?')} of {n}"


def wait_for(done, what: str, echo, timeout_s: float, poll_s: float = 1.0, every_s: float = 30.0,
             gone=None) -> None:
    """Poll ``done()`` (a count of what is still missing) until it is 0; a line when the wait
    begins and every ``every_s`` seconds; a one-line error once ``timeout_s`` pass without
    progress (the count not falling): peers that work, however slowly, are waited for. A signal
    (Ctrl-C, SIGTERM) ends the wait at once: the sleep is where Python handles it.
    ``gone()`` (see :func:`peer_health`) names a worker that is gone, or returns None: the wait
    then ends at once with a one-line error naming it."""
    t0 = last = progress = time.perf_counter()
    best = None
    while True:
        left = done()
        if not left:
            return
        dead = gone() if gone is not None else None
        if dead:
            raise EdgetlError(f"{what}: still {left} missing, and {dead} is gone (TensorFlow's collectives cannot "
                              f"reach it). Stop every worker and start them all again with --resume: finished shards "
                              f"are kept", exit_code=1)
        now = time.perf_counter()
        if best is None or left < best:
            if best is None:
                echo(f"{what}: waiting for {left} from the other workers")
            best, progress = left, now
        if now - progress > timeout_s:
            raise EdgetlError(f"{what}: still {left} missing, none for {timeout_s:.0f}s (EDGETL_SHARD_TIMEOUT); a "
                              f"worker may have died. Stop every worker and start them all again with --resume: "
                              f"finished shards are kept", exit_code=1)
        if now - last >= every_s:
            echo(f"{what}: waiting for {left} from the other workers ({now - t0:.0f}s)")
            last = now
        time.sleep(poll_s)


def peer_health(strategy, timeout_s: float = 5.0, every_s: float = 5.0, misses: int = 3):
    """A ``gone`` check for :func:`wait_for` under a multi-worker strategy (None otherwise): at
    most every ``every_s`` seconds it asks TensorFlow's collectives whether each other worker is
    alive, with the call tf.distribute's own health check makes
    (``context.check_collective_ops_peer_health``, collective_all_reduce_strategy.py
    ``_check_health``). A peer whose server refuses the connection or has restarted (Unavailable,
    FailedPrecondition: its process is gone) is gone at once; one that does not answer within
    ``timeout_s`` (DeadlineExceeded: stopped, or a loaded machine) only after ``misses`` checks in a
    row. Returns "worker I (ADDRESS)" for the first gone, else None."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not _is_multi_worker(strategy):
        return None
    from tensorflow.python.eager import context
    from tensorflow.python.framework import errors

    spec = resolver.cluster_spec()
    me = (resolver.task_type, int(resolver.task_id))
    peers = [(job, i) for job in spec.jobs for i in range(spec.num_tasks(job)) if (job, i) != me]
    late = {p: 0 for p in peers}
    last = [float("-inf")]

    def gone() -> str | None:
        now = time.perf_counter()
        if now - last[0] < every_s:
            return None
        last[0] = now
        for job, i in peers:
            try:
                context.context().check_collective_ops_peer_health(f"/job:{job}/replica:0/task:{i}",
                                                                   timeout_in_ms=int(timeout_s * 1000))
                late[(job, i)] = 0
            except errors.DeadlineExceededError:
                late[(job, i)] += 1
                if late[(job, i)] >= misses:
                    return f"{job} {i} ({spec.task_address(job, i)}, no answer in {misses} checks)"
            except (errors.UnavailableError, errors.FailedPreconditionError):
                return f"{job} {i} ({spec.task_address(job, i)})"
        return None

    return gone


def shard_timeout() -> float:
    """Seconds a worker waits for the others' shards without any progress (EDGETL_SHARD_TIMEOUT,
    default 10 minutes: one shard takes seconds to minutes to extract)."""
    return _seconds("EDGETL_SHARD_TIMEOUT", 600.0)


def peer_timeout() -> float:
    """Seconds a worker waits for every worker's announcement (EDGETL_PEER_TIMEOUT, default 3 minutes)."""
    return _seconds("EDGETL_PEER_TIMEOUT", 180.0)


def _seconds(var: str, default: float) -> float:
    raw = os.environ.get(var, "")
    if not raw:
        return default
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not v > 0:
        raise EdgetlError(f"{var}={raw}: must be a positive number of seconds")
    return v


def announce(folder: Path, index: int, num: int, option: str, echo, timeout_s: float, poll_s: float = 0.5) -> None:
    """Write this worker's announcement into ``folder`` (on the storage the workers share), then
    wait until all ``num`` workers' announcements are there. A worker that cannot see them all
    within ``timeout_s`` stops with one line: ``option`` (--out or --cache-dir) is not on storage
    every worker mounts, or a worker never started. Each worker rewrites only its own file."""
    import socket

    from edgetl import artifacts

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(folder / f"worker-{index}.json", {"worker": index, "workers": num,
                                                           "host": socket.gethostname(), "pid": os.getpid(),
                                                           "time": artifacts.now_iso()})

    def missing() -> list[int]:
        return [i for i in range(num) if not (folder / f"worker-{i}.json").exists()]

    t0 = time.perf_counter()
    if missing():
        echo(f"multiworker: worker {index} of {num}: waiting up to {timeout_s:.0f}s (EDGETL_PEER_TIMEOUT) for the "
             f"other workers to announce themselves in {folder}")
    while missing():
        if time.perf_counter() - t0 > timeout_s:
            gone = ", ".join(map(str, missing()))
            raise EdgetlError(f"{folder}: worker {index} of {num} sees no announcement from worker(s) {gone} after "
                              f"{timeout_s:.0f}s: {option} must be on storage every worker mounts (the same shared "
                              f"folder on every machine), and every worker must be started; fix that and start them "
                              f"all again", exit_code=1)
        time.sleep(poll_s)
    echo(f"multiworker: worker {index} of {num}: all {num} workers share {folder}")


def key_ready(root: Path, key: str) -> bool:
    from edgetl.data.viewcache import KEY_FILE

    try:
        return json.loads((Path(root) / KEY_FILE).read_text()).get("key") == key
    except (OSError, ValueError):
        return False

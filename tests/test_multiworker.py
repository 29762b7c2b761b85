"""Multi-worker training: two real worker processes on localhost (TF_CONFIG, free ports)."""
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from common import HOLDOUT_FLOOR, TINY, holdout_accuracy

ARGS = ["--alpha", "1.0", "--img-size", "32", "--epochs-head", str(TINY["epochs_head"]), "--epochs-finetune",
        str(TINY["epochs_finetune"]), "--views", str(TINY["views"]), "--batch-size", str(TINY["batch_size"]),
        "--seed", str(TINY["seed"]), "--recipe", "fixed"]


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_share_the_views_and_the_chief_writes_one_run(tiny_data, tiny_run, tiny_holdout, imagenet_mnv2_100,
                                                                  keras_home, tmp_path):
    out = tmp_path / "mw"
    cluster = {"worker": [f"localhost:{p}" for p in free_ports(2)]}
    procs = []
    for i in range(2):
        env = {**os.environ, "KERAS_HOME": str(keras_home),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen([sys.executable, "-m", "edgetl", "train", str(tiny_data), "--out", str(out),
                                       "--strategy", "multiworker", *ARGS], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=1200)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-3000:]
    rows = []
    for i, o in enumerate(outs):
        m = re.search(r"(\d+) shard\(s\) / ([\d,]+) rows written here \(worker (\d) of 2\)", o)
        assert m and int(m.group(3)) == i, o[-2000:]
        rows.append(int(m.group(2).replace(",", "")))
    n_train, n_val = 39, 9
    assert sum(rows) == TINY["views"] * n_train + n_val  # no image processed twice
    assert min(rows) >= 0.4 * sum(rows)  # each worker extracted about half
    assert "the chief writes the run" in outs[1] and "run directory:" in outs[0]
    assert (out / "manifest.json").exists() and not (out / "checkpoints").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mw"]  # one finished run, nothing else
    # the two workers' model learned the task as well as one process does, scored on 60 fresh
    # images (3 classes, chance 0.33), not on the 9 val images that stopped its epochs; tiny_run is
    # the same training (TINY, seed 1) in one process
    acc_m, k_m, n = holdout_accuracy(out / "model.keras", tiny_holdout)
    acc_s, k_s, _ = holdout_accuracy(tiny_run.run_dir / "model.keras", tiny_holdout)
    print(f"held-out: multi-worker {k_m}/{n}, one process {k_s}/{n}")
    assert acc_m >= HOLDOUT_FLOOR, (k_m, n)
    assert k_m >= k_s - 3, (k_m, k_s)  # at most 3 of 60 images (5 points) below one process's model


def _worker(i, cluster, out, tiny_data, keras_home, env=None):
    env = {**os.environ, "KERAS_HOME": str(keras_home), "PYTHONUNBUFFERED": "1", **(env or {}),
           "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
    return subprocess.Popen([sys.executable, "-m", "edgetl", "train", str(tiny_data), "--out", str(out),
                             "--strategy", "multiworker", *ARGS], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_workers_without_shared_storage_fail_fast_in_one_line(tiny_data, imagenet_mnv2_100, keras_home, tmp_path):
    """Two real workers, each given its own --out (a local disk on each machine): each announces itself, sees no
    peer within EDGETL_PEER_TIMEOUT and stops with one line naming --out, before extracting anything (it waited a
    day before)."""
    cluster = {"worker": [f"localhost:{p}" for p in free_ports(2)]}
    outs = [tmp_path / f"local{i}" / "run" for i in range(2)]
    procs = [_worker(i, cluster, outs[i], tiny_data, keras_home, {"EDGETL_PEER_TIMEOUT": "20"}) for i in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 1, log[-2000:]
        last = log.strip().splitlines()[-1]
        assert last == (f"error: {outs[i] / 'checkpoints' / 'workers'}: worker {i} of 2 sees no announcement from "
                        f"worker(s) {1 - i} after 20s: --out must be on storage every worker mounts (the same shared "
                        f"folder on every machine), and every worker must be started; fix that and start them all "
                        f"again"), log[-2000:]
        assert "Traceback" not in log and "frozen base over" not in log  # nothing extracted
        assert not list(outs[i].rglob("*.npy"))


def _sig_worker(i, cluster, out, tiny_data, keras_home):
    """A real multi-worker `edgetl train` process whose output lines the test reads (tests/test_signals.py)."""
    from test_signals import Proc

    env = {"KERAS_HOME": str(keras_home),
           "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
    return Proc(["train", tiny_data, "--out", out, "--strategy", "multiworker", *ARGS], env=env)


def _sigterm_ends(w, start):
    """SIGTERM ends the worker within 30 s with exit 143 and one line starting with ``start``."""
    import signal

    rc, dt = w.stop(signal.SIGTERM)
    assert rc == 143 and dt < 30, "\n".join(w.lines[-20:])
    assert w.lines[-1].startswith(start), w.lines[-5:]
    assert "Traceback" not in "\n".join(w.lines)


def test_sigterm_ends_every_wait_of_a_worker(tiny_data, imagenet_mnv2_100, keras_home, tmp_path):
    """SIGTERM, for real, ends a worker within seconds (exit 143, one line) wherever it waits in edgetl's own
    code: waiting for its peers' announcements (each worker on its own --out), and waiting for their shards
    (the peer frozen with SIGSTOP after announcing). While TensorFlow itself connects to the cluster: the
    expected-to-fail test below."""
    import signal

    def worker(i, cluster, out):
        return _sig_worker(i, cluster, out, tiny_data, keras_home)

    # the announcements: each worker on its own --out
    cluster = {"worker": [f"localhost:{p}" for p in free_ports(2)]}
    ws = [worker(i, cluster, tmp_path / f"local{i}" / "run") for i in range(2)]
    for w in ws:
        w.wait_for("to announce themselves in")
    for w in ws:
        _sigterm_ends(w, "error: interrupted by SIGTERM while waiting for the other workers to announce themselves; "
                         "nothing was kept")
    for i in range(2):  # each took its announcement back: nothing of a run is left (a re-run needs no --resume)
        assert not any((tmp_path / f"local{i}" / "run").rglob("*")), list((tmp_path / f"local{i}").rglob("*"))
    # the shards: both announce on one shared --out, then worker 1 is frozen
    cluster = {"worker": [f"localhost:{p}" for p in free_ports(2)]}
    w0, w1 = (worker(i, cluster, tmp_path / "shared") for i in range(2))
    try:
        w1.wait_for("all 2 workers share")  # before TensorFlow connects
        w1.wait_for("all 2 workers share")  # again, at the view cache: connected
        w1.p.send_signal(signal.SIGSTOP)
        w0.wait_for("view cache shards: waiting for")
        _sigterm_ends(w0, "error: interrupted by SIGTERM; every finished epoch is checkpointed in")
    finally:
        w1.p.kill()
        w1.p.wait()


def test_a_lone_worker_waits_where_sigterm_ends_it_not_inside_tensorflows_connect(tiny_data, imagenet_mnv2_100,
                                                                                   keras_home, tmp_path):
    """A worker whose peer never started: it waits for the announcements (a Python wait), not inside TensorFlow's
    connect (MultiWorkerMirroredStrategy()), which blocks in C++ holding the GIL, with TensorFlow's own SIGTERM
    handler installed: no Python code, thread or default action saw a signal there until the connect returned (an
    earlier version of this test sent SIGTERM 5 s into the connect and passed only when the signal landed before
    it). The connect now starts only once every worker has announced itself, so SIGTERM ends the lone worker
    within seconds, exit 143, one line, nothing left of the run."""
    cluster = {"worker": [f"localhost:{p}" for p in free_ports(2)]}
    w0 = _sig_worker(0, cluster, tmp_path / "alone", tiny_data, keras_home)
    w0.wait_for("to announce themselves in")
    time.sleep(5)  # the moment the old test's signal landed inside TensorFlow's connect
    _sigterm_ends(w0, "error: interrupted by SIGTERM while waiting for the other workers to announce themselves")
    assert not any("connecting to the other workers" in line for line in w0.lines), w0.lines
    assert not any((tmp_path / "alone").rglob("*")), list((tmp_path / "alone").rglob("*"))


def test_the_shard_wait_ends_when_a_peer_is_killed(tiny_data, imagenet_mnv2_100, keras_home, tmp_path):
    """Two real workers on one shared --out; worker 1 is frozen before it extracts (SIGSTOP), then killed
    (SIGKILL) while worker 0 waits for its shards. TensorFlow's collectives then report worker 1 gone and worker 0
    stops well before EDGETL_SHARD_TIMEOUT (10 minutes; it waited that long before) with one line naming it and
    --resume."""
    import signal

    cluster = {"worker": [f"localhost:{p}" for p in free_ports(2)]}
    w0, w1 = (_sig_worker(i, cluster, tmp_path / "shared", tiny_data, keras_home) for i in range(2))
    try:
        w1.wait_for("all 2 workers share")  # before TensorFlow connects
        w1.wait_for("all 2 workers share")  # again, at the view cache: connected
        w1.p.send_signal(signal.SIGSTOP)
        w0.wait_for("view cache shards: waiting for")
        t0 = time.monotonic()
        w1.p.kill()
        w1.p.wait()
        rc = w0.p.wait(timeout=120)
        dt = time.monotonic() - t0
        while (line := w0.q.get(timeout=10)) is not None:
            w0.lines.append(line)
    finally:
        w1.p.kill()
        w0.p.kill()
    assert rc == 1 and dt < 60, (rc, dt, "\n".join(w0.lines[-20:]))
    last = w0.lines[-1]
    assert re.fullmatch(rf"error: {re.escape(str(tmp_path / 'shared'))}\S*: view cache shards: still \d+ missing, and "
                        rf"worker 1 \(localhost:{cluster['worker'][1].split(':')[1]}\) is gone \(TensorFlow's "
                        rf"collectives cannot reach it\)\. Stop every worker and start them all again with --resume: "
                        rf"finished shards are kept", last), w0.lines[-5:]
    assert sum(line.startswith("error:") for line in w0.lines) == 1 and "Traceback" not in "\n".join(w0.lines)

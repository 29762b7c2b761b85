"""Multi-worker training: two real worker processes on localhost (TF_CONFIG, free ports)."""
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from edgetl.config import TrainConfig
from edgetl.train import train

from common import TINY, quiet

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
def test_two_workers_share_the_views_and_the_chief_writes_one_run(tiny_data, imagenet_mnv2_100, keras_home, tmp_path):
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
    multi = json.loads((out / "metrics.json").read_text())
    single = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "single"), **TINY), echo=quiet)
    print("multi", multi["val_accuracy"], "single", single.metrics["val_accuracy"])
    assert abs(multi["val_accuracy"] - single.metrics["val_accuracy"]) <= 0.12  # at most 1 of 9 val images

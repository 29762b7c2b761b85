"""A run directory has one writer at a time: a lock file (pid, host, start) while train,
distill, export, verify, qat, adapt or run writes it; a second writer is refused in one line
naming the holder; a lock left by a dead process is taken over with a warning. A finished
run is not retrained in place without --force, which removes what the old model made."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgetl import rundir
from edgetl.cli import main
from edgetl.errors import EdgetlError

from synth import make_dataset

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--weights", "none", "--alpha", "0.35", "--img-size", "32", "--epochs-head", "1", "--epochs-finetune", "0",
        "--views", "1", "--batch-size", "8", "--recipe", "fixed", "--test-split", "0"]


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}


def _one_line_error(output: str) -> str:
    assert "Traceback" not in output, output
    err = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(err) == 1, output
    return err[0]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.1)


HOLD = textwrap.dedent("""
    import sys
    from edgetl import rundir
    with rundir.writing(sys.argv[1], "edgetl export", echo=print):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes our stdin
""")


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "data", per_class=6, classes=("red", "green"), size=32)


def test_a_second_writer_is_refused_naming_the_holder_and_the_lock_goes_with_it(data, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = json.loads((run / rundir.LOCK).read_text())
        assert lock["pid"] == holder.pid and lock["host"] and lock["started"]
        for args in (["train", str(data), "--out", str(run), *FAST], ["verify", str(run)], ["export", str(run)]):
            r = CliRunner().invoke(main, args)
            assert r.exit_code == 1, r.output
            line = _one_line_error(r.output)
            assert f"{run} is being written by pid {holder.pid} (edgetl export, started " in line, line
            assert line.endswith("wait for it or stop it")
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    assert not run.exists()  # the holder made the folder and left nothing: it is gone with the lock


def test_a_stale_lock_from_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # finished and reaped: no process has this pid now (barring reuse within the test)
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.LOCK).write_text(json.dumps({"pid": pid, "host": os.uname().nodename, "command": "edgetl train",
                                               "started": "2026-01-01T14:02:00+00:00"}))
    one_class = make_dataset(tmp_path / "one", per_class=3, classes=("red",), size=32)
    r = subprocess.run([sys.executable, "-m", "edgetl", "train", str(one_class), "--out", str(run), *FAST],
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 2, r.stderr  # refused by the scan: it got past the lock
    assert f"was left by pid {pid} (edgetl train, started 14:02 UTC), which is no longer running" in r.stdout + r.stderr
    _one_line_error(r.stderr)
    assert run.is_dir() and not any(run.iterdir())  # the user's folder stays; the lock is gone


def test_nested_use_in_one_process_holds_the_lock_once(tmp_path):
    run = tmp_path / "run"
    with rundir.writing(run, "edgetl run"):
        with rundir.writing(run, "edgetl train"):
            assert json.loads((run / rundir.LOCK).read_text())["command"] == "edgetl run"
        assert (run / rundir.LOCK).exists()  # the outer holder keeps it
    assert not run.exists()


def test_an_unreadable_or_foreign_host_lock(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.LOCK).write_text(json.dumps({"pid": 1, "host": "other-machine", "command": "edgetl train",
                                               "started": "2026-01-01T09:30:00+00:00"}))
    foreign = r"pid 1 on other-machine \(edgetl train, started 09:30 UTC\); wait for it, or delete .*\.edgetl\.lock"
    with pytest.raises(EdgetlError, match=foreign + " if that process is gone"), rundir.writing(run, "edgetl export"):
        pass
    (run / rundir.LOCK).write_text("x" * 10_000_000)  # garbage: no pid, so nobody holds it
    lines = []
    with rundir.writing(run, "edgetl export", echo=lines.append):
        assert json.loads((run / rundir.LOCK).read_text())["pid"] == os.getpid()
    assert len(lines) == 1 and "an unreadable lock" in lines[0] and len(lines[0]) < 300


# the first `edgetl train` waits (after the lock is taken, before it trains) until the test says go
FIRST = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import edgetl.training.train as T
    go = Path(sys.argv[1])
    prepare = T.Trainer.prepare
    def waiting(self):
        Path(str(go) + ".ready").write_text("")
        while not go.exists():
            time.sleep(0.05)
        prepare(self)
    T.Trainer.prepare = waiting
    from edgetl.cli import main
    main(sys.argv[2:])
""")


def test_two_trains_into_one_out_the_second_refuses_and_the_run_stays_consistent(data, tmp_path):
    run, go = tmp_path / "run", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", FIRST, str(go), "train", str(data), "--out", str(run), *FAST,
                              "--seed", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait_for(Path(str(go) + ".ready"), first)  # the first holds the lock now
        second = subprocess.run([sys.executable, "-m", "edgetl", "train", str(data), "--out", str(run), *FAST,
                                 "--seed", "2"], capture_output=True, text=True, env=_env(), timeout=300)
    finally:
        go.write_text("")
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert second.returncode == 1, second.stderr
    line = _one_line_error(second.stderr)
    assert f"is being written by pid {first.pid} (edgetl train, started" in line
    cfg = yaml.safe_load((run / rundir.CONFIG).read_text())
    man = json.loads((run / rundir.MANIFEST).read_text())
    assert cfg["seed"] == man["train"]["config"]["seed"] == 1  # config.yaml and manifest.json from the same run
    assert not (run / rundir.LOCK).exists()

    # a finished run is not retrained in place ...
    (run / "export").mkdir()
    (run / "export" / "model_fp32.tflite").write_bytes(b"old")
    (run / rundir.REPORT_MD).write_text("old report")
    (run / "notes.txt").write_text("mine")
    r = CliRunner().invoke(main, ["train", str(data), "--out", str(run), *FAST, "--seed", "3"])
    assert r.exit_code == 2 and "holds a finished run" in _one_line_error(r.output) and "--force" in r.output
    assert (run / rundir.REPORT_MD).exists()
    # ... unless --force: the old model's exports and reports go, the user's own file stays
    r = CliRunner().invoke(main, ["train", str(data), "--out", str(run), *FAST, "--seed", "3", "--force"])
    assert r.exit_code == 0, r.output
    assert "--force: retraining" in r.output
    assert not (run / "export").exists() and not (run / rundir.REPORT_MD).exists()
    assert (run / "notes.txt").read_text() == "mine"
    man = json.loads((run / rundir.MANIFEST).read_text())
    assert yaml.safe_load((run / rundir.CONFIG).read_text())["seed"] == man["train"]["config"]["seed"] == 3

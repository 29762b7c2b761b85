"""Informational lines that LiteRT writes to fd 2 from C++ (the XNNPACK delegate's INFO line) stay out
of edgetl's output; other lines on fd 2 still show."""
import os
import subprocess
import sys

from common import ROOT

SCRIPT = """
import os, sys
from edgetl import native_stderr
with native_stderr.quiet():
    os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
    os.write(2, b"I1204 17:00:00.123456   42 cpu_feature_guard.cc:1] noise\\n")
    os.write(2, b"ERROR: a real problem\\n")
    sys.stderr.write("warning: from Python\\n")
print("done", flush=True)
"""


def run(level):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": level}
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)


def test_informational_native_lines_are_dropped_and_the_others_kept():
    p = run("3")
    assert p.returncode == 0 and p.stdout == "done\n"
    assert p.stderr == "ERROR: a real problem\nwarning: from Python\n"


def test_verbose_keeps_every_line():
    p = run("0")  # `edgetl --verbose` leaves TensorFlow's log level alone
    assert "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." in p.stderr and "I1204" in p.stderr


def test_a_litert_runner_prints_no_xnnpack_line(tiny_run, tmp_path):
    """A real .tflite through the runner verify and predict use, in a fresh process (the delegate is
    created once per interpreter)."""
    from edgetl.export.exporter import ExportOptions, export

    run_dir = tiny_run.run_dir
    tfl = next(run_dir.glob("export/**/*.tflite"), None)
    if tfl is None:
        export(run_dir, ExportOptions(formats="tflite", quants="fp32", max_drop=100.0), echo=lambda *a, **k: None)
        tfl = next(run_dir.glob("export/**/*.tflite"))
    code = ("import numpy as np\nfrom edgetl.runtime.runners import LiteRTRunner\n"
            f"r = LiteRTRunner({str(tfl)!r}, threads=1)\n"
            "print(r.predict(np.zeros((2, *r.input_size, 3), np.float32)).shape)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "XNNPACK" not in p.stderr and "INFO:" not in p.stderr, p.stderr

"""Peak memory and wall time of edgetl on crafted inputs (memory bombs), as a user runs it.

Writes the crafted checkpoints (tests/ckpt_bombs.py) and a billion-laughs pipeline file into
a folder, then runs each command under ``/usr/bin/time -v`` in its own process, with an
address-space cap and a timeout so that an unbounded reader is stopped instead of taking the
machine. Give the checkout to measure with --src (default: this one), e.g. to compare with
an older commit:

    python bench/bench_bombs.py --dir /tmp/bombs                       # this checkout
    python bench/bench_bombs.py --dir /tmp/bombs --src /path/to/other  # another checkout
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the last alias lands where a value is checked (and shown when it has the wrong type): 9**9 items
BILLION_LAUGHS = 'data: data\na: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "train:\n  seed: *i\n"


def write_inputs(d: Path) -> dict[str, list[str]]:
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "zipbomb.pth").exists():
        subprocess.run([sys.executable, str(ROOT / "tests" / "ckpt_bombs.py"), str(d)], check=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])})
    (d / "bomb.yaml").write_text(BILLION_LAUGHS)
    imp = ["weights", "import-torchvision"]
    return {name: [*imp, str(d / f"{name}.pth"), "--out-dir", str(d / "out")]
            for name in ("message", "message_zip", "shared", "legacy_shared", "zipbomb")} | \
        {"bomb.yaml": ["run", str(d / "bomb.yaml")]}


def measure(src: Path, args: list[str], cap_gb: float, timeout: int, cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = (f"ulimit -v {int(cap_gb * 1024 * 1024)}; exec /usr/bin/time -v timeout {timeout} "
           f"{sys.executable} -m edgetl " + " ".join(f"'{a}'" for a in args))
    t0 = time.perf_counter()
    # cwd: not a checkout (python -m puts the working directory first on sys.path)
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - t0
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) / 1024
    err = [line for line in r.stderr.splitlines() if line.startswith("error:") or "Error" in line]
    exit_ = {124: "timeout"}.get(r.returncode, str(r.returncode))
    return {"peak_mb": rss, "wall_s": wall, "exit": exit_, "said": (err[-1] if err else r.stderr.splitlines()[-1]
                                                                    if r.stderr.strip() else "")[:110]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, required=True, help="Where the crafted inputs are written.")
    ap.add_argument("--src", type=Path, default=ROOT, help="The checkout whose edgetl is measured.")
    ap.add_argument("--cap-gb", type=float, default=5.0, help="Address-space cap of each command.")
    ap.add_argument("--timeout", type=int, default=150, help="Seconds before a command is stopped.")
    ap.add_argument("--only", default="", help="Comma list of inputs to measure (default: all).")
    a = ap.parse_args()
    cmds = write_inputs(a.dir)
    commit = subprocess.run(["git", "-C", str(a.src), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    probe = subprocess.run([sys.executable, "-c", "import edgetl; print(edgetl.__file__)"], capture_output=True,
                           text=True, cwd=a.dir, env={**os.environ, "PYTHONPATH": str(a.src)}).stdout.strip()
    print(f"edgetl from {probe} ({commit}); cap {a.cap_gb:g} GB, timeout {a.timeout} s; load {os.getloadavg()[0]:.1f}")
    print(f"{'input':<16}{'bytes':>11}{'peak MB':>10}{'wall s':>8}{'exit':>9}  said")
    for name, args in cmds.items():
        if a.only and name not in a.only.split(","):
            continue
        path = a.dir / (name if name.endswith(".yaml") else f"{name}.pth")
        m = measure(a.src, args, a.cap_gb, a.timeout, a.dir)
        print(f"{name:<16}{path.stat().st_size:>11,}{m['peak_mb']:>10.0f}{m['wall_s']:>8.1f}{m['exit']:>9}  {m['said']}")


if __name__ == "__main__":
    main()

"""Render the measured tables of README.md and docs/*.md from bench/results/<NAME>.json.

A region in a markdown file::

    <!-- results:train -->
    (generated: the table and a line naming the command, commit, date and load)
    <!-- /results -->

is replaced by the table in ``summary["table"]`` of ``bench/results/train.json`` (see
``bench/results.py``) and one line saying where it comes from. Never edit inside a region:
re-run the benchmark, then this script.

    python bench/render_tables.py           # rewrite every region in place
    python bench/render_tables.py --check   # exit 1 naming each region that differs or has no results file
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REGION = re.compile(r"(<!-- results:([A-Za-z0-9_-]+) -->\n)((?:(?!<!-- results:).)*?)(<!-- /results -->)", re.S)
OPEN = re.compile(r"<!-- results:([A-Za-z0-9_-]+) -->")


def doc_files(root: Path) -> list[Path]:
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    return files + sorted((root / "docs").rglob("*.md"))


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _load(v: Any) -> str:
    return f"{v[0]:.2f}" if isinstance(v, list) and v else "?"


def render(res: dict[str, Any]) -> str:
    """The markdown of one results file: its table, its notes, then where it comes from."""
    table = res["summary"]["table"]
    cols = table["columns"]
    lines = ["| " + " | ".join(_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table["rows"]]
    out = "\n".join(lines) + "\n"
    for note in table.get("notes", []):
        out += f"\n{note}\n"
    m = res.get("machine", {})
    load = res.get("load", {})
    commit = str(res.get("commit", "unknown"))[:10] + (" (uncommitted changes)" if res.get("dirty") else "")
    out += (f"\n<sub>`{res['command']}` at commit {commit}, {res['date']}; {m.get('cpu', '?')}, "
            f"{m.get('cores', '?')} cores; load average (1 min) {_load(load.get('start'))} at start, "
            f"{_load(load.get('end'))} at end. Rendered from `bench/results/{res['name']}.json` by "
            f"`python bench/render_tables.py`.</sub>\n")
    return out


@dataclass
class Problem:
    file: Path
    line: int
    name: str
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: results:{self.name}: {self.what}"


FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)


def _fenced(text: str) -> list[tuple[int, int]]:
    """Spans of fenced code blocks: markers shown there as examples are not regions."""
    return [(m.start(), m.end()) for m in FENCE.finditer(text)]


def render_file(path: Path, results_dir: Path) -> tuple[str, list[Problem]]:
    """(the file's text with every region rendered, problems: missing or unreadable results,
    unclosed regions)."""
    text = path.read_text(encoding="utf-8")
    problems: list[Problem] = []
    fences = _fenced(text)

    def in_code(pos: int) -> bool:
        return any(a <= pos < b for a, b in fences)

    closed = {m.start() for m in REGION.finditer(text)}
    for m in OPEN.finditer(text):
        if m.start() not in closed and not in_code(m.start()):
            problems.append(Problem(path, text.count("\n", 0, m.start()) + 1, m.group(1),
                                    "no closing <!-- /results --> line"))

    def sub(m: re.Match) -> str:
        if in_code(m.start()):
            return m.group(0)
        name = m.group(2)
        line = text.count("\n", 0, m.start()) + 1
        f = results_dir / f"{name}.json"
        try:
            res = json.loads(f.read_text(encoding="utf-8"))
            body = render(res)
        except FileNotFoundError:
            problems.append(Problem(path, line, name, f"{f} is missing: run the benchmark that writes it"))
            return m.group(0)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            problems.append(Problem(path, line, name, f"{f} cannot be rendered ({type(e).__name__}: {e})"))
            return m.group(0)
        return m.group(1) + body + m.group(4)

    return REGION.sub(sub, text), problems


def run(root: Path, check: bool, results_dir: Path | None = None) -> list[str]:
    """Render (or check) every region under ``root``; the list of problems, one line each."""
    results_dir = results_dir if results_dir is not None else root / "bench" / "results"
    out: list[str] = []
    for path in doc_files(root):
        new, problems = render_file(path, results_dir)
        out += [str(p) for p in problems]
        old = path.read_text(encoding="utf-8")
        if new != old:
            if check:
                names = [m.group(2) for m in REGION.finditer(old)
                         if m.group(0) not in new]
                out.append(f"{path}: region(s) {', '.join('results:' + n for n in names) or '?'} differ from "
                           f"their results files: run python bench/render_tables.py")
            else:
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(new, encoding="utf-8")
                tmp.replace(path)
                print(f"rendered {path.relative_to(root) if path.is_relative_to(root) else path}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="Change nothing; exit 1 if a region differs.")
    ap.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    problems = run(Path(a.root), a.check)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Every measured table in README.md and docs/ is rendered from a results file under
bench/results/ (bench/render_tables.py): the repository's tables match their files, and the
renderer lays out a small fixture exactly."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import render_tables  # noqa: E402
import results  # noqa: E402

FIXTURE = {
    "name": "train", "commit": "0123456789abcdef", "dirty": False, "date": "2026-12-04T14:30:00Z",
    "machine": {"cpu": "Test CPU", "cores": 2, "ram_gib": 24.0, "python": "3.11.9", "tensorflow": "2.21.0"},
    "load": {"start": [1.5, 1.0, 0.5], "end": [2.25, 1.2, 0.6]},
    "command": "python bench/bench_train.py --seeds 3",
    "runs": [{"seed": 1, "total_s": 30.0}],
    "summary": {"table": {"columns": ["run", "wall s"], "rows": [["edgetl", "30.0"], ["a|b", "1"]],
                          "notes": ["Every run is listed."]}},
}
EXPECTED = """| run | wall s |
|---|---|
| edgetl | 30.0 |
| a\\|b | 1 |

Every run is listed.

<sub>`python bench/bench_train.py --seeds 3` at commit 0123456789, 2026-12-04T14:30:00Z; Test CPU, 2 cores; \
load average (1 min) 1.50 at start, 2.25 at end. Rendered from `bench/results/train.json` by \
`python bench/render_tables.py`.</sub>
"""


def test_the_repository_tables_match_their_results_files():
    problems = render_tables.run(ROOT, check=True)
    assert not problems, "\n".join(problems)


def test_render_lays_out_the_fixture_exactly():
    assert render_tables.render(FIXTURE) == EXPECTED
    dirty = render_tables.render({**FIXTURE, "dirty": True})
    assert "at commit 0123456789 (uncommitted changes)," in dirty


def _tree(tmp_path: Path, body: str = "stale\n") -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# x\n\nno regions here\n")
    (tmp_path / "docs" / "performance.md").write_text(
        f"# Performance\n\n<!-- results:train -->\n{body}<!-- /results -->\n\nafter\n")
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "train.json").write_text(json.dumps(FIXTURE))
    return tmp_path / "docs" / "performance.md"


def test_check_names_the_region_that_differs_then_render_fixes_it(tmp_path):
    page = _tree(tmp_path)
    problems = render_tables.run(tmp_path, check=True)
    assert len(problems) == 1 and "performance.md" in problems[0] and "results:train" in problems[0]
    assert "stale" in page.read_text()  # --check changes nothing
    assert render_tables.run(tmp_path, check=False) == []
    assert page.read_text() == f"# Performance\n\n<!-- results:train -->\n{EXPECTED}<!-- /results -->\n\nafter\n"
    assert render_tables.run(tmp_path, check=True) == []  # rendered once: nothing differs


def test_a_missing_results_file_and_an_unclosed_region_are_named(tmp_path):
    page = _tree(tmp_path)
    page.write_text(page.read_text() + "\n<!-- results:recipe -->\nx\n<!-- results:adapt -->\n")
    problems = render_tables.run(tmp_path, check=True)
    text = "\n".join(problems)
    assert "performance.md:11: results:adapt: no closing" in text, text
    assert "results:recipe" in text and "no closing" in text
    page.write_text("<!-- results:distill -->\nold\n<!-- /results -->\n")
    problems = render_tables.run(tmp_path, check=False)
    assert problems == [f"{page}:1: results:distill: {tmp_path}/bench/results/distill.json is missing: "
                        "run the benchmark that writes it"]
    assert page.read_text() == "<!-- results:distill -->\nold\n<!-- /results -->\n"  # left as it was


def test_markers_inside_code_blocks_are_examples_not_regions(tmp_path):
    page = _tree(tmp_path)
    example = "```markdown\n<!-- results:adapt -->\n<!-- /results -->\n```\n\n~~~\n<!-- results:scale -->\n~~~\n"
    page.write_text(example + page.read_text())
    assert render_tables.run(tmp_path, check=False) == []
    assert page.read_text().startswith(example) and EXPECTED in page.read_text()


def test_check_cli_exits_1_and_names_the_file(tmp_path):
    _tree(tmp_path)
    cmd = [sys.executable, str(ROOT / "bench" / "render_tables.py"), "--root", str(tmp_path)]
    r = subprocess.run([*cmd, "--check"], capture_output=True, text=True)
    assert r.returncode == 1 and "performance.md" in r.stderr and "results:train" in r.stderr
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    assert subprocess.run([*cmd, "--check"], capture_output=True, text=True).returncode == 0


def test_recorder_writes_every_field_atomically(tmp_path):
    rec = results.Recorder("train", argv=["bench/bench_train.py", "--seeds", "3", "--note", "two words"],
                           out_dir=tmp_path)
    table = {"columns": ["a", "b"], "rows": [["1", "2"]]}
    path = rec.write([{"seed": 1}], {"table": table})
    got = json.loads(path.read_text())
    assert path == tmp_path / "train.json" and [p.name for p in tmp_path.iterdir()] == ["train.json"]
    assert set(got) == {"name", "commit", "dirty", "date", "machine", "load", "command", "runs", "summary"}
    assert got["command"] == "python bench/bench_train.py --seeds 3 --note 'two words'"
    assert len(got["commit"]) == 40 and isinstance(got["dirty"], bool)
    assert set(got["machine"]) >= {"cpu", "cores", "ram_gib", "python", "tensorflow"}
    assert len(got["load"]["start"]) == 3 and len(got["load"]["end"]) == 3
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        rec.write([], {"table": {"columns": ["a", "b", "c"], "rows": [["1", "2"]]}})
    assert json.loads(path.read_text()) == got  # a refused write leaves the old file
    with pytest.raises(ValueError, match="unknown results name"):
        results.Recorder("nope")

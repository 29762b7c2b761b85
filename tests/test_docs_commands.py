"""What the README says is what runs: the marked shell blocks of README.md and docs/*.md, run as a user types them.

A block is runnable when the line just before its ```bash (or ```sh) fence is the HTML comment
``<!-- edgetl:run -->``. Every line of a marked block must be one ``edgetl`` command (comments and
``\\`` continuations allowed; no pipes, ``&&``, redirections or shell variables); the extractor refuses
anything else, naming the file and line. Blocks that cannot run here (several machines, device-side
commands, ``source .venv/bin/activate``, ``make ...``) are simply not marked.

How they run (``test_marked_blocks_run``): in order, README.md first, then the pages in the order of
mkdocs.yml's ``nav``, all in ONE temporary working directory, so a page may use what the quick start
made (``models/ants-bees``). Each line is a subprocess of the installed console script
(``Path(sys.executable).parent / "edgetl"``) with PYTHONPATH passed through (a worktree's code runs),
KERAS_HOME in a fresh temporary folder and TF_CPP_MIN_LOG_LEVEL=2; it must exit 0, and a failure names
the file, line and command with the end of its output.

Placeholders are not rewritten: the test puts real files under the names the blocks use, in the working
directory, before the first block (``STAGED``):

* ``photos/``: the first 20 photos (by name) of each class of ../shared/datasets/hymenoptera/train/, copied;
* ``my_photo.jpg``: a copy of the first photo of ../shared/datasets/hymenoptera/val/ants/;
* ``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5``: a copy of that file from
  ../shared/weights/.

The same rules are in docs/development.md. Without ../shared the run is skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from common import HYMENOPTERA, MNV2_035, ROOT, SHARED

MARKER = "<!-- edgetl:run -->"
FENCE = re.compile(r"^```(bash|sh|shell|console)?\s*$")
PHOTOS_PER_CLASS = 20
# Name in the docs -> what the test puts there (see the docstring).
STAGED = {
    "photos/": "the first 20 photos of each class of ../shared/datasets/hymenoptera/train/",
    "my_photo.jpg": "the first photo of ../shared/datasets/hymenoptera/val/ants/",
    MNV2_035.name: "../shared/weights/" + MNV2_035.name,
}


@dataclass
class Block:
    file: str                       # relative to the repository root
    line: int                       # 1-based line of the opening fence
    commands: list[tuple[int, str]]  # (1-based line, command with continuations joined)

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def extract_blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """The marked runnable blocks of one markdown file. A marker not followed by a shell fence, or a marked
    line that is not a single edgetl command, is a ValueError naming the file and line."""
    rel = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != MARKER:
            i += 1
            continue
        fence = i + 1
        if fence >= len(lines) or not FENCE.match(lines[fence].strip()) or lines[fence].strip() == "```":
            raise ValueError(f"{rel}:{i + 1}: {MARKER} must be followed by a ```bash fence on the next line")
        commands: list[tuple[int, str]] = []
        j, pending, start = fence + 1, "", 0
        while j < len(lines) and lines[j].strip() != "```":
            text = lines[j].rstrip()
            if not pending:
                start = j + 1
            if text.endswith("\\"):
                pending += text[:-1] + " "
            else:
                full = (pending + text).strip()
                pending = ""
                if full and not full.startswith("#"):
                    commands.append((start, _check_command(full, f"{rel}:{start}")))
            j += 1
        if j >= len(lines):
            raise ValueError(f"{rel}:{fence + 1}: the marked block is never closed")
        if not commands:
            raise ValueError(f"{rel}:{fence + 1}: the marked block has no command")
        blocks.append(Block(rel, fence + 1, commands))
        i = j + 1
    return blocks


def _check_command(command: str, where: str) -> str:
    words = shlex.split(command, comments=True)
    if not words or words[0] != "edgetl":
        raise ValueError(f"{where}: a marked block holds only edgetl commands, not: {command}")
    bad = [w for w in words if w in ("|", "&&", "||", ";", ">", ">>", "<") or "$" in w]
    if bad:
        raise ValueError(f"{where}: one edgetl command per line, without shell syntax ({' '.join(bad)}): {command}")
    return command


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md, then docs/ pages in mkdocs.yml's nav order, then any page the nav leaves out."""
    def walk(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, dict):
            return [p for v in node.values() for p in walk(v)]
        if isinstance(node, list):
            return [p for v in node for p in walk(v)]
        return []

    nav = walk(yaml.safe_load((root / "mkdocs.yml").read_text()).get("nav", []))
    pages = [root / "docs" / p for p in nav if p.endswith(".md")]
    pages += sorted(p for p in (root / "docs").glob("*.md") if p not in pages)
    return [root / "README.md", *pages]


def runnable_blocks(root: Path = ROOT) -> list[Block]:
    return [b for f in doc_files(root) for b in extract_blocks(f, root)]


# ---------------------------------------------------------------------------------------------- fast


def test_the_extractor_finds_the_quick_start():
    """The README's quick start is a marked block: removing the marker (or a command) fails this."""
    readme = extract_blocks(ROOT / "README.md")
    assert readme, "README.md has no block marked " + MARKER
    quick = [b for b in readme if any(c.startswith("edgetl train photos/") for _, c in b.commands)]
    assert quick, [b.commands for b in readme]
    verbs = [shlex.split(c, comments=True)[1] for _, c in quick[0].commands]
    assert verbs == ["weights", "train", "calibrate", "export", "verify", "predict", "bundle"], verbs
    assert not any("<" in c or ">" in c for _, c in quick[0].commands), "placeholders such as <time> left in the quick start"


@pytest.mark.parametrize("text", [
    f"{MARKER}\n\nedgetl train photos/\n",                                      # no fence after the marker
    f"{MARKER}\n```bash\nsource .venv/bin/activate\n```\n",                    # not an edgetl command
    f"{MARKER}\n```bash\nedgetl export models/x && edgetl verify models/x\n```\n",  # shell syntax
    f"{MARKER}\n```bash\nedgetl train $DATA\n```\n",                            # a shell variable
    f"{MARKER}\n```bash\nedgetl backbones\n",                                    # never closed
])
def test_the_extractor_refuses_what_it_cannot_run(tmp_path, text):
    (tmp_path / "x.md").write_text(text)
    with pytest.raises(ValueError, match=r"x\.md:\d+"):
        extract_blocks(tmp_path / "x.md", tmp_path)


def test_continuations_and_comments(tmp_path):
    (tmp_path / "x.md").write_text(f"```bash\nedgetl not-marked\n```\n{MARKER}\n```bash\n# a comment\n"
                                   "edgetl distill photos/ --teacher t \\\n    --out s   # trailing\nedgetl backbones\n```\n")
    (b,) = extract_blocks(tmp_path / "x.md", tmp_path)
    assert b.line == 5
    assert [ln for ln, _ in b.commands] == [7, 9]
    assert shlex.split(b.commands[0][1], comments=True) == ["edgetl", "distill", "photos/", "--teacher", "t", "--out", "s"]


def test_every_markdown_file_parses_and_readme_links_exist():
    """Every marker in README.md and docs/ is well-formed, and the README's links into docs/ point at pages
    that exist (MkDocs' strict build checks the links inside docs/)."""
    blocks = runnable_blocks()
    assert blocks
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#\s]+)", text)
    assert links
    missing = [ln for ln in links if not (ROOT / ln).is_file()]
    assert not missing, missing
    nav = {p.name for p in doc_files()[1:]}
    assert {Path(ln).name for ln in links if ln.endswith(".md")} <= nav  # pages are in the nav; images need not be


# ---------------------------------------------------------------------------------------------- slow


def stage(work: Path) -> None:
    """Put the files the blocks name into the working directory (see STAGED)."""
    for cls in sorted(p.name for p in (HYMENOPTERA / "train").iterdir() if p.is_dir()):
        dst = work / "photos" / cls
        dst.mkdir(parents=True)
        for src in sorted((HYMENOPTERA / "train" / cls).iterdir())[:PHOTOS_PER_CLASS]:
            shutil.copy2(src, dst / src.name)
    shutil.copy2(sorted((HYMENOPTERA / "val" / "ants").iterdir())[0], work / "my_photo.jpg")
    shutil.copy2(MNV2_035, work / MNV2_035.name)


@pytest.mark.slow
@pytest.mark.shared
def test_marked_blocks_run(tmp_path):
    if not (HYMENOPTERA / "train").is_dir() or not MNV2_035.is_file():
        pytest.skip(f"needs ../shared (hymenoptera photos and the MobileNetV2 0.35 weights); not found at {SHARED}")
    exe = Path(sys.executable).parent / "edgetl"
    if not exe.is_file():
        pytest.skip(f"the console script is not installed beside {sys.executable} (pip install -e .)")
    blocks = runnable_blocks()
    print("docs test runs:", ", ".join(f"{b.where()} ({len(b.commands)} commands)" for b in blocks))
    work, keras_home = tmp_path / "work", tmp_path / "keras"
    work.mkdir()
    keras_home.mkdir()
    stage(work)
    env = {**os.environ, "KERAS_HOME": str(keras_home), "TF_CPP_MIN_LOG_LEVEL": "2"}
    for b in blocks:
        for line, command in b.commands:
            argv = [str(exe), *shlex.split(command, comments=True)[1:]]
            r = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True)
            tail = "\n".join((r.stdout + r.stderr).splitlines()[-25:])
            assert r.returncode == 0, f"{b.file}:{line}: `{command}` exited {r.returncode}:\n{tail}"

"""Every ```python block of README.md and docs/*.md runs.

The README's blocks run on every backend. The docs pages' blocks run once per CI run, in the torch run (as the
site is built there): they take minutes per backend on 2 cores, and what they claim of each backend is tested
step by step by the suite itself on all three.

A page's blocks run in order in one namespace (a later block may use what an earlier one made), in a fresh
process per page with a timeout, in a scratch folder (files they write land there). A block that must not run is
marked by an HTML comment on the line before its fence, with the reason: `<!-- norun: needs 8 devices -->`.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*$")
NORUN = re.compile(r"^\s*<!--\s*norun:\s*(?P<reason>.*?)\s*-->\s*$")

# Runs the blocks given as JSON on stdin; says which block failed.
RUNNER = r"""
import json, sys, traceback
blocks = json.load(sys.stdin)
scope = {"__name__": "__main__"}
for line, code in blocks:
    print(f"--- block at line {line}", flush=True)
    try:
        exec(compile(code, f"<page line {line}>", "exec"), scope)
    except BaseException:
        traceback.print_exc()
        print(f"FAILED: the block at line {line}", file=sys.stderr, flush=True)
        sys.exit(1)
"""


def blocks(path):
    """[(line, code, norun reason or None)] of every ```python block of a Markdown file."""
    lines = path.read_text().split("\n")
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, start = opening.group("indent"), i
        body, i = [], i + 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{path.name}:{start + 1}: a ```python block never closes"
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = NORUN.match(previous)
        code = textwrap.dedent("\n".join(line[len(indent):] if line.startswith(indent) else line for line in body))
        found.append((start + 1, code, marker.group("reason") if marker else None))
        i += 1
    return found


def test_the_extractor_finds_blocks_and_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```python\nx = 1\n```\n\n<!-- norun: needs 8 devices -->\n```python\ny = 2\n```\n"
                    "\n- item\n\n  ```python\n  z = x + 1\n  ```\n")
    assert blocks(page) == [(3, "x = 1", None), (8, "y = 2", "needs 8 devices"), (14, "z = x + 1", None)]


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_examples_run(page, tmp_path):
    if page.name != "README.md" and keras.backend.backend() != "torch":
        pytest.skip("the docs pages' examples run once per CI run, in the torch run (see the module docstring)")
    found = blocks(page)
    for line, _, reason in found:
        assert reason is None or reason.strip(), f"{page.name}:{line}: a norun marker needs its reason"
    runnable = [(line, code) for line, code, reason in found if reason is None]
    assert runnable, f"{page.name}: every block is marked norun"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    result = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(runnable), cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{page.name}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"

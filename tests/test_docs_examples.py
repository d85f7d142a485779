"""Every ```python block of README.md and docs/*.md runs.

The README's blocks run on every backend. The docs pages' blocks run once per CI run, in the torch run (as the
site is built there): they take minutes per backend on 2 cores, and what they claim of each backend is tested
step by step by the suite itself on all three.

A page's blocks run in order in one namespace (a later block may use what an earlier one made), in a scratch
folder of its own (files they write land there); the pages run one after another in one child process with a
timeout (importing Keras once), Keras's dtype policy and session reset between pages. A block that must not run is
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

# Runs pages given as JSON on stdin ({"page": [[line, code], ...]}), one after another in this process, each
# in its own namespace and folder, Keras's global settings reset between them; writes each page's
# outcome ("ok" or its traceback) to the JSON file named by argv[1].
RUNNER = r"""
import contextlib, io, json, os, pathlib, sys, traceback
import keras
pages, outcomes = json.load(sys.stdin), {}
for name, blocks in pages.items():
    folder = pathlib.Path(name.replace("/", "_")).resolve()
    folder.mkdir()
    os.chdir(folder)
    scope, printed = {"__name__": "__main__"}, io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            for line, code in blocks:
                where = f"the block at line {line}"
                exec(compile(code, f"<{name} line {line}>", "exec"), scope)
        outcomes[name] = "ok"
    except BaseException:
        outcomes[name] = f"{where}:\n{traceback.format_exc()}\nprinted:\n{printed.getvalue()[-2000:]}"
    keras.config.set_dtype_policy("float32")
    keras.utils.clear_session()
pathlib.Path(sys.argv[1]).write_text(json.dumps(outcomes))
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


def _runnable(page):
    found = blocks(page)
    for line, _, reason in found:
        assert reason is None or reason.strip(), f"{page.name}:{line}: a norun marker needs its reason"
    runnable = [(line, code) for line, code, reason in found if reason is None]
    assert runnable, f"{page.name}: every block is marked norun"
    return runnable


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every page this process runs, in one child process (importing Keras once, not once per page)."""
    pages = [p for p in PAGES if blocks(p) and (p.name == "README.md" or keras.backend.backend() == "torch")]
    folder, out = tmp_path_factory.mktemp("pages"), tmp_path_factory.mktemp("outcomes") / "outcomes.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    pages_json = json.dumps({p.relative_to(ROOT).as_posix(): _runnable(p) for p in pages})
    result = subprocess.run([sys.executable, "-c", RUNNER, str(out)], input=pages_json, cwd=folder, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0 and out.exists(), f"the page runner failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_examples_run(page, outcomes):
    if page.name != "README.md" and keras.backend.backend() != "torch":
        pytest.skip("the docs pages' examples run once per CI run, in the torch run (see the module docstring)")
    outcome = outcomes[page.relative_to(ROOT).as_posix()]
    assert outcome == "ok", f"{page.relative_to(ROOT)}: {outcome}"


def test_the_runner_reports_the_failing_block_of_a_page_and_runs_the_next(tmp_path):
    pages = {"a.md": [[3, "x = 1"], [7, "assert x == 2, 'x is 1'"]], "b.md": [[2, "print('fine')"]]}
    out = tmp_path / "out.json"
    result = subprocess.run([sys.executable, "-c", RUNNER, str(out)], input=json.dumps(pages), cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr[-2000:]
    outcomes = json.loads(out.read_text())
    assert outcomes["b.md"] == "ok"
    assert outcomes["a.md"].startswith("the block at line 7:") and "x is 1" in outcomes["a.md"]

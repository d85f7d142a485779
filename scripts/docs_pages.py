"""Generates the documentation site's pages at build time (run by mkdocs-gen-files; see mkdocs.yml).

- index.md: README.md, its links to repository files pointed at their pages in the site.
- api/: one page per name in `keras_optx.__all__` and `keras_optx.torch.__all__` (a mkdocstrings
  `:::` directive each) and an index grouped by kind: a new public name gets its page with no edit here.
- tutorials/: every notebook in tutorials/ executed (one kernel each, backend DOCS_BACKEND) and
  written as Markdown with its printed output and figures.
- gallery.md and gallery/*.png: `python -m keras_optx.gallery` on DOCS_BACKEND.
- benchmarks.md: benchmarks/RESULTS.md (the method and the full tables are hand-written pages in docs/).

The Keras backend for the tutorials and the gallery is the environment's `KERAS_OPTX_DOCS_BACKEND`,
default torch (the fastest here for the gallery's tiny steps). Progress goes to stderr.
"""

import base64
import concurrent.futures
import importlib
import inspect
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import keras
import mkdocs_gen_files

ROOT = pathlib.Path(mkdocs_gen_files.config.config_file_path).resolve().parent
BACKEND = os.environ.get("KERAS_OPTX_DOCS_BACKEND", "torch")
BEGAN = time.perf_counter()
# For editing pages only: KERAS_OPTX_DOCS_FAST=1 runs no notebook and no gallery (their pages say so).
FAST = os.environ.get("KERAS_OPTX_DOCS_FAST") == "1"
sys.path.insert(0, str(ROOT))


def log(message):
    print(f"[docs {time.perf_counter() - BEGAN:5.1f} s] {message}", file=sys.stderr, flush=True)


def child_env():
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    # Tiny models: one OpenMP thread avoids torch's spin-waiting threads starving each other on 2 cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# The gallery runs in its own process while the notebooks execute.
GALLERY_DIR = pathlib.Path(tempfile.mkdtemp(prefix="keras_optx_gallery_"))
log(f"gallery: python -m keras_optx.gallery --out {GALLERY_DIR} (KERAS_BACKEND={BACKEND})")
GALLERY_COMMAND = [sys.executable, "-m", "keras_optx.gallery", "--out", str(GALLERY_DIR)]
if FAST:
    GALLERY_COMMAND += ["--steps", "2", "--functions", "saddle"]
gallery_process = subprocess.Popen(
    GALLERY_COMMAND,
    cwd=GALLERY_DIR,
    env=child_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
)

# Where a page links to a repository file that is a page of the site.
SITE_PAGES = {"benchmarks/RESULTS.md": "benchmarks.md", "README.md": "index.md"}


def relink(text, source):
    """Point `[text](path)` links at site pages (README.md, benchmarks/RESULTS.md, docs/*.md); a link to another
    repository file keeps its text only."""

    def replace(match):
        label, target = match.group(1), match.group(2)
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            return match.group(0)
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(source), path))
        if resolved in SITE_PAGES:
            return f"[{label}]({SITE_PAGES[resolved]}{'#' + anchor if anchor else ''})"
        if resolved.startswith("docs/") and (ROOT / resolved).is_file():  # a hand-written page of the site
            return f"[{label}]({resolved.removeprefix('docs/')}{'#' + anchor if anchor else ''})"
        return label

    return re.sub(r"\[([^\]]*)\]\(([^)\s]+)\)", replace, text)


# Home and benchmarks -------------------------------------------------------------------------------
with mkdocs_gen_files.open("index.md", "w") as f:
    f.write(relink((ROOT / "README.md").read_text(), "README.md"))
mkdocs_gen_files.set_edit_path("index.md", "README.md")

with mkdocs_gen_files.open("benchmarks.md", "w") as f:
    f.write(relink((ROOT / "benchmarks/RESULTS.md").read_text(), "benchmarks/RESULTS.md"))

# API reference -------------------------------------------------------------------------------------
os.environ.setdefault("KERAS_BACKEND", BACKEND)


def kind(obj):
    import keras_optx as ox

    if inspect.ismodule(obj):
        return "Modules"
    if isinstance(obj, type):
        if issubclass(obj, ox.Transform):
            return "Transforms"
        if issubclass(obj, keras.optimizers.schedules.LearningRateSchedule):
            return "Schedules"
        if issubclass(obj, keras.optimizers.Optimizer):
            return "Rules, chains and wrappers"
        if issubclass(obj, keras.callbacks.Callback):
            return "Callbacks"
        return "Classes"
    if callable(obj):
        return "Functions"
    return "Other names"


def summary(obj):
    doc = inspect.getdoc(obj) or ""
    first = doc.split("\n\n")[0].replace("\n", " ").strip()
    return first.replace("|", "\\|")


API = [("keras_optx", "api"), ("keras_optx.torch", "api/torch")]
ORDER = ["Rules, chains and wrappers", "Transforms", "Schedules", "Callbacks", "Functions", "Classes", "Modules", "Other names"]
api_nav = ["api/index.md"]
index = [
    "# API reference\n",
    "Every public name of `keras_optx` and `keras_optx.torch` (their `__all__`), with its formula, defaults, "
    "an example, the paper and how it differs from Keras, torch and optax. Update `x ← x − Δ`, "
    "`g` the gradient, `t = 1, 2, …` the step.\n",
]
for module_name, folder in API:
    module = importlib.import_module(module_name)
    groups = {}
    for name in module.__all__:
        obj = getattr(module, name)
        groups.setdefault(kind(obj), []).append((name, obj))
        page = f"{folder}/{name}.md"
        with mkdocs_gen_files.open(page, "w") as f:
            f.write(f"::: {module_name}.{name}\n")
        source = inspect.getsourcefile(obj if inspect.ismodule(obj) or isinstance(obj, type) or inspect.isfunction(obj) else type(obj))
        if source:
            mkdocs_gen_files.set_edit_path(page, os.path.relpath(source, ROOT))
    index.append(f"\n## `{module_name}`\n")
    section = []
    for group in sorted(groups, key=ORDER.index):
        index.append(f"\n### {group}\n\n| name | |\n| --- | --- |\n")
        pages = []
        for name, obj in groups[group]:
            link = f"{folder.removeprefix('api').lstrip('/')}/{name}.md".lstrip("/")
            index.append(f"| [`{name}`]({link}) | {summary(obj)} |\n")
            pages.append({name: f"{folder}/{name}.md"})
        section.append({group: pages})
    api_nav.append({f"{module_name}": section})
with mkdocs_gen_files.open("api/index.md", "w") as f:
    f.write("".join(index))
log(f"API: {sum(len(importlib.import_module(m).__all__) for m, _ in API)} pages")

# Porting guide: a table row that ends in `<!-- if: NAME, ... -->` is kept only while keras_optx exports
# every NAME (names that other work is adding); every other row's links must resolve (a strict build).
def exported(name):
    module_name, _, attr = ("keras_optx." + name).rpartition(".")
    return attr in getattr(importlib.import_module(module_name), "__all__", ())


rows = []
for line in (ROOT / "docs/porting.md").read_text().split("\n"):
    condition = re.search(r"\s*<!-- if: ([^>]*) -->\s*$", line)
    if condition:
        if not all(exported(n.strip()) for n in condition.group(1).split(",")):
            continue
        line = line[: condition.start()]
    rows.append(line)
with mkdocs_gen_files.open("porting.md", "w") as f:
    f.write("\n".join(rows))

# Tutorials ----------------------------------------------------------------------------------------
import nbclient  # noqa: E402
import nbformat  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def fence(text, language=""):
    text = ANSI.sub("", text).rstrip("\n")
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}{language}\n{text}\n{ticks}\n"


# TensorFlow's and XLA's C++ start-up lines (printed to stderr whatever TF_CPP_MIN_LOG_LEVEL says): not the
# notebook's output. Python warnings stay.
_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\).*|[IWE]\d{4} \d\d:\d\d:\d+\.\d+ .*"
    r"|To enable the following instructions: .*)\n?",
    re.M,
)


def quiet(text):
    return _NOISE.sub("", text)


def notebook_markdown(nb, stem):
    """Markdown cells as they are; code in Python blocks; its output in `output` blocks and images."""
    parts, images = [], {}
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(cell.source + "\n")
            continue
        if cell.cell_type != "code":
            continue
        parts.append(fence(cell.source, "python"))
        text = []
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                text.append(output.text if output.name == "stdout" else quiet(output.text))
            elif output.output_type in ("execute_result", "display_data"):
                data = output.get("data", {})
                if "image/png" in data:
                    if text:
                        parts.append('<div class="nb-output" markdown>\n\n' + fence("".join(text), "text") + "\n</div>\n")
                        text = []
                    name = f"{stem}_{len(images) + 1}.png"
                    images[name] = base64.b64decode(data["image/png"])
                    parts.append(f'<figure class="nb-output" markdown>\n![output of the cell above]({name})\n</figure>\n')
                elif "text/plain" in data:
                    text.append(data["text/plain"] + "\n")
            elif output.output_type == "error":
                raise RuntimeError(f"{stem}: {output.ename}: {output.evalue}")
        if text:
            parts.append('<div class="nb-output" markdown>\n\n' + fence("".join(text), "text") + "\n</div>\n")
    return "\n".join(parts), images


def execute(path):
    began = time.perf_counter()
    nb = nbformat.read(path, as_version=4)
    if not FAST:
        with tempfile.TemporaryDirectory() as scratch:
            client = nbclient.NotebookClient(
                nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": scratch}}
            )
            client.execute(env=child_env())
    return nb, time.perf_counter() - began


# Two kernels at a time: most of a notebook's time is its imports, which overlap well.
NOTEBOOKS = sorted((ROOT / "tutorials").glob("*.ipynb"))
with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    executed = list(pool.map(execute, NOTEBOOKS))

tutorials_nav = []
for path, (nb, seconds) in zip(NOTEBOOKS, executed):
    text, images = notebook_markdown(nb, path.stem)
    note = (
        f"\n!!! note \"Executed for this page\"\n    This is `tutorials/{path.name}`, run on the "
        f"{BACKEND} backend when the site was built; the outputs below are that run's.\n"
    )
    if FAST:
        note = '\n!!! warning "Not executed"\n    This build ran with KERAS_OPTX_DOCS_FAST=1: no outputs.\n'

    # The note goes under the notebook's title.
    head, sep, rest = text.partition("\n")
    with mkdocs_gen_files.open(f"tutorials/{path.stem}.md", "w") as f:
        f.write(head + sep + note + rest if head.startswith("# ") else note + text)
    for name, data in images.items():
        with mkdocs_gen_files.open(f"tutorials/{name}", "wb") as f:
            f.write(data)
    mkdocs_gen_files.set_edit_path(f"tutorials/{path.stem}.md", f"tutorials/{path.name}")
    title = head.removeprefix("# ").strip() if head.startswith("# ") else path.stem
    tutorials_nav.append({title: f"tutorials/{path.stem}.md"})
    log(f"tutorial {path.name}: executed on {BACKEND} in {seconds:.1f} s, {len(images)} figure(s)")

# Gallery ------------------------------------------------------------------------------------------
output, _ = gallery_process.communicate()
if gallery_process.returncode:
    raise RuntimeError(f"python -m keras_optx.gallery failed:\n{output[-3000:]}")
summary_json = json.loads((GALLERY_DIR / "gallery.json").read_text())
page = [
    "# Gallery\n",
    "Every rule of `keras_optx` and `keras_optx.torch`, and a few chains, start from the same point on three "
    "2-D test functions. Each panel is one rule: its path (red) over the function's contours, the start (●) and "
    "the minimum (★). For every rule and function the learning rate η is the one, of "
    f"{', '.join(f'{r:g}' for r in summary_json['rates'])}, with the lowest mean value of the function along the path "
    "(a path that diverges is out); it is written over each panel and in the tables below, with the final value "
    "of the function. Other hyperparameters are the rule's defaults.\n",
    f"Made on the {summary_json['backend']} backend, {summary_json['steps']} steps each, by\n",
    "```\npython -m keras_optx.gallery --out gallery\n```\n",
    "which runs on any backend (`KERAS_BACKEND`) and writes one PNG per function and `gallery.json` (the rates "
    "and final values). The gradients are exact, written in NumPy; the noisy quadratic adds Gaussian noise from "
    "a fixed seed, the same noise for every rule.\n",
]
for fname, info in summary_json["functions"].items():
    page.append(f"\n## {info['title'].split('  ')[0]}\n\n`{info['title']}`, from {tuple(info['start'])}.\n")
    page.append(f"\n[![{info['title']}](gallery/{info['image']})](gallery/{info['image']})\n")
    page.append("\n??? info \"Rates used and final values\"\n\n    | rule | η | final f |\n    | --- | --- | --- |\n")
    for rule in info["rules"]:
        rate = "—" if rule["rate"] is None else f"{rule['rate']:g}"
        page.append(f"    | `{rule['label']}` | {rate} | {rule['final']:.3g} |\n")
with mkdocs_gen_files.open("gallery.md", "w") as f:
    f.write("".join(page))
for png in sorted(GALLERY_DIR.glob("*.png")):
    with mkdocs_gen_files.open(f"gallery/{png.name}", "wb") as f:
        f.write(png.read_bytes())
log(f"gallery: {len(summary_json['functions'])} figures")

# Navigation ---------------------------------------------------------------------------------------
nav = list(mkdocs_gen_files.config.nav)
nav.insert(1, {"Tutorials": tutorials_nav})
nav.insert(2, {"API reference": api_nav})
mkdocs_gen_files.config.nav = nav

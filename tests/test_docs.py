"""The documentation site builds with warnings as errors, and its pages have what they claim.

The build runs once per CI run, on the torch backend only: the site does not depend on the backend the tests
run on (it executes the tutorials and the gallery on torch, KERAS_OPTX_DOCS_BACKEND), and a build takes
1–3 minutes on 2 cores.
"""

import html
import html.parser
import importlib
import inspect
import os
import pathlib
import re
import subprocess
import sys

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the site is the same whatever backend the tests run on: built once, in the torch run",
)
pytest.importorskip("mkdocs", reason="the site needs mkdocs and its plugins (requirements/pinned.txt, or keras-optx[docs])")


class _Page(html.parser.HTMLParser):
    """The text, element ids and image sources of one built page."""

    def __init__(self, path):
        super().__init__()
        self.ids, self.images, self.links, self.text = set(), [], [], []
        self.feed(path.read_text())
        self.text = re.sub(r"\s+", " ", "".join(self.text))

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, DISABLE_MKDOCS_2_WARNING="true", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return out


def _words(text):
    """Letters and digits only, so Markdown (code spans, links, emphasis) reads the same as its HTML."""
    return " ".join(re.findall(r"\w+", text))


def _first_sentence(obj):
    return _words(" ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split()[:8]))


@pytest.mark.parametrize("module_name,folder", [("keras_optx", "api"), ("keras_optx.torch", "api/torch")])
def test_every_public_name_has_its_api_page_with_its_docstring(site, module_name, folder):
    module = importlib.import_module(module_name)
    index = _Page(site / "api/index.html")
    assert module.__all__
    for name in module.__all__:
        page = _Page(site / folder / f"{name}.html")
        assert f"{module_name}.{name}" in page.ids, name  # mkdocstrings' anchor for the object
        assert _first_sentence(getattr(module, name)) in _words(page.text), name
        assert os.path.relpath(f"{folder}/{name}.html", "api") in index.links, name


def test_examples_are_code_and_formulas_keep_their_lines(site):
    page = (site / "api/ADAM.html").read_text()
    assert "&gt;&gt;&gt;" in page and "<blockquote>" not in page  # `>>>` lines as code, not Markdown quotes
    sgd = (site / "api/torch/SGD.html").read_text()
    assert re.search(r"coupled L2\)<br\s*/?>", sgd), "the multi-line formula ran into one line"


def test_gallery_pictures_are_in_the_site(site):
    from keras_optx import gallery

    page = _Page(site / "gallery.html")
    for name in gallery.FUNCTIONS:
        assert f"gallery/{name}.png" in page.images, name
        assert (site / "gallery" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ADAM" in page.text and "η" in page.text  # the rates table


def test_tutorials_are_rendered_with_their_outputs(site):
    notebooks = sorted((ROOT / "tutorials").glob("*.ipynb"))
    assert len(notebooks) >= 5
    figures = 0
    for notebook in notebooks:
        page = _Page(site / "tutorials" / f"{notebook.stem}.html")
        assert "Keras backend: torch" in page.text, notebook.name  # the first cell's printed output
        assert "absl::InitializeLog" not in page.text, notebook.name  # TensorFlow's C++ start-up lines dropped
        for src in page.images:
            assert (site / "tutorials" / src).stat().st_size > 1000, src
        figures += len(page.images)
    assert figures >= 2  # 04's and 05's plots


def test_home_porting_and_benchmark_pages(site):
    home = _Page(site / "index.html")
    assert "Quickstart" in home.text and "benchmarks.html" in home.links
    porting = _Page(site / "porting.html")
    for name in ("ADAM", "Optimiser", "torch/SGD", "torch/AdamW"):
        assert f"api/{name}.html" in {link.split("#")[0] for link in porting.links}, name
    title = (ROOT / "benchmarks/RESULTS.md").read_text().splitlines()[0].lstrip("# ")
    assert title in _Page(site / "benchmarks.html").text


def test_every_topic_page_is_built_and_linked_from_home(site):
    home = _Page(site / "index.html")
    for page in sorted((ROOT / "docs").glob("*.md")):
        built = site / f"{page.stem}.html"
        assert built.exists(), page.name
        title = page.read_text().splitlines()[0].lstrip("# ").strip()
        assert _words(title) in _words(_Page(built).text), page.name
    for topic in ("composition", "control", "porting", "scale", "reliability", "speed", "custom-rules", "rules"):
        assert f"{topic}.html" in home.links, topic
    method = _Page(site / "benchmark-method.html")
    assert "memory floor" in method.text and "benchmark-method.html" in _Page(site / "benchmarks.html").links

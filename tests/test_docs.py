"""The documentation: the Sphinx site builds without a single warning, its code runs, and the README
stays the user's front page with the developer material on the docs pages."""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_sphinx_builds_the_site_without_warnings(tmp_path):
    """What CI builds: ``python -m sphinx -W --keep-going -b html docs OUT`` (numpydoc API reference,
    notebooks rendered from their stored outputs, not executed)."""
    out = tmp_path / "html"
    r = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d",
                        str(tmp_path / "doctrees"), str(DOCS), str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0 and "WARNING" not in r.stderr and "ERROR" not in r.stderr, r.stderr[-4000:]
    # the pieces are there: the API reference from the docstrings, every notebook with its stored outputs
    assert "lrpnumpy.rules.four_steps" in (out / "api" / "rules.html").read_text()
    assert "lrpnumpy.io.from_torch" in (out / "api" / "io.html").read_text()
    pictures = 0
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):  # rendered with every picture stored in it
        stored = sum("image/png" in o.get("data", {}) for c in json.loads(nb.read_text())["cells"]
                     for o in c.get("outputs", []))
        page = (out / "notebooks" / (nb.stem + ".html")).read_text()
        assert page.count("<img") >= stored, f"{nb.name}: {stored} stored pictures, {page.count('<img')} rendered"
        pictures += stored
    assert pictures > 0
    assert "recipe-from-torch" in (out / "own_model.html").read_text()
    # every entry of the API index's summary links to its documented object
    listed = re.findall(r"^   (lrpnumpy\.[\w.]+)$", (DOCS / "api" / "index.rst").read_text(), re.M)
    index = (out / "api" / "index.html").read_text()
    assert len(listed) >= 8 and not [n for n in listed if f"#{n}\"" not in index]


def _blocks(text):
    """The ``.. code-block:: python`` blocks without options (named recipe blocks run in test_recipes)."""
    return ["\n".join(line[4:] for line in block.splitlines())
            for block in re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text)]


PAGES = sorted(p for p in DOCS.glob("*.rst") if _blocks(p.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_code_blocks_of_the_docs_run(page, tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    monkeypatch.chdir(tmp_path)
    for i, code in enumerate(_blocks(page.read_text())):
        exec(compile(code, f"{page.name} code block {i}", "exec"), {})
    plt.close("all")


def test_pages_with_code_are_found():
    assert {p.name for p in PAGES} >= {"methods.rst", "residual.rst", "spray.rst"}


def _test_command(text):
    """The indented line after "Run the tests" (what .ci/run reads from README.rst)."""
    return re.search(r"^Run the tests.*::\n\n    (\S.*)$", text, re.M).group(1)


def test_the_install_page_shows_the_readmes_test_command():
    assert _test_command((DOCS / "install.rst").read_text()) == _test_command((ROOT / "README.rst").read_text())


def test_the_readme_is_the_users_front_page():
    """What a user needs, in this order, and the developer material on docs pages instead (issue 27)."""
    text = (ROOT / "README.rst").read_text()
    titles = re.findall(r"^(\S.*)\n-{3,}$", text, re.M)
    wanted = ["Five-minute tour", "Explain your own model", "The promises", "Results", "How to cite"]
    assert [t for t in titles if t in wanted] == wanted, titles
    assert "python -m lrpnumpy demo" in text and _test_command(text).startswith("pip install -e '.[test")
    for gone in ("Speed\n-----", "Reliability\n-----", "ONNX conformance\n-----", "How it is built\n-----"):
        assert gone not in text, f"{gone.splitlines()[0]!r} belongs on a docs page"
    for page, words in {"speed.rst": "direct kernel", "reliability.rst": "adversarial harness",
                        "onnx_conformance.rst": "averagepool_2d_ceil", "internals.rst": "One driver"}.items():
        assert words in (DOCS / page).read_text(), page
    assert len(text.splitlines()) < 300


def test_the_tours_command_lines_run(tmp_path):
    """The tour's command lines that use shipped files run and exit 0 (the last one is the reader's own)."""
    text = (ROOT / "README.rst").read_text()
    tour = text.split(".. tour-start", 1)[1].split(".. tour-end", 1)[0]
    lines = [line.strip() for line in re.findall(r"^    (lrpnumpy .*)$", tour, re.M) if "lrpnumpy/data/" in line]
    assert len(lines) >= 3
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")
    for line in lines:
        args = [a.replace("lrpnumpy/data/", str(ROOT / "lrpnumpy" / "data") + "/") for a in shlex.split(line)[1:]]
        r = subprocess.run([sys.executable, "-m", "lrpnumpy", *args], capture_output=True, text=True, cwd=tmp_path,
                           env=env, timeout=300)
        assert r.returncode == 0, (line, r.stderr[-2000:])

"""The recipes of ``docs/own_model.rst`` ("Explain your own model") run as written.

The code is read from the page's named code blocks (``:name: recipe-...``), so the page and this
test cannot drift apart; each recipe runs in a fresh folder after the recipes it builds on (one
namespace, as a reader runs them in order), with the files it reads written first.  A recipe is
skipped only when a package it needs is not installed (TensorFlow and tf2onnx are not in the test
extras: the Keras recipe runs where they are).  The README's short version of the recipes is
checked to be made of lines of these blocks.
"""

import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "own_model.rst"

#: recipe -> (the packages it imports, the recipes it continues)
RECIPES = {
    "recipe-from-torch": (["torch"], []),
    "recipe-verify-module": (["torch", "zennit"], ["recipe-from-torch"]),
    "recipe-state-dict": (["torch"], ["recipe-from-torch"]),
    "recipe-onnx-export": (["torch", "onnx", "onnxscript"], ["recipe-from-torch"]),
    "recipe-onnx-export-legacy": (["torch", "onnx"], ["recipe-from-torch", "recipe-onnx-export"]),
    "recipe-keras": (["tensorflow", "tf2onnx", "onnx"], []),
    "recipe-caffe": (["google.protobuf"], []),
    "recipe-lrp-toolbox": ([], []),
}


def blocks(path=PAGE):
    text = path.read_text()
    found = re.findall(r"\.\. code-block:: python\n   :name: (recipe-[\w-]+)\n\n((?:    .*\n|\n)+)", text)
    return {name: "\n".join(line[4:] for line in code.splitlines()) for name, code in found}


def test_every_recipe_on_the_page_is_run_here_and_every_one_run_here_is_on_the_page():
    assert sorted(blocks()) == sorted(RECIPES)
    assert all(code.strip() for code in blocks().values())


def _files_for(name, folder):
    """Write the files a recipe reads (a reader has their own)."""
    if name == "recipe-caffe":
        from test_io_caffe import PROTOTXT, params, write_caffemodel
        (folder / "deploy.prototxt").write_text(PROTOTXT)
        write_caffemodel(folder / "weights.caffemodel", params(np.random.default_rng(0)))
    elif name == "recipe-lrp-toolbox":
        import lrpnumpy as L
        L.io.save_lrp_toolbox(L.zoo.toolbox_lenet(), str(folder / "lenet.txt"))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_runs(name, tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    code = blocks()
    order = RECIPES[name][1] + [name]
    for step in order:
        for package in RECIPES[step][0]:
            pytest.importorskip(package, reason=f"{name} needs {package}, which is not installed")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for step in order:
        _files_for(step, tmp_path)
        exec(compile(code[step], f"{PAGE.name}: {step}", "exec"), namespace)


def test_the_readmes_short_recipes_are_lines_of_the_full_ones():
    """Every code line of the README's "Explain your own model" section appears in a recipe of the
    docs page (up to the names of its variables' sources), so the short version cannot drift."""
    readme = (ROOT / "README.rst").read_text()
    section = readme.split("\nExplain your own model\n", 1)[1].split("\n----", 1)[0].rsplit("\n", 1)[0]
    lines = [line.strip() for line in re.findall(r"^    (\S.*)$", section, re.M)]
    assert len(lines) >= 5
    full = "\n".join(blocks().values())
    stripped = {re.sub(r"\s+#.*$", "", line) for line in full.splitlines()}
    stripped = {line.strip() for line in stripped} | {line.strip() for line in full.splitlines()}
    missing = [line for line in lines if re.sub(r"\s+#.*$", "", line) not in stripped]
    assert not missing, f"README lines not in docs/own_model.rst's recipes: {missing}"

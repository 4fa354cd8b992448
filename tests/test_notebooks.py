"""The notebooks run from top to bottom (code cells executed in order, pictures drawn off-screen)."""

import glob
import json
import os

import pytest

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks", "*.ipynb")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(path) as f:
        cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
    namespace = {}
    for i, cell in enumerate(cells):
        exec(compile("".join(cell["source"]), f"{os.path.basename(path)} cell {i}", "exec"), namespace)
    plt.close("all")
    assert NOTEBOOKS



def _cells(path, kind):
    with open(path) as f:
        return ["".join(c["source"]) for c in json.load(f)["cells"] if c["cell_type"] == kind]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_uses_public_api_and_names_random_weights(path):
    """A notebook shows users what they can call: no private lrpnumpy name (``module._name``); and one
    that builds a random-weight zoo model says so in its text (issue 27)."""
    import re
    from lrpnumpy import zoo
    code, text = "\n".join(_cells(path, "code")), "\n".join(_cells(path, "markdown")).lower()
    private = re.findall(r"\b(?:L|P|M|E|lrpnumpy(?:\.\w+)*|\w+)\._[a-z]\w*", code)
    assert not private, f"private names used: {private}"
    for name in zoo.MODELS:
        if re.search(rf"\b{name}\s*\(", code):
            assert "random" in text, f"{name} has random weights, and the text does not say so"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_stored_outputs_have_no_errors(path):
    """Outputs stored in the .ipynb (executed with nbconvert) are shown next to the text: none is an error."""
    with open(path) as f:
        outputs = [o for c in json.load(f)["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]

def test_readme_quick_start_runs():
    """The README's code blocks run as written."""
    import re
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(os.path.join(os.path.dirname(__file__), "..", "README.rst")) as f:
        text = f.read()
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text)
    assert blocks
    for i, block in enumerate(blocks):
        code = "\n".join(line[4:] for line in block.splitlines())
        exec(compile(code, f"README.rst code block {i}", "exec"), {})
    plt.close("all")

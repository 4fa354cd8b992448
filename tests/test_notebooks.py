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

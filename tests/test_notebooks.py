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

"""Sphinx configuration of lrpnumpy's documentation.

Built in CI with warnings as errors (``tests/test_docs.py``): ``python -m sphinx -W --keep-going -b html
docs OUT``.  The API reference is generated from the docstrings (numpydoc); the notebooks are rendered
with the outputs stored in them, never executed (myst-nb, ``nb_execution_mode = "off"``), so the build
needs neither a Jupyter kernel nor pandoc.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import lrpnumpy  # noqa: E402

project = "lrpnumpy"
author = "the lrpnumpy authors"
copyright = "the lrpnumpy authors"
release = lrpnumpy.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_nb",
]

# the notebooks folder is a link to the repository's notebooks/: rendered with their stored outputs
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath"]
source_suffix = {".rst": "restructuredtext", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "generated/.*"]

autosummary_generate = True
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = False

html_theme = "alabaster"
html_title = f"lrpnumpy {release}"
html_static_path = []

"""Sphinx configuration of the fastbn documentation.

Build: ``pip install ".[docs]"`` then ``python -m sphinx -W -b html docs docs/_build/html``.
The API pages are generated from the docstrings of the installed ``fastbn``
(numpydoc format), so the package must be importable: installed, or built in
place with ``src`` on ``PYTHONPATH``.
"""
import datetime

import fastbn

project = "fastbn"
author = "The fastbn developers"
copyright = f"{datetime.date.today().year}, {author}"
release = fastbn.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
root_doc = "index"

# API reference: one page per public function, written from its docstring.
autosummary_generate = True
autodoc_default_options = {"members": False}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "alabaster"
html_static_path = ["_static"]
html_title = f"fastbn {release}"
html_theme_options = {
    "description": "Fast batch normalization for NumPy neural networks",
    "fixed_sidebar": True,
}

# fastbn.distributed imports mpi4py at import time; the reference pages do not
# need an MPI library to be written.
autodoc_mock_imports = ["mpi4py"]

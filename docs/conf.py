"""Sphinx configuration of the documentation site (``make test`` builds it with ``-W``).

Pages are MyST Markdown. The magics, configuration and error references are generated from the
code by ``_ext/jmk_reference.py``; everything else is written by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

import jupyter_mlflow_k8s

project = "jupyter_mlflow_k8s"
author = "the jupyter_mlflow_k8s authors"
copyright = "the jupyter_mlflow_k8s authors"
version = release = jupyter_mlflow_k8s.__version__

extensions = ["myst_parser", "jmk_reference"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "**/.ipynb_checkpoints"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 6  # the pages link to each other's headings by their GitHub-style slugs

html_theme = "furo"
html_title = "jupyter_mlflow_k8s"
html_static_path: list[str] = []
pygments_style = "sphinx"
smartquotes = False  # keep `--flag` and quotes in messages as typed

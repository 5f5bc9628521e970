"""Sphinx configuration of the taskflow documentation.

Build: ``make docs`` (``sphinx-build -W -b html docs docs/_build/html``: a warning fails it).
The configuration reference and the command-line reference are generated from the code while
building (``docs/_ext/taskflow_docs.py``), so they cannot drift from it.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))   # this checkout's taskflow, installed or not
sys.path.insert(0, str(HERE / '_ext'))

import taskflow  # noqa: E402

project = 'taskflow'
author = 'the taskflow authors'
copyright = 'the taskflow authors, BSD-3-Clause'
version = release = taskflow.__version__

extensions = ['taskflow_docs']

exclude_patterns = ['_build']
templates_path: list[str] = []
html_static_path: list[str] = []
html_theme = 'alabaster'
html_title = f'taskflow {release}'
html_theme_options = {
    'description': 'A distributed task queue, compatible with Celery 5',
    'fixed_sidebar': True,
    'page_width': '1120px',
}

# Every cross-reference must resolve: a :setting: or :ref: to something that does not exist is
# a warning, and -W makes it an error.
nitpicky = True
highlight_language = 'python3'

"""An app for ``t/unit/test_cli.py``: ``taskflow -A t.unit.cli_app ...`` (memory broker and backend)."""
from __future__ import annotations

from taskflow import Taskflow

app = Taskflow('cli_app', broker='memory://', backend='memory://', set_as_current=False)


@app.task
def add(x: int, y: int) -> int:
    return x + y

"""Every unit test starts without TASKFLOW_*/CELERY_* environment settings and leaves the
current/default app and the shared-task list as it found them."""
from __future__ import annotations

import os
from typing import Iterator

import pytest

import taskflow._state as _state


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(('TASKFLOW_', 'CELERY_')):
            monkeypatch.delenv(name)
    saved = (_state._current_app, _state._default_app, list(_state._shared_tasks))
    yield
    _state._current_app, _state._default_app = saved[0], saved[1]
    _state._shared_tasks[:] = saved[2]

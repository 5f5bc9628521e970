"""taskflow: a distributed task queue, API- and wire-compatible with Celery 5."""
from __future__ import annotations

from ._version import __version__
from . import states  # noqa: E402
from ._state import current_app, current_task  # noqa: E402
from .app import Taskflow  # noqa: E402
from .canvas import (Signature, chain, chord, chunks, group, maybe_signature, signature,  # noqa: E402
                     xmap, xstarmap)
from .result import AsyncResult, GroupResult, ResultSet  # noqa: E402
from .task import Task, shared_task  # noqa: E402

#: Celery's name for the app class, so ``from taskflow import Celery`` ports code unchanged.
Celery = Taskflow

__all__ = ['Taskflow', 'Celery', 'Task', 'shared_task', 'current_app', 'current_task',
           'Signature', 'signature', 'maybe_signature', 'chain', 'group', 'chord', 'chunks', 'xmap',
           'xstarmap', 'AsyncResult', 'GroupResult', 'ResultSet',
           'states', '__version__']

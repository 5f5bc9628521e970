"""Process-wide state: the default and current app, and the task running in this context.

The current task and its request live in ``ContextVar``s, so threads of the thread pool each see
their own. ``current_app`` and ``current_task`` are tiny delegates, not a proxy framework.
"""
from __future__ import annotations

import threading
import weakref
from contextvars import ContextVar
from typing import Any, Callable

_current_app: Any = None
_default_app: Any = None
_apps: 'weakref.WeakSet[Any]' = weakref.WeakSet()
_shared_tasks: list[Callable[[Any], Any]] = []
_lock = threading.RLock()

#: The Task instance whose body is running in this context (None outside a task).
current_task_var: ContextVar[Any] = ContextVar('taskflow_current_task', default=None)
#: The worker's task (as opposed to an eagerly applied one) running in this context.
current_worker_task_var: ContextVar[Any] = ContextVar('taskflow_current_worker_task', default=None)


def set_current_app(app: Any) -> None:
    global _current_app
    _current_app = app


def get_current_app() -> Any:
    """The current app; a default one (no broker configured) is made on first use."""
    global _default_app
    if _current_app is not None:
        return _current_app
    with _lock:
        if _default_app is None:
            from .app import Taskflow  # noqa: PLC0415 - only when no app was ever created
            _default_app = Taskflow('default', set_as_current=False)
        return _default_app


def register_app(app: Any) -> None:
    """Record ``app`` and give it every ``@shared_task`` defined so far."""
    with _lock:
        _apps.add(app)
        for register in list(_shared_tasks):
            register(app)


def connect_on_app_finalize(register: Callable[[Any], Any]) -> None:
    """Run ``register(app)`` for every app that exists now and every app made later."""
    with _lock:
        _shared_tasks.append(register)
        for app in list(_apps):
            register(app)


def get_current_task() -> Any:
    return current_task_var.get()


def get_current_worker_task() -> Any:
    return current_worker_task_var.get()


class _Delegate:
    """Forwards attribute access to whatever ``getter()`` returns at that moment."""

    __slots__ = ('_getter',)

    def __init__(self, getter: Callable[[], Any]) -> None:
        object.__setattr__(self, '_getter', getter)

    def _get_current_object(self) -> Any:
        return self._getter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._getter(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._getter(), name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._getter()(*args, **kwargs)

    def __bool__(self) -> bool:
        return bool(self._getter())

    def __eq__(self, other: object) -> bool:
        return self._getter() == other

    def __hash__(self) -> int:
        return hash(self._getter())

    def __repr__(self) -> str:
        return repr(self._getter())


current_app: Any = _Delegate(get_current_app)
current_task: Any = _Delegate(get_current_task)

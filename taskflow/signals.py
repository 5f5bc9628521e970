"""Signals: a small ``Signal`` and every Celery-named signal taskflow sends.

Receivers are called as ``receiver(signal=sig, sender=sender, **named)``. A receiver that raises
is logged and the others still run (Celery's ``send`` behaves the same). Receivers are held by
strong reference: a decorated module-level function, the common case, lives as long anyway, and a
closure connected for a test does not vanish when the garbage collector runs.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

__all__ = ['Signal']

logger = logging.getLogger(__name__)


class Signal:
    """A named hook. ``@sig.connect`` or ``@sig.connect(sender=...)`` subscribes a receiver."""

    def __init__(self, name: str = '', providing_args: Any = None) -> None:
        self.name = name
        self.receivers: list[tuple[Any, Any, Callable[..., Any]]] = []  # (uid, sender, fn)
        self._lock = threading.Lock()

    def connect(self, receiver: Callable[..., Any] | None = None, *, sender: Any = None,
                weak: bool = True, dispatch_uid: Any = None) -> Any:
        """Subscribe ``receiver``; usable as ``@connect`` or ``@connect(sender=...)``."""
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            uid = dispatch_uid if dispatch_uid is not None else id(fn)
            with self._lock:
                if not any(u == uid and s is sender for u, s, _ in self.receivers):
                    self.receivers.append((uid, sender, fn))
            return fn
        return register(receiver) if receiver is not None else register

    def disconnect(self, receiver: Callable[..., Any] | None = None, sender: Any = None,
                   dispatch_uid: Any = None) -> bool:
        uid = dispatch_uid if dispatch_uid is not None else id(receiver)
        with self._lock:
            before = len(self.receivers)
            self.receivers = [r for r in self.receivers if not (r[0] == uid and r[1] is sender)]
            return len(self.receivers) != before

    def _live(self, sender: Any) -> list[Callable[..., Any]]:
        return [fn for _, s, fn in self.receivers if s is None or s is sender or s == sender]

    def send(self, sender: Any = None, **named: Any) -> list[tuple[Callable[..., Any], Any]]:
        """Call every receiver; return ``[(receiver, response_or_exception), ...]``."""
        if not self.receivers:
            return []
        responses = []
        for fn in self._live(sender):
            try:
                responses.append((fn, fn(signal=self, sender=sender, **named)))
            except Exception as exc:  # one bad receiver must not stop the others
                logger.exception('Signal handler %r raised: %r', fn, exc)
                responses.append((fn, exc))
        return responses

    send_robust = send

    def __repr__(self) -> str:
        return f'<Signal: {self.name} receivers={len(self.receivers)}>'


# Task lifecycle
before_task_publish = Signal('before_task_publish')
after_task_publish = Signal('after_task_publish')
task_received = Signal('task_received')
task_prerun = Signal('task_prerun')
task_postrun = Signal('task_postrun')
task_success = Signal('task_success')
task_retry = Signal('task_retry')
task_failure = Signal('task_failure')
task_internal_error = Signal('task_internal_error')
task_revoked = Signal('task_revoked')
task_rejected = Signal('task_rejected')
task_unknown = Signal('task_unknown')

# App
import_modules = Signal('import_modules')

# Worker
celeryd_init = Signal('celeryd_init')
celeryd_after_setup = Signal('celeryd_after_setup')
worker_init = Signal('worker_init')
worker_before_create_process = Signal('worker_before_create_process')
worker_process_init = Signal('worker_process_init')
worker_process_shutdown = Signal('worker_process_shutdown')
worker_ready = Signal('worker_ready')
worker_shutdown = Signal('worker_shutdown')
worker_shutting_down = Signal('worker_shutting_down')
heartbeat_sent = Signal('heartbeat_sent')

# Logging
setup_logging = Signal('setup_logging')
after_setup_logger = Signal('after_setup_logger')
after_setup_task_logger = Signal('after_setup_task_logger')

# Beat
beat_init = Signal('beat_init')
beat_embedded_init = Signal('beat_embedded_init')

# Events and control
eventlet_pool_started = Signal('eventlet_pool_started')
user_preload_options = Signal('user_preload_options')

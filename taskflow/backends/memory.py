"""An in-process result store (``memory://``): for tests and eager runs, never shared."""
from __future__ import annotations

import threading
import time
from typing import Any

from .base import Backend


class MemoryBackend(Backend):
    """Results in a dict of this process, with expiry; ``wait_for`` is woken on store."""

    supports_wakeup = True

    def __init__(self, app: Any, url: str | None = None, **options: Any) -> None:
        super().__init__(app, url)
        self._data: dict[str, tuple[Any, float | None]] = {}
        self._changed = threading.Condition()

    def _get(self, key: str) -> Any:
        value, expires_at = self._data.get(key, (None, None))
        if expires_at is not None and expires_at < time.monotonic():
            self._data.pop(key, None)
            return None
        return value

    def _set(self, key: str, value: Any, ttl: float | None) -> None:
        with self._changed:
            self._data[key] = (value, None if not ttl else time.monotonic() + ttl)
            self._changed.notify_all()

    def _delete(self, key: str) -> None:
        self._data.pop(key, None)

    def wait_for(self, task_id: str, timeout: float | None = None, interval: float = 0.5,
                 on_interval: Any = None) -> dict[str, Any]:
        with self._changed:
            # re-check under the lock, then sleep until a store or the interval passes
            return super().wait_for(task_id, timeout, interval, on_interval)

    def _sleep(self, seconds: float) -> None:
        self._changed.wait(seconds)

"""The result backend: a few storage primitives, and all the logic built on them.

A backend implements ``_get``, ``_mget``, ``_set(key, value, ttl)`` and ``_delete``; this class
does the rest (metas, encoding, groups, polling waits). Wire format: DESIGN.md §4, keys
``celery-task-meta-<id>`` and ``celery-taskset-meta-<gid>``.
"""
from __future__ import annotations

import time
from typing import Any, Iterable

from kombu.serialization import dumps, loads, prepare_accept_content, registry

import taskflow.states as states
from ..config import seconds
from ..exceptions import TimeoutError, TaskRevokedError
from ..protocol import (GROUP_KEYPREFIX, TASK_KEYPREFIX, Context, exception_from_meta,
                        exception_to_meta, result_meta, utcnow)

__all__ = ['Backend', 'DisabledBackend', 'PENDING_META']

PENDING_META: dict[str, Any] = {'status': states.PENDING, 'result': None, 'traceback': None, 'children': [],
                'date_done': None}

E_NO_BACKEND = ('No result backend is configured. Set result_backend (for example '
                "'redis://127.0.0.1:6379/1') to store and read task results.")


class Backend:
    """Shared result-backend logic; subclasses supply the four storage primitives."""

    #: True when chords join without the ``celery.chord_unlock`` polling task.
    supports_native_join = False
    #: ``wait_for``'s polling: ``None`` polls every ``interval``; a local store sets a short first
    #: pause that backs off to ``max_poll_interval``, so a fast task is seen in milliseconds.
    first_poll_interval: float | None = None
    max_poll_interval = 0.5
    #: True when ``wait_for`` is woken by the store rather than polling.
    supports_wakeup = False
    #: True only when no result backend is configured (``DisabledBackend``): chords refuse to start.
    disabled = False

    def __init__(self, app: Any, url: str | None = None, **options: Any) -> None:
        conf = app.conf
        self.app = app
        self.url = url
        self.serializer = conf.result_serializer
        self.accept = prepare_accept_content(conf.result_accept_content or conf.accept_content)
        self.expires = seconds(conf.result_expires)
        self.extended = conf.result_extended
        self.compression = conf.result_compression
        codec = registry._encoders[self.serializer]  # content type of what we store
        self.content_type, self.content_encoding = codec.content_type, codec.content_encoding
        self.keyprefix = self._keyprefix(conf.result_backend_transport_options or {})
        # Ready metas never change again: remember them (bounded) to save round trips.
        self._ready_cache: dict[str, dict[str, Any]] = {}

    @staticmethod
    def _keyprefix(options: dict[str, Any]) -> str:
        prefix = options.get('global_keyprefix') or ''
        if prefix and prefix[-1] not in ':_-.':
            prefix += '_'
        return prefix

    # --- primitives -------------------------------------------------------------------------
    def _get(self, key: str) -> Any:
        raise NotImplementedError

    def _mget(self, keys: list[str]) -> list[Any]:
        return [self._get(k) for k in keys]

    def _set(self, key: str, value: Any, ttl: float | None) -> None:
        raise NotImplementedError

    def _set_result(self, key: str, value: Any, ttl: float | None) -> None:
        """Store a task's state; a backend may return before the store is confirmed, as
        long as its next command on the same connection waits for that confirmation."""
        self._set(key, value, ttl)

    def _delete(self, key: str) -> None:
        raise NotImplementedError

    # --- keys and encoding -------------------------------------------------------------------
    def get_key_for_task(self, task_id: str) -> str:
        return f'{self.keyprefix}{TASK_KEYPREFIX}{task_id}'

    def get_key_for_group(self, group_id: str) -> str:
        return f'{self.keyprefix}{GROUP_KEYPREFIX}{group_id}'

    def encode(self, data: Any) -> Any:
        return dumps(data, serializer=self.serializer)[2]

    def decode(self, payload: Any) -> Any:
        return loads(payload, self.content_type, self.content_encoding, accept=self.accept)

    def prepare_exception(self, exc: BaseException) -> Any:
        return exc if self.serializer == 'pickle' else exception_to_meta(exc)

    def meta_from_decoded(self, meta: dict[str, Any]) -> dict[str, Any]:
        if meta.get('status') in states.EXCEPTION_STATES and meta.get('result') is not None:
            meta['result'] = exception_from_meta(meta['result'])
        return meta

    def decode_meta(self, payload: Any) -> dict[str, Any]:
        return self.meta_from_decoded(self.decode(payload))

    # --- storing ------------------------------------------------------------------------------
    def store_result(self, task_id: str, result: Any, state: str, traceback: str | None = None,
                     request: Context | None = None) -> Any:
        """Store ``result`` under ``state`` for ``task_id``; exceptions in Celery's JSON form."""
        if state in states.EXCEPTION_STATES and isinstance(result, BaseException):
            result = self.prepare_exception(result)
        done = utcnow().isoformat() if state in states.READY_STATES else None
        children = [child.as_tuple() for child in (getattr(request, 'children', None) or [])]
        meta = result_meta(task_id, state, result, traceback, children, done, request, self.extended)
        if request is not None and (request.delivery_info or {}).get('redelivered'):
            # A redelivered message may be re-running a task that succeeded: keep that result.
            if self.get_task_meta(task_id, cache=False)['status'] == states.SUCCESS:
                return result
        self._set_result(self.get_key_for_task(task_id), self.encode(meta), self.expires)
        return result

    def mark_as_started(self, task_id: str, **meta: Any) -> Any:
        return self.store_result(task_id, meta, states.STARTED)

    def mark_as_done(self, task_id: str, result: Any, request: Context | None = None,
                     state: str = states.SUCCESS) -> Any:
        return self.store_result(task_id, result, state, request=request)

    def mark_as_failure(self, task_id: str, exc: BaseException, traceback: str | None = None,
                        request: Context | None = None, state: str = states.FAILURE) -> Any:
        return self.store_result(task_id, exc, state, traceback=traceback, request=request)

    def mark_as_retry(self, task_id: str, exc: BaseException, traceback: str | None = None,
                      request: Context | None = None) -> Any:
        return self.store_result(task_id, exc, states.RETRY, traceback=traceback, request=request)

    def mark_as_revoked(self, task_id: str, reason: str = '', request: Context | None = None) -> Any:
        return self.store_result(task_id, TaskRevokedError(reason), states.REVOKED, request=request)

    # --- reading --------------------------------------------------------------------------------
    def get_task_meta(self, task_id: str, cache: bool = True) -> dict[str, Any]:
        """The stored meta of ``task_id``; ``PENDING`` when there is none."""
        if cache and task_id in self._ready_cache:
            return self._ready_cache[task_id]
        return self.meta_from_payload(task_id, self._get(self.get_key_for_task(task_id)))

    def meta_from_payload(self, task_id: str, payload: Any) -> dict[str, Any]:
        """The meta a stored ``payload`` holds (``PENDING`` for ``None``: nothing stored),
        remembered when it is final."""
        meta = dict(PENDING_META, task_id=task_id) if payload is None else self.decode_meta(payload)
        self._remember(task_id, meta)
        return meta

    def _remember(self, task_id: str, meta: dict[str, Any]) -> None:
        if meta['status'] in states.READY_STATES:
            if len(self._ready_cache) > 1000:
                self._ready_cache.clear()
            self._ready_cache[task_id] = meta

    def get_many_metas(self, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Metas of several tasks in one round trip (ready ones from the cache)."""
        ids = list(task_ids)
        missing = [i for i in ids if i not in self._ready_cache]
        fetched: dict[str, dict[str, Any]] = {}
        if missing:
            for task_id, payload in zip(missing, self._mget([self.get_key_for_task(i) for i in missing])):
                fetched[task_id] = self.meta_from_payload(task_id, payload)
        return {i: fetched[i] if i in fetched else self._ready_cache[i] for i in ids}

    def forget(self, task_id: str) -> None:
        self._ready_cache.pop(task_id, None)
        self._delete(self.get_key_for_task(task_id))

    def wait_for(self, task_id: str, timeout: float | None = None, interval: float = 0.5,
                 on_interval: Any = None) -> dict[str, Any]:
        """Block until ``task_id`` is ready (polling) and return its meta; ``TimeoutError`` after
        ``timeout`` seconds. Polls every ``interval``, or, where ``first_poll_interval`` is set,
        from that pause growing by half up to ``max_poll_interval`` (or ``interval`` if smaller)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.first_poll_interval is None:
            cap = pause = interval
        else:
            cap = max(0.001, min(interval, self.max_poll_interval))
            pause = min(self.first_poll_interval, cap)
        while True:
            meta = self.get_task_meta(task_id)
            if meta['status'] in states.READY_STATES:
                return meta
            if on_interval is not None:
                on_interval()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError('The operation timed out.')
            self._sleep(pause if deadline is None else max(0.0, min(pause, deadline - now)))
            pause = min(pause * 1.5, cap)

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    # --- groups ---------------------------------------------------------------------------------
    def save_group(self, group_id: str, result: Any) -> Any:
        self._set(self.get_key_for_group(group_id), self.encode({'result': result.as_tuple()}), self.expires)
        return result

    def restore_group(self, group_id: str) -> dict[str, Any] | None:
        payload = self._get(self.get_key_for_group(group_id))
        return None if payload is None else self.decode(payload)

    def delete_group(self, group_id: str) -> None:
        self._delete(self.get_key_for_group(group_id))

    # --- chords (backends with a native join override these) --------------------------------
    @property
    def chord_ordered(self) -> bool:
        """Whether a chord body gets its header's results in header order (``result_chord_ordered``,
        which ``result_backend_transport_options`` may override, as in Celery)."""
        options = self.app.conf.result_backend_transport_options or {}
        return bool(options.get('result_chord_ordered', self.app.conf.result_chord_ordered))

    def set_chord_size(self, group_id: str, size: int) -> None:
        """Record a chord's size before its header is sent (native joins only)."""

    def chord_part_return(self, group_id: str, task_id: str, group_index: int | None, state: str,
                          result: Any) -> Any:
        return None

    def chord_cleanup(self, group_id: str, token: str) -> None:
        """Forget a completed chord's join state."""

    def cleanup(self) -> None:
        """Delete expired results (backends without key expiry override this)."""

    def close(self) -> None:
        """Release connections."""


class DisabledBackend(Backend):
    """No ``result_backend`` configured: storing is a no-op, reading raises a clear error."""

    disabled = True

    def __init__(self, app: Any, url: str | None = None, **options: Any) -> None:
        super().__init__(app, url)

    def store_result(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def _get(self, key: str) -> Any:
        raise NotImplementedError(E_NO_BACKEND)

    def _set(self, key: str, value: Any, ttl: float | None) -> None:
        raise NotImplementedError(E_NO_BACKEND)

    def _delete(self, key: str) -> None:
        raise NotImplementedError(E_NO_BACKEND)

    def wait_for(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError(E_NO_BACKEND)

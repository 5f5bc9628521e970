"""Redis result backend: Celery's keys and JSON; SETEX + PUBLISH in one round trip; ``get()``
woken by pub/sub on the result key's own channel, as Celery clients and workers expect.
"""
from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlsplit

import redis

from .. import states
from ..exceptions import ImproperlyConfigured, TimeoutError
from .base import PENDING_META, Backend


def redis_client(url: str, conf: Any) -> redis.Redis:
    """A redis-py client for a Celery-style URL (``redis://``, ``rediss://``, ``redis+socket://``)."""
    if url.startswith('redis+socket://'):
        url = 'unix://' + url[len('redis+socket://'):]
    options: dict[str, Any] = {
        'socket_timeout': conf.redis_socket_timeout,
        'socket_connect_timeout': conf.redis_socket_connect_timeout,
        'socket_keepalive': conf.redis_socket_keepalive,
        'retry_on_timeout': conf.redis_retry_on_timeout,
        'health_check_interval': conf.redis_backend_health_check_interval or 0,
    }
    if conf.redis_max_connections:
        options['max_connections'] = conf.redis_max_connections
    if conf.redis_username:
        options['username'] = conf.redis_username
    if conf.redis_password:
        options['password'] = conf.redis_password
    parts = urlsplit(url)
    if parts.scheme not in ('redis', 'rediss', 'unix'):
        raise ImproperlyConfigured(f'Not a Redis URL: {url!r}')
    return redis.Redis.from_url(url, **options)


class RedisBackend(Backend):
    """Results in Redis strings with a TTL; waits through pub/sub."""

    supports_native_join = True
    supports_wakeup = True

    def __init__(self, app: Any, url: str | None = None, **options: Any) -> None:
        super().__init__(app, url)
        self.client = redis_client(url or 'redis://127.0.0.1:6379/0', app.conf)
        self._local = threading.local()  # pub/sub connections are not thread-safe

    # --- primitives -------------------------------------------------------------------------
    def _get(self, key: str) -> Any:
        return self.client.get(key)

    def _mget(self, keys: list[str]) -> list[Any]:
        return self.client.mget(keys) if keys else []

    def _set(self, key: str, value: Any, ttl: float | None) -> None:
        # One round trip: store and notify together (Celery's readers subscribe to the key).
        pipe = self.client.pipeline(transaction=False)
        if ttl:
            pipe.setex(key, int(ttl), value)
        else:
            pipe.set(key, value)
        pipe.publish(key, value)
        pipe.execute()

    def _delete(self, key: str) -> None:
        self.client.delete(key)

    # --- waiting ------------------------------------------------------------------------------
    def _pubsub(self) -> Any:
        pubsub = getattr(self._local, 'pubsub', None)
        if pubsub is None:
            pubsub = self._local.pubsub = self.client.pubsub(ignore_subscribe_messages=False)
        return pubsub

    def wait_for(self, task_id: str, timeout: float | None = None, interval: float = 0.5,
                 on_interval: Any = None) -> dict[str, Any]:
        """Subscribe to the result key, then read it once; sleep on the channel until the
        worker's PUBLISH arrives. A GET every few seconds guards against a missed message."""
        if task_id in self._ready_cache:
            return self._ready_cache[task_id]
        key = self.get_key_for_task(task_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub: Any = self._pubsub()
        try:
            pubsub.subscribe(key)
            self._await_subscribed(pubsub, key, deadline)
            meta = self.get_task_meta(task_id)
            next_get = time.monotonic() + 5.0
            while meta['status'] not in states.READY_STATES:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise TimeoutError('The operation timed out.')
                wait = 1.0 if deadline is None else min(1.0, deadline - now)
                message = pubsub.get_message(timeout=wait)
                if message and message['type'] == 'message' and _text(message['channel']) == key:
                    meta = self.decode_meta(message['data'])
                    self._remember(task_id, meta)
                elif time.monotonic() >= next_get:
                    meta = self.get_task_meta(task_id)
                    next_get = time.monotonic() + 5.0
                if on_interval is not None and meta['status'] not in states.READY_STATES:
                    on_interval()
            return meta
        except redis.ConnectionError:
            self._reset_pubsub()
            raise
        finally:
            self._unsubscribe(pubsub, key)

    def _unsubscribe(self, pubsub: Any, key: str) -> None:
        if id(getattr(self._local, 'pubsub', None)) != id(pubsub):
            return  # already reset after a connection error
        try:
            pubsub.unsubscribe(key)
        except redis.RedisError:
            self._reset_pubsub()

    def _await_subscribed(self, pubsub: Any, key: str, deadline: float | None) -> None:
        while True:
            wait = 5.0 if deadline is None else max(0.0, min(5.0, deadline - time.monotonic()))
            message = pubsub.get_message(timeout=wait)
            if message is None:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError('The operation timed out.')
                continue
            if message['type'] == 'subscribe' and _text(message['channel']) == key:
                return

    def _reset_pubsub(self) -> None:
        pubsub = getattr(self._local, 'pubsub', None)
        self._local.pubsub = None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:
                pass

    def close(self) -> None:
        self._reset_pubsub()
        self.client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


__all__ = ['RedisBackend', 'redis_client', 'PENDING_META']

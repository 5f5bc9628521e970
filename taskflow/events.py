"""Events in Celery's format, so Flower and ``celery events`` can watch taskflow workers.

An event is a dict with ``type`` (``task-succeeded``, ``worker-heartbeat``, ...), ``hostname``,
``utcoffset``, ``pid``, ``clock`` and ``timestamp`` plus its own fields. It is published to the
``celeryev`` exchange (topic on AMQP, fanout on Redis, as Celery does) with the type as routing
key, dashes turned into dots. Monitors take a worker for gone after two missed heartbeats, so
``freq`` says truthfully how often they come.
"""
from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any, Callable

from kombu import Consumer, Exchange, Producer, Queue

from .protocol import anon_nodename

__all__ = ['EventDispatcher', 'EventReceiver', 'event_exchange', 'utcoffset', 'HEARTBEAT_FREQ']

HEARTBEAT_FREQ = 2.0


def utcoffset() -> float:
    """Hours west of UTC, as Celery reports it."""
    offset = time.altzone if time.daylight and time.localtime().tm_isdst else time.timezone
    return offset // 3600


def event_exchange(connection: Any, name: str = 'celeryev') -> Exchange:
    kind = 'fanout' if connection.transport.driver_type in ('redis', 'gcpubsub') else 'topic'
    return Exchange(name, type=kind, durable=True, delivery_mode='transient')


class EventDispatcher:
    """Publishes events on its own connection. ``groups`` limits which kinds are sent
    (``{'worker'}`` without ``-E``; ``None`` for all)."""

    def __init__(self, app: Any, hostname: str | None = None, connection: Any = None,
                 groups: set[str] | None = None, enabled: bool = True) -> None:
        self.app = app
        self.hostname = hostname or anon_nodename()
        self.connection = connection or app.connection_for_write()
        self.exchange = event_exchange(self.connection, app.conf.event_exchange)
        self.groups = groups
        self.enabled = enabled
        self.pid = os.getpid()
        self.clock = 0
        self._producer: Producer | None = None

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(self.connection.default_channel, exchange=self.exchange,
                                      serializer=self.app.conf.event_serializer, auto_declare=True)
        return self._producer

    def wants(self, type_: str) -> bool:
        return self.enabled and (self.groups is None or type_.split('-', 1)[0] in self.groups)

    def send(self, type_: str, **fields: Any) -> None:
        """Publish one event (dropped, with no error, when its group is not enabled or the
        broker is unreachable: monitoring must never stop the work)."""
        if not self.wants(type_):
            return
        self.clock += 1
        event = dict(fields, type=type_, hostname=self.hostname, utcoffset=utcoffset(), pid=self.pid,
                     clock=self.clock, timestamp=fields.get('timestamp') or time.time())
        try:
            self.producer.publish(event, routing_key=type_.replace('-', '.'), exchange=self.exchange.name,
                                  headers={'hostname': self.hostname}, delivery_mode=1, retry=False)
        except Exception:
            self._producer = None  # reconnect lazily on the next event

    __call__ = send

    def close(self) -> None:
        try:
            self.connection.release()
        except Exception:
            pass


class EventReceiver:
    """Consumes events: ``handlers`` maps an event type (or ``'*'``) to a callable taking the
    event dict. A list body (Celery's buffered ``task.multi``) is split into its events."""

    def __init__(self, app: Any, handlers: dict[str, Callable[[dict[str, Any]], Any]],
                 connection: Any = None, routing_key: str = '#') -> None:
        self.app = app
        self.handlers = handlers
        self.connection = connection or app.connection_for_read()
        conf = app.conf
        self.queue = Queue(f'{conf.event_queue_prefix}.{uuid.uuid4()}',
                           exchange=event_exchange(self.connection, conf.event_exchange),
                           routing_key=routing_key, auto_delete=True, durable=False,
                           exclusive=conf.event_queue_exclusive,
                           message_ttl=conf.event_queue_ttl, expires=conf.event_queue_expires)

    def _on_message(self, body: Any, message: Any) -> None:
        for event in body if isinstance(body, list) else [body]:
            handler = self.handlers.get(event.get('type')) or self.handlers.get('*')
            if handler is not None:
                handler(event)

    def capture(self, limit: int | None = None, timeout: float | None = None) -> None:
        """Handle events until ``limit`` were seen or ``timeout`` seconds pass quietly."""
        seen = [0]

        def count(body: Any, message: Any) -> None:
            seen[0] += len(body) if isinstance(body, list) else 1
            self._on_message(body, message)

        with Consumer(self.connection.default_channel, queues=[self.queue], callbacks=[count],
                      no_ack=True, accept=['json']):
            while limit is None or seen[0] < limit:
                try:
                    self.connection.drain_events(timeout=timeout)
                except socket.timeout:
                    if timeout is not None:
                        return

"""kombu glue: connections from the configuration, queues and routes, the pooled producer
that publishes task messages, and the worker's task consumer.

kombu does the work (connections, retries, serialisation, declaration caching); this module
only decides *where* a message goes, following Celery's rules: a task with no route goes to
``task_default_queue``; a direct exchange without an explicit exchange or routing key is
published through the default exchange ``''`` with the queue name as routing key.
"""
from __future__ import annotations

import atexit
import fnmatch
import os
import queue
import re
import weakref
from typing import Any, Callable, Iterable, Mapping

from kombu import Connection, Consumer, Exchange, Producer, Queue, serialization
from kombu.exceptions import EncodeError, LimitExceeded

import taskflow.transports as transports  # noqa: F401 - registers the sqlite:// transport with kombu

import taskflow.signals as signals
from .config import _import_object, broker_url
from .exceptions import QueueNotFound

__all__ = ['Broker', 'Queues', 'Router', 'connection_for']

_DELIVERY_MODES = {'persistent': 2, 'transient': 1}


def _undeclared(producer: Any, entities: list[Any] | None) -> list[Any] | None:
    """The entities this producer's connection has not declared yet. kombu's own check comes
    after copying and binding each entity, on every publish (a tenth of a ``delay()``); its
    cache is per connection and emptied on reconnect, so skipping what it holds is safe."""
    declared = getattr(getattr(producer, 'connection', None), 'declared_entities', None)
    if not entities or not declared:
        return entities
    return [e for e in entities if not (e.can_cache_declaration and hash(e) in declared)]


def _publish(producer: Any, body: Any, declare: list[Any] | None, args: dict[str, Any],
             properties: dict[str, Any]) -> None:
    """``producer.publish(body, declare=declare, **args, **properties)``, minus kombu's layers in the common
    case: with nothing to declare and no compression, serialise and hand the message straight to
    the channel (the two calls ``Producer.publish`` ends with, so the message is the same);
    those layers (retry wrapping, declaration, keyword shuffling) were a fifth of a ``delay()``.
    A connection error there falls back to ``Producer.publish``, which retries per the policy."""
    declare = _undeclared(producer, declare)
    connection = getattr(producer, 'connection', None)
    if declare or args['compression'] or connection is None:
        producer.publish(body, declare=declare, **args, **properties)
        return
    try:
        channel = producer.channel
        content_type, content_encoding, data = serialization.dumps(body, serializer=args['serializer'])
        props = dict(properties, delivery_mode=args['delivery_mode'])
        if args['expiration'] is not None:
            props['expiration'] = str(int(args['expiration'] * 1000))
        message = channel.prepare_message(data, args['priority'], content_type, content_encoding,
                                          args['headers'], props)
        channel.basic_publish(message, exchange=args['exchange'], routing_key=args['routing_key'],
                              mandatory=False, immediate=False)
    except tuple(connection.connection_errors):
        if not args['retry']:
            raise
        producer.publish(body, declare=declare, **args, **properties)


class ProducerPool:
    """``app.producer_pool``: producers lent to one thread at a time (``acquire(block=True)``,
    then ``release()`` or a ``with`` block), at most ``limit`` of them, each keeping its own
    connection between uses. kombu's ProducerPool gives a producer's connection back after
    every use and takes one again, re-binding the producer, before the next: a fifth of a
    ``delay()`` on RabbitMQ. ``limit`` 0 or None: no pool, a new connection for every use
    (closed on release), as ``broker_pool_limit`` documents."""

    def __init__(self, connect: Callable[[], Connection], limit: int | None) -> None:
        self.limit = limit
        self._connect = connect
        self._idle: list[Producer] = []  # list.append and pop are atomic: no lock on the fast path
        # One token per producer that may be lent: a C queue's get/put cost a tenth of a
        # threading.Semaphore's acquire/release (its Condition is Python code).
        self._room: queue.SimpleQueue[None] | None = None
        if limit:
            self._room = queue.SimpleQueue()
            for _ in range(limit):
                self._room.put(None)

    def acquire(self, block: bool = False, timeout: float | None = None) -> Producer:
        """A producer for this thread alone; ``LimitExceeded`` when ``limit`` are out and
        ``block`` is false (kombu's default) or ``timeout`` passes."""
        room = self._room
        if room is not None:
            try:
                room.get(block, timeout)
            except queue.Empty:
                raise LimitExceeded(self.limit) from None
        try:
            producer = self._idle.pop()
        except IndexError:
            try:
                producer = Producer(self._connect())
            except BaseException:
                if room is not None:
                    room.put(None)
                raise
        producer.release = lambda: self.release(producer)  # type: ignore[method-assign]
        return producer

    def release(self, producer: Producer) -> None:
        """Take ``producer`` back (a second call does nothing)."""
        if producer.__dict__.pop('release', None) is None:
            return
        if self._room is None:
            producer.connection.close()
            return
        self._idle.append(producer)
        self._room.put(None)

    def discard(self, producer: Producer) -> None:
        """Take back a producer whose connection failed: closed, never lent again."""
        if producer.__dict__.pop('release', None) is None:
            return
        try:
            producer.connection.close()
        except Exception:  # noqa: BLE001 - it is broken already; the slot is what matters
            pass
        if self._room is not None:
            self._room.put(None)

    def force_close_all(self) -> None:
        """Close the idle producers' connections."""
        while self._idle:
            self._idle.pop().connection.close()


def connection_for(conf: Any, url: str | None = None, **overrides: Any) -> Connection:
    """A kombu ``Connection`` for ``url`` (the broker in use by default: ``broker_url``, or the
    embedded SQLite file) with the broker settings."""
    options: dict[str, Any] = {
        'transport_options': dict(conf.broker_transport_options or {}),
        'connect_timeout': conf.broker_connection_timeout,
        'heartbeat': conf.broker_heartbeat,
        'login_method': conf.broker_login_method,
        'failover_strategy': conf.broker_failover_strategy,
        'ssl': conf.broker_use_ssl,
    }
    if conf.broker_transport:
        options['transport'] = conf.broker_transport
    options.update(overrides)
    return Connection(url or broker_url(conf), **options)


class Queues(dict):
    """Queue name -> kombu ``Queue``: ``task_queues`` or the default queue, plus queues
    created on demand when ``task_create_missing_queues`` is on."""

    def __init__(self, conf: Any) -> None:
        super().__init__()
        self.conf = conf
        self.max_priority = conf.task_queue_max_priority
        self.default_name = conf.task_default_queue
        configured = conf.task_queues
        if isinstance(configured, Mapping):  # {name: Queue or {exchange, exchange_type, routing_key, ...}}
            configured = [opts if isinstance(opts, Queue) else self._from_options(name, dict(opts))
                          for name, opts in configured.items()]
        if configured:
            for queue in configured:
                self.add(queue)
        else:
            exchange = Exchange(conf.task_default_exchange or self.default_name,
                                type=conf.task_default_exchange_type)
            self.add(Queue(self.default_name, exchange,
                           routing_key=conf.task_default_routing_key or self.default_name,
                           queue_arguments=self._arguments(conf.task_default_queue_type)))

    def _from_options(self, name: str, options: dict[str, Any]) -> Queue:
        exchange = options.pop('exchange', None) or name
        exchange_type = options.pop('exchange_type', None) or self.conf.task_default_exchange_type
        if not isinstance(exchange, Exchange):
            exchange = Exchange(exchange, type=exchange_type)
        options.setdefault('routing_key', name)
        return Queue(name, exchange, **options)

    def _arguments(self, queue_type: str | None) -> dict[str, Any] | None:
        args: dict[str, Any] = {}
        if queue_type == 'quorum':
            args['x-queue-type'] = 'quorum'
        if self.max_priority is not None:
            args['x-max-priority'] = self.max_priority
        return args or None

    def add(self, queue: Queue) -> Queue:
        arguments = getattr(queue, 'queue_arguments', None) or {}
        if self.max_priority is not None and not arguments.get('x-max-priority'):
            queue.queue_arguments = dict(arguments, **{'x-max-priority': self.max_priority})  # type: ignore[attr-defined]
        self[queue.name] = queue
        return queue

    def __missing__(self, name: str) -> Queue:
        if not self.conf.task_create_missing_queues:
            raise QueueNotFound(f'Queue {name!r} missing from task_queues')
        exchange_type = self.conf.task_create_missing_queue_exchange_type or self.conf.task_default_exchange_type
        return self.add(Queue(name, Exchange(name, type=exchange_type), routing_key=name,
                              queue_arguments=self._arguments(self.conf.task_create_missing_queue_type)))

    def select(self, names: Iterable[str]) -> list[Queue]:
        """The queues a worker started with ``-Q names`` consumes (created when missing)."""
        return [self[name] for name in names]

    @property
    def default(self) -> Queue:
        return self[self.default_name]


def _compile_routes(routes: Any) -> list[Callable[..., Any]]:
    """``task_routes`` in any of Celery's forms -> a list of router functions."""
    if routes is None:
        return []
    if isinstance(routes, (Mapping, str)) or callable(routes):
        routes = [routes]
    routers: list[Callable[..., Any]] = []
    for route in routes:
        if isinstance(route, str):
            route = _import_object(route)
        if isinstance(route, Mapping):
            routers.append(_map_router(route))
        elif callable(route):
            routers.append(route)
        else:
            raise TypeError(f'task_routes entry must be a dict, a callable or an import path, not {route!r}')
    return routers


def _map_router(table: Mapping[Any, Any]) -> Callable[..., Any]:
    exact: dict[str, Any] = {}
    patterns: list[tuple[re.Pattern[str], Any]] = []
    for key, route in table.items():
        if isinstance(key, re.Pattern):
            patterns.append((key, route))
        elif any(ch in key for ch in '*?['):
            patterns.append((re.compile(fnmatch.translate(key)), route))
        else:
            exact[key] = route

    def route_by_name(name: str, *args: Any, **kwargs: Any) -> Any:
        if name in exact:
            return exact[name]
        for pattern, route in patterns:
            if pattern.match(name):
                return route
        return None
    return route_by_name


class Router:
    """Resolves where a task message goes: explicit options, then ``task_routes``, then the
    default queue."""

    def __init__(self, conf: Any, queues: Queues) -> None:
        self.queues = queues
        self.routers = _compile_routes(conf.task_routes)

    def route(self, options: dict[str, Any], name: str, args: Any = (), kwargs: Any = None,
              task: Any = None) -> dict[str, Any]:
        if not options.get('queue') and not options.get('exchange'):
            for router in self.routers:
                found = router(name, args, kwargs or {}, options, task=task)
                if found:
                    if isinstance(found, str):
                        found = {'queue': found}
                    options = dict(found, **{k: v for k, v in options.items() if v is not None})
                    break
        queue = options.get('queue')
        if isinstance(queue, str):
            options['queue'] = self.queues[queue]
        elif queue is None and not options.get('exchange'):
            options['queue'] = self.queues.default
        return options


class Broker:
    """The app's broker side: queues, router, connection pool and producer pool."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.conf = app.conf
        self._queues: Queues | None = None
        self._router: Router | None = None
        self._pool: Any = None
        self._producer_pool: Any = None
        _brokers.add(self)

    def _forget_connections(self) -> None:
        # In a forked child the parent's sockets must not be used or closed (closing an AMQP
        # connection would send Connection.Close for the parent): drop them.
        self._pool = None
        self._producer_pool = None

    def close(self) -> None:
        """Close the pooled connections that are not in use."""
        if self._producer_pool is not None:
            self._producer_pool.force_close_all()
        if self._pool is not None:
            self._pool.force_close_all()

    @property
    def queues(self) -> Queues:
        if self._queues is None:
            self._queues = Queues(self.conf)
        return self._queues

    @property
    def router(self) -> Router:
        if self._router is None:
            self._router = Router(self.conf, self.queues)
        return self._router

    def connection(self, url: str | None = None, **overrides: Any) -> Connection:
        return connection_for(self.conf, url, **overrides)

    def connection_for_write(self) -> Connection:
        return self.connection(self.conf.broker_write_url)

    def connection_for_read(self) -> Connection:
        return self.connection(self.conf.broker_read_url)

    @property
    def pool(self) -> Any:
        if self._pool is None:
            self._pool = self.connection_for_write().Pool(self.conf.broker_pool_limit)
        return self._pool

    @property
    def producer_pool(self) -> ProducerPool:
        if self._producer_pool is None:
            self._producer_pool = ProducerPool(self.connection_for_write, self.conf.broker_pool_limit)
        return self._producer_pool

    def publish_task(self, name: str, headers: dict[str, Any], properties: dict[str, Any], body: Any, *,
                     queue: Queue | None = None, exchange: str | Exchange | None = None,
                     routing_key: str | None = None, priority: int | None = None,
                     serializer: str | None = None, compression: str | None = None,
                     delivery_mode: Any = None, expiration: float | None = None,
                     retry: bool | None = None, retry_policy: dict[str, Any] | None = None,
                     producer: Any = None, declare: list[Any] | None = None, **extra: Any) -> None:
        """Publish one task message (Celery's exchange and routing-key rules), retrying per policy."""
        conf = self.conf
        exchange_name = exchange.name if isinstance(exchange, Exchange) else exchange
        if queue is not None:
            if declare is None:
                declare = [queue]
            kind = exchange.type if isinstance(exchange, Exchange) else queue.exchange.type
            if (not exchange_name or not routing_key) and kind == 'direct':
                # Direct routing without both an exchange and a key: the default exchange with
                # the queue's name reaches the queue whatever its bindings (Celery's rule).
                exchange_name, routing_key = '', queue.name
            elif exchange_name is None:
                exchange_name = queue.exchange.name
                routing_key = routing_key or queue.routing_key
        if delivery_mode is None:
            delivery_mode = getattr(queue.exchange, 'delivery_mode', None) if queue is not None else None
            delivery_mode = delivery_mode or conf.task_default_delivery_mode
        delivery_mode = _DELIVERY_MODES.get(delivery_mode, delivery_mode)
        if retry is None:
            retry = conf.task_publish_retry
        retry_policy = dict(conf.task_publish_retry_policy, **(retry_policy or {}))
        if signals.before_task_publish.receivers:
            signals.before_task_publish.send(
                sender=name, body=body, exchange=exchange_name, routing_key=routing_key,
                headers=headers, properties=properties, declare=declare, retry_policy=retry_policy)
        publish_args = dict(
            exchange=exchange_name or '', routing_key=routing_key, serializer=serializer or conf.task_serializer,
            compression=compression or conf.task_compression, headers=headers, priority=priority,
            delivery_mode=delivery_mode, retry=retry, retry_policy=retry_policy, expiration=expiration)
        if producer is not None:
            _publish(producer, body, declare, publish_args, properties)
        else:
            pool = self.producer_pool
            pooled = pool.acquire(block=True)
            try:
                _publish(pooled, body, declare, publish_args, properties)
            except EncodeError:
                pool.release(pooled)  # nothing was sent
                raise
            except BaseException:
                pool.discard(pooled)  # its connection or channel may be half-way through a message
                raise
            pool.release(pooled)
        if signals.after_task_publish.receivers:
            signals.after_task_publish.send(sender=name, body=body, headers=headers,
                                            exchange=exchange_name, routing_key=routing_key)

    def task_consumer(self, channel: Any, queues: list[Queue], on_message: Callable[[Any], Any],
                      prefetch_count: int | None = None) -> Consumer:
        """The worker's consumer: raw messages to ``on_message``; decoding is the worker's job
        so that a bad message can be refused with a clear log line."""
        consumer = Consumer(channel, queues=queues, on_message=on_message, no_ack=False,
                            accept=self.conf.accept_content)
        if prefetch_count is not None:
            consumer.qos(prefetch_count=prefetch_count)
        return consumer

    def purge(self, queue_names: Iterable[str] | None = None) -> int:
        """Delete every waiting message in the given queues (default: the configured ones)."""
        names = list(queue_names) if queue_names else list(self.queues)
        count = 0
        with self.connection_for_write() as conn:
            channel = conn.default_channel
            for name in names:
                queue = self.queues[name](channel)
                try:
                    queue.declare()
                    count += queue.purge() or 0
                except conn.channel_errors:
                    channel = conn.channel()
        return count


#: Every app's broker side, for the two process-wide hooks below (registered once, however
#: many apps a process makes).
_brokers: weakref.WeakSet[Broker] = weakref.WeakSet()


def _forget_connections_in_child() -> None:
    for broker in list(_brokers):
        broker._forget_connections()


def _close_at_exit() -> None:
    """Close the pooled connections properly when the interpreter exits. RabbitMQ drops the
    messages it has read but not routed yet from a connection that just goes away (a script
    that sent 20,000 ``delay()`` calls and exited lost the last ~100 of them one run in two);
    it routes them all before it answers Connection.Close."""
    for broker in list(_brokers):
        try:
            broker.close()
        except Exception:  # noqa: BLE001 - exiting anyway; nobody is left to tell
            pass


os.register_at_fork(after_in_child=_forget_connections_in_child)
atexit.register(_close_at_exit)

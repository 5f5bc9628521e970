"""kombu's Redis transport, with two changes for a consumer that reads many messages.

1. A channel reuses one Redis client, holding one connection, for its synchronous commands.
   kombu builds a fresh ``redis.Redis`` (on the channel's shared pool) for every publish, every
   unacked-index update and every ack; building one costs more than sending the command (about
   15% of a publish, 11% of a worker's time per task, measured with py-spy), and taking a
   connection from the pool and giving it back costs another 25 us per command (an LPUSH: 112 ->
   86 us). A channel is used by one thread at a time, so one connection serves it.

2. Batched delivery, for channels that opt in (``channel.batched = True``; taskflow's worker
   does, and drives the connection with ``drain_events``). kombu spends three round trips per
   message: BRPOP, a MULTI/EXEC that records it in the unacked index, and a MULTI/EXEC per ack.
   A batched channel instead runs one script per ``drain_events`` call that removes the acks
   made since the last call from the unacked index and pops up to the prefetch window's free
   room from the queues, recording each popped message there in the same atomic step (so a
   message is never off the queue without being in the unacked index: a crash restores it as
   kombu would). Only when the queues are empty does it fall back to kombu's blocking BRPOP;
   a message that BRPOP takes is recorded by the next script call, off the path to the pool
   (kombu records it right after the BRPOP: either way there is a short window in which a killed
   worker loses it), and not at all when it is acked first, as the default early ack does.
   The data layout is kombu's (``unacked`` hash, ``unacked_index`` sorted set, the same values),
   so kombu's visibility-timeout restore, and Celery workers on the same Redis, read it as theirs.

3. A publish is one LPUSH written on the channel's connection, and its delivery tag a cheaper
   UUID: kombu's redis-py command call and ``uuid4`` cost 30 us of CPU in a ``delay()``. While
   Redis answers, the publisher polls its socket for a short while before it sleeps on it (see
   ``Channel.publish_spin``).

Everything else is kombu's.
"""
from __future__ import annotations

import itertools
import logging
import select
import time
from typing import Any, Callable

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps
from kombu.utils.objects import cached_property
from redis import ResponseError

from ..protocol import new_id
from . import loads_envelope

__all__ = ['Channel', 'QoS', 'Transport', 'read_replies', 'send_commands']

logger = logging.getLogger(__name__)

#: Most messages one fetch takes when the channel has no prefetch limit.
MAX_BATCH = 100

# KEYS[1] unacked hash. ARGV: unacked index, now, most to pop, number of acked tags, the acked
# tags, number of records, (tag, record) pairs to add, then the queue lists in the order to try.
# Returns {list position, raw message, ...}. A message whose JSON has no delivery tag is
# returned unrecorded (kombu fails on it the same way); pcall keeps a bad message from
# aborting the script after its RPOP.
_FETCH = """
local hash, index, now = KEYS[1], ARGV[1], ARGV[2]
local limit, nacks = tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 5, 4 + nacks do
  redis.call('ZREM', index, ARGV[i])
  redis.call('HDEL', hash, ARGV[i])
end
local first = 6 + nacks
local nrecords = tonumber(ARGV[first - 1])
for i = first, first + 2 * nrecords - 1, 2 do
  redis.call('ZADD', index, now, ARGV[i])
  redis.call('HSET', hash, ARGV[i], ARGV[i + 1])
end
first = first + 2 * nrecords
local out = {}
for k = first, #ARGV do
  while #out < 2 * limit do
    local item = redis.call('RPOP', ARGV[k])
    if not item then break end
    local ok, msg = pcall(cjson.decode, item)
    local props = ok and type(msg) == 'table' and msg['properties']
    local tag = props and props['delivery_tag']
    if type(tag) == 'string' then
      local info = props['delivery_info'] or {}
      redis.call('ZADD', index, now, tag)
      redis.call('HSET', hash, tag, '[' .. item .. ',' .. cjson.encode(info['exchange'] or '') .. ','
                 .. cjson.encode(info['routing_key'] or '') .. ']')
    end
    out[#out + 1] = k - first + 1
    out[#out + 1] = item
  end
end
return out
"""


def send_commands(connection: Any, commands: tuple[tuple[Any, ...], ...],
                  before_reading: Callable[[Any], Any] | None = None, read: bool = True) -> list[Any]:
    """Run ``commands`` on a redis-py ``connection`` in one write and one round trip, retried
    (after a reconnect) per the connection's retry policy, as redis-py runs a command.
    ``before_reading(connection)``, if given, runs between the write and the reads. With
    ``read=False`` only the write is made: the caller reads the replies later, with
    ``read_replies``, before anything else uses the connection."""
    def round_trip() -> list[Any]:
        connection.send_packed_command(connection.pack_commands(commands))
        if not read:
            return []
        if before_reading is not None:
            before_reading(connection)
        return read_replies(connection, len(commands))
    return connection.retry.call_with_retry(round_trip, lambda _: connection.disconnect())


def read_replies(connection: Any, count: int) -> list[Any]:
    """The next ``count`` replies on ``connection``. Every one is read before the first error
    reply is raised: an unread one would answer the next command."""
    replies, error = [], None
    for _ in range(count):
        try:
            replies.append(connection.read_response())
        except ResponseError as exc:
            error = error or exc
    if error is not None:
        raise error
    return replies


def _spin_until_readable(sock: Any, seconds: float) -> bool:
    """Poll ``sock`` without sleeping until it is readable or ``seconds`` have passed."""
    if _poll is None or sock is None:
        return False
    poller = _poll()
    poller.register(sock, select.POLLIN)
    deadline = time.perf_counter() + seconds
    while not poller.poll(0):
        if time.perf_counter() >= deadline:
            return False
    return True


_poll = getattr(select, 'poll', None)  # not on Windows: there a publish sleeps on its reply


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, with a batched channel's bookkeeping: a message the fetch script
    delivered is recorded already; one a BRPOP delivered is recorded with the next fetch (unless
    it is acked first: the default early ack then never touches the index); an ack is sent with
    the next fetch. Both reach Redis before a reject, a restore or the channel's close."""

    def append(self, message: Any, delivery_tag: str) -> None:
        channel = self.channel
        if channel.fetching:
            pass
        elif channel.batched and not channel._closing:  # (closing: kombu restores from the records next)
            info = message.delivery_info
            channel.pending_records[delivery_tag] = dumps([message._raw, info['exchange'], info['routing_key']])
        else:
            return super().append(message, delivery_tag)
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        channel = self.channel
        if not channel.batched:
            return super().ack(delivery_tag)
        if channel.pending_records.pop(delivery_tag, None) is None:  # else never written: nothing to remove
            channel.pending_acks.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self.channel.flush()  # a requeue restores from the unacked record: it must be there
        super().reject(delivery_tag, requeue=requeue)


class Channel(kombu_redis.Channel):
    QoS = QoS
    _sync_client: Any = None
    #: Deliver in batches with deferred acks (see the module docstring). Only for a consumer
    #: that keeps calling ``drain_events``: that is when deferred acks reach Redis.
    batched = False
    #: True while ``fetch`` delivers the messages its script recorded.
    fetching = False
    #: Seconds a publish polls its socket for Redis's reply before it sleeps on it. Sleeping
    #: costs a wake-up when the reply comes, and on a virtual machine that wake-up was a third
    #: of a ``delay()`` (100 -> 71 us a call on loopback Redis; CPU per call unchanged, as the
    #: polling takes the time the wake-up took). A reply that does not come within it (a remote
    #: Redis, a loaded one) turns the polling off for the next ``PUBLISH_SPIN_PAUSE`` publishes.
    publish_spin = 100e-6
    PUBLISH_SPIN_PAUSE = 64
    _spin_paused = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending_acks: list[str] = []
        self.pending_records: dict[str, str] = {}

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:  # a reconnect makes a new pool
            kwargs: dict[str, Any] = {'connection_pool': self.pool, 'single_connection_client': True}
            credential_provider = self.pool.connection_kwargs.get('credential_provider')
            if credential_provider is not None:
                kwargs['credential_provider'] = credential_provider
            client = self._sync_client = self.Client(**kwargs)
        return client

    def _next_delivery_tag(self) -> str:
        return new_id()

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        if kwargs.get('_publish_batch') is not None or (self._expires and queue in self._expires):
            return super()._put(queue, message, **kwargs)  # publish batches, x-expires: kombu's way
        key = self.global_keyprefix + self._q_for_pri(queue, self._get_message_priority(message))
        send_commands(self._create_client().connection, (('LPUSH', key, dumps(message)),),
                      self._await_reply if self.publish_spin else None)

    def _await_reply(self, connection: Any) -> None:
        """Poll for a publish's reply for up to ``publish_spin``; a miss pauses the polling."""
        if self._spin_paused:
            self._spin_paused -= 1
        elif not _spin_until_readable(connection._sock, self.publish_spin):
            self._spin_paused = self.PUBLISH_SPIN_PAUSE

    @cached_property
    def _fetch_script(self) -> Any:
        return self._create_client().register_script(_FETCH)

    def fetch(self) -> int:
        """Send the pending acks and take what the prefetch window allows from the consumed
        queues, delivering each message to its consumer; returns how many were delivered."""
        queues = self.active_queues
        room = self.qos.can_consume_max_estimate() if queues and not self._in_poll else 0
        if room is None:
            room = MAX_BATCH
        if not room or self._expires:  # queues with x-expires keep kombu's path (it refreshes their TTL)
            self.flush()
            return 0
        queues = self._queue_cycle.consume(len(queues))
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        acks, records = self._take_pending()
        prefix = self.global_keyprefix  # kombu's client prefixes only KEYS[1] of a script
        try:
            reply = self._fetch_script(keys=[self.unacked_key], args=[
                prefix + self.unacked_index_key, time.time(), room, len(acks), *acks,
                len(records), *itertools.chain.from_iterable(records.items()), *(prefix + key for key in keys)])
        except Exception:
            self._keep_pending(acks, records)
            raise
        self.fetching = True
        try:
            for position, item in zip(reply[::2], reply[1::2]):
                queue = queues[(position - 1) % len(queues)]
                self._queue_cycle.rotate(queue)
                try:
                    payload = loads_envelope(item)
                except ValueError as exc:  # kombu's BRPOP path would raise out of drain_events
                    logger.error('Dropped an unreadable message from queue %r (not JSON: %s): %.200r',
                                 queue, exc, item)
                    continue
                self.connection._deliver(payload, queue)
        finally:
            self.fetching = False
        return len(reply) // 2

    def flush(self) -> None:
        """Send the pending records and acks to the unacked index now (one round trip)."""
        if not (self.pending_acks or self.pending_records):
            return
        acks, records = self._take_pending()
        try:
            with self.conn_or_acquire() as client:
                pipe = client.pipeline()
                if records:
                    now = time.time()
                    pipe.zadd(self.unacked_index_key, {tag: now for tag in records})
                    pipe.hset(self.unacked_key, mapping=records)
                if acks:
                    pipe.zrem(self.unacked_index_key, *acks).hdel(self.unacked_key, *acks)
                pipe.execute()
        except Exception:
            self._keep_pending(acks, records)
            raise

    def _take_pending(self) -> tuple[list[str], dict[str, str]]:
        acks, records = self.pending_acks, self.pending_records
        self.pending_acks, self.pending_records = [], {}
        return acks, records

    def _keep_pending(self, acks: list[str], records: dict[str, str]) -> None:
        """Put back what a failed call did not send: a later call on this channel, or its close, tries again."""
        self.pending_acks[:0] = acks
        self.pending_records = {**records, **self.pending_records}

    def close(self) -> None:
        # Before kombu restores what was delivered and not acked (from the records) and so that
        # an ack still pending here does not bring its message back after the visibility timeout.
        if not self.closed:
            try:
                self.flush()
            except self.connection_errors:
                pass  # the broker is gone: those messages come back after the visibility timeout
        super().close()
        client, self._sync_client = self._sync_client, None
        if client is not None:
            client.close()  # gives its connection back to the pool, which kombu disconnects


class Transport(kombu_redis.Transport):
    Channel = Channel

    def drain_events(self, connection: Any, timeout: Any = None, **kwargs: Any) -> Any:
        delivered = 0
        channel: Any
        for channel in self.channels or ():
            if channel.batched:
                delivered += channel.fetch()
        if delivered:
            return None
        return super().drain_events(connection, timeout=timeout)

"""kombu's py-amqp transport, with four changes on the hot path.

1. A faster encoder for a message's properties. A Celery task message carries about twenty
   headers; py-amqp writes them with a generic encoder (a ``BytesIO`` per table, an
   ``isinstance`` chain per value) that took a third of a ``delay()`` on RabbitMQ.
   ``Message._serialize_properties`` here writes the same bytes with a join of packed parts,
   for the value types a task message has (``str``, ``int``, ``float``, ``bool``, ``None``,
   ``dict``, ``list``, ``tuple``); for anything else (bytes, ``Decimal``, ``datetime``,
   subclasses) it hands the message to py-amqp's own encoder, errors included.

2. A faster decoder for a delivered message's properties, the same way round: the types a task
   message has are read with ``unpack_from`` and slices; anything else (or anything odd) is
   decoded by py-amqp. It runs in ``frame_handler``, taskflow's reader of inbound frames
   (py-amqp's builds py-amqp's own message class, so it cannot be given a decoder).

3. Batched acks, for channels that opt in (``channel.batched = True``; taskflow's worker does,
   and drives the connection with ``drain_events``). An ack waits until the connection is about
   to wait for the socket (or sends a heartbeat, or closes), and the acks waiting then go out
   as one ``basic.ack`` with ``multiple`` set when they cover every delivery before them, as
   early acks in delivery order do; any others go one by one. An ack frame cost a write and
   woke RabbitMQ for every task.

4. Buffered reads on plain TCP. py-amqp reads each part of a frame (header, payload, end
   octet) with a ``recv`` of exactly its size, and sets and restores the socket's timeout
   around every frame: a delivered message (three frames) took about twenty syscalls, the
   largest cost of a worker's consumer thread. ``BufferedTCPTransport`` takes what the socket
   holds (up to 16 KiB) and leaves the timeout alone while a whole frame is buffered; RabbitMQ
   writes a message's frames together, so one ``recv`` usually reads them all.

Everything else is kombu's and py-amqp's.
"""
from __future__ import annotations

import errno
import select
import socket
from contextlib import nullcontext
from struct import Struct, unpack_from
from typing import Any, Callable, ContextManager

import amqp
import amqp.transport
from amqp import spec
from amqp.exceptions import UnexpectedFrame
from kombu.transport import pyamqp

__all__ = ['BufferedTCPTransport', 'Channel', 'Message', 'SSLTransport', 'Transport', 'decode_properties',
           'encode_properties', 'frame_handler']

_OCTET = Struct('B').pack
_SHORT = Struct('>H').pack
_LONG = Struct('>I').pack
_LONGLONG = Struct('>Q').pack
_STR_HEAD = Struct('>cI').pack
_INT = Struct('>ci').pack
_BIGINT = Struct('>cq').pack
_FLOAT = Struct('>cd').pack


class _Unhandled(Exception):
    """A value this encoder leaves to py-amqp's."""  # as any other error here is


def _table(table: dict[Any, Any]) -> bytes:
    parts: list[bytes] = []
    for key, value in table.items():
        if type(key) is not str:
            raise _Unhandled
        name = key.encode('utf-8', 'surrogatepass')
        parts.append(_OCTET(len(name)))
        parts.append(name)
        _item(value, parts)
    data = b''.join(parts)
    return _LONG(len(data)) + data


def _array(values: list[Any] | tuple[Any, ...]) -> bytes:
    parts: list[bytes] = []
    for value in values:
        _item(value, parts)
    data = b''.join(parts)
    return _LONG(len(data)) + data


def _item(value: Any, parts: list[bytes]) -> None:
    kind = type(value)
    if kind is str:
        data = value.encode('utf-8', 'surrogatepass')
        parts.append(_STR_HEAD(b'S', len(data)))
        parts.append(data)
    elif value is None:
        parts.append(b'V')
    elif kind is bool:
        parts.append(b't\x01' if value else b't\x00')
    elif kind is int:
        parts.append(_INT(b'I', value) if -2147483647 <= value <= 2147483647 else _BIGINT(b'L', value))
    elif kind is float:
        parts.append(_FLOAT(b'd', value))
    elif kind is dict:
        parts.append(b'F')
        parts.append(_table(value))
    elif kind is list or kind is tuple:
        parts.append(b'A')
        parts.append(_array(value))
    else:
        raise _Unhandled


def _shortstr(value: Any) -> bytes:
    data = (value or '').encode('utf-8', 'surrogatepass') if type(value) is str else value or b''
    return _OCTET(len(data)) + data


_ENCODERS = {'s': _shortstr, 'F': lambda value: _table(value or {}), 'o': _OCTET, 'L': _LONGLONG}
# (flag bit, property, encoder) in py-amqp's order; all fourteen fit in one 16-bit flags word.
_LAYOUT = [(1 << (15 - i), name, _ENCODERS[kind]) for i, (name, kind) in enumerate(amqp.Message.PROPERTIES)]
assert len(_LAYOUT) <= 15 and all(kind in _ENCODERS for _, kind in amqp.Message.PROPERTIES)


def encode_properties(properties: dict[str, Any]) -> bytes:
    """The property flags and list of a content header, as py-amqp writes them; ``_Unhandled``
    for a value this encoder does not cover."""
    flags = 0
    parts = [b'']
    for bit, name, encode in _LAYOUT:
        value = properties.get(name)
        if value is not None:
            flags |= bit
            parts.append(encode(value))
    parts[0] = _SHORT(flags)
    return b''.join(parts)


def _text(data: bytes) -> str:
    try:
        return data.decode('utf-8', 'surrogatepass')
    except UnicodeDecodeError:  # py-amqp keeps such a value as bytes
        raise _Unhandled from None


def _read_table(buf: bytes, offset: int) -> tuple[dict[str, Any], int]:
    size, = unpack_from('>I', buf, offset)
    offset += 4
    end = offset + size
    table = {}
    while offset < end:
        length = buf[offset]
        key = _text(buf[offset + 1:offset + 1 + length])
        table[key], offset = _read_value(buf, offset + 1 + length)
    return table, offset


def _read_value(buf: bytes, offset: int) -> tuple[Any, int]:
    kind = buf[offset]
    offset += 1
    if kind == 83:  # S
        size, = unpack_from('>I', buf, offset)
        offset += 4
        return _text(buf[offset:offset + size]), offset + size
    if kind == 86:  # V
        return None, offset
    if kind == 73:  # I
        return unpack_from('>i', buf, offset)[0], offset + 4
    if kind == 70:  # F
        return _read_table(buf, offset)
    if kind == 65:  # A
        size, = unpack_from('>I', buf, offset)
        offset += 4
        end = offset + size
        items = []
        while offset < end:
            item, offset = _read_value(buf, offset)
            items.append(item)
        return items, offset
    if kind == 116:  # t
        return bool(buf[offset]), offset + 1
    if kind == 76 or kind == 108:  # L, l
        return unpack_from('>q', buf, offset)[0], offset + 8
    if kind == 100:  # d
        return unpack_from('>d', buf, offset)[0], offset + 8
    if kind == 115:  # s: RabbitMQ's short int
        return unpack_from('>h', buf, offset)[0], offset + 2
    raise _Unhandled


def decode_properties(buf: bytes, offset: int) -> tuple[dict[str, Any], int]:
    """The basic properties at ``offset`` of a content header, as py-amqp reads them, and the
    offset after them; ``_Unhandled`` for what this decoder does not cover."""
    flags, = unpack_from('>H', buf, offset)
    offset += 2
    properties: dict[str, Any] = {}
    for bit, name, kind in _DECODE_LAYOUT:
        if flags & bit:
            if kind == 's':
                end = offset + 1 + buf[offset]
                properties[name] = _text(buf[offset + 1:end])
                offset = end
            elif kind == 'F':
                properties[name], offset = _read_table(buf, offset)
            elif kind == 'o':
                properties[name] = buf[offset]
                offset += 1
            else:  # L
                properties[name], = unpack_from('>Q', buf, offset)
                offset += 8
    return properties, offset


_DECODE_LAYOUT = [(bit, name, kind) for (bit, name, _), (_, kind) in zip(_LAYOUT, amqp.Message.PROPERTIES)]


class Message(amqp.Message):
    def _serialize_properties(self) -> bytes:
        try:
            return encode_properties(self.properties)
        except Exception:  # noqa: BLE001 - py-amqp's encoder decides, and words any error
            return super()._serialize_properties()

    def _load_properties(self, class_id: int, buf: bytes, offset: int) -> int:
        if class_id == spec.Basic.CLASS_ID:
            try:
                self.properties, offset = decode_properties(buf, offset)
                return offset
            except Exception:  # noqa: BLE001 - py-amqp's decoder decides, and words any error
                pass
        return super()._load_properties(class_id, buf, offset)


_CONTENT_METHODS = frozenset([spec.Basic.Deliver, spec.Basic.GetOk, spec.Basic.Return])


def frame_handler(connection: Any, callback: Callable[[int, Any, bytes, Any], Any]) -> Callable[[Any], bool]:
    """The reader of inbound frames py-amqp's ``Connection`` takes (``frame_handler=``):
    ``on_frame((type, channel, payload))`` passes each complete method to
    ``callback(channel, method_sig, args, message)`` and says True; False while a message
    waits for its content header and body frames, and for heartbeats. Messages are taskflow's
    ``Message`` (the decoder above)."""
    expected: dict[int, int] = {}  # channel -> the frame type it waits for (a method if absent)
    partial: dict[int, Message] = {}

    def on_frame(frame: tuple[int, int, bytes]) -> bool:
        kind, channel, payload = frame
        connection.bytes_recv += 1  # (py-amqp's heartbeat check counts frames)
        if kind == 8:  # heartbeat
            return False
        if kind != expected.get(channel, 1):
            raise UnexpectedFrame(f'Received frame {kind} while expecting type: {expected.get(channel, 1)}')
        if kind == 1:
            method_sig = unpack_from('>HH', payload, 0)
            if method_sig not in _CONTENT_METHODS:
                callback(channel, method_sig, payload, None)
                return True
            partial[channel] = Message(frame_method=method_sig, frame_args=payload)
            expected[channel] = 2
            return False
        message = partial[channel]
        if kind == 2:
            message.inbound_header(payload)
        else:
            message.inbound_body(payload)
        if not message.ready:
            expected[channel] = 3
            return False
        del expected[channel], partial[channel]
        callback(channel, message.frame_method, message.frame_args, message)
        return True

    return on_frame


class Channel(pyamqp.Channel):
    #: Acks wait for the connection's next wait on the socket (see the module docstring).
    batched = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._unsettled: dict[int, None] = {}  # delivery tags not acked or rejected, in order
        self._deferred_acks: list[int] = []
        super().__init__(*args, **kwargs)

    def prepare_message(self, body: Any, priority: Any = None, content_type: Any = None,
                        content_encoding: Any = None, headers: Any = None, properties: Any = None,
                        _Message: type = Message) -> Any:
        return super().prepare_message(body, priority, content_type, content_encoding, headers,
                                       properties, _Message=_Message)

    def _on_basic_deliver(self, consumer_tag: str, delivery_tag: int, redelivered: bool, exchange: str,
                          routing_key: str, msg: Any) -> None:
        if self.batched and consumer_tag not in (self.no_ack_consumers or ()):
            self._unsettled[delivery_tag] = None
        super()._on_basic_deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key, msg)

    def basic_get(self, queue: str = '', no_ack: bool = False, argsig: str = 'Bsb') -> Any:
        message = super().basic_get(queue, no_ack, argsig)
        if message is not None and self.batched and not no_ack:  # a multiple ack must not cover it
            self._unsettled[message.delivery_tag] = None
        return message

    def basic_ack(self, delivery_tag: int, multiple: bool = False, argsig: str = 'Lb') -> Any:
        if not multiple and delivery_tag in self._unsettled:
            if not self._deferred_acks:
                self.connection.channels_with_acks.add(self)
            self._deferred_acks.append(delivery_tag)
            return None
        if multiple:  # (a caller's own multiple ack settles what it covers)
            self.flush_acks()
            for tag in [t for t in self._unsettled if t <= delivery_tag]:
                del self._unsettled[tag]
        return super().basic_ack(delivery_tag, multiple, argsig)

    def basic_reject(self, delivery_tag: int, requeue: bool, argsig: str = 'Lb') -> Any:
        self._unsettled.pop(delivery_tag, None)
        return super().basic_reject(delivery_tag, requeue, argsig)

    def basic_recover(self, requeue: bool = False) -> Any:
        self.flush_acks()
        self._unsettled.clear()
        return super().basic_recover(requeue)

    def flush_acks(self) -> None:
        """Send the acks waiting: one multiple ack for those that cover every earlier delivery,
        one ack for each of the others (behind a held or late-acked delivery)."""
        acks, self._deferred_acks = self._deferred_acks, []
        if not acks:
            return
        waiting, unsettled = set(acks), self._unsettled
        last = None
        for tag in unsettled:
            if tag not in waiting:
                break
            last = tag
        for tag in acks:
            unsettled.pop(tag, None)
        if last is not None:
            super().basic_ack(last, True)
        for tag in sorted(waiting):
            if last is None or tag > last:
                super().basic_ack(tag)

    def close(self, *args: Any, **kwargs: Any) -> Any:
        if self._deferred_acks and self.is_open:
            self.flush_acks()
        return super().close(*args, **kwargs)


#: Longest wait, in seconds, for RabbitMQ's answer to Connection.Close.
CLOSE_TIMEOUT = 10.0
#: Most bytes one read takes beyond what the frame being read needs.
READ_SIZE = 16384
_FRAME_SIZE = Struct('>I').unpack_from
_POLLIN = select.POLLIN | select.POLLERR | select.POLLHUP


class BufferedTCPTransport(amqp.transport.TCPTransport):
    """py-amqp's TCP transport, reading what the socket has rather than a frame part at a time.

    py-amqp keeps the bytes read past a timeout in ``_read_buffer`` already; this keeps the
    bytes read past the current frame there too, so only ``_read`` and ``having_timeout``
    change: a frame that is buffered whole is read without touching the socket."""

    _read_buffer: bytes
    _poller: Any = None

    def frame_buffered(self) -> bool:
        """True when the next frame is here whole: reading it takes no syscall."""
        buffered = self._read_buffer
        return len(buffered) >= 7 and len(buffered) >= 8 + _FRAME_SIZE(buffered, 3)[0]

    def having_timeout(self, timeout: float | None) -> ContextManager[Any]:
        if self.frame_buffered():
            return nullcontext(self.sock)  # no waiting, no timeout
        if timeout is not None and not self._read_buffer:
            # Wait with poll() rather than py-amqp's settimeout() on the socket and back, which
            # costs two more syscalls per wait (a worker waits once per message, a publisher
            # checks for connection.blocked with a zero timeout before every publish).
            if self._poller is None:
                self._poller = select.poll()
                self._poller.register(self.sock, _POLLIN)
            if not self._poller.poll(timeout * 1000):
                raise socket.timeout()
            data = self._quick_recv(READ_SIZE)
            if not data:
                self.connected = False
                raise OSError('Server unexpectedly closed connection')
            self._read_buffer = data
            if self.frame_buffered():
                return nullcontext(self.sock)
        return super().having_timeout(timeout)

    def _read(self, n: int, initial: bool = False, _errnos: tuple[int, ...] = (errno.EAGAIN, errno.EINTR)) -> bytes:
        buffered = self._read_buffer
        if len(buffered) < n:
            recv = self._quick_recv
            try:
                while len(buffered) < n:
                    try:
                        data = recv(max(n - len(buffered), READ_SIZE))
                    except OSError as exc:  # as py-amqp: a signal or a timeout before any byte
                        if exc.errno in _errnos:
                            if initial and self.raise_on_initial_eintr:
                                raise socket.timeout() from None
                            continue
                        raise
                    if not data:
                        raise OSError('Server unexpectedly closed connection')
                    buffered += data
            except BaseException:
                self._read_buffer = buffered
                raise
        self._read_buffer = buffered[n:]
        return buffered[:n]


class Connection(pyamqp.Connection):
    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault('frame_handler', frame_handler)
        self.channels_with_acks: set[Channel] = set()  # batched channels holding acks back
        super().__init__(*args, **kwargs)

    def flush_acks(self) -> None:
        channels, self.channels_with_acks = self.channels_with_acks, set()
        for channel in channels:
            if channel.is_open:
                channel.flush_acks()

    def drain_events(self, timeout: float | None = None) -> None:
        if self.channels_with_acks:
            buffered = getattr(self.transport, 'frame_buffered', None)
            if buffered is None or not buffered():  # about to wait for RabbitMQ: tell it first
                self.flush_acks()
        super().drain_events(timeout)

    def heartbeat_tick(self, rate: int = 2) -> None:
        if self.channels_with_acks:  # (a worker waiting for running tasks calls only this)
            self.flush_acks()
        super().heartbeat_tick(rate)

    def close(self, *args: Any, **kwargs: Any) -> Any:
        if self.channels_with_acks and self.connected:
            self.flush_acks()
        sock = getattr(self.transport, 'sock', None)
        if sock is not None:  # py-amqp waits for Close-OK without a limit: a close at interpreter
            try:              # exit must not hang on a broker that stopped answering
                sock.settimeout(CLOSE_TIMEOUT)
            except OSError:
                pass
        return super().close(*args, **kwargs)

    def Transport(self, host: str, connect_timeout: Any, ssl: Any = False, read_timeout: Any = None,  # noqa: N802 - py-amqp's name
                  write_timeout: Any = None, socket_settings: Any = None, **kwargs: Any) -> Any:
        if ssl:
            return super().Transport(host, connect_timeout, ssl, read_timeout, write_timeout, socket_settings, **kwargs)
        return BufferedTCPTransport(host, connect_timeout=connect_timeout, ssl=ssl, read_timeout=read_timeout,
                                    write_timeout=write_timeout, socket_settings=socket_settings, **kwargs)


class Transport(pyamqp.Transport):
    Connection = Connection


class SSLTransport(pyamqp.SSLTransport):
    Connection = Connection

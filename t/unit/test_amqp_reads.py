"""The read side of ``taskflow.transports.amqp``: ``BufferedTCPTransport`` on a real socket
pair (frames come out whole and in order however the bytes arrive, a timeout keeps what was
read, and a buffered frame is read without waiting), the properties decoder (py-amqp's results,
byte for byte) and the frame handler."""
from __future__ import annotations

import socket
import struct
import types
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterator

import amqp
import pytest
from amqp.exceptions import UnexpectedFrame
from amqp.serialization import decode_properties_basic
from hypothesis import given, settings

from t.unit.test_publish_path import _properties
from taskflow.transports import amqp as tf_amqp
from taskflow.transports.amqp import READ_SIZE, BufferedTCPTransport


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack('>BHI', kind, channel, len(payload)) + payload + b'\xce'


@pytest.fixture
def pair() -> Iterator[tuple[BufferedTCPTransport, socket.socket]]:
    ours, theirs = socket.socketpair()
    transport = BufferedTCPTransport.__new__(BufferedTCPTransport)  # (no AMQP handshake here)
    transport.sock, transport.connected, transport.raise_on_initial_eintr = ours, True, True
    transport._setup_transport()
    yield transport, theirs
    ours.close()
    theirs.close()


def read(transport: BufferedTCPTransport, timeout: float | None = 5.0) -> tuple[int, int, bytes]:
    with transport.having_timeout(timeout):
        return transport.read_frame()


def test_frames_sent_together_are_read_with_one_recv(pair):
    transport, peer = pair
    frames = [(1, 1, b'method'), (2, 1, b'header' * 10), (3, 1, b'body' * 100)]
    peer.sendall(b''.join(frame(*f) for f in frames))
    assert read(transport) == frames[0]
    with pytest.raises(BlockingIOError):  # the socket holds nothing more: one recv took it all
        transport.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    peer.close()
    assert read(transport, timeout=0.01) == frames[1]
    assert read(transport, timeout=0.01) == frames[2]
    with pytest.raises(OSError):
        read(transport)


def test_a_frame_split_across_sends_and_a_timeout_loses_nothing(pair):
    transport, peer = pair
    whole = frame(3, 7, bytes(range(256)) * 3)
    peer.sendall(whole[:5])
    with pytest.raises(socket.timeout):
        read(transport, timeout=0.05)
    peer.sendall(whole[5:500])
    with pytest.raises(socket.timeout):
        read(transport, timeout=0.05)
    peer.sendall(whole[500:] + frame(8, 0, b''))
    assert read(transport) == (3, 7, bytes(range(256)) * 3)
    assert read(transport) == (8, 0, b'')
    assert transport.sock.gettimeout() is None  # py-amqp's default, restored


def test_a_frame_larger_than_one_read(pair):
    transport, peer = pair
    big = b'x' * (READ_SIZE * 3 + 17)
    peer.sendall(frame(3, 1, big) + frame(1, 1, b'next'))
    assert read(transport) == (3, 1, big)
    assert read(transport) == (1, 1, b'next')


# --- the properties decoder and the frame handler ------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(_properties)
def test_properties_decode_as_py_amqp_does(properties: dict[str, Any]) -> None:
    data = b'pad' + amqp.Message(b'', **properties)._serialize_properties() + b'rest'
    expected = decode_properties_basic(data, 3)
    assert tf_amqp.decode_properties(data, 3) == expected
    message = tf_amqp.Message()
    assert message._load_properties(60, data, 3) == expected[1]
    assert message.properties == expected[0]


@pytest.mark.parametrize('value', [b'\xff\xfe', Decimal('1.5'), datetime(2026, 1, 2, 3, 4, 5), {'k': b'\xff'}])
def test_other_values_are_py_amqps_to_decode(value: Any) -> None:
    data = amqp.Message(b'', application_headers={'h': value, 'id': 'x'})._serialize_properties()
    with pytest.raises(tf_amqp._Unhandled):
        tf_amqp.decode_properties(data, 0)
    message = tf_amqp.Message()
    message._load_properties(60, data, 0)
    assert message.properties == decode_properties_basic(data, 0)[0]


def test_the_frame_handler_assembles_messages_per_channel() -> None:
    calls: list[tuple[Any, ...]] = []
    connection = types.SimpleNamespace(bytes_recv=0)
    on_frame = tf_amqp.frame_handler(connection, lambda *args: calls.append(args))
    deliver = struct.pack('>HH', 60, 60) + b'args'
    props = {'content_type': 'application/json', 'application_headers': {'id': 'abc', 'retries': 0}}
    header = struct.pack('>HHQ', 60, 0, 10) + tf_amqp.encode_properties(props)
    assert on_frame((1, 1, deliver)) is False
    assert on_frame((8, 0, b'')) is False  # a heartbeat between a message's frames
    assert on_frame((1, 2, struct.pack('>HH', 60, 11))) is True  # another channel: qos-ok, no content
    assert calls == [(2, (60, 11), struct.pack('>HH', 60, 11), None)]
    assert on_frame((2, 1, header)) is False
    with pytest.raises(UnexpectedFrame):
        on_frame((1, 1, deliver))  # a method while the body is due
    assert on_frame((3, 1, b'0123')) is False
    assert on_frame((3, 1, b'456789')) is True
    channel, method_sig, args, message = calls[-1]
    assert (channel, method_sig, args) == (1, (60, 60), deliver)
    assert isinstance(message, tf_amqp.Message)
    assert message.body == b'0123456789' and message.properties == props
    assert on_frame((1, 1, deliver)) is False  # the channel waits for a method again
    assert on_frame((2, 1, struct.pack('>HHQ', 60, 0, 0) + tf_amqp.encode_properties({}))) is True
    assert calls[-1][3].body == '' and connection.bytes_recv == 9  # (py-amqp's empty body)


def test_a_wait_with_nothing_to_read_times_out_without_touching_the_socket_timeout(pair):
    transport, peer = pair
    for timeout in (0, 0.05):
        with pytest.raises(socket.timeout):
            read(transport, timeout=timeout)
        assert transport.sock.gettimeout() is None
    peer.sendall(frame(1, 1, b'late'))
    assert read(transport, timeout=0) == (1, 1, b'late')


def test_a_closed_peer_is_a_lost_connection(pair):
    transport, peer = pair
    peer.close()
    with pytest.raises(OSError, match='closed'):
        read(transport, timeout=1)
    assert transport.connected is False

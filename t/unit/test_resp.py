"""The RESP2/RESP3 reader of the Redis backend's result subscriber: every value kind
Redis sends on a subscribed connection, and values cut at any byte (a read that ends mid-value
must wait for the rest, never misread)."""
from __future__ import annotations

import pytest
import redis

from taskflow.backends.redis import _parse, _Push

CASES = [
    (b'$5\r\nhello\r\n', b'hello'),
    (b'$0\r\n\r\n', b''),
    (b'$-1\r\n', None),
    (b'_\r\n', None),
    (b':42\r\n', 42),
    (b':-7\r\n', -7),
    (b'+OK\r\n', b'OK'),
    (b'*1\r\n$3\r\n{"}\r\n', [b'{"}']),
    (b'*1\r\n_\r\n', [None]),
    (b'*1\r\n$-1\r\n', [None]),
    (b'*-1\r\n', None),
    (b'>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n', [b'message', b'ch', b'a\r\nb']),
    (b'*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n', [b'subscribe', b'ch', 1]),
    (b'%1\r\n+k\r\n:1\r\n', [b'k', 1]),
    (b'~2\r\n:1\r\n:2\r\n', [1, 2]),
    (b'|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n', b'v'),  # an attribute, then the value it describes
    (b'=8\r\ntxt:abcd\r\n', b'txt:abcd'),
    (b',1.5\r\n', b'1.5'),
    (b'#t\r\n', b't'),
]


@pytest.mark.parametrize('data, expected', CASES)
def test_each_kind_of_value_is_read_whole_and_only_whole(data, expected):
    value, end = _parse(data + b'+next\r\n', 0)
    assert value == expected and end == len(data)
    for cut in range(len(data)):
        with pytest.raises(IndexError):
            _parse(data[:cut], 0)


def test_pushes_are_told_apart_from_replies():
    push, _ = _parse(b'>2\r\n$11\r\nunsubscribe\r\n:0\r\n', 0)
    reply, _ = _parse(b'*2\r\n$11\r\nunsubscribe\r\n:0\r\n', 0)
    assert isinstance(push, _Push) and not isinstance(reply, _Push) and push == reply


def test_error_replies_come_back_as_values():
    for data in (b'-ERR wrong\r\n', b'!9\r\nERR wrong\r\n'):
        value, end = _parse(data, 0)
        assert isinstance(value, redis.ResponseError) and str(value) == 'ERR wrong' and end == len(data)


def test_commands_the_connection_packs_read_back_as_written():
    packed = b''.join(redis.Connection().pack_commands([(b'SUBSCRIBE', b'celery-task-meta-\xc3\xa9')]))
    assert packed == b'*2\r\n$9\r\nSUBSCRIBE\r\n$19\r\ncelery-task-meta-\xc3\xa9\r\n'
    assert _parse(packed, 0) == ([b'SUBSCRIBE', b'celery-task-meta-\xc3\xa9'], len(packed))

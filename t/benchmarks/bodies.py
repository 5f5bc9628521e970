"""The task bodies, written once and registered by both apps under the same names
(``bench.ping``, ``bench.add``, ``bench.xsum``, ``bench.incr``), so both frameworks run the
very same code."""
from __future__ import annotations

import os
from typing import Any

import redis

from t.benchmarks.env import counters_url

_client: Any = None
_client_pid = 0


def _counters() -> Any:
    """One Redis client per process (made after the fork in prefork children)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client, _client_pid = redis.Redis.from_url(counters_url()), os.getpid()
    return _client


def ping() -> str:
    return 'pong'


def add(x: int, y: int) -> int:
    return x + y


def xsum(numbers: list[int]) -> int:
    return sum(numbers)


def incr(key: str) -> None:
    """One Redis INCR: the drain rows count these."""
    _counters().incr(key)


TASKS = {'bench.ping': ping, 'bench.add': add, 'bench.xsum': xsum, 'bench.incr': incr}

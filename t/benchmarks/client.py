"""The client side of one measurement, in a process of its own that imports one framework only:

    python -m t.benchmarks.client {taskflow|celery} '<JSON list of operations>'

Each operation is a dict with ``op`` and its parameters; one JSON line is printed per operation
as soon as it ends: ``{"op": ..., "ok": true, ...values}`` or ``{"op": ..., "ok": false,
"error": ...}``. The first failure ends the process (exit status 1): later operations would only
measure the wreckage. Every wait has a deadline (``timeout`` of the operation).

Operations:
- ``ping`` (timeout): until a ``ping`` task round-trips (the worker is ready);
- ``declare``: declare the default queue (before publishing with no worker running);
- ``publish`` (n): ``n`` ``add.delay()`` calls, timed (after 10 untimed warm-up calls);
- ``enqueue`` (n, key): ``n`` ``incr.delay(key)`` calls (untimed: the worker drains them);
- ``roundtrip`` (n, timeout): ``n`` sequential ``add.delay(1, 1).get()``, after 10 warm-up ones;
- ``chord`` / ``group`` / ``chain`` (size, timeout): the canvas, checked, timed from send to result.
"""
from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from typing import Any, Callable

MODULES = {'taskflow': 't.benchmarks.tf_app', 'celery': 't.benchmarks.celery_app'}


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def op_ping(m: Any, timeout: float = 60.0, **_: Any) -> dict[str, Any]:
    start = time.perf_counter()
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if m.ping.delay().get(timeout=min(3.0, max(0.1, deadline - time.monotonic()))) == 'pong':
                return {'seconds': time.perf_counter() - start}
        except Exception as exc:  # noqa: BLE001 - not ready yet: try again until the deadline
            last = exc
    raise TimeoutError(f'no ping round trip within {timeout}s (last error: {last!r})')


def op_declare(m: Any, **_: Any) -> dict[str, Any]:
    m.declare_queue()
    return {}


def op_publish(m: Any, n: int, **_: Any) -> dict[str, Any]:
    for i in range(10):
        m.add.delay(i, i)
    start = time.perf_counter()
    for i in range(n):
        m.add.delay(i, i)
    seconds = time.perf_counter() - start
    return {'seconds': seconds, 'rate': n / seconds}


def op_enqueue(m: Any, n: int, key: str, **_: Any) -> dict[str, Any]:
    start = time.perf_counter()
    for _ in range(n):
        m.incr.delay(key)
    return {'seconds': time.perf_counter() - start}


def op_roundtrip(m: Any, n: int, timeout: float = 10.0, **_: Any) -> dict[str, Any]:
    for _ in range(10):
        m.add.delay(1, 1).get(timeout=timeout)
    times: list[float] = []
    for _ in range(n):
        start = time.perf_counter()
        value = m.add.delay(1, 1).get(timeout=timeout)
        times.append(time.perf_counter() - start)
        if value != 2:
            raise AssertionError(f'add(1, 1) returned {value!r}')
    return {'p50_ms': _percentile(times, 50) * 1000, 'p99_ms': _percentile(times, 99) * 1000,
            'mean_ms': sum(times) / len(times) * 1000}


def _timed(send: Callable[[], Any], timeout: float, expected: Any) -> dict[str, Any]:
    start = time.perf_counter()
    value = send().get(timeout=timeout)
    seconds = time.perf_counter() - start
    if value != expected:
        shown = value if len(repr(value)) < 200 else f'{repr(value)[:200]}...'
        raise AssertionError(f'wrong result: {shown!r}')
    return {'seconds': seconds}


def op_chord(m: Any, size: int, timeout: float, **_: Any) -> dict[str, Any]:
    header = [m.add.s(i, i) for i in range(size)]
    return _timed(lambda: m.chord(header)(m.xsum.s()), timeout, size * (size - 1))


def op_group(m: Any, size: int, timeout: float, **_: Any) -> dict[str, Any]:
    canvas = m.group(m.add.s(i, i) for i in range(size))
    return _timed(canvas.apply_async, timeout, [2 * i for i in range(size)])


def op_chain(m: Any, size: int, timeout: float, **_: Any) -> dict[str, Any]:
    canvas = m.chain(m.add.s(0, 1), *(m.add.s(1) for _ in range(size - 1)))
    return _timed(canvas.apply_async, timeout, size)


OPS: dict[str, Callable[..., dict[str, Any]]] = {
    'ping': op_ping, 'declare': op_declare, 'publish': op_publish, 'enqueue': op_enqueue,
    'roundtrip': op_roundtrip, 'chord': op_chord, 'group': op_group, 'chain': op_chain,
}


def main(argv: list[str]) -> int:
    framework, ops = argv[0], json.loads(argv[1])
    module = importlib.import_module(MODULES[framework])
    for spec in ops:
        name = spec['op']
        params = {k: v for k, v in spec.items() if k not in ('op', 'label')}
        line: dict[str, Any] = {'op': name, 'label': spec.get('label', name)}
        try:
            line.update(OPS[name](module, **params), ok=True)
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which marks the row failed
            line.update(ok=False, error=f'{type(exc).__name__}: {exc}'[:500], traceback=traceback.format_exc()[-3000:])
        print(json.dumps(line), flush=True)
        if not line['ok']:
            return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

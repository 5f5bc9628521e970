"""The quickstart demo: start a real worker for ``proj.tasks``, send it a few tasks, print their
results, stop the worker. Every wait has a deadline; the worker is stopped on every path.

Run from anywhere: ``python examples/quickstart/run_demo.py`` (``make quickstart`` does, after
starting Redis). Exit status 0 when every result was as expected.

The broker and backend are ``proj.tasks``'s (Redis DBs 0 and 1) unless ``TASKFLOW_BROKER_URL``,
``TASKFLOW_RESULT_BACKEND`` (and ``TASKFLOW_TASK_DEFAULT_QUEUE``) say otherwise; the worker
inherits the same environment, so both sides always agree.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent.parent)]  # proj, and the examples package

from examples.demo_worker import run_demo  # noqa: E402
from proj.tasks import add, app, fail, flaky  # noqa: E402

RESULT_TIMEOUT = 20.0


def check_redis(url: str) -> None:
    """Fail with one clear line when the Redis server of ``url`` does not answer."""
    if not url.startswith('redis'):
        return
    import redis  # noqa: PLC0415 - a dependency of taskflow

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise SystemExit(f'demo: Redis at {url} does not answer ({exc}). '
                         'Start it first (make quickstart does), or set TASKFLOW_BROKER_URL.') from None
    finally:
        client.close()


def run() -> int:
    """Send the demo tasks; print one line per result. Returns the number of surprises."""
    surprises = 0

    result = add.delay(2, 2)
    value = result.get(timeout=RESULT_TIMEOUT)
    print(f'add(2, 2) = {value!r}  [{result.state}, task {result.id}]', flush=True)
    surprises += value != 4

    result = fail.delay('boom')
    try:
        value = result.get(timeout=RESULT_TIMEOUT)
    except ValueError as exc:
        print(f"fail('boom') raised {type(exc).__name__}: {exc}  [{result.state}, task {result.id}]", flush=True)
    else:
        print(f"fail('boom') returned {value!r}: expected a ValueError", flush=True)
        surprises += 1

    result = flaky.delay(2)
    value = result.get(timeout=RESULT_TIMEOUT)
    print(f'flaky(2) = {value!r} after {value} retries  [{result.state}, task {result.id}]', flush=True)
    surprises += value != 2
    return surprises


def main() -> int:
    print(f'broker:  {app.conf.broker_url}\nbackend: {app.conf.result_backend}', flush=True)
    check_redis(app.conf.broker_url)
    check_redis(app.conf.result_backend)
    return run_demo(app, 'proj.tasks', path=HERE, cwd=HERE, body=run,
                    probe=lambda: add.delay(0, 0).get(timeout=2) == 0)


if __name__ == '__main__':
    sys.exit(main())

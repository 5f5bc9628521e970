"""Integration harness: real Redis and RabbitMQ, real worker processes started through the CLI.

Fixtures:
- ``broker`` (parametrised ``redis`` / ``amqp``): configures ``t.integration.tasks.app`` for that
  broker (results always in Redis) with a queue of its own, and yields the broker name;
- ``worker``: one worker process per broker for the test module, ready when a ``ping`` round-trips;
- ``start_worker(*args, env=...)``: a fresh worker process with extra CLI arguments, stopped at
  the end of the test (``w.stop()`` returns its exit code; ``w.log()`` its output).

Redis DBs 2 and 3 and the RabbitMQ vhost ``taskflow-test`` belong to these tests; set
``TF_TEST_REDIS_DBS=4,5`` and ``TF_TEST_VHOST=other`` to run a second suite side by side.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
VHOST = os.environ.get('TF_TEST_VHOST', 'taskflow-test')
_DB_BROKER, _DB_BACKEND = os.environ.get('TF_TEST_REDIS_DBS', '2,3').split(',')
REDIS_BROKER_URL = f'redis://127.0.0.1:6379/{_DB_BROKER}'
REDIS_BACKEND_URL = f'redis://127.0.0.1:6379/{_DB_BACKEND}'
AMQP_URL = f'amqp://guest:guest@127.0.0.1:5672/{VHOST}'
BROKERS = {'redis': REDIS_BROKER_URL, 'amqp': AMQP_URL}
TASKFLOW = [sys.executable, '-m', 'taskflow']


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
             message: str = 'condition') -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout}s waiting for {message}')
        time.sleep(interval)


@pytest.fixture(scope='session', autouse=True)
def services() -> Iterator[None]:
    """Check the services are there and prepare our Redis DBs and RabbitMQ vhost."""
    for url in (REDIS_BROKER_URL, REDIS_BACKEND_URL):
        redis.Redis.from_url(url).flushdb()
    ctl = shutil.which('rabbitmqctl')
    if ctl is None:
        pytest.fail('rabbitmqctl not found: RabbitMQ must be installed (.ci/run installs it)')
    subprocess.run([ctl, 'add_vhost', VHOST], capture_output=True, timeout=60)
    subprocess.run([ctl, 'set_permissions', '-p', VHOST, 'guest', '.*', '.*', '.*'],
                   check=True, capture_output=True, timeout=60)
    yield
    for url in (REDIS_BROKER_URL, REDIS_BACKEND_URL):
        redis.Redis.from_url(url).flushdb()


def broker_env(broker: str, queue: str) -> dict[str, str]:
    return {'TF_TEST_BROKER': BROKERS[broker], 'TF_TEST_BACKEND': REDIS_BACKEND_URL, 'TF_TEST_QUEUE': queue}


def configure_app(broker: str, queue: str) -> Any:
    from t.integration import tasks
    tasks.app.close()
    tasks.app.conf.update(broker_url=BROKERS[broker], result_backend=REDIS_BACKEND_URL,
                          task_default_queue=queue)
    tasks.app.close()  # drop clients made for the previous settings
    return tasks.app


@pytest.fixture(scope='module', params=['redis', 'amqp'])
def broker_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope='module')
def queue_name(broker_name: str) -> str:
    return f'tf-test-{broker_name}-{uuid.uuid4().hex[:8]}'


@pytest.fixture
def broker(broker_name: str, queue_name: str) -> Iterator[str]:
    configure_app(broker_name, queue_name)
    yield broker_name


class WorkerProcess:
    """A ``taskflow worker`` subprocess with its output in a file."""

    def __init__(self, args: list[str], env: dict[str, str], logpath: Path) -> None:
        self.logpath = logpath
        self._logfile = open(logpath, 'wb')
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._logfile,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.logpath.read_text(errors='replace')

    def wait_ready(self, timeout: float = 30.0, queue: str | None = None) -> None:
        """Wait until a ``ping`` sent to ``queue`` (default: the app's default queue) round-trips."""
        from t.integration import tasks
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f'worker exited with {self.proc.returncode}:\n{self.log()}')
            try:
                assert tasks.ping.apply_async(queue=queue).get(timeout=2) == 'pong'
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError(f'worker not ready after {timeout}s:\n{self.log()}') from None

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f'worker did not exit within {timeout}s:\n{self.log()}') from None

    def stop(self, timeout: float = 30.0) -> int:
        """Warm shutdown (SIGTERM); kill the process group if it hangs. Returns the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._logfile.close()
        return self.proc.returncode


@pytest.fixture
def start_worker(broker: str, queue_name: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start a worker for this test's broker with extra CLI arguments."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True,
              queue: str | None = None) -> WorkerProcess:
        full_env = {**os.environ, **broker_env(broker, queue or queue_name), **(env or {})}  # env wins
        full_env['PYTHONPATH'] = str(ROOT) + os.pathsep + full_env.get('PYTHONPATH', '')
        cmd = [*TASKFLOW, '-A', 't.integration.tasks', 'worker', '-l', 'INFO', '-c', '2',
               '-n', f'tf-{uuid.uuid4().hex[:6]}@%h', *args]
        w = WorkerProcess(cmd, full_env, tmp_path / f'worker-{len(started)}.log')
        started.append(w)
        if ready:
            w.wait_ready(queue=queue)
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture(scope='module')
def worker(broker_name: str, queue_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One worker per broker for the whole module (prefork, 2 processes)."""
    configure_app(broker_name, queue_name)
    env = dict(os.environ, **broker_env(broker_name, queue_name))
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    cmd = [*TASKFLOW, '-A', 't.integration.tasks', 'worker', '-l', 'INFO', '-c', '2',
           '-n', f'tf-module-{uuid.uuid4().hex[:6]}@%h']
    w = WorkerProcess(cmd, env, tmp_path_factory.mktemp('worker') / 'worker.log')
    w.wait_ready()
    yield w
    assert w.stop() == 0, w.log()


# --- helpers for tests that need queues, node names or broker-side counts of their own -------
HOSTNAME = __import__('socket').gethostname()


def queue_length(name: str) -> int:
    """Messages ready in queue ``name`` on the test app's broker (not counting unacked ones):
    a passive declare, so the RabbitMQ count or kombu's ``LLEN`` over the Redis priority lists."""
    from t.integration import tasks
    with tasks.app.connection() as conn:
        try:
            _, count, _ = conn.default_channel.queue_declare(queue=name, passive=True)
        except conn.channel_errors:
            if conn.transport.driver_type == 'redis':
                return 0  # kombu's Redis transport: an empty queue is a missing key
            raise
    return count


def delete_queue(name: str) -> None:
    """Delete queue ``name`` and its exchange of the same name on the test app's broker."""
    from kombu import Exchange, Queue

    from t.integration import tasks
    with tasks.app.connection() as conn:
        channel = conn.default_channel
        for entity in (Queue(name, Exchange(name), routing_key=name), Exchange(name)):
            try:
                entity.bind(channel).delete()
            except conn.channel_errors:
                channel = conn.channel()  # AMQP closes the channel on an error
            except Exception:  # noqa: BLE001 - best-effort clean-up
                pass


@pytest.fixture
def own_queue(broker: str, queue_name: str) -> Iterator[str]:
    """A queue for this test only: the test app sends there by default (so ``start_worker(...,
    queue=own_queue)`` gets a worker no other test's messages reach); deleted afterwards."""
    name = f'tf-test-{broker}-own-{uuid.uuid4().hex[:8]}'
    configure_app(broker, name)
    yield name
    delete_queue(name)
    configure_app(broker, queue_name)


def count_lines(text: str, *needles: str) -> int:
    """Lines of ``text`` containing every one of ``needles``."""
    return sum(1 for line in text.splitlines() if all(n in line for n in needles))


def nodename_of(w: WorkerProcess) -> str:
    """The node name a worker printed in its start-up banner (``taskflow <version> worker <node>``)."""
    import re
    found = re.search(r'^taskflow \S+ worker (\S+)$', w.log(), re.MULTILINE)
    assert found, f'no banner in the worker output:\n{w.log()}'
    return found.group(1)


def raw_meta(task_id: str) -> dict[str, Any] | None:
    """The meta stored for ``task_id``, read straight from the backend Redis DB (None if absent)."""
    import json
    client = redis.Redis.from_url(REDIS_BACKEND_URL)
    try:
        payload = client.get(f'celery-task-meta-{task_id}')
    finally:
        client.close()
    return None if payload is None else json.loads(payload)


# --- helpers for test_worker_semantics.py / test_flower.py -------------------------------------
def free_port() -> int:
    """A TCP port nobody listens on right now (for servers the tests start)."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_cli(broker: str, queue: str, *args: str, timeout: float = 60.0,
            command: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m taskflow -A t.integration.tasks ARGS`` (or ``command + ARGS``) with the
    test broker's environment; returns the completed process (text output)."""
    env = {**os.environ, **broker_env(broker, queue)}
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    cmd = [*(command or [*TASKFLOW, '-A', 't.integration.tasks']), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


class EventCollector:
    """Collects the events on the ``celeryev`` exchange of the test app's broker, in a thread
    with a connection of its own (``with EventCollector() as ev: ...``; ``ev.events`` is the
    list, a buffered ``task.multi`` list already split). Bound before ``__enter__`` returns,
    so nothing published afterwards is missed."""

    def __init__(self) -> None:
        import threading

        from t.integration import tasks
        self.app = tasks.app
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        import socket

        from kombu import Consumer, Queue

        from taskflow.events import event_exchange
        try:
            with self.app.connection_for_read() as conn:
                queue = Queue(f'celeryev.test-{uuid.uuid4()}', exchange=event_exchange(conn), routing_key='#',
                              auto_delete=True, durable=False)

                def on_message(body: Any, message: Any) -> None:
                    self.events.extend(body if isinstance(body, list) else [body])

                with Consumer(conn.default_channel, queues=[queue], callbacks=[on_message], no_ack=True,
                              accept=['json']):
                    while not self._stop.is_set():
                        try:
                            conn.drain_events(timeout=0.2)
                        except socket.timeout:
                            pass
                        # after one drain: on Redis the fanout subscription is only made there
                        self._ready.set()
        except BaseException as exc:  # noqa: BLE001 - reported by __enter__/find
            self._error = exc
            self._ready.set()

    def __enter__(self) -> 'EventCollector':
        self._thread.start()
        assert self._ready.wait(20), 'the event consumer did not start'
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join(10)

    def of(self, type_: str, **match: Any) -> list[dict[str, Any]]:
        """The events of ``type_`` whose fields equal ``match``."""
        return [e for e in list(self.events)
                if e.get('type') == type_ and all(e.get(k) == v for k, v in match.items())]

    def wait(self, type_: str, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        """The first event of ``type_`` matching ``match``, waiting for it with a deadline."""
        def found() -> Any:
            if self._error is not None:
                raise self._error
            hits = self.of(type_, **match)
            return hits[0] if hits else None
        return wait_for(found, timeout=timeout, message=f'a {type_} event with {match}')


# --- a real Celery 5.7 beside taskflow (test_interop.py, test_interop_canvas.py) ---------------
def reload_celery_app(broker_name: str, queue: str) -> Any:
    """``celery_tasks`` re-imported with the environment for ``broker_name`` and ``queue``."""
    import importlib

    from t.integration import celery_tasks  # imports Celery: only the interop tests need it
    env = broker_env(broker_name, queue)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        module = importlib.reload(celery_tasks)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert module.celery_app.conf.broker_url == env['TF_TEST_BROKER']
    assert module.celery_app.conf.task_default_queue == queue
    return module


@pytest.fixture(scope='module')
def celery_client(broker_name: str, queue_name: str) -> Iterator[Any]:
    """A real Celery app sending to the queue of the module's taskflow worker (results in the
    test Redis DB)."""
    module = reload_celery_app(broker_name, queue_name)
    yield module
    module.celery_app.close()


@pytest.fixture(scope='module')
def celery_queue(broker_name: str) -> str:
    return f'tf-test-celery-{broker_name}-{uuid.uuid4().hex[:8]}'


@pytest.fixture(scope='module')
def celery_worker(broker_name: str, celery_queue: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """A real ``celery worker`` (prefork, 2 processes) on a queue of its own; ready when a ``ping``
    sent by the taskflow client round-trips."""
    configure_app(broker_name, celery_queue)
    env = dict(os.environ, **broker_env(broker_name, celery_queue))
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    name = f'celery-{uuid.uuid4().hex[:6]}'
    cmd = [sys.executable, '-m', 'celery', '-A', 't.integration.celery_tasks', 'worker',
           '-l', 'INFO', '-c', '2', '-P', 'prefork', '-Q', celery_queue, '-n', f'{name}@%h']
    w = WorkerProcess(cmd, env, tmp_path_factory.mktemp('celery-worker') / 'celery-worker.log')
    w.nodename_prefix = f'{name}@'  # type: ignore[attr-defined]
    try:
        w.wait_ready(timeout=60)
        yield w
    finally:
        code = w.stop()
    assert code == 0, f'celery worker exited with {code}:\n{w.log()}'


@pytest.fixture
def to_celery(broker_name: str, celery_queue: str, celery_worker: WorkerProcess) -> WorkerProcess:
    """The taskflow test app, sending to the Celery worker's queue."""
    configure_app(broker_name, celery_queue)
    return celery_worker

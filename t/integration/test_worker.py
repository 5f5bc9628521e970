"""The worker process: pools, options, acks and lost children, time limits, shutdown, pidfile,
logfile, banner and broker reconnection. Real ``taskflow worker`` processes, on Redis and on
RabbitMQ (results in Redis).

Tests needing worker flags start their own worker on a queue of their own (``own_queue``), so no
other worker takes their messages; the rest use the module's worker.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest
import redis

import taskflow
from taskflow.exceptions import TimeLimitExceeded, WorkerLostError
from t.integration import tasks
from t.integration.conftest import (HOSTNAME, REDIS_BROKER_URL, VHOST, configure_app,
                                    count_lines, nodename_of, queue_length, raw_meta, wait_for)

pytestmark = pytest.mark.integration


def overlapping(spans: list[list[float]]) -> bool:
    """True when all the ``[start, end, pid]`` spans ran at one moment together."""
    return max(s[0] for s in spans) < min(s[1] for s in spans)


def sequential(spans: list[list[float]]) -> bool:
    ordered = sorted(spans)
    return all(a[1] <= b[0] for a, b in zip(ordered, ordered[1:]))


def processes_left(pgid: int) -> bool:
    """True while any process of the worker's process group (its pool children) is alive."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# --- pools and concurrency ------------------------------------------------------------------
@pytest.mark.parametrize('pool', ['solo', 'threads', 'prefork'])
def test_pool_runs_tasks(own_queue, start_worker, pool):
    w = start_worker('-P', pool, queue=own_queue)
    assert f'({pool})' in w.log()
    assert tasks.add.delay(2, 2).get(timeout=10) == 4
    with pytest.raises(ValueError, match='in the pool'):
        tasks.fail.delay('in the pool').get(timeout=10)
    pid = tasks.getpid.delay().get(timeout=10)
    if pool == 'prefork':
        assert pid != w.pid  # a child process
    else:
        assert pid == w.pid  # in the worker process itself
    assert tasks.request_info.delay().get(timeout=10)['hostname'] == nodename_of(w)


def test_solo_pool_runs_one_at_a_time(own_queue, start_worker):
    w = start_worker('-P', 'solo', '-c', '4', queue=own_queue)
    assert 'concurrency: 1 (solo)' in w.log()
    results = [tasks.span.delay(0.3) for _ in range(3)]
    assert sequential([r.get(timeout=10) for r in results])


def test_threads_pool_concurrency(own_queue, start_worker):
    w = start_worker('-P', 'threads', '-c', '3', queue=own_queue)
    assert 'concurrency: 3 (threads)' in w.log()
    spans = [r.get(timeout=10) for r in [tasks.span.delay(0.8) for _ in range(3)]]
    assert overlapping(spans)
    assert {s[2] for s in spans} == {w.pid}


def test_prefork_concurrency_option(own_queue, start_worker):
    w = start_worker('-P', 'prefork', '-c', '3', queue=own_queue)
    assert 'concurrency: 3 (prefork)' in w.log()
    spans = [r.get(timeout=10) for r in [tasks.span.delay(0.8) for _ in range(3)]]
    assert overlapping(spans)
    assert len({s[2] for s in spans}) == 3 and w.pid not in {s[2] for s in spans}


def test_concurrency_one_runs_sequentially(own_queue, start_worker):
    start_worker('-P', 'prefork', '-c', '1', queue=own_queue)
    spans = [r.get(timeout=10) for r in [tasks.span.delay(0.3) for _ in range(3)]]
    assert sequential(spans)
    assert len({s[2] for s in spans}) == 1


# --- node name and prefetch ------------------------------------------------------------------
def test_hostname_expansion(own_queue, start_worker):
    prefix = f'node-{uuid.uuid4().hex[:6]}'
    w = start_worker('--hostname', f'{prefix}-%n@%h', queue=own_queue)
    expected = f'{prefix}-{HOSTNAME.split(".")[0]}@{HOSTNAME}'
    assert nodename_of(w) == expected
    result = tasks.request_info.delay()
    assert result.get(timeout=10)['hostname'] == expected
    assert result.worker == expected


def test_hostname_without_at_gets_host(own_queue, start_worker):
    name = f'plain-{uuid.uuid4().hex[:6]}'
    w = start_worker('-n', name, queue=own_queue)
    assert nodename_of(w) == f'{name}@{HOSTNAME}'
    assert tasks.request_info.delay().get(timeout=10)['hostname'] == f'{name}@{HOSTNAME}'


def amqp_consumer_prefetch(queue: str) -> list[int]:
    """The prefetch RabbitMQ applies to each consumer of ``queue`` in our vhost: the worker sets
    it channel-wide (global basic.qos, so a raise reaches the running consumer), else per consumer."""
    def rows(*args: str) -> list[list[str]]:
        out = subprocess.run(['rabbitmqctl', *args, '--no-table-headers', '-q'], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        return [line.split('\t') for line in out.splitlines() if line.strip()]
    channels = {pid: int(glob) for pid, glob in rows('list_channels', 'pid', 'global_prefetch_count')}
    return [channels.get(pid) or int(count)
            for name, pid, count in rows('list_consumers', '-p', VHOST, 'queue_name', 'channel_pid', 'prefetch_count')
            if name == queue]


@pytest.mark.parametrize('args, expected', [(('-c', '1', '--prefetch-multiplier', '3'), 3),
                                            (('-c', '2', '--prefetch-multiplier', '1'), 2),
                                            (('-c', '2'), 8)])
def test_prefetch_multiplier(own_queue, start_worker, broker, args, expected):
    w = start_worker(*args, queue=own_queue)
    assert f'prefetch {expected}\n' in w.log()
    if broker == 'amqp':  # what the broker was told (basic.qos)
        assert amqp_consumer_prefetch(own_queue) == [expected]
    assert tasks.add.delay(1, 2).get(timeout=10) == 3


# --- acks_late, lost children ------------------------------------------------------------------
def test_acks_late_reject_on_worker_lost_requeues(broker, worker, tmp_path):
    marker = tmp_path / 'died-once'
    result = tasks.die_once.delay(str(marker))
    assert result.get(timeout=30) == 'survived'
    assert marker.exists()
    assert count_lines(worker.log(), result.id, 'was lost: requeued') == 1
    assert count_lines(worker.log(), f'Task t.integration.tasks.die_once[{result.id}] received') == 2


def test_killed_child_fails_with_worker_lost_error(broker, worker):
    result = tasks.kill_self.delay()
    with pytest.raises(WorkerLostError):
        result.get(timeout=30)
    assert result.state == 'FAILURE'
    assert tasks.add.delay(20, 22).get(timeout=10) == 42  # the worker still serves
    assert tasks.getpid.delay().get(timeout=10) != worker.pid


def test_worker_lost_wait_setting(own_queue, start_worker):
    start_worker(queue=own_queue, env={'TASKFLOW_WORKER_LOST_WAIT': '1'})
    result = tasks.kill_self.delay()
    with pytest.raises(WorkerLostError):
        result.get(timeout=6)


# --- time limits -------------------------------------------------------------------------------------
def test_worker_hard_time_limit(own_queue, start_worker):
    w = start_worker('--time-limit', '1', queue=own_queue)
    result = tasks.sleep.delay(10)
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=15)
    assert result.state == 'FAILURE'
    assert count_lines(w.log(), 'Hard time limit', result.id) == 1
    assert tasks.add.delay(1, 1).get(timeout=10) == 2  # still serves


def test_worker_soft_time_limit(own_queue, start_worker):
    start_worker('--soft-time-limit', '0.5', queue=own_queue)
    assert tasks.catch_soft_limit.delay(5).get(timeout=10) == 'soft-limit-caught'
    assert tasks.add.delay(1, 1).get(timeout=10) == 2


def test_per_call_time_limit_below_worker_limit(own_queue, start_worker):
    """With a worker limit in place, ``time_limit=`` of one call is honoured too."""
    start_worker('--time-limit', '30', queue=own_queue)
    result = tasks.sleep.apply_async((10,), time_limit=1)
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=15)
    assert tasks.add.delay(1, 1).get(timeout=10) == 2


def test_per_call_hard_time_limit(broker, worker):
    """``time_limit=`` of one call, on a worker without limits of its own."""
    result = tasks.sleep.apply_async((3,), time_limit=1)
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=10)
    assert count_lines(worker.log(), 'Hard time limit', result.id) == 1
    assert tasks.add.delay(1, 1).get(timeout=10) == 2


def test_per_call_soft_time_limit(broker, worker):
    assert tasks.catch_soft_limit.apply_async((3,), soft_time_limit=0.5).get(timeout=10) == \
        'soft-limit-caught'


# --- Reject --------------------------------------------------------------------------------------------
def test_reject_without_requeue_is_not_run_again(broker, worker, queue_name, tmp_path):
    path = tmp_path / 'runs'
    result = tasks.record_then_reject.delay(str(path))
    wait_for(lambda: path.exists(), timeout=10, message='the task to run')
    wait_for(lambda: count_lines(worker.log(), result.id, 'rejected') == 1, timeout=5,
             message='the rejection log line')
    for _ in range(2):  # round trips behind it: a requeued message would have run again by now
        assert tasks.add.delay(1, 1).get(timeout=10) == 2
    assert path.read_text() == 'run\n'
    assert queue_length(queue_name) == 0
    assert result.state == 'PENDING'  # Celery stores nothing for a rejected message either


# --- held ETA messages and prefetch -------------------------------------------------------------------------
def test_held_eta_messages_do_not_use_up_prefetch(own_queue, start_worker, broker, request):
    """-c 1 with prefetch 1: three messages held for their ETA must not stop a fourth from running."""
    start_worker('-c', '1', '--prefetch-multiplier', '1', queue=own_queue)
    held = [tasks.add.apply_async((i, i), countdown=4) for i in range(3)]
    assert tasks.add.delay(5, 5).get(timeout=3) == 10
    assert all(r.state == 'PENDING' for r in held)
    assert [r.get(timeout=10) for r in held] == [0, 2, 4]


# --- shutdown ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('pool', ['prefork', 'solo', 'threads'])
def test_warm_shutdown_finishes_running_task_and_keeps_reserved(own_queue, start_worker, pool):
    first_worker = start_worker('-c', '1', '-P', pool, queue=own_queue)
    first_node = nodename_of(first_worker)
    running = tasks.tracked_sleep.delay(2)
    waiting = [tasks.sleep.delay(0.1) for _ in range(3)]
    wait_for(lambda: running.state == 'STARTED', timeout=10, message='the first task to start')
    first_worker.signal(signal.SIGTERM)
    assert first_worker.wait(timeout=20) == 0, first_worker.log()
    # stored before the worker exited, by that worker
    meta = raw_meta(running.id)
    assert meta is not None and meta['status'] == 'SUCCESS', meta
    assert meta['worker'] == first_node
    assert 'Warm shutdown' in first_worker.log()
    assert not any(raw_meta(r.id) for r in waiting)
    wait_for(lambda: not processes_left(first_worker.pid), timeout=10, message='pool children to exit')
    # the messages it held but never started were given back: a new worker runs them
    second_worker = start_worker('-c', '1', queue=own_queue)
    assert [r.get(timeout=15) for r in waiting] == [0.1, 0.1, 0.1]
    assert {r.worker for r in waiting} == {nodename_of(second_worker)}


def test_warm_shutdown_gives_back_eta_messages(own_queue, start_worker):
    w = start_worker(queue=own_queue)
    held = tasks.add.apply_async((2, 5), countdown=30)
    wait_for(lambda: f'[{held.id}] received' in w.log(), timeout=10, message='the ETA message to arrive')
    assert queue_length(own_queue) == 0
    w.signal(signal.SIGTERM)
    assert w.wait(timeout=10) == 0, w.log()  # does not wait for the ETA
    wait_for(lambda: queue_length(own_queue) == 1, timeout=10, message='the message back in the queue')
    assert held.state == 'PENDING'


@pytest.mark.parametrize('pool, signals', [
    ('prefork', (signal.SIGTERM, signal.SIGTERM)),
    ('prefork', (signal.SIGQUIT,)),
    ('solo', (signal.SIGTERM, signal.SIGTERM)),
    ('solo', (signal.SIGQUIT,)),
    ('threads', (signal.SIGQUIT,)),
], ids=['prefork-TERM-TERM', 'prefork-QUIT', 'solo-TERM-TERM', 'solo-QUIT', 'threads-QUIT'])
def test_cold_shutdown_is_prompt(own_queue, start_worker, pool, signals):
    w = start_worker('-P', pool, queue=own_queue)
    running = tasks.tracked_sleep.delay(14)  # longer than the 10 s allowed for the exit
    wait_for(lambda: running.state == 'STARTED', timeout=10, message='the long task to start')
    for signum in signals:
        w.signal(signum)
        time.sleep(0.2)  # two separate signals, not one
    started = time.monotonic()
    w.wait(timeout=10)
    assert time.monotonic() - started < 10
    assert 'Cold shutdown' in w.log()
    wait_for(lambda: not processes_left(w.pid), timeout=10, message='pool children to exit')


# --- pidfile, logfile, banner -----------------------------------------------------------------------------
def test_pidfile(own_queue, start_worker, tmp_path):
    pidfile = tmp_path / 'worker.pid'
    w = start_worker('--pidfile', str(pidfile), queue=own_queue)
    assert pidfile.read_text().strip() == str(w.pid)
    second = start_worker('--pidfile', str(pidfile), queue=own_queue, ready=False)
    assert second.wait(timeout=30) != 0
    assert f'pidfile {pidfile} is held by running process {w.pid}' in second.log()
    assert 'Traceback' not in second.log()
    assert pidfile.read_text().strip() == str(w.pid)  # the refused worker left it alone
    assert w.stop() == 0
    assert not pidfile.exists()


def test_stale_pidfile_is_taken_over(own_queue, start_worker, tmp_path):
    pidfile = tmp_path / 'worker.pid'
    dead = subprocess.Popen(['true'])
    dead.wait()
    pidfile.write_text(f'{dead.pid}\n')
    w = start_worker('--pidfile', str(pidfile), queue=own_queue)
    assert pidfile.read_text().strip() == str(w.pid)


def test_logfile(own_queue, start_worker, tmp_path):
    logfile = tmp_path / 'worker.log'
    w = start_worker('--logfile', str(logfile), queue=own_queue)
    result = tasks.add.delay(3, 3)
    assert result.get(timeout=10) == 6
    wait_for(lambda: logfile.exists() and f'Task t.integration.tasks.add[{result.id}] succeeded'
             in logfile.read_text(), timeout=5, message='the task lines in the logfile')
    text = logfile.read_text()
    assert f'Task t.integration.tasks.add[{result.id}] received' in text
    assert f'{nodename_of(w)} ready.' in text
    assert result.id not in w.log()  # the log went to the file, not to the terminal


def test_banner(own_queue, start_worker, broker):
    node = f'banner-{uuid.uuid4().hex[:6]}'
    w = start_worker('-n', f'{node}@%h', '-c', '3', queue=own_queue)
    text = w.log()
    banner = text[:text.index('  tasks:')]
    assert f'taskflow {taskflow.__version__} worker {node}@{HOSTNAME}' in banner
    assert 'app:         t.integration.tasks' in banner
    if broker == 'amqp':
        assert f'broker:      amqp://guest:**@127.0.0.1:5672/{VHOST}' in banner
        assert 'guest:guest' not in text  # the password is masked
    else:
        assert f'broker:      {REDIS_BROKER_URL}' in banner
    assert 'concurrency: 3 (prefork), prefetch 12' in banner
    assert f'queues:      {own_queue}\n' in banner
    listed = {line.strip()[2:] for line in text.splitlines() if line.startswith('    . ')}
    # (shared tasks of other test modules may join the test process's app: look at ours)
    expected = {name for name in tasks.app.tasks if name.startswith('t.integration.')}
    assert expected <= listed
    assert 't.integration.tasks.add' in listed


# --- broker connection lost ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start_redis(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([shutil.which('redis-server') or 'redis-server', '--port', str(port),
                             '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
    try:
        wait_for(up, timeout=10, message=f'redis-server on port {port}')
    finally:
        client.close()
    return proc


def test_a_job_queued_in_the_pool_runs_once_after_a_lost_connection(own_queue, start_worker, broker, tmp_path):
    """A job waiting in the pool behind a running task is not acknowledged yet; when the
    connection drops, RabbitMQ redelivers it, so the pool must not run the first copy too."""
    if broker != 'amqp':
        pytest.skip('closes the connection with rabbitmqctl')
    w = start_worker('-c', '1', queue=own_queue)
    busy = tasks.sleep.delay(2)
    wait_for(lambda: f'[{busy.id}] received' in w.log(), timeout=10, message='the sleep')
    path = tmp_path / 'ran'
    queued = tasks.record.delay(str(path), 'ran')
    wait_for(lambda: f'[{queued.id}] received' in w.log(), timeout=10, message='the queued task')
    subprocess.run(['rabbitmqctl', 'close_all_connections', '-p', VHOST, 'taskflow test'],
                   check=True, capture_output=True, timeout=60)
    wait_for(lambda: 'Connection to broker lost' in w.log(), timeout=15,
             message='the worker to notice the lost connection')
    assert queued.get(timeout=30) == 'ran'
    assert busy.get(timeout=30) == 2
    assert tasks.add.delay(1, 1).get(timeout=30) == 2  # the pool has nothing left queued
    assert path.read_text() == 'ran\n', w.log()
    assert w.stop() == 0, w.log()


def test_reconnect_after_broker_connection_loss(own_queue, start_worker, broker):
    if broker == 'amqp':
        w = start_worker(queue=own_queue)
        assert tasks.add.delay(1, 1).get(timeout=10) == 2
        held = tasks.add.apply_async((3, 3), countdown=3)  # held by the worker when the link drops
        wait_for(lambda: f'[{held.id}] received' in w.log(), timeout=10, message='the ETA message')
        subprocess.run(['rabbitmqctl', 'close_all_connections', '-p', VHOST, 'taskflow test'],
                       check=True, capture_output=True, timeout=60)
        wait_for(lambda: 'Connection to broker lost' in w.log(), timeout=15,
                 message='the worker to notice the lost connection')
        assert tasks.add.delay(2, 2).get(timeout=30) == 4
        assert held.get(timeout=15) == 6  # redelivered, held again, run
        assert count_lines(w.log(), 'Connected to amqp://') >= 2
        assert w.stop() == 0, w.log()
        return
    port = free_port()
    private_url = f'redis://127.0.0.1:{port}/0'
    server = start_redis(port)
    try:
        configure_app('redis', own_queue)
        tasks.app.conf.broker_url = private_url
        tasks.app.close()
        w = start_worker(queue=own_queue, env={'TF_TEST_BROKER': private_url})
        assert f'broker:      {private_url}' in w.log()
        assert tasks.add.delay(1, 1).get(timeout=10) == 2
        client = redis.Redis(port=port)
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it goes
        finally:
            client.close()
        server.wait(timeout=10)
        wait_for(lambda: 'Connection to broker lost' in w.log() or 'Cannot connect' in w.log(),
                 timeout=15, message='the worker to notice the lost connection')
        server = start_redis(port)
        assert tasks.add.delay(2, 2).get(timeout=30) == 4
        assert count_lines(w.log(), 'Connected to redis://', f'127.0.0.1:{port}/0') >= 2
        assert w.stop() == 0, w.log()  # while its broker is up
    finally:
        configure_app('redis', own_queue)  # back to the shared Redis before the fixtures clean up
        if server.poll() is None:
            server.kill()
        server.wait(timeout=10)

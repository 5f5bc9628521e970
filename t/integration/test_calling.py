"""Calling API against a real worker, on Redis and on RabbitMQ (results in Redis).

Most tests use the module's worker (prefork, 2 processes) on the module's queue; tests that need
special worker flags start their own worker on a queue of their own.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from taskflow.exceptions import TaskRevokedError
from t.integration import tasks
from t.integration.conftest import (HOSTNAME, delete_queue, nodename_of, raw_meta, wait_for)

pytestmark = pytest.mark.integration


def now() -> datetime:
    return datetime.now(timezone.utc)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# --- countdown / eta --------------------------------------------------------------------------
def test_countdown_runs_not_before(broker, worker):
    sent = now()
    result = tasks.add.apply_async((2, 3), countdown=1.5)
    assert result.get(timeout=10) == 5
    assert result.date_done >= sent + timedelta(seconds=1.5)


def test_eta_runs_not_before(broker, worker):
    eta = now() + timedelta(seconds=1.5)
    result = tasks.request_info.apply_async(eta=eta)
    info = result.get(timeout=10)
    assert result.date_done >= eta
    assert datetime.fromisoformat(info['eta']) == eta


def test_eta_does_not_block_later_tasks(broker, worker):
    """A held ETA message does not stop the worker from running messages sent after it."""
    held = tasks.add.apply_async((1, 1), countdown=3)
    assert tasks.add.delay(2, 2).get(timeout=5) == 4
    assert held.state == 'PENDING'
    assert held.get(timeout=10) == 2


# --- expires ------------------------------------------------------------------------------------
def test_expires_in_the_past_is_revoked(broker, worker, tmp_path):
    path = tmp_path / 'ran'
    result = tasks.record.apply_async((str(path), 'ran'), expires=now() - timedelta(seconds=30))
    with pytest.raises(TaskRevokedError):
        result.get(timeout=10)
    assert result.state == 'REVOKED'
    assert not path.exists()


def test_expires_while_held_for_eta_is_revoked(broker, worker, tmp_path):
    """Expiry (0.5 s) passes while the worker holds the message for its ETA (countdown 1.5 s)."""
    path = tmp_path / 'ran'
    result = tasks.record.apply_async((str(path), 'ran'), countdown=1.5, expires=0.5)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=10)
    assert result.state == 'REVOKED'
    assert tasks.add.delay(1, 1).get(timeout=5) == 2
    assert not path.exists()


def test_expires_while_waiting_behind_busy_pool_is_revoked(own_queue, start_worker, tmp_path):
    """Expiry (0.5 s) passes while the only pool slot runs a 2 s task: never run, REVOKED."""
    start_worker('-c', '1', queue=own_queue)
    busy = tasks.sleep.delay(2)
    path = tmp_path / 'ran'
    result = tasks.record.apply_async((str(path), 'ran'), expires=0.5)
    assert busy.get(timeout=10) == 2
    wait_for(lambda: result.state != 'PENDING', timeout=10, message='a state for the expired task')
    assert not path.exists(), 'the expired task ran'
    assert result.state == 'REVOKED'


# --- naming and ids -------------------------------------------------------------------------------
def test_send_task_by_name(broker, worker):
    result = tasks.app.send_task('t.integration.tasks.add', (2, 3))
    assert result.get(timeout=10) == 5
    assert result.name == 't.integration.tasks.add'


def test_send_task_with_kwargs(broker, worker):
    result = tasks.app.send_task('t.integration.tasks.echo', [1, 'two'], {'three': [3]})
    assert result.get(timeout=10) == [[1, 'two'], {'three': [3]}]


def test_task_id_given(broker, worker):
    task_id = str(uuid.uuid4())
    result = tasks.request_info.apply_async(task_id=task_id)
    assert result.id == task_id
    info = result.get(timeout=10)
    assert info['id'] == task_id
    assert raw_meta(task_id)['status'] == 'SUCCESS'


# --- self.request ---------------------------------------------------------------------------------
def test_request_fields_top_level(broker, worker, queue_name):
    result = tasks.request_info.apply_async((), {})
    info = result.get(timeout=10)
    assert info['id'] == result.id
    assert info['name'] == 't.integration.tasks.request_info'
    assert info['retries'] == 0
    assert info['hostname'] == nodename_of(worker)
    assert info['root_id'] == result.id
    assert info['parent_id'] is None
    assert info['eta'] is None
    assert info['delivery_info']['routing_key'] == queue_name
    assert info['args'] == [] and info['kwargs'] == {}


def test_request_root_and_parent_ids_of_callbacks(broker, worker):
    """root -> link child -> link grandchild: the grandchild's parent is the child, root is root."""
    grandchild = tasks.request_info.si()
    child = tasks.request_info.si().set(link=grandchild)
    root = tasks.add.apply_async((1, 1), link=child)
    assert root.get(timeout=10) == 2
    child_result = wait_for(lambda: root.children, timeout=5, message='the child id in the root meta')[0]
    child_info = child_result.get(timeout=10)
    assert child_info['root_id'] == root.id
    assert child_info['parent_id'] == root.id
    grandchild_result = wait_for(lambda: tasks.app.AsyncResult(child_result.id).children, timeout=5,
                                 message='the grandchild id in the child meta')[0]
    grandchild_info = grandchild_result.get(timeout=10)
    assert grandchild_info['root_id'] == root.id
    assert grandchild_info['parent_id'] == child_result.id


def test_request_retries_seen_by_task(broker, worker):
    assert tasks.retry_until.delay(2).get(timeout=10) == 2


# --- link / link_error ------------------------------------------------------------------------------
def test_link_callback_gets_result(broker, worker, tmp_path):
    path = tmp_path / 'linked'
    result = tasks.add.apply_async((2, 2), link=tasks.record_value.s(path=str(path)))
    assert result.get(timeout=10) == 4
    wait_for(lambda: lines(path) == ['4'], timeout=10, message='the link callback')
    children = result.children
    assert children, 'the callback is not listed in the parent meta'
    assert all(child.get(timeout=10) is None for child in children)  # record_value's result


def test_link_callback_listed_once_in_children(broker, worker, tmp_path):
    path = tmp_path / 'linked'
    result = tasks.add.apply_async((2, 2), link=tasks.record_value.s(path=str(path)))
    assert result.get(timeout=10) == 4
    assert len(result.children) == 1  # Celery lists each callback once


def test_several_link_callbacks(broker, worker, tmp_path):
    first, second = tmp_path / 'first', tmp_path / 'second'
    result = tasks.mul.apply_async((3, 4), link=[tasks.record_value.s(path=str(first)),
                                                  tasks.record_value.s(path=str(second))])
    assert result.get(timeout=10) == 12
    wait_for(lambda: lines(first) == ['12'] and lines(second) == ['12'], timeout=10,
             message='both link callbacks')


def test_link_error_old_style_gets_task_id(broker, worker, tmp_path):
    errors, linked = tmp_path / 'errors', tmp_path / 'linked'
    result = tasks.fail.apply_async(('boom',), link=tasks.record_value.s(path=str(linked)),
                                    link_error=tasks.record_value.s(path=str(errors)))
    with pytest.raises(ValueError, match='boom'):
        result.get(timeout=10)
    wait_for(lambda: lines(errors) == [repr(result.id)], timeout=10, message='the errback')
    assert not linked.exists(), 'the success callback ran for a failed task'


def test_link_error_new_style_gets_request_and_exception(broker, worker, tmp_path):
    path = tmp_path / 'errors'
    result = tasks.fail.apply_async(('boom',), link_error=tasks.on_error_record.s(path=str(path)))
    with pytest.raises(ValueError):
        result.get(timeout=10)
    wait_for(lambda: lines(path) == [f'{result.id} ValueError'], timeout=10, message='the errback')


def test_link_error_not_called_on_success(broker, worker, tmp_path):
    errors, linked = tmp_path / 'errors', tmp_path / 'linked'
    result = tasks.add.apply_async((1, 2), link=tasks.record_value.s(path=str(linked)),
                                   link_error=tasks.record_value.s(path=str(errors)))
    assert result.get(timeout=10) == 3
    wait_for(lambda: lines(linked) == ['3'], timeout=10, message='the link callback')
    assert not errors.exists()


# --- retry ------------------------------------------------------------------------------------------
def test_retry_until_success(broker, worker):
    result = tasks.retry_until.delay(2)
    assert result.get(timeout=15) == 2
    assert result.state == 'SUCCESS'
    assert result.retries == 2


def test_retry_beyond_max_retries_fails_with_original_exception(broker, worker):
    result = tasks.retry_until.delay(10)  # max_retries=3
    with pytest.raises(KeyError, match='attempt 3'):
        result.get(timeout=15)
    assert result.state == 'FAILURE'
    assert result.retries == 3
    assert 'KeyError' in result.traceback


def test_retry_records_every_attempt(broker, worker, tmp_path):
    path = tmp_path / 'attempts'
    result = tasks.retry_record.delay(str(path))  # max_retries=2
    with pytest.raises(KeyError):
        result.get(timeout=15)
    assert lines(path) == ['0', '1', '2']


def test_autoretry_for_exhausts_to_failure(broker, worker):
    result = tasks.autoretry_fail.delay()  # autoretry_for=(KeyError,), max_retries=2
    with pytest.raises(KeyError, match='attempt 2'):
        result.get(timeout=15)
    assert result.state == 'FAILURE'
    assert result.retries == 2


# --- results ------------------------------------------------------------------------------------------
def test_ignore_result(broker, worker, tmp_path):
    path = tmp_path / 'ran'
    result = tasks.record.apply_async((str(path), 'ran'), ignore_result=True)
    wait_for(lambda: lines(path) == ['ran'], timeout=10, message='the task to run')
    assert tasks.add.delay(1, 1).get(timeout=5) == 2  # the worker has moved on
    assert result.state == 'PENDING'
    assert raw_meta(result.id) is None


def test_track_started(broker, worker):
    result = tasks.tracked_sleep.delay(1.5)
    wait_for(lambda: result.state == 'STARTED', timeout=5, interval=0.02, message='STARTED')
    meta = raw_meta(result.id)
    assert meta['status'] == 'STARTED'
    assert meta['result']['hostname'] == nodename_of(worker)
    assert isinstance(meta['result']['pid'], int)
    assert result.get(timeout=10) == 1.5
    assert result.state == 'SUCCESS'


def test_not_tracked_task_never_shows_started(broker, worker):
    result = tasks.sleep.delay(0.5)
    seen = set()
    wait_for(lambda: seen.add(result.state) or result.ready(), timeout=10, interval=0.02,
             message='the sleep task')
    assert seen <= {'PENDING', 'SUCCESS'}


def test_result_extended_fields(broker, worker, queue_name):
    result = tasks.add.apply_async((3,), {'y': 4})
    assert result.get(timeout=10) == 7
    assert result.name == 't.integration.tasks.add'
    assert result.args == [3]
    assert result.kwargs == {'y': 4}
    assert result.worker == nodename_of(worker)
    assert result.queue == queue_name
    assert result.retries == 0


def test_failure_result_fields(broker, worker):
    result = tasks.fail.delay('stored failure')
    with pytest.raises(ValueError):
        result.get(timeout=10)
    meta = raw_meta(result.id)
    assert meta['status'] == 'FAILURE'
    assert meta['result'] == {'exc_type': 'ValueError', 'exc_message': ['stored failure'],
                              'exc_module': 'builtins'}
    assert 'Traceback' in meta['traceback']
    assert meta['name'] == 't.integration.tasks.fail'


def test_forget(broker, worker):
    result = tasks.add.delay(5, 5)
    assert result.get(timeout=10) == 10
    assert raw_meta(result.id) is not None
    result.forget()
    assert raw_meta(result.id) is None
    assert result.state == 'PENDING'
    assert tasks.app.AsyncResult(result.id).state == 'PENDING'


# --- routing -------------------------------------------------------------------------------------------
def test_queue_routing_to_dedicated_worker(broker, worker, start_worker, queue_name):
    other = f'other-{uuid.uuid4().hex[:8]}'
    node = f'other-{uuid.uuid4().hex[:6]}'
    other_worker = start_worker('-Q', other, '-n', f'{node}@%h', ready=False)
    try:
        other_worker.wait_ready(queue=other)
        routed = [tasks.request_info.apply_async(queue=other) for _ in range(4)]
        infos = [r.get(timeout=10) for r in routed]
        assert {i['hostname'] for i in infos} == {f'{node}@{HOSTNAME}'}
        assert {i['delivery_info']['routing_key'] for i in infos} == {other}
        assert {r.queue for r in routed} == {other}
        # the default queue is still the module worker's only
        default = tasks.request_info.delay()
        assert default.get(timeout=10)['hostname'] == nodename_of(worker)
        module_log = worker.log()
        assert not any(r.id in module_log for r in routed)
        assert default.id not in other_worker.log()
    finally:
        other_worker.stop()  # first: a consuming worker would declare the queue again
        delete_queue(other)


def test_priority_passed_to_delivery_info(broker, worker):
    info = tasks.request_info.apply_async(priority=5).get(timeout=10)
    assert info['delivery_info']['priority'] == 5


# --- serializers and compression ---------------------------------------------------------------------
@pytest.mark.parametrize('serializer', ['msgpack', 'yaml'])
def test_serializer_accepted_by_worker(own_queue, start_worker, serializer):
    w = start_worker(queue=own_queue, env={'TASKFLOW_ACCEPT_CONTENT': 'json,msgpack,yaml'})
    result = tasks.echo.apply_async([1, 'two', [3.5]], {'k': {'n': None}}, serializer=serializer)
    assert result.get(timeout=10) == [[1, 'two', [3.5]], {'k': {'n': None}}]
    wait_for(lambda: f'Task t.integration.tasks.echo[{result.id}] succeeded' in w.log(), timeout=5,
             message='the success log line')
    assert 'Refused' not in w.log()


@pytest.mark.parametrize('compression', ['gzip', 'bzip2', 'zlib'])
def test_compression(broker, worker, compression):
    numbers = list(range(2000))
    result = tasks.xsum.apply_async((numbers,), compression=compression)
    assert result.get(timeout=10) == sum(numbers)
    assert result.args == [numbers]

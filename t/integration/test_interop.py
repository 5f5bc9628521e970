"""Interoperability with a real Celery 5.7, both directions, on Redis and on RabbitMQ.

- Celery client -> taskflow worker: ``celery_tasks`` (a real ``celery.Celery`` app whose tasks
  carry the names of ``tasks.py``) sends; the module's taskflow worker runs; Celery's own
  ``AsyncResult`` reads the result from Redis (pub/sub wake-up, exception decoding).
- taskflow client -> Celery worker: a real ``celery worker`` subprocess (prefork) consumes a
  queue of its own; the taskflow app sends to that queue and taskflow's ``AsyncResult`` reads.
- Wire: the metas each side writes under ``celery-task-meta-<id>`` are read raw from Redis and
  through the other side's backend.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from celery.result import AsyncResult as CeleryAsyncResult

from t.integration import tasks
from t.integration.conftest import raw_meta, wait_for

pytestmark = pytest.mark.integration

EXTENDED_KEYS = {'status', 'result', 'traceback', 'children', 'date_done', 'task_id',
                 'name', 'args', 'kwargs', 'worker', 'retries', 'queue'}


def parse_time(value: Any) -> datetime:
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f'naive time {value!r}'
    return parsed


def test_celery_send_task_runs_on_taskflow_worker(broker, worker, celery_client):
    result = celery_client.celery_app.send_task('t.integration.tasks.add', (2, 2))
    assert isinstance(result, CeleryAsyncResult)
    assert result.get(timeout=10) == 4
    assert result.state == 'SUCCESS'


def test_celery_task_delay_runs_on_taskflow_worker(broker, worker, celery_client, queue_name):
    result = celery_client.add.delay(3, 4)
    assert isinstance(result, CeleryAsyncResult)
    assert result.get(timeout=10) == 7
    # result_extended fields written by taskflow, read by Celery
    assert result.name == 't.integration.tasks.add'
    assert result.args == [3, 4]
    assert result.kwargs == {}
    assert result.queue == queue_name
    assert result.retries == 0
    assert result.worker.startswith('tf-module-')


def test_celery_message_as_taskflow_sees_it(broker, worker, celery_client, queue_name):
    task_id = str(uuid.uuid4())
    info = celery_client.request_info.apply_async(task_id=task_id).get(timeout=10)
    assert info['id'] == task_id
    assert info['name'] == 't.integration.tasks.request_info'
    assert info['root_id'] == task_id
    assert info['parent_id'] is None
    assert info['retries'] == 0
    assert info['args'] == [] and info['kwargs'] == {}
    assert info['eta'] is None
    assert info['delivery_info']['routing_key'] == queue_name
    assert info['hostname'].startswith('tf-module-')


def test_celery_echo_arguments_roundtrip(broker, worker, celery_client):
    result = celery_client.echo.delay(1, 'two', [3], x={'y': None}, z=1.5)
    assert result.get(timeout=10) == [[1, 'two', [3]], {'x': {'y': None}, 'z': 1.5}]


def test_celery_reads_taskflow_failure(broker, worker, celery_client):
    result = celery_client.fail.delay('boom')
    with pytest.raises(ValueError, match='boom'):
        result.get(timeout=10)
    assert result.state == 'FAILURE'
    assert result.failed()
    assert isinstance(result.result, ValueError)
    assert 'ValueError' in result.traceback
    meta = raw_meta(result.id)
    assert meta['status'] == 'FAILURE'
    assert meta['result'] == {'exc_type': 'ValueError', 'exc_message': ['boom'],
                              'exc_module': 'builtins'}


def test_celery_reads_taskflow_retry(broker, worker, celery_client):
    result = celery_client.retry_until.delay(2)
    assert result.get(timeout=20) == 2
    assert result.state == 'SUCCESS'
    assert result.retries == 2
    exhausted = celery_client.retry_until.delay(10)  # max_retries=3 on the taskflow task
    with pytest.raises(KeyError, match='attempt 3'):
        exhausted.get(timeout=20)
    assert exhausted.retries == 3


def test_celery_countdown_on_taskflow_worker(broker, worker, celery_client):
    sent = datetime.now().astimezone()
    result = celery_client.request_info.apply_async(countdown=1.5)
    info = result.get(timeout=15)
    eta = parse_time(info['eta'])
    # Celery wrote eta = now + countdown; taskflow held the message until then.
    assert sent + timedelta(seconds=1.4) <= eta <= sent + timedelta(seconds=3)
    assert result.date_done >= eta


def test_celery_link_callback_on_taskflow_worker(broker, worker, celery_client):
    callback_id = str(uuid.uuid4())
    result = celery_client.add.apply_async((2, 2), link=celery_client.mul.s(10).set(task_id=callback_id))
    assert result.get(timeout=10) == 4
    callback = celery_client.celery_app.AsyncResult(callback_id)
    assert callback.get(timeout=10) == 40
    assert raw_meta(callback_id)['parent_id'] == result.id
    assert result.children  # the parent's meta lists the callback (see the next test)
    assert {child.id for child in result.children} == {callback_id}


def test_celery_link_children_listed_once_by_taskflow_worker(broker, worker, celery_client):
    callback_id = str(uuid.uuid4())
    result = celery_client.add.apply_async((2, 2), link=celery_client.mul.s(10).set(task_id=callback_id))
    assert result.get(timeout=10) == 4
    assert raw_meta(result.id)['children'] == [[[callback_id, None], None]]
    assert [child.id for child in result.children] == [callback_id]


def test_celery_chain_on_taskflow_worker(broker, worker, celery_client):
    result = (celery_client.add.s(1, 1) | celery_client.mul.s(3) | celery_client.add.s(4)).apply_async()
    assert result.get(timeout=15) == 10
    assert result.parent.get(timeout=5) == 6
    assert result.parent.parent.get(timeout=5) == 2
    first = raw_meta(result.parent.parent.id)
    assert {tuple(child[0]) for child in first['children']} == {(result.parent.id, None)}
    assert raw_meta(result.id)['parent_id'] == result.parent.id


def test_celery_chain_children_listed_once_by_taskflow_worker(broker, worker, celery_client):
    result = (celery_client.add.s(1, 1) | celery_client.mul.s(3)).apply_async()
    assert result.get(timeout=15) == 6
    assert raw_meta(result.parent.id)['children'] == [[[result.id, None], None]]


def test_celery_link_error_on_taskflow_worker(broker, worker, celery_client, tmp_path):
    path = tmp_path / 'errback.txt'
    errback = celery_client.celery_app.signature('t.integration.tasks.on_error_record',
                                                 kwargs={'path': str(path)})
    result = celery_client.fail.apply_async(('bad',), link_error=errback)
    with pytest.raises(ValueError, match='bad'):
        result.get(timeout=10)
    text = wait_for(lambda: path.exists() and path.read_text(), timeout=10, message='errback')
    assert text == f'{result.id} ValueError\n'


def test_taskflow_meta_read_by_celery_backend(broker, worker, celery_client):
    ok = tasks.add.delay(20, 22)
    bad = tasks.fail.delay('nope')
    assert ok.get(timeout=10) == 42
    with pytest.raises(ValueError):
        bad.get(timeout=10)
    backend = celery_client.celery_app.backend
    meta = backend.get_task_meta(ok.id)
    assert meta['status'] == 'SUCCESS' and meta['result'] == 42
    assert set(raw_meta(ok.id)) == EXTENDED_KEYS
    failed = celery_client.celery_app.AsyncResult(bad.id)
    assert failed.state == 'FAILURE'
    assert isinstance(failed.result, ValueError) and failed.result.args == ('nope',)


# --- taskflow client -> Celery worker ------------------------------------------------------
def test_taskflow_delay_runs_on_celery_worker(broker_name, to_celery, celery_queue):
    result = tasks.add.delay(2, 2)
    assert result.get(timeout=10) == 4
    assert result.state == 'SUCCESS'
    # result_extended fields written by Celery, read by taskflow
    assert result.name == 't.integration.tasks.add'
    assert result.args == [2, 2]
    assert result.kwargs == {}
    assert result.queue == celery_queue
    assert result.retries == 0
    assert result.worker.startswith(to_celery.nodename_prefix)
    assert result.date_done is not None


def test_taskflow_send_task_runs_on_celery_worker(broker_name, to_celery):
    assert tasks.app.send_task('t.integration.tasks.mul', (6, 7)).get(timeout=10) == 42


def test_taskflow_message_as_celery_sees_it(broker_name, to_celery, celery_queue):
    result = tasks.request_info.delay()
    info = result.get(timeout=10)
    assert info['id'] == result.id
    assert info['name'] == 't.integration.tasks.request_info'
    assert info['root_id'] == result.id
    assert info['parent_id'] is None
    assert info['retries'] == 0
    assert info['eta'] is None
    assert info['delivery_info']['routing_key'] == celery_queue
    assert info['hostname'].startswith(to_celery.nodename_prefix)
    assert tasks.echo.delay(1, 'two', x={'y': [None]}).get(timeout=10) == [[1, 'two'], {'x': {'y': [None]}}]


def test_taskflow_reads_celery_failure(broker_name, to_celery):
    result = tasks.fail.delay('boom')
    with pytest.raises(ValueError, match='boom'):
        result.get(timeout=10)
    assert result.state == 'FAILURE'
    assert 'ValueError' in result.traceback
    meta = raw_meta(result.id)
    assert meta['result'] == {'exc_type': 'ValueError', 'exc_message': ['boom'],
                              'exc_module': 'builtins'}


def test_taskflow_reads_celery_retry(broker_name, to_celery):
    result = tasks.retry_until.delay(2)
    assert result.get(timeout=20) == 2
    assert result.state == 'SUCCESS'
    assert result.retries == 2


def test_taskflow_reads_celery_retries_exhausted(broker_name, to_celery):
    result = tasks.retry_until.delay(10)  # max_retries=3: the 4th attempt raises the KeyError
    with pytest.raises(KeyError, match='attempt 3'):
        result.get(timeout=20)
    assert result.state == 'FAILURE'
    assert result.retries == 3


def test_taskflow_countdown_on_celery_worker(broker_name, to_celery):
    sent = datetime.now().astimezone()
    result = tasks.request_info.apply_async(countdown=1.5)
    info = result.get(timeout=15)
    eta = parse_time(info['eta'])
    assert sent + timedelta(seconds=1.4) <= eta <= sent + timedelta(seconds=3)
    assert result.date_done >= eta


def test_taskflow_link_callback_on_celery_worker(broker_name, to_celery):
    callback_id = str(uuid.uuid4())
    result = tasks.add.apply_async((2, 3), link=tasks.mul.s(10).set(task_id=callback_id))
    assert result.get(timeout=10) == 5
    assert tasks.app.AsyncResult(callback_id).get(timeout=10) == 50
    assert [child.id for child in result.children] == [callback_id]
    assert raw_meta(callback_id)['parent_id'] == result.id


def test_taskflow_chain_on_celery_worker(broker_name, to_celery):
    result = (tasks.add.s(1, 1) | tasks.mul.s(3) | tasks.add.s(4)).apply_async()
    assert result.get(timeout=15) == 10
    assert result.parent.get(timeout=5) == 6
    # Celery's worker lists the next step once, with no parent tuple
    assert raw_meta(result.parent.id)['children'] == [[[result.id, None], None]]
    assert raw_meta(result.id)['parent_id'] == result.parent.id


def test_celery_meta_read_by_taskflow_backend(broker_name, to_celery):
    """Celery's meta, read raw and through taskflow's backend, has the same fields and values
    as the meta taskflow writes."""
    result = tasks.add.delay(1, 1)
    assert result.get(timeout=10) == 2
    raw = raw_meta(result.id)
    assert set(raw) == EXTENDED_KEYS
    assert raw['status'] == 'SUCCESS' and raw['result'] == 2 and raw['task_id'] == result.id
    meta = tasks.app.backend.get_task_meta(result.id, cache=False)
    assert {k: meta[k] for k in EXTENDED_KEYS} == raw
    parse_time(raw['date_done'])


def test_celery_worker_log_shows_taskflow_tasks(broker_name, to_celery):
    """The Celery worker accepted taskflow's messages as ordinary tasks (nothing refused)."""
    result = tasks.add.delay(40, 2)
    assert result.get(timeout=10) == 42
    log = wait_for(lambda: (lambda text: result.id in text and text)(to_celery.log()),
                   timeout=10, message='task id in the celery worker log')
    assert f'Task t.integration.tasks.add[{result.id}] received' in log
    for problem in ('Received unregistered task', 'Received invalid task message', 'UnicodeDecodeError'):
        assert problem not in log

"""Canvas interoperability with a real Celery 5.7, both directions, on Redis and on RabbitMQ
(results in Redis).

- Celery client -> taskflow worker: chains and chords built by ``celery_tasks`` (a real
  ``celery.Celery`` app whose tasks carry the names of ``tasks.py``) run on the module's taskflow
  worker; Celery's own ``AsyncResult`` reads the results. The chord joins natively in Redis
  (Celery's client wrote the chord size, taskflow's worker runs the Lua join).
- taskflow client -> Celery worker: chains and chords built by the taskflow client run on a real
  ``celery worker`` subprocess (prefork); taskflow reads the results. Chords in both join modes
  (native: Celery's worker joins on the keys taskflow's client set up; poll: Celery runs the
  ``celery.chord_unlock`` taskflow sent).
- Mixed fleet: the header tasks of one chord split between a Celery worker and a taskflow
  worker consuming the same queue; whichever finishes the set sends the body, once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import celery
import pytest
import redis
from celery.result import AsyncResult as CeleryAsyncResult, GroupResult as CeleryGroupResult

from taskflow import chain, chord, group, states
from taskflow.exceptions import ChordError
from taskflow.result import GroupResult
from t.integration import tasks
from t.integration.conftest import (REDIS_BACKEND_URL, configure_app,
                                    raw_meta, wait_for)

pytestmark = pytest.mark.integration

TIMEOUT = 20


def chord_keys(gid: str) -> dict[str, Any]:
    client = redis.Redis.from_url(REDIS_BACKEND_URL, decode_responses=True)
    prefix = f'celery-taskset-meta-{gid}'
    try:
        return {key[len(prefix):]: client.get(key) if client.type(key) == 'string' else client.type(key)
                for key in client.scan_iter(match=prefix + '*')}
    finally:
        client.close()


def assert_joined_natively(gid: str) -> None:
    """The join state of chord ``gid`` is gone; only the ``.c == "done"`` marker stays."""
    try:
        wait_for(lambda: chord_keys(gid) == {'.c': 'done'}, timeout=10, message=f'chord {gid} cleaned up')
    except AssertionError as exc:
        raise AssertionError(f'{exc}; keys left: {chord_keys(gid)}') from None


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# --- fixtures -------------------------------------------------------------------------------
@pytest.fixture(params=['native', 'poll'])
def join_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """The taskflow client's chord join (``poll``: it sends ``celery.chord_unlock``)."""
    conf = tasks.app.conf
    saved = conf.result_chord_join, conf.result_chord_retry_interval
    conf.result_chord_join = request.param
    if request.param == 'poll':
        conf.result_chord_retry_interval = 0.2
    try:
        yield request.param
    finally:
        conf.result_chord_join, conf.result_chord_retry_interval = saved


# --- Celery client -> taskflow worker ----------------------------------------------------------
def test_celery_chain_on_taskflow_worker(broker, worker, celery_client):
    c = celery_client
    result = celery.chain(c.add.s(1, 2), c.add.s(3), c.mul.s(10)).apply_async()
    assert isinstance(result, CeleryAsyncResult)
    assert result.get(timeout=TIMEOUT) == 60
    assert result.parent.get(timeout=TIMEOUT) == 6
    assert result.parent.parent.get(timeout=TIMEOUT) == 3
    meta = raw_meta(result.id)
    assert meta['status'] == 'SUCCESS' and meta['worker'].startswith('tf-module-')
    assert raw_meta(result.parent.id)['worker'].startswith('tf-module-')
    # immutable steps and a chain within a chain
    nested = (c.add.s(1, 1) | c.mul.si(3, 3) | (c.add.s(1) | c.mul.s(2))).apply_async()
    assert nested.get(timeout=TIMEOUT) == 20


def test_celery_chain_failure_on_taskflow_worker(broker, worker, celery_client):
    c = celery_client
    result = celery.chain(c.add.s(1, 1), c.fail.si('celery chain broke'), c.add.s(1)).apply_async()
    with pytest.raises(ValueError, match='celery chain broke'):
        result.get(timeout=TIMEOUT)
    wait_for(lambda: raw_meta(result.id) is not None, timeout=10, message='the last step marked')
    assert raw_meta(result.id)['status'] == 'FAILURE'  # never ran, marked failed by taskflow
    assert raw_meta(result.parent.id)['status'] == 'FAILURE'


def test_celery_chord_on_taskflow_worker(broker, worker, celery_client):
    c = celery_client
    result = celery.chord([c.add.s(i, i) for i in range(8)], c.xsum.s()).apply_async()
    assert result.get(timeout=TIMEOUT) == 56
    header = result.parent
    assert isinstance(header, CeleryGroupResult)
    assert header.get(timeout=TIMEOUT) == [2 * i for i in range(8)]
    assert raw_meta(result.id)['worker'].startswith('tf-module-')
    assert_joined_natively(header.id)
    # chord(header)(body), and a group followed by a task
    assert celery.chord(c.add.s(i, 1) for i in range(3))(c.echo.s()).get(timeout=TIMEOUT) == [[[1, 2, 3]], {}]
    assert (celery.group(c.add.s(1, 1), c.add.s(2, 2)) | c.xsum.s()).apply_async().get(timeout=TIMEOUT) == 6


def test_celery_chord_in_chain_on_taskflow_worker(broker, worker, celery_client):
    c = celery_client
    first = (celery.chord([c.add.s(1, 1), c.add.s(2, 2)], c.xsum.s()) | c.mul.s(10)).apply_async()
    assert first.get(timeout=TIMEOUT) == 60
    body = celery.chord([c.add.s(1, 1), c.add.s(2, 2)], c.xsum.s() | c.mul.s(10)).apply_async()
    assert body.get(timeout=TIMEOUT) == 60


def test_celery_task_then_chord_on_taskflow_worker(broker, worker, celery_client):
    c = celery_client
    result = (c.add.s(1, 1) | celery.chord([c.add.s(1), c.add.s(2)], c.xsum.s()) | c.mul.s(10)).apply_async()
    last_step_id = result.id
    assert result.get(timeout=4) == 70  # runs in well under a second when it works
    assert raw_meta(last_step_id)['name'] == 't.integration.tasks.mul'


def test_celery_chord_failure_on_taskflow_worker(broker, worker, celery_client, tmp_path):
    c = celery_client
    body_ran = tmp_path / 'body.txt'
    result = celery.chord([c.add.s(1, 1), c.fail.si('header broke')], c.record_sum.s(str(body_ran))).apply_async()
    with pytest.raises(Exception, match='header broke') as info:
        result.get(timeout=TIMEOUT)
    assert type(info.value).__name__ in ('ChordError', 'ValueError')  # Celery's get() follows parents too
    wait_for(lambda: (raw_meta(result.id) or {}).get('status') == 'FAILURE', timeout=10, message='body failed')
    failed_id = result.parent.results[1].id
    meta = raw_meta(result.id)
    assert meta['result']['exc_type'] == 'ChordError'
    assert meta['result']['exc_message'] == [f"Dependency {failed_id} raised ValueError('header broke')"]
    assert not body_ran.exists()


def test_taskflow_worker_stores_chord_error_as_celery_does(broker, worker, celery_client):
    c = celery_client
    result = celery.chord([c.fail.si('header broke')], c.xsum.s()).apply_async()
    wait_for(lambda: (raw_meta(result.id) or {}).get('status') == 'FAILURE', timeout=10, message='body failed')
    assert raw_meta(result.id)['result']['exc_module'] == 'celery.exceptions'


# --- taskflow client -> Celery worker ----------------------------------------------------------
def test_taskflow_chain_on_celery_worker(broker_name, to_celery):
    result = (tasks.add.s(1, 2) | tasks.add.s(3) | tasks.mul.s(10)).apply_async()
    assert result.get(timeout=TIMEOUT) == 60
    assert result.parent.get(timeout=TIMEOUT) == 6
    assert result.parent.parent.get(timeout=TIMEOUT) == 3
    assert result.worker.startswith(to_celery.nodename_prefix)
    assert (tasks.add.s(1, 1) | tasks.mul.si(3, 3) | tasks.add.s(1)).apply_async().get(timeout=TIMEOUT) == 10


def test_taskflow_chain_failure_on_celery_worker(broker_name, to_celery, tmp_path):
    errors = tmp_path / 'errors.txt'
    c = chain(tasks.add.s(1, 1), tasks.fail.si('boom'), tasks.add.s(1), tasks.add.s(2))
    c.link_error(tasks.on_error_record.s(path=str(errors)))
    result = c.apply_async()
    with pytest.raises(ValueError, match='boom'):
        result.get(timeout=TIMEOUT)
    wait_for(lambda: result.state == states.FAILURE, timeout=10, message='the last step marked')
    wait_for(lambda: lines(errors), timeout=10, message='errback')
    # Celery runs the errback once, for the failed task (compare test_chain_link_error_runs_once)
    assert lines(errors) == [f'{result.parent.parent.id} ValueError']


def test_taskflow_chord_on_celery_worker(broker_name, to_celery, join_mode):
    result = chord([tasks.add.s(i, i) for i in range(8)], tasks.xsum.s()).apply_async()
    assert result.get(timeout=TIMEOUT) == 56
    assert isinstance(result.parent, GroupResult)
    assert result.parent.get(timeout=TIMEOUT) == [2 * i for i in range(8)]
    assert result.worker.startswith(to_celery.nodename_prefix)
    if join_mode == 'native':
        assert_joined_natively(result.parent.id)
    else:
        assert chord_keys(result.parent.id) == {}
    assert (group(tasks.add.s(1, 1), tasks.add.s(2, 2)) | tasks.xsum.s()).apply_async().get(timeout=TIMEOUT) == 6
    nested = chord([chord([tasks.add.s(1, 1), tasks.add.s(2, 2)], tasks.xsum.s()), tasks.add.s(5, 5)],
                   tasks.echo.s() | tasks.echo.s())
    assert nested.apply_async().get(timeout=TIMEOUT) == [[[[[6, 10]], {}]], {}]


def test_taskflow_chord_in_chain_on_celery_worker(broker_name, to_celery, join_mode):
    first = chord([tasks.add.s(1, 1), tasks.add.s(2, 2)], tasks.xsum.s() | tasks.mul.s(10)) | tasks.add.s(1)
    result = first.apply_async()
    assert result.get(timeout=TIMEOUT) == 61
    assert result.parent.get(timeout=TIMEOUT) == 60


def test_taskflow_task_then_chord_on_celery_worker(broker_name, to_celery):
    c = tasks.add.s(1, 1) | chord([tasks.add.s(1), tasks.add.s(2)], tasks.xsum.s()) | tasks.mul.s(10)
    assert c.apply_async().get(timeout=4) == 70  # runs in well under a second when it works


def test_taskflow_chord_failure_on_celery_worker(broker_name, to_celery, join_mode, tmp_path):
    body_ran = tmp_path / 'body.txt'
    result = chord([tasks.add.s(1, 1), tasks.fail.si('header broke')],
                   tasks.record_sum.s(str(body_ran))).apply_async()
    with pytest.raises(Exception, match='header broke'):
        result.get(timeout=TIMEOUT)
    wait_for(lambda: result.state == states.FAILURE, timeout=TIMEOUT, message='the body marked failed')
    failed_id = result.parent.results[1].id
    meta = raw_meta(result.id)
    assert (meta['result']['exc_type'], meta['result']['exc_module']) == ('ChordError', 'celery.exceptions')
    if join_mode == 'native':
        assert meta['result']['exc_message'] == [f"Dependency {failed_id} raised ValueError('header broke')"]
    else:  # Celery's chord_unlock names the culprit only when it has its result cached
        assert "ValueError('header broke')" in meta['result']['exc_message'][0]
    assert type(result.result).__name__ == 'ChordError'
    assert not body_ran.exists()


def test_taskflow_catches_chord_error_from_celery_worker(broker_name, to_celery):
    result = chord([tasks.fail.si('header broke')], tasks.xsum.s()).apply_async()
    wait_for(lambda: result.state == states.FAILURE, timeout=TIMEOUT, message='the body marked failed')
    with pytest.raises(ChordError):
        result.get(timeout=TIMEOUT, follow_parents=False)


# --- mixed fleet -----------------------------------------------------------------------------------
def test_mixed_fleet_chord(broker_name, to_celery, celery_queue, start_worker, tmp_path):
    """A taskflow worker joins the Celery worker on its queue; each chord's header runs on both,
    joined natively (Celery's and taskflow's Lua agree) and by polling (celery.chord_unlock)."""
    tf_worker = start_worker(queue=celery_queue)
    wait_for(lambda: ' ready.' in tf_worker.log(), timeout=30, message='the taskflow worker ready')
    configure_app(broker_name, celery_queue)  # start_worker's broker fixture pointed it elsewhere
    conf = tasks.app.conf
    saved = conf.result_chord_join, conf.result_chord_retry_interval
    try:
        for mode in ('native', 'poll'):
            conf.result_chord_join, conf.result_chord_retry_interval = mode, 0.2
            path = tmp_path / f'body-{mode}.txt'
            header = [tasks.slow_add.s(i, i, 0.2) for i in range(16)]
            result = chord(header, tasks.record_sum.s(str(path))).apply_async()
            assert result.get(timeout=40) == sum(2 * i for i in range(16)), mode
            workers = {raw_meta(r.id)['worker'].split('@')[0] for r in result.parent.results}
            assert any(w.startswith('celery-') for w in workers), (mode, workers)
            assert any(w.startswith('tf-') for w in workers), (mode, workers)
            assert lines(path) == [str(sum(2 * i for i in range(16)))], mode
            if mode == 'native':
                assert_joined_natively(result.parent.id)
            else:
                assert chord_keys(result.parent.id) == {}
    finally:
        conf.result_chord_join, conf.result_chord_retry_interval = saved

"""``taskflow.result`` and the backends on ``memory://``: metas, ``AsyncResult``, waiting with
timeouts, ``EagerResult``, ``ResultSet``/``GroupResult``, tuples, the disabled backend, and
reading metas written by Celery 5.7 (``fixtures/celery_result_metas.json``)."""
from __future__ import annotations

import json
import threading
import types
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from taskflow import _state, states
from taskflow.app import Taskflow
from taskflow.backends import SCHEMES, by_url
from taskflow.backends.base import DisabledBackend
from taskflow.backends.memory import MemoryBackend
from taskflow.exceptions import ImproperlyConfigured, TaskRevokedError, TimeoutError
from taskflow.protocol import Context
from taskflow.result import AsyncResult, EagerResult, GroupResult, ResultSet, result_from_tuple

CELERY_METAS = json.loads((Path(__file__).resolve().parent / 'fixtures' / 'celery_result_metas.json').read_text())


@pytest.fixture
def app():
    return Taskflow('t', broker='memory://', backend='memory://', set_as_current=True)


@pytest.fixture
def backend(app):
    return app.backend


# --- the backend ---------------------------------------------------------------------------------
def test_memory_backend_is_made_once(app):
    assert isinstance(app.backend, MemoryBackend) and app.backend is app.backend


def test_store_and_read_a_meta(backend):
    backend.store_result('t1', {'answer': 42}, states.SUCCESS)
    meta = backend.get_task_meta('t1')
    assert meta['status'] == states.SUCCESS and meta['result'] == {'answer': 42}
    assert meta['task_id'] == 't1' and meta['traceback'] is None and meta['children'] == []
    assert datetime.fromisoformat(meta['date_done']).utcoffset() is not None


def test_unknown_id_reads_as_pending(backend):
    meta = backend.get_task_meta('never-stored')
    assert meta['status'] == states.PENDING and meta['result'] is None and meta['task_id'] == 'never-stored'
    assert meta['date_done'] is None


def test_not_ready_states_have_no_date_done(backend):
    backend.store_result('t1', {'current': 1}, 'PROGRESS')
    backend.mark_as_started('t2', pid=1, hostname='w@h')
    assert backend.get_task_meta('t1')['date_done'] is None
    assert backend.get_task_meta('t2')['result'] == {'pid': 1, 'hostname': 'w@h'}
    assert backend.get_task_meta('t2')['status'] == states.STARTED


def test_failure_meta_holds_the_exception(backend):
    backend.mark_as_failure('t1', ValueError('bad'), 'Traceback...')
    raw = json.loads(backend._get(backend.get_key_for_task('t1')))
    assert raw['result'] == {'exc_type': 'ValueError', 'exc_message': ['bad'], 'exc_module': 'builtins'}
    meta = backend.get_task_meta('t1')
    assert isinstance(meta['result'], ValueError) and meta['traceback'] == 'Traceback...'


def test_revoked_and_retry_metas(backend):
    backend.mark_as_revoked('t1', 'terminated')
    backend.mark_as_retry('t2', KeyError('again'), 'tb')
    assert isinstance(backend.get_task_meta('t1')['result'], TaskRevokedError)
    assert isinstance(backend.get_task_meta('t2')['result'], KeyError)
    assert backend.get_task_meta('t2')['status'] == states.RETRY


def test_keys_and_prefix(app):
    assert app.backend.get_key_for_task('x') == 'celery-task-meta-x'
    assert app.backend.get_key_for_group('g') == 'celery-taskset-meta-g'
    prefixed = Taskflow('p', backend='memory://', set_as_current=False,
                        result_backend_transport_options={'global_keyprefix': 'tenant'})
    assert prefixed.backend.get_key_for_task('x') == 'tenant_celery-task-meta-x'
    colon = Taskflow('p', backend='memory://', set_as_current=False,
                     result_backend_transport_options={'global_keyprefix': 'tenant:'})
    assert colon.backend.get_key_for_task('x') == 'tenant:celery-task-meta-x'


def test_extended_meta(app):
    app.conf.result_extended = True
    app.config_from_object({})  # a new backend that sees the setting
    request = Context(id='t1', name='proj.add', args=[1, 2], kwargs={'k': 1}, hostname='w1@h', retries=2,
                      delivery_info={'routing_key': 'q1'}, group='g', parent_id='p')
    app.backend.mark_as_done('t1', 3, request)
    result = AsyncResult('t1', app=app)
    assert (result.name, result.args, result.kwargs, result.worker, result.retries, result.queue) == \
        ('proj.add', [1, 2], {'k': 1}, 'w1@h', 2, 'q1')
    meta = app.backend.get_task_meta('t1')
    assert meta['group_id'] == 'g' and meta['parent_id'] == 'p'


def test_redelivered_run_does_not_overwrite_success(backend):
    backend.mark_as_done('t1', 'first')
    again = Context(id='t1', delivery_info={'redelivered': True})
    backend.mark_as_failure('t1', ValueError('late duplicate'), request=again)
    assert backend.get_task_meta('t1', cache=False)['result'] == 'first'


def test_result_expiry(app, monkeypatch):
    backend = Taskflow('e', backend='memory://', set_as_current=False, result_expires=10).backend
    backend.store_result('t1', 1, states.SUCCESS)
    import taskflow.backends.memory as memory
    now = memory.time.monotonic()
    monkeypatch.setattr(memory.time, 'monotonic', lambda: now + 11)
    assert backend._get(backend.get_key_for_task('t1')) is None


# --- AsyncResult ---------------------------------------------------------------------------------
def test_async_result_success(app):
    app.backend.mark_as_done('t1', 5)
    result = app.AsyncResult('t1')
    assert result.id == result.task_id == str(result) == 't1'
    assert result.state == result.status == states.SUCCESS
    assert result.result == result.info == 5
    assert result.get(timeout=1) == 5
    assert result.ready() and result.successful() and not result.failed()
    assert result.traceback is None
    assert isinstance(result.date_done, datetime) and result.date_done.utcoffset() is not None


def test_async_result_failure(app):
    app.backend.mark_as_failure('t1', KeyError('missing'), 'Traceback (most recent call last): ...')
    result = AsyncResult('t1', app=app)
    assert result.state == states.FAILURE and result.failed() and result.ready() and not result.successful()
    assert isinstance(result.result, KeyError)
    assert result.traceback.startswith('Traceback')
    with pytest.raises(KeyError):
        result.get(timeout=1)
    assert isinstance(result.get(timeout=1, propagate=False), KeyError)


def test_revoked_result_raises_on_get(app):
    app.backend.mark_as_revoked('t1', 'revoked by user')
    with pytest.raises(TaskRevokedError):
        AsyncResult('t1', app=app).get(timeout=1)


def test_pending_result(app):
    result = AsyncResult('nothing-yet', app=app)
    assert result.state == states.PENDING and not result.ready() and not result.exists()
    assert result.result is None and result.date_done is None and result.children == []


def test_get_times_out(app):
    with pytest.raises(TimeoutError):
        AsyncResult('never', app=app).get(timeout=0.05, interval=0.01)
    assert issubclass(TimeoutError, Exception) and TimeoutError.__module__ == 'taskflow.exceptions'


def test_get_sees_a_store_from_another_thread(app):
    waiting = threading.Event()

    def store_when_waited_for():
        assert waiting.wait(5)
        app.backend.mark_as_done('t1', 'late')

    thread = threading.Thread(target=store_when_waited_for)
    thread.start()
    try:
        value = AsyncResult('t1', app=app).get(timeout=5, interval=0.05, on_interval=waiting.set)
    finally:
        thread.join(5)
    assert value == 'late' and not thread.is_alive()


def test_get_callbacks(app):
    app.backend.mark_as_done('t1', 'v')
    got: list[Any] = []
    AsyncResult('t1', app=app).get(timeout=1, callback=lambda tid, value: got.append((tid, value)),
                                   on_message=lambda meta: got.append(meta['status']))
    assert got == [states.SUCCESS, ('t1', 'v')]


def test_get_raises_a_failed_parent_first(app):
    app.backend.mark_as_failure('parent', ValueError('parent failed'))
    app.backend.mark_as_done('child', 1)
    child = AsyncResult('child', app=app, parent=AsyncResult('parent', app=app))
    with pytest.raises(ValueError, match='parent failed'):
        child.get(timeout=1)
    assert child.get(timeout=1, follow_parents=False) == 1


def test_forget(app):
    app.backend.mark_as_done('t1', 1)
    result = AsyncResult('t1', app=app)
    assert result.get(timeout=1) == 1
    result.forget()
    assert result.state == states.PENDING
    assert app.backend.get_task_meta('t1')['status'] == states.PENDING


def test_children(app):
    request = Context(id='t1', children=[AsyncResult('c1', app=app),
                                         GroupResult('g1', [AsyncResult('c2', app=app)], app=app)])
    app.backend.mark_as_done('t1', 1, request)
    children = AsyncResult('t1', app=app).children
    assert [type(c) for c in children] == [AsyncResult, GroupResult]
    assert children[0].id == 'c1' and children[1].id == 'g1' and children[1].results[0].id == 'c2'


def test_custom_state(app):
    app.backend.store_result('t1', {'current': 1, 'total': 2}, 'PROGRESS')
    result = AsyncResult('t1', app=app)
    assert result.state == 'PROGRESS' and result.info == {'current': 1, 'total': 2} and not result.ready()


def test_ready_results_are_cached(app):
    app.backend.mark_as_done('t1', 1)
    result = AsyncResult('t1', app=app)
    assert result.get(timeout=1) == 1
    app.backend._delete(app.backend.get_key_for_task('t1'))
    assert result.get(timeout=1) == 1 and result.state == states.SUCCESS


def test_async_result_needs_an_id(app):
    with pytest.raises(ValueError):
        AsyncResult(None, app=app)  # type: ignore[arg-type]


def test_equality_and_hash(app):
    a, b = AsyncResult('x', app=app), AsyncResult('x', app=app)
    assert a == b and a == 'x' and hash(a) == hash(b) and a != AsyncResult('y', app=app)
    assert repr(a) == '<AsyncResult: x>'


def test_disable_sync_subtasks_inside_a_worker_task(app):
    app.backend.mark_as_done('t1', 1)
    worker_task = types.SimpleNamespace(request=Context(id='running', is_eager=False))
    token = _state.current_worker_task_var.set(worker_task)
    try:
        with pytest.raises(RuntimeError, match='Never call result.get'):
            AsyncResult('t1', app=app).get(timeout=1)
        with pytest.raises(RuntimeError):
            ResultSet([AsyncResult('t1', app=app)], app=app).get(timeout=1)
        with pytest.raises(RuntimeError):
            EagerResult('e', 1, states.SUCCESS, app=app).get()
        assert AsyncResult('t1', app=app).get(timeout=1, disable_sync_subtasks=False) == 1
    finally:
        _state.current_worker_task_var.reset(token)
    assert AsyncResult('t1', app=app).get(timeout=1) == 1


def test_get_inside_an_eager_task_is_allowed(app):
    app.backend.mark_as_done('t1', 1)

    @app.task
    def reads():
        return AsyncResult('t1', app=app).get(timeout=1)

    assert reads.apply().get() == 1


# --- EagerResult ---------------------------------------------------------------------------------
def test_eager_result(app):
    result = EagerResult('e1', 10, states.SUCCESS, name='proj.x', app=app)
    assert result.id == 'e1' and result.get() == 10 and result.result == 10
    assert result.state == states.SUCCESS and result.ready() and result.successful()
    assert repr(result) == '<EagerResult: e1>'
    result.forget()
    assert result.get() == 10


def test_eager_result_failure(app):
    exc = ValueError('eager bad')
    result = EagerResult('e1', exc, states.FAILURE, traceback='tb', app=app)
    assert result.failed() and result.traceback == 'tb'
    with pytest.raises(ValueError):
        result.get()
    assert result.get(propagate=False) is exc


def test_eager_result_revoke(app):
    result = EagerResult('e1', 1, states.PENDING, app=app)
    result.revoke()
    assert result.state == states.REVOKED
    with pytest.raises(TaskRevokedError):
        result.get()


# --- sets and groups -------------------------------------------------------------------------------
@pytest.fixture
def mixed(app):
    app.backend.mark_as_done('ok1', 1)
    app.backend.mark_as_done('ok2', 2)
    app.backend.mark_as_failure('bad', ValueError('x'))
    return [AsyncResult(i, app=app) for i in ('ok1', 'ok2', 'bad', 'pending')]


def test_result_set_counts(app, mixed):
    rs = ResultSet(mixed, app=app)
    assert len(rs) == 4 and rs[0].id == 'ok1' and [r.id for r in rs] == ['ok1', 'ok2', 'bad', 'pending']
    assert rs.completed_count() == 2
    assert not rs.ready() and rs.waiting() and rs.failed() and not rs.successful()
    rs.discard(mixed[3])
    assert rs.ready() and not rs.waiting()
    rs.add(mixed[0])
    assert len(rs) == 3
    with pytest.raises(ValueError):
        rs.maybe_throw()
    rs.maybe_throw(propagate=False)


def test_result_set_join(app):
    for i in range(3):
        app.backend.mark_as_done(f'r{i}', i * 10)
    rs = ResultSet([AsyncResult(f'r{i}', app=app) for i in range(3)], app=app)
    assert rs.get(timeout=1) == rs.join(timeout=1) == [0, 10, 20]
    assert rs.successful() and rs.completed_count() == 3
    got: list[Any] = []
    assert rs.join(timeout=1, callback=lambda tid, value: got.append((tid, value))) == []
    assert got == [('r0', 0), ('r1', 10), ('r2', 20)]


def test_result_set_join_propagates_and_times_out(app, mixed):
    with pytest.raises(ValueError):
        ResultSet(mixed[:3], app=app).join(timeout=1)
    assert isinstance(ResultSet(mixed[:3], app=app).join(timeout=1, propagate=False)[2], ValueError)
    with pytest.raises(TimeoutError):
        ResultSet(mixed, app=app).join(timeout=0.05, interval=0.01, propagate=False)


def test_group_result(app, mixed):
    group = GroupResult('g1', mixed[:2], app=app)
    assert group.id == 'g1' and group.children == group.results
    assert group.successful() and group.completed_count() == 2 and group.get(timeout=1) == [1, 2]
    assert group == GroupResult('g1', mixed[:2], app=app) and group != GroupResult('g2', mixed[:2], app=app)
    assert repr(group) == '<GroupResult: g1 [ok1, ok2]>'


def test_nested_groups(app, mixed):
    inner = GroupResult('inner', mixed[:2], app=app)
    outer = GroupResult('outer', [inner, mixed[2]], app=app)
    assert outer.failed() and outer.ready() and outer.completed_count() == 1


def test_group_save_and_restore(app):
    group = GroupResult('g1', [AsyncResult('a', app=app), AsyncResult('b', app=app)], app=app)
    assert group.save() is group
    restored = GroupResult.restore('g1', app=app)
    assert isinstance(restored, GroupResult) and restored == group
    assert app.GroupResult('g1', group.results) == group
    group.delete()
    assert GroupResult.restore('g1', app=app) is None


def test_group_restore_unknown(app):
    assert GroupResult.restore('never-saved', app=app) is None


def test_celery_saved_group_restores(app):
    saved = CELERY_METAS['group']
    app.backend._set(saved['key'], json.dumps(saved['meta']), None)
    restored = GroupResult.restore('group-saved', app=app)
    assert [r.id for r in restored.results] == ['member-1', 'member-2']


# --- tuples ---------------------------------------------------------------------------------------
def test_as_tuple_and_back(app):
    parent = AsyncResult('p', app=app)
    child = AsyncResult('c', app=app, parent=parent)
    assert child.as_tuple() == (('c', (('p', None), None)), None)
    again = result_from_tuple(json.loads(json.dumps(child.as_tuple())), app)
    assert again == child and again.parent == parent and again.parent.parent is None
    group = GroupResult('g', [child, AsyncResult('d', app=app)], parent=parent, app=app)
    assert group.as_tuple() == (('g', (('p', None), None)), [child.as_tuple(), (('d', None), None)])
    group_again = result_from_tuple(json.loads(json.dumps(group.as_tuple())), app)
    assert isinstance(group_again, GroupResult) and group_again == group
    assert group_again.parent == parent and group_again.results[0].parent == parent


def test_result_from_tuple_passes_results_through(app):
    result = AsyncResult('x', app=app)
    assert result_from_tuple(result, app) is result
    assert result_from_tuple(None, app) is None
    empty = result_from_tuple([['g', None], []], app)
    assert isinstance(empty, GroupResult) and empty.results == []


def test_result_from_tuple_accepts_a_plain_id(app):
    result = result_from_tuple(['abc-123', None], app)
    assert result.id == 'abc-123'


def test_pickle_async_result(app):
    import pickle
    result = AsyncResult('x', app=app, task_name='proj.add', parent=AsyncResult('p', app=app))
    again = pickle.loads(pickle.dumps(result))
    assert again == result and again.task_name == 'proj.add' and again.parent == 'p'


# --- metas written by Celery 5.7 -------------------------------------------------------------------
@pytest.mark.parametrize('case', sorted(CELERY_METAS['tasks']))
def test_celery_written_metas_read_back(app, case):
    stored = CELERY_METAS['tasks'][case]
    meta = dict(stored['meta'])
    if meta['date_done'] == '<date_done>':
        meta['date_done'] = '2026-03-04T05:06:07.123456+00:00'
    app.backend._set(stored['key'], json.dumps(meta), None)
    result = AsyncResult(meta['task_id'], app=app)
    assert result.state == stored['state']
    if stored['state'] == states.FAILURE:
        assert isinstance(result.result, ValueError) and result.result.args == ('bad',)
        assert result.traceback.startswith('Traceback')
    else:
        assert result.result == meta['result']
    if meta['date_done']:
        assert result.date_done == datetime.fromisoformat(meta['date_done'])
    else:
        assert result.date_done is None
    if meta['children']:
        assert [c.id for c in result.children] == ['child-1', 'child-group']
        assert isinstance(result.children[1], GroupResult)
    if case.endswith('_extended') and 'name' in meta:
        assert (result.name, result.args, result.worker, result.queue) == ('proj.add', [1, 1], 'w1@vm', 'celery')


# --- disabled and unknown backends -----------------------------------------------------------------
def test_disabled_backend_has_a_clear_error():
    app = Taskflow('t', broker='memory://', set_as_current=False)
    assert isinstance(app.backend, DisabledBackend)
    result = AsyncResult('t1', app=app)
    with pytest.raises(NotImplementedError, match='No result backend is configured'):
        result.get(timeout=1)
    with pytest.raises(NotImplementedError, match='result_backend'):
        result.state  # noqa: B018
    assert app.backend.store_result('t1', 1, states.SUCCESS) is None  # storing is a no-op


def test_disabled_scheme():
    app = Taskflow('t', set_as_current=False)
    assert isinstance(by_url(app, 'disabled'), DisabledBackend)
    assert isinstance(by_url(app, None), DisabledBackend)


@pytest.mark.parametrize('url', ['memory://', 'cache+memory://', 'MEMORY://'])
def test_memory_urls(url):
    assert isinstance(by_url(Taskflow('t', set_as_current=False), url), MemoryBackend)


@pytest.mark.parametrize('url', ['bogus://x', 'mongodb://host/db', 'nonsense'])
def test_unknown_scheme_is_a_clear_error(url):
    with pytest.raises(ImproperlyConfigured) as info:
        by_url(Taskflow('t', set_as_current=False), url)
    message = str(info.value)
    assert url.partition('://')[0] in message
    for scheme in ('memory', 'redis'):
        assert scheme in message
    assert set(SCHEMES) >= {'redis', 'rediss', 'memory', 'disabled'}


def test_unknown_scheme_surfaces_through_the_app():
    app = Taskflow('t', backend='bogus://x', set_as_current=False)
    with pytest.raises(ImproperlyConfigured):
        app.backend  # noqa: B018

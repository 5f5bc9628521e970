"""``taskflow.protocol`` against golden Celery 5.7 data (``t/unit/fixtures/``, made by
``fixtures/make_fixtures.py``): task messages v2 (and a v1 body), the exception codec, stored
result metas; plus node names, ``saferepr`` and ``Context``.
"""
from __future__ import annotations

import json
import os
import re
import socket
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from kombu.utils.json import dumps as kombu_dumps

from taskflow import protocol
from taskflow.app import Taskflow
from taskflow.canvas import Signature
from taskflow.exceptions import InvalidTaskError, SecurityError
from taskflow.protocol import (Context, default_nodename, exception_from_meta, exception_to_meta,
                               host_format, request_from_message, saferepr, task_message)
from taskflow.result import AsyncResult, GroupResult

FIXTURES = Path(__file__).resolve().parent / 'fixtures'


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


MESSAGES = load('celery_task_messages.json')
MESSAGE_V1 = load('celery_task_message_v1.json')
EXCEPTION_METAS = load('celery_exception_metas.json')['cases']
RESULT_METAS = load('celery_result_metas.json')

ORIGIN_RE = re.compile(r'gen\d+@.+')
ISO_WITH_OFFSET = re.compile(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d')


def jsonable(obj: Any) -> Any:
    """What a JSON consumer of the message sees."""
    return json.loads(kombu_dumps(obj))


@pytest.fixture
def app():
    return Taskflow('t', broker='memory://', backend='memory://', set_as_current=False)


# --- replaying the golden calls with taskflow -------------------------------------------------
def _signature(spec: dict[str, Any]) -> Signature:
    return Signature(spec['task'], args=spec['args'], kwargs=spec['kwargs'],
                     options=dict(spec['options']), immutable=spec['immutable'])


def _value(value: Any, sigs: dict[str, Any]) -> Any:
    if isinstance(value, str) and value.startswith('sig:'):
        return _signature(sigs[value[4:]])
    if isinstance(value, str) and value.startswith('@'):
        return datetime.fromisoformat(value[1:])
    if isinstance(value, list) and value and all(isinstance(v, str) and v.startswith('sig:') for v in value):
        return [_value(v, sigs) for v in value]
    return value


def build(call: dict[str, Any], sigs: dict[str, Any] = MESSAGES['signatures']):
    """``protocol.task_message`` with the arguments Celery's ``as_task_v2`` got."""
    kwargs = {key: _value(value, sigs) for key, value in call.items()}
    task_id, name = kwargs.pop('task_id'), kwargs.pop('name')
    kwargs['args'] = tuple(kwargs['args'])
    if 'now' in kwargs:
        fixed = kwargs['now']
        kwargs['now'] = lambda: fixed
    return task_message(name, task_id, **kwargs)


CASES = sorted(MESSAGES['cases'])


def golden(case: str) -> dict[str, Any]:
    return MESSAGES['cases'][case]


def test_fixtures_come_from_celery_5_7():
    assert MESSAGES['celery_version'] == '5.7.0'
    assert MESSAGE_V1['celery_version'] == '5.7.0'
    assert RESULT_METAS['celery_version'] == '5.7.0'


@pytest.mark.parametrize('case', CASES)
def test_header_key_set_matches_celery(case):
    headers, _, _ = build(golden(case)['call'])
    assert set(headers) == set(golden(case)['headers'])


@pytest.mark.parametrize('case', CASES)
def test_header_value_types_match_celery(case):
    headers, _, _ = build(golden(case)['call'])
    ours = jsonable(headers)
    theirs = golden(case)['headers']
    assert {k: type(v).__name__ for k, v in ours.items()} == {k: type(v).__name__ for k, v in theirs.items()}


@pytest.mark.parametrize('case', CASES)
def test_header_values_match_celery(case):
    headers, _, _ = build(golden(case)['call'])
    ours = jsonable(headers)
    assert ORIGIN_RE.fullmatch(ours['origin'])
    ours['origin'] = '<origin>'
    assert ours == golden(case)['headers']


@pytest.mark.parametrize('case', CASES)
def test_properties_match_celery(case):
    _, properties, _ = build(golden(case)['call'])
    assert jsonable(properties) == golden(case)['properties']


@pytest.mark.parametrize('case', CASES)
def test_body_matches_celery(case):
    _, _, body = build(golden(case)['call'])
    ours = jsonable(body)
    assert ours == golden(case)['body']
    args, kwargs, embed = ours
    assert isinstance(args, list) and isinstance(kwargs, dict)
    assert set(embed) == {'callbacks', 'errbacks', 'chain', 'chord'}


def test_timelimit_is_hard_then_soft():
    headers, _, _ = task_message('proj.slow', 'id', time_limit=30, soft_time_limit=20)
    assert headers['timelimit'] == [30, 20]
    headers, _, _ = task_message('proj.slow', 'id', soft_time_limit=20)
    assert headers['timelimit'] == [None, 20]


def test_chain_keeps_the_next_step_last():
    _, _, body = build(golden('chain')['call'])
    assert [sig['options']['task_id'] for sig in body[2]['chain']] == ['step-3', 'step-2']


def test_origin_is_gen_pid_at_host():
    headers, _, _ = task_message('proj.add', 'id')
    assert headers['origin'] == f'gen{os.getpid()}@{socket.gethostname()}'
    headers, _, _ = task_message('proj.add', 'id', origin='w1@box')
    assert headers['origin'] == 'w1@box'


def test_root_id_defaults_to_own_id():
    headers, _, _ = task_message('proj.add', 'own-id')
    assert headers['root_id'] == 'own-id'
    assert headers['parent_id'] is None


@pytest.mark.parametrize('case,field', [('countdown', 'eta'), ('eta', 'eta'), ('expires_seconds', 'expires'),
                                        ('expires_datetime', 'expires')])
def test_dates_are_iso_with_an_offset(case, field):
    headers, _, _ = build(golden(case)['call'])
    assert ISO_WITH_OFFSET.fullmatch(headers[field]), headers[field]
    assert datetime.fromisoformat(headers[field]).utcoffset() is not None


def test_naive_eta_is_taken_as_utc():
    headers, _, _ = task_message('proj.add', 'id', eta=datetime(2026, 1, 2, 3, 4, 5))
    assert headers['eta'] == '2026-01-02T03:04:05+00:00'


def test_eta_string_with_z_suffix_gets_an_offset():
    headers, _, _ = task_message('proj.add', 'id', eta='2026-01-02T03:04:05Z')
    assert headers['eta'] == '2026-01-02T03:04:05+00:00'


def test_expires_timedelta_is_relative_to_now():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    headers, _, _ = task_message('proj.add', 'id', expires=timedelta(minutes=5), now=lambda: now)
    assert headers['expires'] == '2026-01-01T00:05:00+00:00'


def test_eta_in_another_zone_keeps_its_offset():
    tz = timezone(timedelta(hours=2))
    headers, _, _ = task_message('proj.add', 'id', eta=datetime(2026, 1, 1, 12, 0, tzinfo=tz))
    assert headers['eta'] == '2026-01-01T12:00:00+02:00'


def test_zero_countdown_sends_no_eta():
    headers, _, _ = task_message('proj.add', 'id', countdown=0)
    assert headers['eta'] is None


@pytest.mark.parametrize('args,kwargs', [('not a list', None), ({'a': 1}, None), ((), ['not', 'a', 'mapping'])])
def test_task_message_rejects_bad_argument_types(args, kwargs):
    with pytest.raises(TypeError):
        task_message('proj.add', 'id', args, kwargs)


def test_argsrepr_can_be_overridden():
    headers, _, body = task_message('proj.login', 'id', ('secret',), {'password': 'x'},
                                    argsrepr='(<hidden>,)', kwargsrepr='{}')
    assert headers['argsrepr'] == '(<hidden>,)' and headers['kwargsrepr'] == '{}'
    assert body[0] == ['secret']


def test_argsrepr_is_bounded():
    headers, _, _ = task_message('proj.add', 'id', ('x' * 10_000,), {'k': 'y' * 10_000})
    assert len(headers['argsrepr']) <= 1024 and len(headers['kwargsrepr']) <= 1024


# --- reading messages --------------------------------------------------------------------------
@pytest.mark.parametrize('case', CASES)
def test_request_from_celery_message(case):
    message = golden(case)
    call = message['call']
    fields = request_from_message(message['headers'], message['properties'], message['body'],
                                  {'exchange': '', 'routing_key': 'celery', 'redelivered': False})
    assert fields['name'] == call['name']
    assert fields['id'] == call['task_id']
    assert fields['args'] == call['args'] and fields['kwargs'] == call['kwargs']
    assert fields['timelimit'] == [call.get('time_limit'), call.get('soft_time_limit')]
    assert fields['root_id'] == call.get('root_id', call['task_id'])
    assert fields['parent_id'] == call.get('parent_id')
    assert fields['group'] == call.get('group_id')
    assert fields['group_index'] == call.get('group_index')
    assert fields['retries'] == call.get('retries', 0)
    assert fields['shadow'] == call.get('shadow')
    assert fields['eta'] == message['headers']['eta']
    assert fields['expires'] == message['headers']['expires']
    assert fields['correlation_id'] == call['task_id']
    assert fields['reply_to'] == (call.get('reply_to') or None)
    embed = message['body'][2]
    for key in ('callbacks', 'errbacks', 'chain', 'chord'):
        assert fields[key] == embed[key]
    assert fields['delivery_info']['routing_key'] == 'celery'
    assert fields['delivery_info']['exchange'] == ''
    request = Context(fields)
    assert request.id == call['task_id'] and request.group_id == call.get('group_id')


def test_request_priority_comes_from_properties():
    message = golden('plain')
    fields = request_from_message(message['headers'], dict(message['properties'], priority=7), message['body'])
    assert fields['delivery_info']['priority'] == 7


def test_request_from_celery_protocol_v1_body():
    call, body = MESSAGE_V1['call'], MESSAGE_V1['body']
    fields = request_from_message(MESSAGE_V1['headers'], MESSAGE_V1['properties'], body)
    assert fields['name'] == 'proj.add' and fields['id'] == 'id-v1'
    assert fields['args'] == [2, 3] and fields['kwargs'] == {'z': 1}
    assert fields['eta'] == body['eta']
    assert fields['retries'] == 1
    assert fields['group'] == 'group-v1'
    assert fields['root_id'] == 'id-v1'
    assert fields['callbacks'] == body['callbacks']
    assert call['time_limit'] == 30 and call['soft_time_limit'] == 20


def test_protocol_v1_timelimit_is_hard_then_soft():
    # Celery's as_task_v1 writes (time_limit, soft_time_limit), the same order as v2.
    fields = request_from_message(MESSAGE_V1['headers'], MESSAGE_V1['properties'], MESSAGE_V1['body'])
    assert fields['timelimit'] == [30, 20]


@pytest.mark.parametrize('changes', [{'id': None}, {'id': ''}, {'task': ''}, {'task': None}],
                         ids=['id-none', 'id-empty', 'task-empty', 'task-none'])
def test_invalid_headers_raise(changes):
    headers = dict(golden('plain')['headers'], **changes)
    with pytest.raises(InvalidTaskError):
        request_from_message(headers, golden('plain')['properties'], [[], {}, {}])


def test_missing_id_header_is_invalid():
    headers = dict(golden('plain')['headers'])
    del headers['id']
    with pytest.raises(InvalidTaskError, match='id'):
        request_from_message(headers, {}, [[], {}, {}])


@pytest.mark.parametrize('body', [
    pytest.param([[1], {}], id='two-parts'),
    pytest.param(None, id='none'),
    pytest.param(42, id='int'),
    pytest.param('abc', id='string'),
    pytest.param([{'a': 1}, {}, {}], id='args-dict'),
    pytest.param([[1], [2], {}], id='kwargs-list'),
    pytest.param([[1], {}, {}, {}], id='four-parts'),
])
def test_bad_v2_bodies_raise(body):
    with pytest.raises(InvalidTaskError):
        request_from_message(golden('plain')['headers'], {}, body)


@pytest.mark.parametrize('headers,body', [
    pytest.param({}, [[1], {}, {}], id='no-task-header'),
    pytest.param(None, {'args': [1]}, id='v1-without-task'),
    pytest.param({}, {'task': 'proj.add', 'id': 'x', 'args': [], 'kwargs': ['x']}, id='v1-kwargs-list'),
    pytest.param({}, {'task': 'proj.add', 'id': 'x', 'args': 'abc', 'kwargs': {}}, id='v1-args-str'),
])
def test_messages_without_a_task_raise(headers, body):
    with pytest.raises(InvalidTaskError):
        request_from_message(headers, {}, body)


def test_none_embed_is_accepted():
    fields = request_from_message(golden('plain')['headers'], {}, [[1], {}, None])
    assert fields['callbacks'] is None and fields['chain'] is None


# --- exceptions --------------------------------------------------------------------------------
class CustomError(Exception):
    """An exception defined in this test module."""


class Outer:
    class InnerError(Exception):
        pass


class KeywordOnlyError(Exception):
    def __init__(self, *, code: int) -> None:
        super().__init__(code)


CELERY_EXCEPTIONS = {
    'value_error': ValueError('bad'),
    'key_error': KeyError('k'),
    'no_args': RuntimeError(),
    'several_args': OSError(2, 'No such file or directory'),
    'int_arg': ZeroDivisionError(0),
    'list_arg': ValueError([1, 'two', None]),
    'dict_arg': ValueError({'a': [1, 2], 'b': {'c': True}}),
    'tuple_arg': ValueError((1, 2)),
    'nested_unserialisable': ValueError([{1, 2}]),
    'unserialisable_arg': ValueError(object()),
}
EXCEPTION_BUGS: dict[str, str] = {}


def test_exception_fixture_cases_are_all_covered():
    assert set(CELERY_EXCEPTIONS) == set(EXCEPTION_METAS)


@pytest.mark.parametrize('case', [
    pytest.param(case, marks=pytest.mark.xfail(strict=True, reason=EXCEPTION_BUGS[case]))
    if case in EXCEPTION_BUGS else case
    for case in sorted(CELERY_EXCEPTIONS)])
def test_exception_meta_matches_celery(case):
    meta = jsonable(exception_to_meta(CELERY_EXCEPTIONS[case]))
    meta['exc_message'] = [re.sub(r' at 0x[0-9a-f]+', ' at <addr>', m) if isinstance(m, str) else m
                           for m in meta['exc_message']]
    assert meta == EXCEPTION_METAS[case]


@pytest.mark.parametrize('case', sorted(set(EXCEPTION_METAS) - {'unserialisable_arg', 'nested_unserialisable'}))
def test_celery_exception_metas_rebuild(case):
    exc = exception_from_meta(EXCEPTION_METAS[case])
    original = CELERY_EXCEPTIONS[case]
    assert type(exc) is type(original)
    assert list(exc.args) == jsonable(list(original.args))


def test_oserror_round_trip_keeps_errno():
    exc = exception_from_meta(jsonable(exception_to_meta(FileNotFoundError(2, 'gone'))))
    assert isinstance(exc, FileNotFoundError) and exc.errno == 2 and exc.strerror == 'gone'


@pytest.mark.parametrize('exc', [CustomError('x', 1), Outer.InnerError('inner'), KeywordOnlyError(code=7)],
                         ids=['module-level', 'nested-class', 'keyword-only-init'])
def test_exceptions_of_this_module_round_trip(exc):
    meta = jsonable(exception_to_meta(exc))
    assert meta['exc_module'] == __name__
    assert meta['exc_type'] == type(exc).__qualname__
    rebuilt = exception_from_meta(meta)
    assert type(rebuilt) is type(exc)
    assert rebuilt.args == exc.args


def test_unknown_module_gives_a_stand_in_of_the_same_name():
    meta = {'exc_type': 'FooError', 'exc_message': ['went wrong', 3], 'exc_module': 'no_such_module_for_tf_tests'}
    exc = exception_from_meta(meta)
    assert type(exc).__name__ == 'FooError'
    assert type(exc).__module__ == 'no_such_module_for_tf_tests'
    assert isinstance(exc, Exception)
    assert exc.args == ('went wrong', 3)
    assert type(exception_from_meta(meta)) is type(exc)  # one stand-in class per name


def test_unknown_class_in_a_known_module_gives_a_stand_in():
    exc = exception_from_meta({'exc_type': 'NoSuchError', 'exc_message': ['m'], 'exc_module': __name__})
    assert type(exc).__name__ == 'NoSuchError' and exc.args == ('m',)


@pytest.mark.parametrize('module,name', [('builtins', 'dict'), ('os', 'system'), ('subprocess', 'Popen'),
                                         ('builtins', 'eval')])
def test_non_exception_classes_are_refused(module, name):
    with pytest.raises(SecurityError):
        exception_from_meta({'exc_type': name, 'exc_message': ['rm -rf /'], 'exc_module': module})


def test_missing_module_means_builtins_and_string_message_is_one_arg():
    exc = exception_from_meta({'exc_type': 'ValueError', 'exc_message': 'just a string'})
    assert type(exc) is ValueError and exc.args == ('just a string',)


def test_non_meta_values():
    original = KeyError('x')
    assert exception_from_meta(original) is original
    exc = exception_from_meta('plain text')
    assert type(exc) is Exception and exc.args == ('plain text',)


def test_reading_an_exception_does_not_import_modules(tmp_path, monkeypatch):
    name = 'tf_import_side_effect_probe'
    (tmp_path / f'{name}.py').write_text('import os\nos.environ["TF_IMPORTED_PROBE"] = "1"\n'
                                         'class ProbeError(Exception):\n    pass\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv('TF_IMPORTED_PROBE', raising=False)
    monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        exc = exception_from_meta({'exc_type': 'ProbeError', 'exc_message': [], 'exc_module': name})
        assert type(exc).__name__ == 'ProbeError'
        assert 'TF_IMPORTED_PROBE' not in os.environ
        assert name not in sys.modules
    finally:
        sys.modules.pop(name, None)


json_scalars = st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20) | \
    st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(cls=st.sampled_from([ValueError, KeyError, RuntimeError, CustomError, Outer.InnerError]),
       args=st.lists(json_values, max_size=4))
def test_exception_codec_round_trips_json_arguments(cls, args):
    exc = cls(*args)
    meta = json.loads(json.dumps(exception_to_meta(exc)))
    rebuilt = exception_from_meta(meta)
    assert type(rebuilt) is cls
    assert rebuilt.args == tuple(args)


anything = json_scalars | st.binary(max_size=10) | st.sets(st.integers(), max_size=3) | \
    st.tuples(st.integers(), st.text(max_size=3)) | st.datetimes() | st.builds(object) | st.complex_numbers()


@settings(max_examples=150, deadline=None)
@given(args=st.lists(anything, max_size=4))
def test_exception_meta_of_top_level_arguments_is_always_json(args):
    meta = exception_to_meta(ValueError(*args))
    assert json.loads(json.dumps(meta))['exc_type'] == 'ValueError'
    assert len(meta['exc_message']) == len(args)


# --- stored result metas -----------------------------------------------------------------------
def _taskflow_request(app: Taskflow) -> Context:
    """The request of golden ``result_metas`` (taskflow calls Celery's ``request.task`` ``name``)."""
    return Context(id='id-result', name='proj.add', args=[1, 1], kwargs={}, hostname='w1@vm', retries=0,
                   delivery_info={'exchange': '', 'routing_key': 'celery'}, group='group-id',
                   parent_id='id-parent', root_id='id-root',
                   children=[AsyncResult('child-1', app=app),
                             GroupResult('child-group', [AsyncResult('child-2', app=app)], app=app)])


RESULT_CASES = {
    'success': (2, 'SUCCESS', None),
    'failure': (ValueError('bad'), 'FAILURE', 'Traceback (most recent call last):\n...'),
    'progress': ({'current': 1, 'total': 2}, 'PROGRESS', None),
}


@pytest.mark.parametrize('extended', [False, True], ids=['plain', 'extended'])
@pytest.mark.parametrize('case', sorted(RESULT_CASES))
def test_stored_meta_matches_celery(case, extended):
    app = Taskflow('t', broker='memory://', backend='memory://', set_as_current=False, result_extended=extended)
    key = case + ('_extended' if extended else '')
    expected = RESULT_METAS['tasks'][key]
    task_id = expected['meta']['task_id']
    result, state, traceback = RESULT_CASES[case]
    app.backend.store_result(task_id, result, state, traceback=traceback, request=_taskflow_request(app))
    assert app.backend.get_key_for_task(task_id) == expected['key']
    meta = json.loads(app.backend._get(expected['key']))
    if meta['date_done'] is not None:
        assert ISO_WITH_OFFSET.fullmatch(meta['date_done'])
        meta['date_done'] = '<date_done>'
    assert meta == expected['meta']


def test_stored_meta_without_request_matches_celery(app):
    expected = RESULT_METAS['tasks']['no_request']
    app.backend.store_result('id-plain', [1, 'a'], 'SUCCESS')
    meta = json.loads(app.backend._get(expected['key']))
    meta['date_done'] = '<date_done>'
    # Celery writes children=null when storing outside a task; [] reads the same on both sides.
    assert meta.pop('children') == [] and expected['meta']['children'] is None
    assert meta == {k: v for k, v in expected['meta'].items() if k != 'children'}


def test_saved_group_matches_celery(app):
    expected = RESULT_METAS['group']
    group = GroupResult('group-saved', [AsyncResult('member-1', app=app), AsyncResult('member-2', app=app)], app=app)
    group.save()
    assert app.backend.get_key_for_group('group-saved') == expected['key']
    assert json.loads(app.backend._get(expected['key'])) == expected['meta']


# --- names -------------------------------------------------------------------------------------
@pytest.mark.parametrize('template,expected', [
    ('%h', 'worker1.example.com'),
    ('%n', 'worker1'),
    ('%d', 'example.com'),
    ('w1@%h', 'w1@worker1.example.com'),
    ('%n-x@%d', 'worker1-x@example.com'),
    ('plain', 'plain'),
    ('100%%', '100%'),
])
def test_host_format(template, expected):
    assert host_format(template, 'worker1.example.com') == expected


def test_host_format_defaults_to_this_host():
    assert host_format('%h') == socket.gethostname() == protocol.HOSTNAME


@pytest.mark.parametrize('given_name,expected', [
    (None, 'celery@{host}'),
    ('', 'celery@{host}'),
    ('w1', 'w1@{host}'),
    ('w1@%h', 'w1@{host}'),
    ('w1@box', 'w1@box'),
    ('%n@box', '{name}@box'),
])
def test_default_nodename(given_name, expected):
    host = protocol.HOSTNAME
    assert default_nodename(given_name) == expected.format(host=host, name=host.partition('.')[0])


def test_built_in_names_and_prefixes():
    assert protocol.TASK_KEYPREFIX == 'celery-task-meta-'
    assert protocol.GROUP_KEYPREFIX == 'celery-taskset-meta-'
    assert protocol.CHORD_KEYPREFIX == 'chord-unlock-'
    assert protocol.DEFAULT_QUEUE == 'celery'
    assert set(protocol.BUILTIN_TASK_NAMES) == {
        'celery.chord_unlock', 'celery.chord', 'celery.group', 'celery.chain', 'celery.map',
        'celery.starmap', 'celery.chunks', 'celery.accumulate', 'celery.backend_cleanup'}


# --- saferepr ----------------------------------------------------------------------------------
def test_saferepr_of_small_values_is_repr():
    for value in [(1, 'a'), {'k': [1, 2]}, 'text', None, 3.5]:
        assert saferepr(value) == repr(value)


@pytest.mark.parametrize('value', [
    (), (1,), (1, 'a', 2.5, None, True), ('x' * 245,), ('x' * 246,), ('x' * 300,), (10 ** 29,), (10 ** 45,),
    (-10 ** 45,), tuple(range(8)), tuple(range(9)), ('é\n\'"',), {}, ('a' * 240,) * 8])
def test_saferepr_fast_path_is_the_bounded_repr(value):
    """Short tuples of plain values take ``repr`` directly: it must read as the reprlib path does."""
    slow = protocol._repr.repr(value)
    assert saferepr(value) == (slow if len(slow) <= 1024 else slow[:1021] + '...')


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError('no repr for you')


def test_saferepr_never_raises():
    text = saferepr(BrokenRepr())
    assert 'BrokenRepr' in text
    nested = [BrokenRepr(), {'x': BrokenRepr()}]
    assert isinstance(saferepr(nested), str)
    loop: list[Any] = []
    loop.append(loop)
    assert isinstance(saferepr(loop), str)


def test_saferepr_truncates_with_ellipsis():
    text = saferepr(['x' * 300] * 50, 100)
    assert len(text) == 100 and text.endswith('...')


reprable = st.recursive(
    json_scalars | st.binary(max_size=50) | st.builds(BrokenRepr),
    lambda inner: st.lists(inner, max_size=8) | st.tuples(inner, inner) |
    st.dictionaries(st.text(max_size=10), inner, max_size=5) | st.frozensets(st.integers(), max_size=5),
    max_leaves=40)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=reprable, maxlen=st.integers(3, 2000))
def test_saferepr_respects_maxlen(value, maxlen):
    text = saferepr(value, maxlen)
    assert isinstance(text, str)
    assert len(text) <= maxlen


@pytest.mark.parametrize('maxlen', [1, 2])
def test_saferepr_respects_tiny_maxlen(maxlen):
    assert len(saferepr('x' * 50, maxlen)) <= maxlen


# --- Context -----------------------------------------------------------------------------------
def test_context_defaults():
    ctx = Context()
    assert ctx.id is None and ctx.name is None and ctx.group is None and ctx.group_id is None
    assert ctx.args == () and ctx.kwargs is None
    assert ctx.retries == 0 and ctx.is_eager is False and ctx.called_directly is True
    assert ctx.delivery_info is None and ctx.timelimit is None and ctx.eta is None
    assert ctx.callbacks is None and ctx.errbacks is None and ctx.chain is None and ctx.chord is None
    assert ctx.root_id is None and ctx.parent_id is None and ctx.hostname is None
    assert ctx.ignore_result is False and ctx.utc is True and ctx.replaced_task_nesting == 0
    assert ctx.children == []


def test_context_children_are_not_shared():
    a, b = Context(), Context()
    a.children.append('x')
    assert b.children == []


def test_context_update_get_and_as_dict():
    ctx = Context({'id': 'a'}, retries=2)
    assert ctx.id == 'a' and ctx.retries == 2
    ctx.update(group='g', custom=1)
    assert ctx.group_id == 'g' and ctx.custom == 1
    assert ctx.get('custom') == 1 and ctx.get('missing', 'dflt') == 'dflt'
    assert ctx.as_dict() == {'id': 'a', 'retries': 2, 'group': 'g', 'custom': 1, 'children': []}
    assert 'custom' in repr(ctx)


def test_context_clear_drops_instance_values():
    ctx = Context(id='a', retries=3)
    ctx.clear()
    assert ctx.id is None and ctx.retries == 0


def test_context_children_after_clear():
    ctx = Context()
    ctx.clear()
    assert ctx.children == []


def test_is_expired_reads_the_expires_header():
    now = datetime.now(timezone.utc)
    assert protocol.is_expired((now - timedelta(seconds=1)).isoformat())
    assert not protocol.is_expired((now + timedelta(seconds=60)).isoformat())
    assert not protocol.is_expired(None) and not protocol.is_expired('')  # no expiry
    assert protocol.is_expired((now - timedelta(seconds=1)).replace(tzinfo=None).isoformat())  # naive = UTC


def test_new_id_is_a_random_version_4_uuid_in_canonical_text():
    ids = [protocol.new_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:500]:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
    # every other bit is random: across the ids each of the 122 free bits takes both values
    values = [uuid.UUID(text).int for text in ids]
    fixed = (0xf000 << 64) | (0xc000 << 48)
    ones = 0
    zeros = 0
    for v in values:
        ones |= v
        zeros |= ~v
    assert (ones & zeros) | fixed == (1 << 128) - 1

"""``taskflow.task`` (with the app's registry and the tracer in eager mode): the decorator,
options that fall back to ``app.conf``, ``shared_task``, argument checking, ``apply()`` and
``task_always_eager``, retries, callbacks, ``self.request``, and signatures."""
from __future__ import annotations

import inspect
import pickle
import random
import types
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from kombu.utils.json import dumps as kombu_dumps, loads as kombu_loads

from taskflow import _state, current_app, current_task, shared_task, signals, states
from taskflow.app import Taskflow
from taskflow.canvas import Signature, maybe_signature, signature
from taskflow.exceptions import MaxRetriesExceededError, NotRegistered, Retry
from taskflow.protocol import Context
from taskflow.result import AsyncResult, EagerResult
from taskflow.task import Task
from taskflow.tracer import backoff_interval


@pytest.fixture
def app():
    return Taskflow('t', broker='memory://', backend='memory://', set_as_current=True)


@pytest.fixture
def eager(app):
    app.conf.task_always_eager = True
    return app


class FakeProducer:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def publish(self, body: Any, **kwargs: Any) -> None:
        self.calls.append((body, kwargs))


@pytest.fixture
def retries_seen():
    """The ``Retry`` of every retry, as the ``task_retry`` signal reports it."""
    seen: list[Retry] = []

    def receiver(sender=None, reason=None, **kwargs):
        seen.append(reason)

    signals.task_retry.connect(receiver)
    yield seen
    signals.task_retry.disconnect(receiver)


# --- the decorator --------------------------------------------------------------------------------
def test_plain_decorator(app):
    @app.task
    def add(x, y):
        """Add two numbers."""
        return x + y

    assert isinstance(add, Task)
    assert add.name == f'{__name__}.add'
    assert app.tasks[add.name] is add
    assert add.app is app
    assert add(2, 3) == 5 and add.run(2, 3) == 5
    assert add.__doc__ == 'Add two numbers.'
    assert repr(add) == f'<@task: {add.name} of t>'


def test_wrapped_function_and_signature(app):
    @app.task
    def add(x, y):
        return x + y

    assert add.__wrapped__(1, 1) == 2
    assert list(inspect.signature(add).parameters) == ['x', 'y']


def test_decorator_with_empty_parentheses(app):
    @app.task()
    def noop():
        return 'ok'

    assert isinstance(noop, Task) and noop() == 'ok'


def test_decorator_refuses_positional_options(app):
    with pytest.raises(TypeError, match='keyword'):
        app.task('name', 'other')


def test_explicit_name(app):
    @app.task(name='proj.custom')
    def f():
        return 1

    assert f.name == 'proj.custom' and app.tasks['proj.custom'] is f


def _in_main(fun):
    fun.__module__ = '__main__'
    return fun


def test_tasks_defined_in_main_take_the_app_main():
    named = Taskflow('proj', broker='memory://', set_as_current=False)
    task = named.task(_in_main(lambda: None))
    assert task.name == 'proj.<lambda>'

    def job():
        return 1
    assert named.task(_in_main(job)).name == 'proj.job'
    unnamed = Taskflow(None, broker='memory://', set_as_current=False)
    assert unnamed.task(_in_main(job)).name == '__main__.job'


def test_same_function_registered_twice_gives_the_same_task(app):
    def f():
        return 1
    assert app.task(f) is app.task(f)


def test_unknown_task_name(app):
    with pytest.raises(NotRegistered):
        app.tasks['no.such.task']
    with pytest.raises(KeyError):  # NotRegistered is a KeyError, as in Celery
        app.tasks['no.such.task']


def test_bind(app):
    @app.task(bind=True)
    def whoami(self, x):
        return self, x

    me, x = whoami.apply((1,)).get()
    assert me is whoami and x == 1
    assert whoami(2) == (whoami, 2)


class HookedTask(Task):
    max_retries = 5
    events: list[tuple[Any, ...]] = []

    def on_success(self, retval, task_id, args, kwargs):
        self.events.append(('success', retval, task_id, tuple(args)))

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        self.events.append(('failure', type(exc).__name__, task_id, 'Traceback' in einfo))

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        self.events.append(('retry', type(exc).__name__, task_id))

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        self.events.append(('after_return', status))

    def helper(self):
        return 'from base'


def test_base_class_hooks_and_attributes(app):
    HookedTask.events = []

    @app.task(base=HookedTask)
    def double(x):
        if x < 0:
            raise ValueError('negative')
        return 2 * x

    assert isinstance(double, HookedTask) and double.max_retries == 5 and double.helper() == 'from base'
    ok = double.apply((2,), task_id='ok-id')
    failed = double.apply((-1,), task_id='bad-id')
    assert ok.get() == 4 and failed.state == states.FAILURE
    assert HookedTask.events == [('success', 4, 'ok-id', (2,)), ('after_return', states.SUCCESS),
                                 ('failure', 'ValueError', 'bad-id', True), ('after_return', states.FAILURE)]


def test_on_retry_hook(app):
    HookedTask.events = []

    @app.task(base=HookedTask, bind=True)
    def flaky(self):
        if self.request.retries < 1:
            raise self.retry(exc=KeyError('again'), countdown=0)
        return 'done'

    assert flaky.apply().get() == 'done'
    assert HookedTask.events[0][:2] == ('retry', 'KeyError')


def test_app_task_cls(app):
    class AppBase(Task):
        marker = 'app-base'

    custom = Taskflow('t2', broker='memory://', set_as_current=False, task_cls=AppBase)

    @custom.task
    def f():
        return 1

    assert isinstance(f, AppBase) and f.marker == 'app-base'


def test_register_class_based_task(app):
    class Multiply(Task):
        def run(self, x, y):
            return x * y

    task = app.register_task(Multiply)
    assert task.name == f'{__name__}.Multiply' and task.app is app
    assert app.tasks[task.name] is task and task.apply((3, 4)).get() == 12


def test_options_become_attributes(app):
    @app.task(max_retries=7, default_retry_delay=1, acks_late=True, rate_limit='10/s', queue='q',
              time_limit=30, soft_time_limit=20, ignore_result=True, autoretry_for=(KeyError,), typing=False)
    def f():
        return 1

    assert (f.max_retries, f.default_retry_delay, f.acks_late, f.rate_limit, f.queue) == (7, 1, True, '10/s', 'q')
    assert (f.time_limit, f.soft_time_limit, f.ignore_result, f.autoretry_for, f.typing) == \
        (30, 20, True, (KeyError,), False)


def test_class_defaults_are_celerys(app):
    @app.task
    def f():
        return 1

    assert f.max_retries == 3 and f.default_retry_delay == 180
    assert f.retry_backoff is False and f.retry_backoff_max == 600 and f.retry_jitter is True
    assert f.typing is True and f.autoretry_for == ()


def test_task_annotations(app):
    app.conf.task_annotations = [{'t.annotated': {'rate_limit': '1/s'}, '*': {'acks_late': True}},
                                 lambda task: {'priority': 4} if task.name == 't.annotated' else None]

    @app.task(name='t.annotated')
    def annotated():
        return 1

    @app.task(name='t.other')
    def other():
        return 1

    assert annotated.rate_limit == '1/s' and annotated.priority == 4
    assert other.acks_late is True


# --- options that ask app.conf ------------------------------------------------------------------------
FROM_CONF = [
    ('acks_late', 'task_acks_late', True),
    ('track_started', 'task_track_started', True),
    ('ignore_result', 'task_ignore_result', True),
    ('serializer', 'task_serializer', 'msgpack'),
    ('compression', 'task_compression', 'gzip'),
    ('rate_limit', 'task_default_rate_limit', '5/s'),
    ('priority', 'task_default_priority', 3),
    ('time_limit', 'task_time_limit', 30),
    ('soft_time_limit', 'task_soft_time_limit', 20),
    ('reject_on_worker_lost', 'task_reject_on_worker_lost', True),
    ('acks_on_failure_or_timeout', 'task_acks_on_failure_or_timeout', False),
    ('store_errors_even_if_ignored', 'task_store_errors_even_if_ignored', True),
    ('store_eager_result', 'task_store_eager_result', True),
]


@pytest.mark.parametrize('attr,setting,value', FROM_CONF)
def test_option_follows_config_until_set_on_the_task(app, attr, setting, value):
    @app.task
    def f():
        return 1

    assert getattr(f, attr) == app.conf[setting]
    app.conf[setting] = value
    assert getattr(f, attr) == value  # configured after the task was defined
    setattr(f, attr, 'own')
    app.conf[setting] = 'changed-again'
    assert getattr(f, attr) == 'own'


@pytest.mark.parametrize('attr,setting,value', FROM_CONF)
def test_option_given_to_the_decorator_wins(app, attr, setting, value):
    f = app.task(**{attr: value})(lambda: 1)
    app.conf[setting] = 'something else'
    assert getattr(f, attr) == value


def test_none_on_a_base_class_means_ask_config(app):
    class Base(Task):
        acks_late = None

    @app.task(base=Base)
    def f():
        return 1

    app.conf.task_acks_late = True
    assert f.acks_late is True


# --- shared_task ---------------------------------------------------------------------------------------
def test_shared_task_is_registered_in_apps_made_before_and_after():
    before = Taskflow('before', broker='memory://', backend='memory://', set_as_current=True)

    @shared_task
    def shared_add(x, y):
        return x + y

    after = Taskflow('after', broker='memory://', backend='memory://', set_as_current=False)
    name = f'{__name__}.shared_add'
    assert shared_add.name == name
    # like Celery's proxy, the object returned follows the current app; each app holds its own task
    assert before.tasks[name].app is before and shared_add.app is before
    assert after.tasks[name].app is after and after.tasks[name] is not shared_add
    assert after.tasks[name].apply((1, 2)).get() == 3


def test_shared_task_with_options():
    Taskflow('current', broker='memory://', backend='memory://', set_as_current=True)

    @shared_task(bind=True, name='shared.named', max_retries=2)
    def named(self):
        return self.name

    other = Taskflow('other', broker='memory://', set_as_current=False)
    assert named.name == 'shared.named' and named.max_retries == 2
    assert other.tasks['shared.named'].max_retries == 2
    assert named.apply().get() == 'shared.named'


def test_shared_task_without_any_app_uses_a_default_app():
    _state._current_app = None
    _state._default_app = None

    @shared_task
    def lonely():
        return 'alone'

    assert lonely.app is _state._default_app and lonely.app.main == 'default'
    assert lonely.apply().get() == 'alone'


def test_shared_task_follows_the_app_made_later():
    _state._current_app = None
    _state._default_app = None

    @shared_task
    def early():
        return 1

    app = Taskflow('later', broker='memory://', backend='memory://', set_as_current=True)
    assert early.app is app


# --- current_app and current_task ------------------------------------------------------------------------
def test_current_app(app):
    assert current_app._get_current_object() is app
    assert current_app == app and current_app.main == 't'
    Taskflow('not-current', broker='memory://', set_as_current=False)
    assert current_app._get_current_object() is app
    newer = Taskflow('newer', broker='memory://', set_as_current=True)
    assert current_app._get_current_object() is newer


def test_current_app_without_an_app_is_a_default_one():
    _state._current_app = None
    _state._default_app = None
    assert current_app.main == 'default'
    assert current_app._get_current_object() is _state.get_current_app()


def test_current_task(app):
    @app.task
    def which():
        return current_task._get_current_object()

    assert not current_task and current_task._get_current_object() is None
    assert which.apply().get() is which
    assert which() is which
    assert current_task._get_current_object() is None


# --- argument checking -------------------------------------------------------------------------------
@pytest.mark.parametrize('args,kwargs', [((1,), {}), ((1, 2, 3), {}), ((1,), {'z': 1}), ((1, 2), {'x': 1})])
def test_bad_arguments_raise_type_error_at_send_time(app, args, kwargs):
    @app.task
    def add(x, y):
        return x + y

    producer = FakeProducer()
    with pytest.raises(TypeError, match=add.name):
        add.apply_async(args, kwargs, producer=producer)
    assert producer.calls == []


def test_argument_check_in_eager_mode_too(eager):
    @eager.task
    def add(x, y):
        return x + y

    with pytest.raises(TypeError):
        add.delay(1)


def test_argument_check_can_be_turned_off(app):
    @app.task(typing=False)
    def add(x, y):
        return x + y

    producer = FakeProducer()
    add.apply_async((1,), producer=producer)
    assert len(producer.calls) == 1


def test_argument_check_ignores_bound_self(app):
    @app.task(bind=True)
    def bound(self, x):
        return x

    producer = FakeProducer()
    bound.apply_async((1,), producer=producer)
    with pytest.raises(TypeError):
        bound.apply_async((1, 2), producer=producer)
    assert len(producer.calls) == 1


@pytest.mark.parametrize('args,kwargs', [('ab', None), ((), [('a', 1)])])
def test_args_and_kwargs_types(app, args, kwargs):
    @app.task
    def f(*args, **kwargs):
        return 1

    with pytest.raises(TypeError):
        f.apply_async(args, kwargs, producer=FakeProducer())


# --- sending -------------------------------------------------------------------------------------------
def test_apply_async_message(app):
    @app.task(queue='q9', time_limit=30, soft_time_limit=20, ignore_result=True)
    def f(x):
        return x

    producer = FakeProducer()
    result = f.apply_async((1,), task_id='tid', producer=producer, countdown=10, expires=60, shadow='alias',
                           priority=4)
    assert isinstance(result, AsyncResult) and result.id == 'tid' and result.task_name == f.name
    body, kwargs = producer.calls[0]
    headers = kwargs['headers']
    assert headers['task'] == f.name and headers['id'] == 'tid' and headers['shadow'] == 'alias'
    assert headers['timelimit'] == [30, 20] and headers['ignore_result'] is True
    assert headers['eta'] is not None and headers['expires'] is not None
    assert (kwargs['exchange'], kwargs['routing_key'], kwargs['priority']) == ('', 'q9', 4)
    assert body[0] == [1]


def test_sending_from_a_worker_task_sets_parent_and_root(app):
    @app.task
    def child():
        return 1

    parent = types.SimpleNamespace(request=Context(id='parent-id', root_id='root-id',
                                                   delivery_info={'priority': 6}))
    app.conf.task_inherit_parent_priority = True
    token = _state.current_worker_task_var.set(parent)
    try:
        producer = FakeProducer()
        result = child.apply_async(producer=producer)
    finally:
        _state.current_worker_task_var.reset(token)
    headers = producer.calls[0][1]['headers']
    assert headers['parent_id'] == 'parent-id' and headers['root_id'] == 'root-id'
    assert producer.calls[0][1]['priority'] == 6
    assert parent.request.children == [result]


# --- apply and eager mode ---------------------------------------------------------------------------
def test_apply_returns_an_eager_result(app):
    @app.task
    def add(x, y):
        return x + y

    result = add.apply((2, 3), task_id='eager-id')
    assert isinstance(result, EagerResult)
    assert result.id == 'eager-id' and result.get() == 5 and result.result == 5
    assert result.state == states.SUCCESS and result.successful() and result.ready() and not result.failed()


def test_always_eager(eager):
    @eager.task
    def add(x, y):
        return x + y

    result = add.delay(2, 3)
    assert isinstance(result, EagerResult) and result.get() == 5
    assert add.apply_async((1, 1), task_id='given').id == 'given'


def test_eager_results_are_not_stored_unless_asked(eager):
    @eager.task
    def f():
        return 'v'

    result = f.delay()
    assert eager.backend.get_task_meta(result.id)['status'] == states.PENDING
    eager.conf.task_store_eager_result = True
    stored = f.delay()
    assert AsyncResult(stored.id, app=eager).get(timeout=1) == 'v'


def test_eager_failure_without_propagation(eager):
    @eager.task
    def boom():
        raise ValueError('bad')

    result = boom.delay()
    assert result.state == states.FAILURE and result.failed() and result.ready()
    assert isinstance(result.result, ValueError)
    assert 'ValueError: bad' in result.traceback
    with pytest.raises(ValueError, match='bad'):
        result.get()
    assert isinstance(result.get(propagate=False), ValueError)


def test_eager_failure_with_propagation(eager):
    @eager.task
    def boom():
        raise ValueError('bad')

    eager.conf.task_eager_propagates = True
    with pytest.raises(ValueError, match='bad'):
        boom.delay()
    assert boom.apply(throw=False).state == states.FAILURE


def test_apply_throw(app):
    @app.task
    def boom():
        raise KeyError('k')

    with pytest.raises(KeyError):
        boom.apply(throw=True)


def test_request_in_eager_mode(app):
    @app.task(bind=True)
    def inspect_request(self, x, y=0):
        r = self.request
        return {'id': r.id, 'name': r.name, 'args': r.args, 'kwargs': r.kwargs, 'retries': r.retries,
                'is_eager': r.is_eager, 'called_directly': r.called_directly, 'root_id': r.root_id,
                'parent_id': r.parent_id, 'group': r.group, 'delivery_info': r.delivery_info,
                'callbacks': r.callbacks}

    seen = inspect_request.apply((1,), {'y': 2}, task_id='req-id').get()
    assert seen['id'] == 'req-id' and seen['name'] == inspect_request.name
    assert list(seen['args']) == [1] and seen['kwargs'] == {'y': 2}
    assert seen['retries'] == 0 and seen['is_eager'] is True and seen['called_directly'] is False
    assert seen['root_id'] == 'req-id' and seen['parent_id'] is None and seen['group'] is None
    assert seen['delivery_info']['is_eager'] is True
    assert seen['callbacks'] is None
    assert inspect_request.request.called_directly is True  # back outside the run


def test_request_when_called_directly(app):
    @app.task(bind=True)
    def direct(self):
        return self.request.called_directly, self.request.id

    assert direct() == (True, None)


# --- retries ---------------------------------------------------------------------------------------
def test_eager_retry_runs_again_with_the_same_id(app, retries_seen):
    attempts: list[tuple[str, int]] = []

    @app.task(bind=True, max_retries=3)
    def flaky(self):
        attempts.append((self.request.id, self.request.retries))
        if self.request.retries < 2:
            raise self.retry(countdown=60)
        return 'ok'

    result = flaky.apply(task_id='retry-id')
    assert result.get() == 'ok' and result.id == 'retry-id'
    assert attempts == [('retry-id', 0), ('retry-id', 1), ('retry-id', 2)]
    assert [r.when for r in retries_seen] == [60, 60]


def test_retry_default_delay(app, retries_seen):
    @app.task(bind=True, default_retry_delay=7)
    def once(self):
        if not self.request.retries:
            raise self.retry()
        return 'ok'

    assert once.apply().get() == 'ok'
    assert [r.when for r in retries_seen] == [7]


def test_max_retries_exceeded_without_exc(app):
    attempts: list[int] = []

    @app.task(bind=True, max_retries=2)
    def always(self):
        attempts.append(self.request.retries)
        raise self.retry(countdown=0)

    result = always.apply()
    assert attempts == [0, 1, 2]
    assert result.state == states.FAILURE and isinstance(result.result, MaxRetriesExceededError)
    app.conf.task_eager_propagates = True  # apply(throw=True) covers the first run only, as in Celery
    with pytest.raises(MaxRetriesExceededError):
        always.apply()


def test_max_retries_exceeded_reraises_the_given_exc(app):
    @app.task(bind=True, max_retries=1)
    def always(self):
        raise self.retry(exc=ConnectionError('still down'), countdown=0)

    result = always.apply()
    assert result.state == states.FAILURE
    assert type(result.result) is ConnectionError and str(result.result) == 'still down'


def test_retry_max_retries_argument_overrides(app):
    attempts: list[int] = []

    @app.task(bind=True, max_retries=10)
    def limited(self):
        attempts.append(self.request.retries)
        raise self.retry(max_retries=1, countdown=0)

    assert limited.apply().state == states.FAILURE and attempts == [0, 1]


def test_max_retries_none_retries_until_success(app):
    @app.task(bind=True, max_retries=None)
    def patient(self):
        if self.request.retries < 6:
            raise self.retry(countdown=0)
        return self.request.retries

    assert patient.apply().get() == 6


def test_retry_with_new_arguments(app):
    @app.task(bind=True)
    def countdown_to_zero(self, n):
        if n > 0:
            raise self.retry(args=(n - 1,), countdown=0)
        return self.request.retries

    assert countdown_to_zero.apply((3,)).get() == 3


def test_retry_when_called_directly_raises_retry(app):
    @app.task(bind=True)
    def direct(self):
        raise self.retry()

    with pytest.raises(Retry):
        direct()


def test_retry_when_called_directly_with_exc(app):
    @app.task(bind=True)
    def direct(self):
        raise self.retry(exc=KeyError('given'))

    with pytest.raises(KeyError, match='given'):
        direct()


def test_autoretry_for(app):
    attempts: list[int] = []

    @app.task(bind=True, autoretry_for=(KeyError,), retry_kwargs={'max_retries': 5, 'countdown': 0})
    def flaky(self):
        attempts.append(self.request.retries)
        if len(attempts) < 3:
            raise KeyError('transient')
        return 'ok'

    assert flaky.apply().get() == 'ok' and attempts == [0, 1, 2]


def test_autoretry_gives_up_with_the_original_exception(app):
    @app.task(autoretry_for=(KeyError,), retry_kwargs={'max_retries': 2, 'countdown': 0})
    def broken():
        raise KeyError('always')

    result = broken.apply()
    assert result.state == states.FAILURE and type(result.result) is KeyError


@pytest.mark.parametrize('exc,expected_attempts', [(ValueError('not listed'), 1), (FileNotFoundError('excluded'), 1),
                                                   (OSError('listed'), 3)])
def test_autoretry_only_for_listed_exceptions(app, exc, expected_attempts):
    attempts: list[int] = []

    @app.task(autoretry_for=(OSError,), dont_autoretry_for=(FileNotFoundError,),
              retry_kwargs={'max_retries': 2, 'countdown': 0})
    def f():
        attempts.append(1)
        raise exc

    assert f.apply().state == states.FAILURE
    assert len(attempts) == expected_attempts


@pytest.mark.parametrize('backoff,maximum,expected', [(True, 600, [1, 2, 4, 8]), (2, 600, [2, 4, 8, 16]),
                                                      (3, 10, [3, 6, 10, 10])])
def test_autoretry_backoff_without_jitter(app, retries_seen, backoff, maximum, expected):
    @app.task(autoretry_for=(KeyError,), max_retries=4, retry_backoff=backoff, retry_backoff_max=maximum,
              retry_jitter=False)
    def f():
        raise KeyError('x')

    assert f.apply().state == states.FAILURE
    assert [r.when for r in retries_seen] == expected


def test_autoretry_backoff_with_jitter(app, retries_seen, monkeypatch):
    monkeypatch.setattr(random, 'randrange', lambda stop: stop - 1)  # the top of each jitter range

    @app.task(autoretry_for=(KeyError,), max_retries=3, retry_backoff=2, retry_jitter=True)
    def f():
        raise KeyError('x')

    f.apply()
    assert [r.when for r in retries_seen] == [2, 4, 8]


@pytest.mark.parametrize('factor,retries,maximum,expected', [(1, 0, 600, 1), (1, 3, 600, 8), (2, 3, 600, 16),
                                                             (5, 10, 600, 600), (1, 0, 0, 0)])
def test_backoff_interval(factor, retries, maximum, expected):
    assert backoff_interval(factor, retries, maximum, full_jitter=False) == expected


@settings(max_examples=200, deadline=None)
@given(factor=st.integers(1, 10), retries=st.integers(0, 20), maximum=st.integers(0, 1000))
def test_backoff_interval_with_jitter_stays_in_range(factor, retries, maximum):
    value = backoff_interval(factor, retries, maximum, full_jitter=True)
    assert isinstance(value, int) and 0 <= value <= min(maximum, factor * 2 ** retries)


# --- callbacks in eager mode -------------------------------------------------------------------------
def test_link_in_eager_mode(eager):
    got: list[Any] = []

    @eager.task
    def add(x, y):
        return x + y

    @eager.task
    def record(value, tag=None):
        got.append((value, tag))

    add.apply_async((2, 2), link=record.s(tag='a'))
    add.apply_async((3, 3), link=[record.s(tag='b'), record.si('fixed', tag='c')])
    assert got == [(4, 'a'), (6, 'b'), ('fixed', 'c')]


def test_link_error_in_eager_mode(eager):
    got: list[Any] = []

    @eager.task
    def boom():
        raise ValueError('bad')

    @eager.task
    def on_error_old_style(task_id):
        got.append(('old', task_id))

    @eager.task
    def on_error_new_style(request, exc, traceback):
        got.append(('new', request.id, type(exc).__name__, 'ValueError' in traceback))

    result = boom.apply_async(task_id='failing-id', link_error=[on_error_old_style.s(), on_error_new_style.s()])
    assert result.state == states.FAILURE
    assert got == [('old', 'failing-id'), ('new', 'failing-id', 'ValueError', True)]


def test_link_error_is_not_called_on_success(eager):
    got: list[Any] = []

    @eager.task
    def fine():
        return 1

    @eager.task
    def on_error(task_id):
        got.append(task_id)

    fine.apply_async(link_error=on_error.s())
    assert got == []


def test_a_failing_errback_does_not_hide_the_failure(eager):
    @eager.task
    def boom():
        raise ValueError('bad')

    @eager.task
    def bad_errback(task_id):
        raise RuntimeError('errback broke')

    result = boom.apply_async(link_error=bad_errback.s())
    assert result.state == states.FAILURE and isinstance(result.result, ValueError)


# --- signatures -------------------------------------------------------------------------------------
@pytest.fixture
def math(eager):
    @eager.task(name='proj.sub')
    def sub(x, y):
        return x - y

    @eager.task(name='proj.kw')
    def kw(**kwargs):
        return kwargs

    return types.SimpleNamespace(sub=sub, kw=kw, app=eager)


def test_signature_dict_shape(math):
    sig = math.sub.s(2)
    assert dict(sig) == {'task': 'proj.sub', 'args': (2,), 'kwargs': {}, 'options': {}, 'subtask_type': None,
                         'immutable': False}
    assert sig.name == sig.task == 'proj.sub' and sig.type is math.sub and sig.app is math.app
    assert repr(sig) == 'proj.sub(2)'
    assert math.sub.si(1, 2)['immutable'] is True and repr(math.sub.si(1, 2)) == 'proj.sub(1, 2)!'


def test_signature_with_options(math):
    sig = math.sub.signature((1, 2), countdown=10, queue='q')
    assert sig.options == {'countdown': 10, 'queue': 'q'}
    assert math.sub.subtask((1,), {'y': 2}).kwargs == {'y': 2}


def test_partial_arguments_are_prepended(math):
    assert math.sub.s(2).delay(10).get() == 8
    assert math.sub.s(2).apply_async((10,)).get() == 8
    assert math.sub.s(2).apply((10,)).get() == 8
    assert math.sub.s(10, 2)() == 8


def test_partial_kwargs_are_merged(math):
    sig = math.kw.s(a=1, b=1)
    assert sig.apply_async(kwargs={'b': 2, 'c': 3}).get() == {'a': 1, 'b': 2, 'c': 3}
    assert sig.kwargs == {'a': 1, 'b': 1}  # calling does not change the signature


def test_immutable_signature_ignores_call_arguments(math):
    assert math.sub.si(5, 1).apply_async((100,)).get() == 4
    assert math.kw.si(a=1).apply_async(kwargs={'b': 2}).get() == {'a': 1}


def test_clone(math):
    sig = math.sub.s(1).set(countdown=5)
    sig.link(math.kw.s())
    copy = sig.clone(args=(9,), countdown=10)
    assert copy.args == (9, 1) and copy.options['countdown'] == 10
    assert sig.args == (1,) and sig.options['countdown'] == 5
    copy.options['link'].append('x')
    assert len(sig.options['link']) == 1
    assert copy.type is math.sub
    assert math.sub.si(1, 2).clone(args=(3,)).args == (1, 2)


def test_set_and_immutability(math):
    sig = math.sub.s(1)
    assert sig.set(queue='q', priority=3) is sig
    assert sig.options == {'queue': 'q', 'priority': 3}
    sig.set(immutable=True)
    assert sig.immutable is True


def test_link_and_link_error(math):
    sig = math.sub.s(1, 2)
    callback, errback = math.kw.s(), math.kw.si()
    assert sig.link(callback) is callback
    sig.link(callback)
    assert sig.options['link'] == [callback]
    assert sig.link_error(errback) is errback
    assert sig.options['link_error'] == [errback]
    assert sig.on_error(math.kw.s(x=1)) is sig and len(sig.options['link_error']) == 2


def test_freeze(math):
    sig = math.sub.s(1, 2)
    result = sig.freeze()
    assert isinstance(result, AsyncResult) and result.id == sig.id == sig.options['task_id']
    assert sig.freeze().id == result.id  # idempotent
    other = math.sub.s(1, 2)
    assert other.freeze('chosen-id', group_id='g', group_index=2).id == 'chosen-id'
    assert other.options['group_id'] == 'g' and other.options['group_index'] == 2


def test_frozen_id_is_the_task_id(math):
    sig = math.sub.s(5, 2)
    frozen = sig.freeze()
    assert sig.apply_async().id == frozen.id


def test_dict_round_trip(math):
    sig = math.sub.signature((2,), countdown=3)
    sig.link(math.kw.s(a=1))
    again = signature(dict(sig), app=math.app)
    assert isinstance(again, Signature) and again == sig
    assert again.type is math.sub
    assert Signature.from_dict(dict(sig), app=math.app) == sig
    assert signature(sig) == sig and signature(sig) is not sig


def test_json_round_trip_with_kombu(math):
    sig = math.sub.signature((2,), countdown=3)
    sig.link(math.sub.s(1))
    sig.link_error(math.kw.si(b=2))
    loaded = kombu_loads(kombu_dumps(sig))
    assert loaded == {'task': 'proj.sub', 'args': [2], 'kwargs': {}, 'options': {
        'countdown': 3,
        'link': [{'task': 'proj.sub', 'args': [1], 'kwargs': {}, 'options': {}, 'subtask_type': None,
                  'immutable': False}],
        'link_error': [{'task': 'proj.kw', 'args': [], 'kwargs': {'b': 2}, 'options': {}, 'subtask_type': None,
                        'immutable': True}]},
        'subtask_type': None, 'immutable': False}
    again = signature(loaded, app=math.app)
    assert again.apply((7,)).get() == 5
    assert maybe_signature(loaded['options']['link'][0], app=math.app).type is math.sub
    assert maybe_signature(loaded['options']['link_error'][0], app=math.app).immutable is True


def test_pickle_round_trip(math):
    sig = math.sub.signature((2,), countdown=3)
    assert pickle.loads(pickle.dumps(sig)) == sig
    assert pickle.loads(pickle.dumps(math.sub)) is math.sub


def test_maybe_signature(math):
    sig = math.sub.s(1)
    assert maybe_signature(None) is None
    assert maybe_signature(sig) is sig
    assert maybe_signature(sig, clone=True) == sig and maybe_signature(sig, clone=True) is not sig
    converted = maybe_signature(dict(sig), app=math.app)
    assert isinstance(converted, Signature) and converted.type is math.sub
    assert [s.task for s in maybe_signature([dict(sig), sig], app=math.app)] == ['proj.sub', 'proj.sub']


def test_signature_of_an_unknown_task_is_sent_by_name(app):
    sig = Signature('remote.only', args=(1,), app=app)
    assert sig.type is None
    producer = FakeProducer()
    result = sig.apply_async(producer=producer, task_id='remote-id')
    assert result.id == 'remote-id' and producer.calls[0][1]['headers']['task'] == 'remote.only'
    with pytest.raises(NotRegistered):
        sig.apply()


def test_argument_check_counts_defaults_varargs_and_keyword_only(app):
    """Positional-only calls skip ``bind`` when the count fits; every other shape still binds."""
    @app.task
    def defaults(x, y=1):
        return x

    @app.task
    def star(x, *rest):
        return x

    @app.task
    def kwonly(x, *, key):
        return x

    producer = FakeProducer()
    defaults.apply_async((1,), producer=producer)
    defaults.apply_async((1, 2), producer=producer)
    star.apply_async((1, 2, 3, 4), producer=producer)
    kwonly.apply_async((1,), {'key': 2}, producer=producer)
    for task, args in [(defaults, ()), (defaults, (1, 2, 3)), (star, ()), (kwonly, (1,)), (kwonly, (1, 2))]:
        with pytest.raises(TypeError, match=task.name):
            task.apply_async(args, producer=producer)
    assert len(producer.calls) == 4

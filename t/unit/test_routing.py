"""``taskflow.broker``: queues from the configuration, ``task_routes`` in all of Celery's forms,
and where ``Broker.publish_task`` sends a message (checked against Celery 5.7's choices in
``fixtures/celery_publish.json``)."""
from __future__ import annotations

import json
import re
import sys
import types
import uuid
from pathlib import Path
from typing import Any

import pytest
from kombu import Exchange, Queue

from taskflow import signals
from taskflow.app import Taskflow
from taskflow.broker import Broker, Queues, Router
from taskflow.config import Settings
from taskflow.exceptions import QueueNotFound

PUBLISH = json.loads((Path(__file__).resolve().parent / 'fixtures' / 'celery_publish.json').read_text())
CELERY_RETRY_POLICY = {'max_retries': 3, 'interval_start': 0, 'interval_max': 1, 'interval_step': 0.2}


def conf(**values: Any) -> Settings:
    return Settings(values, environ={})


def router(**values: Any) -> Router:
    settings = conf(**values)
    return Router(settings, Queues(settings))


def queue_of(options: dict[str, Any]) -> str | None:
    queue = options.get('queue')
    return queue.name if queue is not None else None


class FakeProducer:
    """Records ``publish`` calls instead of talking to a broker."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def publish(self, body: Any, **kwargs: Any) -> None:
        self.calls.append((body, kwargs))

    @property
    def last(self) -> dict[str, Any]:
        assert self.calls, 'nothing was published'
        return self.calls[-1][1]


def make_app(**settings: Any) -> Taskflow:
    return Taskflow('t', broker='memory://', backend='memory://', set_as_current=False, **settings)


# --- queues -------------------------------------------------------------------------------------
def test_default_queue_exchange_and_routing_key():
    queues = Queues(conf())
    default = queues.default
    assert list(queues) == ['celery']
    assert default.name == 'celery'
    assert default.exchange.name == 'celery' and default.exchange.type == 'direct'
    assert default.routing_key == 'celery'
    assert not default.queue_arguments


def test_default_queue_settings():
    queues = Queues(conf(task_default_queue='jobs', task_default_exchange='jobs-ex',
                         task_default_exchange_type='topic', task_default_routing_key='jobs.#'))
    assert queues.default.name == 'jobs'
    assert queues.default.exchange.name == 'jobs-ex' and queues.default.exchange.type == 'topic'
    assert queues.default.routing_key == 'jobs.#'


def test_default_queue_name_is_also_exchange_and_key():
    queues = Queues(conf(task_default_queue='jobs'))
    assert (queues.default.exchange.name, queues.default.routing_key) == ('jobs', 'jobs')


def test_quorum_default_queue():
    queues = Queues(conf(task_default_queue_type='quorum'))
    assert queues.default.queue_arguments == {'x-queue-type': 'quorum'}


def test_task_queues_as_kombu_queues():
    configured = [Queue('high', Exchange('prio', type='direct'), routing_key='high'),
                  Queue('low', Exchange('prio', type='direct'), routing_key='low')]
    queues = Queues(conf(task_queues=configured, task_default_queue='low'))
    assert list(queues) == ['high', 'low']
    assert queues['high'] is configured[0]
    assert queues.default is configured[1]


def test_task_queues_as_a_dict():
    queues = Queues(conf(task_queues={'video': {'exchange': 'media', 'routing_key': 'media.video'}},
                         task_default_queue='video'))
    assert queues['video'].exchange.name == 'media'
    assert queues['video'].routing_key == 'media.video'


def test_task_queues_dict_exchange_type():
    queues = Queues(conf(task_queues={'feeds': {'exchange': 'feeds', 'exchange_type': 'topic',
                                                'routing_key': 'feed.#'}}, task_default_queue='feeds'))
    assert queues['feeds'].exchange.type == 'topic'


def test_task_queues_dict_of_queue_objects():
    queues = Queues(conf(task_queues={'q': Queue('q', routing_key='q')}, task_default_queue='q'))
    assert queues['q'].routing_key == 'q'


def test_missing_queue_is_created_when_allowed():
    queues = Queues(conf())
    made = queues['images']
    assert made.name == 'images' and made.exchange.name == 'images' and made.routing_key == 'images'
    assert made.exchange.type == 'direct'
    assert queues['images'] is made
    assert 'images' in queues


def test_missing_queue_exchange_type_setting():
    queues = Queues(conf(task_create_missing_queue_exchange_type='topic'))
    assert queues['images'].exchange.type == 'topic'


def test_missing_queue_refused_when_not_allowed():
    queues = Queues(conf(task_create_missing_queues=False))
    with pytest.raises(QueueNotFound, match='images'):
        queues['images']
    assert 'images' not in queues
    assert issubclass(QueueNotFound, KeyError)


def test_default_queue_must_exist_when_creation_is_off():
    queues = Queues(conf(task_create_missing_queues=False, task_queues=[Queue('only')]))
    with pytest.raises(QueueNotFound):
        queues.default  # noqa: B018


def test_max_priority_on_every_queue():
    configured = [Queue('a'), Queue('b', queue_arguments={'x-max-priority': 3})]
    queues = Queues(conf(task_queue_max_priority=10, task_queues=configured, task_default_queue='a'))
    assert queues['a'].queue_arguments == {'x-max-priority': 10}
    assert queues['b'].queue_arguments == {'x-max-priority': 3}  # the queue's own wins
    assert queues['created'].queue_arguments == {'x-max-priority': 10}
    assert Queues(conf(task_queue_max_priority=5)).default.queue_arguments == {'x-max-priority': 5}


def test_select():
    queues = Queues(conf(task_queues=[Queue('a'), Queue('b')], task_default_queue='a'))
    assert [q.name for q in queues.select(['b', 'a'])] == ['b', 'a']
    assert [q.name for q in queues.select(['new'])] == ['new']
    strict = Queues(conf(task_queues=[Queue('a')], task_default_queue='a', task_create_missing_queues=False))
    with pytest.raises(QueueNotFound):
        strict.select(['a', 'nope'])


# --- routes ---------------------------------------------------------------------------------------
def test_no_routes_means_default_queue():
    assert queue_of(router().route({}, 'proj.add')) == 'celery'


@pytest.mark.parametrize('name,expected', [
    ('proj.add', 'math'),            # exact name
    ('proj.images.resize', 'images'),  # glob
    ('proj.images.crop', 'images'),
    ('video.encode', 'video'),       # compiled regex
    ('proj.other', 'celery'),        # nothing matches: default queue
])
def test_dict_routes(name, expected):
    routes = {'proj.add': {'queue': 'math'}, 'proj.images.*': {'queue': 'images'},
              re.compile(r'^video\.'): {'queue': 'video'}}
    assert queue_of(router(task_routes=routes).route({}, name)) == expected


def test_exact_name_beats_a_pattern():
    routes = {'proj.*': {'queue': 'pattern'}, 'proj.add': {'queue': 'exact'}}
    r = router(task_routes=routes)
    assert queue_of(r.route({}, 'proj.add')) == 'exact'
    assert queue_of(r.route({}, 'proj.mul')) == 'pattern'


def test_patterns_match_in_order():
    routes = {'proj.images.*': {'queue': 'images'}, 'proj.*': {'queue': 'proj'}}
    assert queue_of(router(task_routes=routes).route({}, 'proj.images.crop')) == 'images'


def test_glob_matches_the_whole_name():
    r = router(task_routes={'*.add': {'queue': 'adders'}})
    assert queue_of(r.route({}, 'proj.add')) == 'adders'
    assert queue_of(r.route({}, 'proj.add_more')) == 'celery'


def test_route_value_may_be_a_queue_name():
    assert queue_of(router(task_routes={'proj.*': 'images'}).route({}, 'proj.x')) == 'images'


def test_route_options_are_kept():
    options = router(task_routes={'proj.add': {'queue': 'math', 'priority': 5}}).route({}, 'proj.add')
    assert queue_of(options) == 'math' and options['priority'] == 5


def test_explicit_options_win_over_route_options():
    options = router(task_routes={'proj.add': {'queue': 'math', 'priority': 5}}).route({'priority': 9}, 'proj.add')
    assert queue_of(options) == 'math' and options['priority'] == 9


def test_callable_route_gets_celerys_arguments():
    seen: list[tuple[Any, ...]] = []

    def route(name, args, kwargs, options, task=None, **kw):
        seen.append((name, args, kwargs, options, task))
        return {'queue': 'by-fn'} if name == 'proj.add' else None

    r = router(task_routes=route)
    assert queue_of(r.route({}, 'proj.add', (1, 2), {'k': 1}, task='T')) == 'by-fn'
    assert seen[0][:3] == ('proj.add', (1, 2), {'k': 1}) and seen[0][4] == 'T'
    assert queue_of(r.route({}, 'proj.other')) == 'celery'


def test_callable_route_may_return_a_queue_name():
    assert queue_of(router(task_routes=lambda name, *a, **k: 'fn-queue').route({}, 'x')) == 'fn-queue'


def test_list_of_routes_first_match_wins():
    calls: list[str] = []

    def first(name, *args, **kwargs):
        calls.append(name)
        return None  # no opinion: ask the next router

    routes = [first, {'proj.add': {'queue': 'second'}}, lambda name, *a, **k: {'queue': 'third'}]
    r = router(task_routes=routes)
    assert queue_of(r.route({}, 'proj.add')) == 'second'
    assert queue_of(r.route({}, 'proj.mul')) == 'third'
    assert calls == ['proj.add', 'proj.mul']


@pytest.mark.parametrize('path', ['tf_routes_mod.ROUTES', 'tf_routes_mod:ROUTES', 'tf_routes_mod.route',
                                  'tf_routes_mod:route'])
def test_routes_by_import_path(monkeypatch, path):
    module = types.ModuleType('tf_routes_mod')
    module.ROUTES = {'proj.add': {'queue': 'imported'}}
    module.route = lambda name, *args, **kwargs: {'queue': 'imported'} if name == 'proj.add' else None
    monkeypatch.setitem(sys.modules, 'tf_routes_mod', module)
    r = router(task_routes=path)
    assert queue_of(r.route({}, 'proj.add')) == 'imported'
    assert queue_of(router(task_routes=[path]).route({}, 'proj.other')) == 'celery'


def test_bad_route_entry():
    with pytest.raises(TypeError, match='task_routes'):
        router(task_routes=[42])


def test_explicit_queue_wins_over_routes():
    r = router(task_routes={'proj.add': {'queue': 'math'}})
    assert queue_of(r.route({'queue': 'mine'}, 'proj.add')) == 'mine'


def test_explicit_exchange_skips_routes_and_default_queue():
    options = router(task_routes={'proj.add': {'queue': 'math'}}).route(
        {'exchange': 'ex', 'routing_key': 'rk'}, 'proj.add')
    assert options.get('queue') is None and options['exchange'] == 'ex' and options['routing_key'] == 'rk'


def test_routing_to_a_missing_queue_when_creation_is_off():
    r = router(task_routes={'proj.add': {'queue': 'nowhere'}}, task_create_missing_queues=False)
    with pytest.raises(QueueNotFound):
        r.route({}, 'proj.add')
    with pytest.raises(QueueNotFound):
        r.route({'queue': 'nowhere'}, 'proj.mul')


def test_app_router_uses_app_settings():
    app = make_app(task_routes={'proj.*': {'queue': 'p'}})
    assert queue_of(app.broker.router.route({}, 'proj.add')) == 'p'


# --- publishing -----------------------------------------------------------------------------------
def _publish(app: Taskflow, **options: Any) -> tuple[Any, dict[str, Any]]:
    producer = FakeProducer()
    app.send_task('proj.add', (2, 2), task_id='fixed-id', producer=producer, **options)
    (body, kwargs), = producer.calls
    return body, kwargs


def test_default_publish_goes_to_the_default_exchange_by_queue_name():
    app = make_app()
    body, kwargs = _publish(app)
    assert kwargs['exchange'] == '' and kwargs['routing_key'] == 'celery'
    assert kwargs['delivery_mode'] == 2
    assert kwargs['retry'] is True
    assert kwargs['retry_policy'] == app.conf.task_publish_retry_policy
    assert kwargs['serializer'] == 'json'
    assert [q.name for q in kwargs['declare']] == ['celery']
    assert kwargs['headers']['task'] == 'proj.add' and kwargs['headers']['id'] == 'fixed-id'
    assert kwargs['correlation_id'] == 'fixed-id'
    assert list(body[0]) == [2, 2]


def test_publish_to_a_named_queue():
    _, kwargs = _publish(make_app(), queue='q1')
    assert (kwargs['exchange'], kwargs['routing_key']) == ('', 'q1')
    assert [q.name for q in kwargs['declare']] == ['q1']


def test_explicit_exchange_and_routing_key_are_kept():
    _, kwargs = _publish(make_app(), exchange='ex', routing_key='rk')
    assert (kwargs['exchange'], kwargs['routing_key']) == ('ex', 'rk')


def test_topic_queue_keeps_its_exchange_and_key():
    app = make_app(task_queues=[Queue('feeds', Exchange('feeds', type='topic'), routing_key='feed.#')],
                   task_default_queue='feeds')
    _, kwargs = _publish(app)
    assert (kwargs['exchange'], kwargs['routing_key']) == ('feeds', 'feed.#')


def test_delivery_mode_options():
    assert _publish(make_app(task_default_delivery_mode='transient'))[1]['delivery_mode'] == 1
    assert _publish(make_app(), delivery_mode='transient')[1]['delivery_mode'] == 1
    assert _publish(make_app(), delivery_mode=2)[1]['delivery_mode'] == 2
    app = make_app(task_queues=[Queue('fast', Exchange('fast', delivery_mode=1))], task_default_queue='fast')
    assert _publish(app)[1]['delivery_mode'] == 1


def test_retry_settings_come_from_config():
    policy = {'max_retries': 7, 'interval_start': 1, 'interval_step': 1, 'interval_max': 4}
    app = make_app(task_publish_retry_policy=policy, task_publish_retry=False)
    _, kwargs = _publish(app)
    assert kwargs['retry'] is False and kwargs['retry_policy'] == policy
    _, kwargs = _publish(app, retry=True)
    assert kwargs['retry'] is True


def test_priority_serializer_and_expiration_are_passed():
    _, kwargs = _publish(make_app(), priority=7, serializer='msgpack', expires=30)
    assert kwargs['priority'] == 7 and kwargs['serializer'] == 'msgpack'
    assert kwargs['expiration'] == 30.0


def test_publish_task_with_a_queue_object_directly():
    app = make_app()
    producer = FakeProducer()
    queue = Queue('direct-q', Exchange('direct-q'), routing_key='direct-q')
    app.broker.publish_task('proj.add', {'task': 'proj.add', 'id': 'x'}, {'correlation_id': 'x', 'reply_to': ''},
                            ([], {}, {}), queue=queue, producer=producer)
    kwargs = producer.last
    assert (kwargs['exchange'], kwargs['routing_key']) == ('', 'direct-q')
    assert kwargs['declare'] == [queue] and kwargs['delivery_mode'] == 2
    assert kwargs['retry_policy'] == app.conf.task_publish_retry_policy


def test_publish_signals_see_the_destination():
    seen: list[dict[str, Any]] = []

    def before(sender=None, **kwargs):
        seen.append({'when': 'before', 'sender': sender, 'exchange': kwargs['exchange'],
                     'routing_key': kwargs['routing_key']})

    def after(sender=None, **kwargs):
        seen.append({'when': 'after', 'sender': sender, 'exchange': kwargs['exchange'],
                     'routing_key': kwargs['routing_key']})

    signals.before_task_publish.connect(before)
    signals.after_task_publish.connect(after)
    try:
        _publish(make_app())
    finally:
        signals.before_task_publish.disconnect(before)
        signals.after_task_publish.disconnect(after)
    assert seen == [{'when': 'before', 'sender': 'proj.add', 'exchange': '', 'routing_key': 'celery'},
                    {'when': 'after', 'sender': 'proj.add', 'exchange': '', 'routing_key': 'celery'}]


PUBLISH_BUGS: dict[str, str] = {}
_DELIVERY = {'persistent': 2, 'transient': 1}


@pytest.mark.parametrize('case', [
    pytest.param(case, marks=pytest.mark.xfail(strict=True, reason=PUBLISH_BUGS[case]))
    if case in PUBLISH_BUGS else case
    for case in sorted(PUBLISH['cases'])])
def test_publish_matches_celery(case):
    golden = PUBLISH['cases'][case]
    # Celery's default retry policy differs from ours (see test_config); compare like with like.
    app = make_app(**dict({'task_publish_retry_policy': CELERY_RETRY_POLICY}, **golden['settings']))
    producer = FakeProducer()
    app.send_task('proj.add', (2, 2), task_id='id-' + case, producer=producer, **golden['options'])
    ours = producer.last
    theirs = golden['publish']
    for key in ('exchange', 'routing_key', 'retry', 'retry_policy', 'serializer', 'compression', 'correlation_id'):
        assert ours[key] == theirs[key], key
    assert _DELIVERY.get(ours['delivery_mode'], ours['delivery_mode']) == \
        _DELIVERY.get(theirs['delivery_mode'], theirs['delivery_mode'])
    assert ours.get('priority') == theirs.get('priority')
    if theirs['exchange'] == '':
        assert [(q.name, q.exchange.name, q.exchange.type, q.routing_key) for q in ours['declare']] == \
            [(d['name'], d['exchange'], d['exchange_type'], d['routing_key']) for d in theirs['declare']]


# --- end to end over the memory transport --------------------------------------------------------
def _receive(app: Taskflow, queue_name: str) -> Any:
    with app.connection() as connection:
        queue = app.broker.queues[queue_name](connection.default_channel)
        queue.declare()
        return queue.get(no_ack=True)


def test_message_arrives_in_the_default_queue():
    name = f'tf-unit-{uuid.uuid4()}'
    app = make_app(task_default_queue=name)
    result = app.send_task('proj.add', (2, 2))
    message = _receive(app, name)
    assert message is not None
    assert message.headers['id'] == result.id and message.headers['task'] == 'proj.add'
    assert message.properties['correlation_id'] == result.id
    assert message.delivery_info['routing_key'] == name
    assert message.decode()[0] == [2, 2]


def test_route_with_queue_and_routing_key_is_delivered():
    name = f'tf-unit-{uuid.uuid4()}'
    app = make_app(task_routes={'proj.add': {'queue': name, 'routing_key': 'feed.import'}})
    app.send_task('proj.add', (1,))
    assert _receive(app, name) is not None


def test_broker_is_rebuilt_on_reconfiguration():
    app = make_app()
    first = app.broker
    assert isinstance(first, Broker)
    app.config_from_object({'task_default_queue': 'changed'})
    assert app.broker is not first and app.broker.queues.default.name == 'changed'


def test_publish_skips_entities_the_connection_already_declared():
    from types import SimpleNamespace

    from kombu import Queue

    from taskflow.broker import _undeclared
    q1, q2 = Queue('tf-a'), Queue('tf-b')
    fresh = SimpleNamespace(connection=SimpleNamespace(declared_entities=set()))
    assert _undeclared(fresh, [q1, q2]) == [q1, q2]
    warm = SimpleNamespace(connection=SimpleNamespace(declared_entities={hash(q1)}))
    assert _undeclared(warm, [q1, q2]) == [q2]
    assert _undeclared(warm, None) is None
    uncached = Queue('tf-c', auto_delete=True)  # kombu never caches an auto-delete queue's declaration
    warm.connection.declared_entities.add(hash(uncached))
    assert _undeclared(warm, [uncached]) == [uncached]

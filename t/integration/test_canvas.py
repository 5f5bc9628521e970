"""Every canvas shape against real worker processes, on Redis and on RabbitMQ (results in Redis).

Chords run in both join modes: the native Redis join (Celery 5.7's Lua scheme, keys
``celery-taskset-meta-<gid>.j/.t/.s/.d/.c``) and forced polling, where the *client* app is set
to ``result_chord_join='poll'`` and so sends ``celery.chord_unlock`` (the worker keeps its own
setting; chords the worker itself starts, e.g. a chord step of a chain, join natively).

After every chord the join state must be gone from Redis: only ``<gid>.c == "done"`` (with a
TTL) stays in native mode, nothing at all in poll mode. A redelivered header part (the very
same message published twice with kombu, or ``on_chord_part_return`` called twice in this
process against the real backend) must fire the body once.
"""
from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from taskflow import chain, chord, group, signals, states
from taskflow.canvas import on_chord_part_return
from taskflow.exceptions import ChordError
from taskflow.protocol import Context
from taskflow.result import AsyncResult, GroupResult
from t.integration import tasks
from t.integration.conftest import REDIS_BACKEND_URL, count_lines, raw_meta, wait_for

pytestmark = pytest.mark.integration

TIMEOUT = 20


# --- helpers ------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def backend_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_BACKEND_URL, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(params=['native', 'poll'])
def join_mode(request: pytest.FixtureRequest, broker: str) -> Iterator[str]:
    """How the chords this test sends are joined. ``poll`` is set on the client app only (it
    then sends ``celery.chord_unlock``); a shorter poll interval keeps the suite quick."""
    conf = tasks.app.conf
    saved = conf.result_chord_join, conf.result_chord_retry_interval
    conf.result_chord_join = request.param
    if request.param == 'poll':
        conf.result_chord_retry_interval = 0.2
    try:
        yield request.param
    finally:
        conf.result_chord_join, conf.result_chord_retry_interval = saved


def chord_keys(client: redis.Redis, gid: str) -> dict[str, Any]:
    prefix = f'celery-taskset-meta-{gid}'
    found = {}
    for key in client.scan_iter(match=prefix + '*'):
        kind = client.type(key)
        found[key[len(prefix):]] = client.get(key) if kind == 'string' else kind
    return found


def assert_join_state_gone(client: redis.Redis, mode: str, *gids: str) -> None:
    """Native: only ``.c == "done"`` with a TTL remains of each chord; poll: no key at all."""
    for gid in gids:
        if mode == 'native':
            try:
                wait_for(lambda gid=gid: chord_keys(client, gid) == {'.c': 'done'}, timeout=10,
                         message=f'chord {gid} join state cleaned up')
            except AssertionError as exc:
                raise AssertionError(f'{exc}; keys left: {chord_keys(client, gid)}') from None
            ttl = client.ttl(f'celery-taskset-meta-{gid}.c')
            assert ttl > 0, ttl
        else:
            assert chord_keys(client, gid) == {}


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def settled(result: AsyncResult) -> bool:
    return result.state in states.READY_STATES


# --- chains -----------------------------------------------------------------------------------------
def test_chain_passes_results_along(broker, worker):
    result = (tasks.add.s(1, 2) | tasks.add.s(3) | tasks.mul.s(10)).apply_async()
    assert result.get(timeout=TIMEOUT) == 60
    assert result.parent.get(timeout=TIMEOUT) == 6
    assert result.parent.parent.get(timeout=TIMEOUT) == 3
    assert result.parent.parent.parent is None
    first = result.parent.parent
    # the steps ran as one chain: same root, each the parent of the next
    assert raw_meta(result.id)['status'] == 'SUCCESS'
    info = (tasks.add.s(1, 2) | tasks.request_info.si()).apply_async()
    got = info.get(timeout=TIMEOUT)
    assert got['parent_id'] == info.parent.id and got['root_id'] == info.parent.id
    assert first.id != result.id


def test_chain_with_immutable_steps(broker, worker):
    result = (tasks.add.s(1, 1) | tasks.mul.si(3, 3) | tasks.add.s(1) | tasks.echo.si('done')).apply_async()
    assert result.get(timeout=TIMEOUT) == [['done'], {}]
    assert result.parent.get(timeout=TIMEOUT) == 10  # mul.si ignored the 2 from add
    assert result.parent.parent.get(timeout=TIMEOUT) == 9


def test_chain_apply_async_with_args_and_delay(broker, worker):
    assert (tasks.add.s(1) | tasks.mul.s(2)).apply_async((4,)).get(timeout=TIMEOUT) == 10
    assert (tasks.add.s(1) | tasks.mul.s(2)).delay(5).get(timeout=TIMEOUT) == 12
    assert chain(tasks.add.s(i) for i in range(1, 4)).apply_async((0,)).get(timeout=TIMEOUT) == 6


def test_failing_step_stops_the_chain(broker, worker, tmp_path):
    errors, after = tmp_path / 'errors.txt', tmp_path / 'after.txt'
    failing = tasks.fail.si('step two broke').on_error(tasks.on_error_record.s(path=str(errors)))
    c = tasks.add.s(1, 1) | failing | tasks.record.si(str(after), 'ran') | tasks.add.si(1, 1)
    result = c.apply_async()
    with pytest.raises(ValueError, match='step two broke'):
        result.get(timeout=TIMEOUT)
    failed_step, first = result.parent.parent, result.parent.parent.parent
    assert first.get(timeout=TIMEOUT) == 2
    assert failed_step.state == 'FAILURE' and isinstance(failed_step.result, ValueError)
    # the steps after it never run; they are marked failed with the same error
    wait_for(lambda: settled(result) and settled(result.parent), timeout=10, message='the rest marked')
    for step in (result.parent, result):
        assert step.state == 'FAILURE'
        with pytest.raises(ValueError, match='step two broke'):
            step.get(timeout=TIMEOUT, follow_parents=False)
    text = wait_for(lambda: lines(errors), timeout=10, message='errback')
    assert text == [f'{failed_step.id} ValueError']
    assert not after.exists()


def test_chain_link_error_runs_once(broker, worker, tmp_path):
    errors = tmp_path / 'errors.txt'
    c = chain(tasks.add.s(1, 1), tasks.fail.si('boom'), tasks.add.s(1), tasks.add.s(2))
    c.link_error(tasks.on_error_record.s(path=str(errors)))
    result = c.apply_async()
    with pytest.raises(ValueError, match='boom'):
        result.get(timeout=TIMEOUT)
    failed_id = result.parent.parent.id
    wait_for(lambda: settled(result), timeout=10, message='the last step marked')
    wait_for(lambda: lines(errors), timeout=10, message='errback')
    # the last step is marked after the errbacks of those before it ran
    assert lines(errors) == [f'{failed_id} ValueError']


# --- groups ------------------------------------------------------------------------------------------
def test_group_results_in_order(broker, worker):
    g = group(tasks.slow_add.s(i, i, 1.0 if i == 0 else 0) for i in range(6))
    result = g.apply_async()
    assert isinstance(result, GroupResult)
    assert result.waiting() and not result.ready()  # the first member sleeps 1 s
    assert result.get(timeout=TIMEOUT) == [0, 2, 4, 6, 8, 10]
    assert result.join(timeout=TIMEOUT) == [0, 2, 4, 6, 8, 10]
    assert result.ready() and result.successful() and not result.failed() and not result.waiting()
    assert result.completed_count() == 6
    assert [r.id for r in result.children] == [r.id for r in result.results]
    assert all(t.id is None for t in g.tasks)  # like Celery, each apply works on copies
    assert all(raw_meta(r.id)['status'] == 'SUCCESS' for r in result.results)


def test_group_with_a_failure(broker, worker):
    result = group(tasks.add.s(1, 1), tasks.fail.s('member'), tasks.add.s(2, 2)).apply_async()
    with pytest.raises(ValueError, match='member'):
        result.get(timeout=TIMEOUT)
    values = result.join(timeout=TIMEOUT, propagate=False)
    assert values[0] == 2 and values[2] == 4 and isinstance(values[1], ValueError)
    assert result.ready() and result.failed() and not result.successful()
    assert result.completed_count() == 2


def test_group_save_and_restore(broker, worker):
    result = group(tasks.add.s(i, 1) for i in range(3)).apply_async()
    result.save()
    restored = GroupResult.restore(result.id, app=tasks.app)
    assert restored is not None and restored.id == result.id
    assert [r.id for r in restored.results] == [r.id for r in result.results]
    assert restored.get(timeout=TIMEOUT) == [1, 2, 3]
    result.delete()
    assert GroupResult.restore(result.id, app=tasks.app) is None


def test_empty_group(broker, worker):
    result = group([]).apply_async()
    assert result.get(timeout=TIMEOUT) == []
    assert result.ready() and result.completed_count() == 0


def test_group_of_one_thousand(broker, worker):
    result = group(tasks.add.s(i, i) for i in range(1000)).apply_async()
    assert result.get(timeout=60) == [2 * i for i in range(1000)]
    assert result.completed_count() == 1000


def test_group_with_partial_args(broker, worker):
    assert group(tasks.add.s(1), tasks.mul.s(3)).apply_async((10,)).get(timeout=TIMEOUT) == [11, 30]


def test_group_applied_twice_gets_new_ids(broker, worker):
    g = group(tasks.add.s(1), tasks.mul.s(3))
    first = g.apply_async((10,))
    assert first.get(timeout=TIMEOUT) == [11, 30]
    second = g.apply_async((20,))
    assert second.id != first.id
    assert {r.id for r in second.results}.isdisjoint(r.id for r in first.results)
    assert second.get(timeout=TIMEOUT) == [21, 60]


# --- chords -------------------------------------------------------------------------------------------
def test_chord_called_with_body(broker, worker, join_mode, backend_redis, tmp_path):
    path = tmp_path / 'body.txt'
    result = chord(tasks.add.s(i, i) for i in range(10))(tasks.record_sum.s(str(path)))
    assert result.get(timeout=TIMEOUT) == 90
    header = result.parent
    assert isinstance(header, GroupResult)
    assert header.get(timeout=TIMEOUT) == [2 * i for i in range(10)]
    assert lines(path) == ['90']
    assert_join_state_gone(backend_redis, join_mode, header.id)


def test_chord_apply_async(broker, worker, join_mode, backend_redis):
    c = chord([tasks.add.s(1, 1), tasks.slow_add.s(2, 2, 0.2), tasks.mul.s(3, 3)], tasks.echo.s())
    result = c.apply_async()
    # the body gets the header results in header order, whatever order they finished in
    assert result.get(timeout=TIMEOUT) == [[[2, 4, 9]], {}]
    assert isinstance(result.parent, GroupResult) and len(result.parent.results) == 3
    assert_join_state_gone(backend_redis, join_mode, result.parent.id)


def test_group_then_task_is_a_chord(broker, worker, join_mode, backend_redis):
    result = (group(tasks.add.s(1, 1), tasks.add.s(2, 2)) | tasks.xsum.s()).apply_async()
    assert result.get(timeout=TIMEOUT) == 6
    assert_join_state_gone(backend_redis, join_mode, result.parent.id)


def test_chord_header_failure(broker, worker, join_mode, backend_redis, tmp_path):
    body_ran, errors = tmp_path / 'body.txt', tmp_path / 'errors.txt'
    c = chord([tasks.add.s(1, 1), tasks.fail.si('header broke'), tasks.add.s(2, 2)],
              tasks.record_sum.s(str(body_ran)))
    c.link_error(tasks.on_error_record.s(path=str(errors)))
    result = c.apply_async()
    # get() follows the parents first (as Celery's does): the header's own error when it is
    # already stored, else the body's ChordError
    with pytest.raises((ChordError, ValueError), match='header broke'):
        result.get(timeout=TIMEOUT)
    wait_for(lambda: settled(result), timeout=TIMEOUT, message='the body marked failed')
    with pytest.raises(ChordError) as info:
        result.get(timeout=TIMEOUT, follow_parents=False)
    failed = result.parent.results[1]
    assert failed.state == 'FAILURE'
    assert str(info.value) == f"Dependency {failed.id} raised ValueError('header broke')"
    assert result.state == 'FAILURE' and isinstance(result.result, ChordError)
    # the chord's errback ran, for the body, with the ChordError
    assert wait_for(lambda: lines(errors), timeout=10, message='chord errback') == [f'{result.id} ChordError']
    assert result.parent.join(timeout=TIMEOUT, propagate=False)[::2] == [2, 4]
    assert not body_ran.exists()
    assert_join_state_gone(backend_redis, join_mode, result.parent.id)


def test_chord_of_chords(broker, worker, join_mode, backend_redis):
    inner = [chord([tasks.add.s(1, 1), tasks.add.s(2, 2)], tasks.xsum.s()),
             chord([tasks.add.s(3, 3)], tasks.xsum.s()),
             chord([tasks.mul.s(2, 5), tasks.mul.s(1, 1)], tasks.echo.s())]
    result = chord(inner, tasks.echo.s()).apply_async()
    assert result.get(timeout=TIMEOUT) == [[[6, 6, [[[10, 1]], {}]]], {}]
    inner_gids = [r.parent.id for r in result.parent.results]
    assert_join_state_gone(backend_redis, join_mode, result.parent.id, *inner_gids)


def test_chord_inside_a_chain(broker, worker, backend_redis):
    c = tasks.add.s(1, 1) | chord([tasks.add.s(1), tasks.add.s(2)], tasks.xsum.s()) | tasks.mul.s(10)
    result = c.apply_async()
    assert result.get(timeout=TIMEOUT) == 70
    body = result.parent
    assert body.get(timeout=TIMEOUT) == 7
    assert isinstance(body.parent, GroupResult)
    assert body.parent.get(timeout=TIMEOUT) == [3, 4]
    assert body.parent.parent.get(timeout=TIMEOUT) == 2
    assert_join_state_gone(backend_redis, 'native', body.parent.id)  # started by the worker


def test_chord_first_in_a_chain(broker, worker, join_mode, backend_redis):
    c = chord([tasks.add.s(1, 1), tasks.add.s(2, 2)], tasks.xsum.s()) | tasks.mul.s(10) | tasks.add.s(1)
    result = c.apply_async()
    assert result.get(timeout=TIMEOUT) == 61
    assert result.parent.parent.get(timeout=TIMEOUT) == 6
    assert_join_state_gone(backend_redis, join_mode, result.parent.parent.parent.id)


def test_group_then_task_inside_a_chain(broker, worker, backend_redis):
    result = chain(tasks.add.s(1, 1), group(tasks.add.s(1), tasks.add.s(2), tasks.mul.s(5)),
                   tasks.xsum.s(), tasks.mul.s(2)).apply_async()
    assert result.get(timeout=TIMEOUT) == 34  # (3 + 4 + 10) * 2
    header = result.parent.parent
    assert isinstance(header, GroupResult) and header.get(timeout=TIMEOUT) == [3, 4, 10]
    assert_join_state_gone(backend_redis, 'native', header.id)


def test_group_of_chains(broker, worker):
    g = group(tasks.add.s(1, 1) | tasks.mul.s(2), tasks.add.s(2, 2) | tasks.mul.s(3),
              tasks.add.s(3, 3) | tasks.add.s(1) | tasks.mul.s(10))
    result = g.apply_async()
    assert result.get(timeout=TIMEOUT) == [4, 12, 70]
    assert result.results[2].parent.get(timeout=TIMEOUT) == 7


def test_chain_of_groups(broker, worker, join_mode, backend_redis):
    """group | group: the second group's members each get the first group's results."""
    c = chain(group(tasks.add.s(1, 1), tasks.add.s(2, 2)), group(tasks.xsum.s(), tasks.echo.s()))
    result = c.apply_async()
    assert result.get(timeout=TIMEOUT) == [6, [[[2, 4]], {}]]
    assert_join_state_gone(backend_redis, join_mode, result.parent.id)


def test_chord_with_a_chain_as_body(broker, worker, join_mode, backend_redis):
    result = chord([tasks.add.s(1, 1), tasks.add.s(2, 2)], tasks.xsum.s() | tasks.mul.s(10)).apply_async()
    assert result.get(timeout=TIMEOUT) == 60
    assert result.parent.get(timeout=TIMEOUT) == 6
    header = result.parent.parent
    assert isinstance(header, GroupResult)
    assert_join_state_gone(backend_redis, join_mode, header.id)


def test_chord_with_chains_in_the_header(broker, worker, join_mode, backend_redis):
    header = [tasks.add.s(1, 1) | tasks.mul.s(10), tasks.add.s(2, 2) | tasks.add.s(1) | tasks.mul.s(2)]
    result = chord(header, tasks.echo.s()).apply_async()
    assert result.get(timeout=TIMEOUT) == [[[20, 10]], {}]
    assert_join_state_gone(backend_redis, join_mode, result.parent.id)


def test_empty_chord(broker, worker, join_mode, backend_redis):
    result = chord([], tasks.echo.s()).apply_async()
    assert result.get(timeout=TIMEOUT) == [[[]], {}]
    assert chord_keys(backend_redis, result.parent.id) == {}


# --- map / starmap / chunks ------------------------------------------------------------------------
def test_map_and_starmap(broker, worker):
    assert tasks.xsum.map([[1, 2], [3], []]).apply_async().get(timeout=TIMEOUT) == [3, 3, 0]
    assert tasks.add.starmap([(1, 2), (3, 4)]).apply_async().get(timeout=TIMEOUT) == [3, 7]
    assert tasks.add.starmap([(i, i) for i in range(5)]).delay().get(timeout=TIMEOUT) == [0, 2, 4, 6, 8]
    # a map step in a chain
    assert (tasks.xsum.map([[1, 2], [3, 4]]) | tasks.xsum.s()).apply_async().get(timeout=TIMEOUT) == 10


def test_chunks(broker, worker, join_mode):
    items = [(i, i) for i in range(10)]
    expected = [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]
    result = tasks.add.chunks(items, 3).apply_async()
    assert isinstance(result, GroupResult) and len(result.results) == 4
    assert result.get(timeout=TIMEOUT) == expected
    grouped = tasks.add.chunks(items, 3).group()
    assert isinstance(grouped, group) and len(grouped.tasks) == 4
    assert grouped.apply_async().get(timeout=TIMEOUT) == expected
    # chunks as a chord header
    total = chord(tasks.add.chunks(items, 4).group(), tasks.echo.s()).apply_async()
    assert total.get(timeout=TIMEOUT) == [[[[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]], {}]


# --- redelivery: a header part that arrives twice fires the body once -----------------------------------
class Captured:
    """The header messages a chord publishes (``before_task_publish``), to publish again."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def __call__(self, sender: Any = None, body: Any = None, exchange: Any = None, routing_key: Any = None,
                 headers: Any = None, properties: Any = None, **kwargs: Any) -> None:
        self.messages.append(copy.deepcopy({'name': sender, 'body': body, 'exchange': exchange,
                                            'routing_key': routing_key, 'headers': headers,
                                            'properties': properties}))

    def by_id(self, task_id: str) -> dict[str, Any]:
        [found] = [m for m in self.messages if m['headers']['id'] == task_id]
        return found


def publish_again(message: dict[str, Any]) -> None:
    """Publish ``message`` once more, byte for byte what the client sent, with plain kombu."""
    with tasks.app.connection() as conn:
        producer = conn.Producer()
        producer.publish(message['body'], exchange=message['exchange'] or '', routing_key=message['routing_key'],
                         headers=message['headers'], serializer='json', retry=True, **message['properties'])


def test_redelivered_header_message_fires_the_body_once(broker, worker, backend_redis, tmp_path):
    path = tmp_path / 'body.txt'
    c = chord([tasks.add.s(1, 1), tasks.add.s(2, 2), tasks.slow_add.s(3, 3, 1.0)], tasks.record_sum.s(str(path)))
    result = c.freeze()
    gid = result.parent.id
    first = result.parent.results[0]
    captured = Captured()
    signals.before_task_publish.connect(captured)
    try:
        c.apply_async()
    finally:
        signals.before_task_publish.disconnect(captured)
    message = captured.by_id(first.id)
    assert message['headers']['group'] == gid and message['headers']['group_index'] == 0
    assert message['body'][2]['chord']['options']['task_id'] == result.id
    publish_again(message)  # two more copies while the slow member still runs
    publish_again(message)
    assert result.get(timeout=TIMEOUT) == 12
    log_lines = lambda: count_lines(worker.log(), f'[{first.id}]', 'succeeded')  # noqa: E731
    wait_for(lambda: log_lines() >= 3, timeout=10, message='the early copies ran')
    assert_join_state_gone(backend_redis, 'native', gid)
    publish_again(message)  # and one after the body was sent
    wait_for(lambda: log_lines() >= 4, timeout=10, message='the late copy ran')
    assert lines(path) == ['12']
    assert chord_keys(backend_redis, gid) == {'.c': 'done'}
    assert first.get(timeout=TIMEOUT) == 2


def test_chord_part_returned_twice_in_process(broker, worker, backend_redis, tmp_path):
    """``on_chord_part_return`` for the same request twice (what a redelivery does in the
    worker), here against the real Redis backend; the body runs on the worker."""
    path = tmp_path / 'body.txt'
    gid = str(uuid.uuid4())
    body = tasks.record_sum.s(str(path))
    body_result = body.freeze()
    body_dict = dict(body, chord_size=2)
    backend = tasks.app.backend
    backend.set_chord_size(gid, 2)
    ids = [str(uuid.uuid4()) for _ in range(2)]

    def part(i: int) -> Context:
        return Context(id=ids[i], group=gid, group_index=i, chord=body_dict, delivery_info={})

    on_chord_part_return(tasks.app, part(1), states.SUCCESS, 20)
    on_chord_part_return(tasks.app, part(1), states.SUCCESS, 20)
    assert set(chord_keys(backend_redis, gid)) >= {'.j', '.s', '.d'}
    assert backend_redis.zcard(f'celery-taskset-meta-{gid}.j') == 1
    on_chord_part_return(tasks.app, part(0), states.SUCCESS, 1)  # completes: sends the body
    on_chord_part_return(tasks.app, part(0), states.SUCCESS, 1)
    on_chord_part_return(tasks.app, part(1), states.SUCCESS, 20)
    assert body_result.get(timeout=TIMEOUT) == 21
    assert chord_keys(backend_redis, gid) == {'.c': 'done'}
    assert lines(path) == ['21']

"""Canvas building, serialising and eager running, without a network.

Every shape is built twice, with taskflow and with a real Celery 5.7 app whose tasks carry the
same names, and the JSON each side would put on the wire is compared. Then: the JSON round trip
(kombu's json, then ``signature``/``maybe_signature``) gives back the right classes, also
nested, and each side reads the other's dicts; ``|`` composition; partial arguments;
immutability; ``clone``/``set``/``link``/``link_error``/``freeze`` (ids and ``.parent`` links
known before sending); every shape in eager mode (``task_always_eager``).
"""
from __future__ import annotations

import json
from typing import Any, Iterator

import celery
import pytest
from celery.canvas import Signature as CelerySignature
from kombu.utils.json import dumps as kombu_dumps, loads as kombu_loads

from taskflow import Taskflow, _state, chain, chord, chunks, group, signature, xmap, xstarmap
from taskflow.canvas import Signature, maybe_signature
from taskflow.exceptions import NotRegistered
from taskflow.result import AsyncResult, EagerResult, GroupResult

# --- the two apps: same task names on both sides ------------------------------------------------
app = Taskflow('t', broker='memory://', backend='memory://', set_as_current=False)


@pytest.fixture(autouse=True)
def current_app() -> Iterator[None]:
    """Our app is the current one during each test (composites built without ``app=`` take the
    current app, see test_composite_takes_the_app_of_its_tasks), and not after it."""
    previous = _state.get_current_app()
    _state.set_current_app(app)
    try:
        yield
    finally:
        _state.set_current_app(previous)


@app.task(name='t.add')
def add(x: int, y: int) -> int:
    return x + y


@app.task(name='t.mul')
def mul(x: int, y: int) -> int:
    return x * y


@app.task(name='t.xsum')
def xsum(numbers: list[int]) -> int:
    return sum(numbers)


@app.task(name='t.echo')
def echo(*args: Any, **kwargs: Any) -> Any:
    return [list(args), kwargs]


@app.task(name='t.fail')
def fail(*args: Any) -> None:
    raise ValueError('boom')


capp = celery.Celery('c', broker='memory://', backend='cache+memory://', set_as_current=False)


@capp.task(name='t.add', shared=False)
def c_add(x: int, y: int) -> int:
    return x + y


@capp.task(name='t.mul', shared=False)
def c_mul(x: int, y: int) -> int:
    return x * y


@capp.task(name='t.xsum', shared=False)
def c_xsum(numbers: list[int]) -> int:
    return sum(numbers)


def wire(sig: Any) -> Any:
    """What goes on the wire: the signature through stdlib JSON."""
    return json.loads(json.dumps(sig))


def roundtrip(sig: Any) -> Any:
    """kombu's json there and back (as a message body would travel)."""
    return kombu_loads(kombu_dumps(sig))


def keys(value: Any) -> Any:
    """The key structure of a JSON value: dicts keep their keys, leaves become type names."""
    if isinstance(value, dict):
        return {k: keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [keys(v) for v in value]
    return type(value).__name__


def celery_header_as_group(value: Any) -> Any:
    """Celery keeps an unfrozen chord's header as a plain list of signatures and turns it into a
    ``celery.group`` dict when the chord is frozen or applied; taskflow always stores the group
    form. Celery reads both (``chord._maybe_group``), so compare in the group form."""
    if isinstance(value, list):
        return [celery_header_as_group(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: celery_header_as_group(v) for k, v in value.items()}
    if out.get('subtask_type') == 'chord' and isinstance(out['kwargs'].get('header'), list):
        out['kwargs'] = dict(out['kwargs'], header={
            'task': 'celery.group', 'args': [], 'kwargs': {'tasks': out['kwargs']['header']},
            'options': {}, 'subtask_type': 'group', 'immutable': False})
    return out


# --- the shapes, built by both sides ---------------------------------------------------------
def shapes() -> dict[str, tuple[Any, Any]]:
    """name -> (taskflow signature, the same canvas built by Celery)."""
    return {
        'task': (add.s(1, 2), c_add.s(1, 2)),
        'task-kwargs-options': (add.s(1, y=2).set(queue='q1', countdown=3),
                                c_add.s(1, y=2).set(queue='q1', countdown=3)),
        'immutable': (add.si(1, 2), c_add.si(1, 2)),
        'by-name': (signature('t.add', (1, 2), {}, app=app), celery.signature('t.add', (1, 2), {}, app=capp)),
        'chain': (chain(add.s(1, 2), add.s(3), mul.s(4)), celery.chain(c_add.s(1, 2), c_add.s(3), c_mul.s(4))),
        'chain-pipe': (add.s(1, 2) | add.s(3) | mul.si(2, 2), c_add.s(1, 2) | c_add.s(3) | c_mul.si(2, 2)),
        'group': (group(add.s(i, i) for i in range(3)), celery.group(c_add.s(i, i) for i in range(3))),
        'empty-group': (group([]), celery.group([])),
        'chord': (chord([add.s(1, 1), add.s(2, 2)], xsum.s()),
                  celery.chord([c_add.s(1, 1), c_add.s(2, 2)], c_xsum.s())),
        'group-pipe-task': (group(add.s(1, 1), add.s(2, 2)) | xsum.s(),
                            celery.group(c_add.s(1, 1), c_add.s(2, 2)) | c_xsum.s()),
        'chord-pipe-task': (chord([add.s(1, 1)], xsum.s()) | mul.s(10),
                            celery.chord([c_add.s(1, 1)], c_xsum.s()) | c_mul.s(10)),
        'chord-body-chain': (chord([add.s(1, 1)], xsum.s() | mul.s(2)),
                             celery.chord([c_add.s(1, 1)], c_xsum.s() | c_mul.s(2))),
        'group-of-chains': (group(add.s(1, 1) | mul.s(2), add.s(2, 2) | mul.s(3)),
                            celery.group(c_add.s(1, 1) | c_mul.s(2), c_add.s(2, 2) | c_mul.s(3))),
        'chain-with-group': (chain(add.s(1, 1), group(add.s(1), add.s(2)), xsum.s()),
                             celery.chain(c_add.s(1, 1), celery.group(c_add.s(1), c_add.s(2)), c_xsum.s())),
        'chord-of-chords': (chord([chord([add.s(1, 1)], xsum.s()), chord([add.s(2, 2)], xsum.s())], xsum.s()),
                            celery.chord([celery.chord([c_add.s(1, 1)], c_xsum.s()),
                                          celery.chord([c_add.s(2, 2)], c_xsum.s())], c_xsum.s())),
        'map': (xsum.map([[1, 2], [3]]), c_xsum.map([[1, 2], [3]])),
        'starmap': (add.starmap([(1, 2), (3, 4)]), c_add.starmap([(1, 2), (3, 4)])),
        'chunks': (add.chunks([(1, 2), (3, 4), (5, 6)], 2), c_add.chunks([(1, 2), (3, 4), (5, 6)], 2)),
    }


SHAPES = list(shapes())
# Celery registers xmap/xstarmap/chunks under those type names but builds them with
# subtask_type None (so Celery's own round trip turns them into plain 'celery.map'/... task
# signatures); taskflow writes the type name, so a round trip gives the class back. Both sides
# read both forms (test_celery_reads_our_dicts, test_we_read_celery_dicts).
MAP_TYPES = {'map': 'xmap', 'starmap': 'xstarmap', 'chunks': 'chunks'}


def without_map_subtask_type(value: Any) -> Any:
    if isinstance(value, list):
        return [without_map_subtask_type(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: without_map_subtask_type(v) for k, v in value.items()}
    if out.get('task') in ('celery.map', 'celery.starmap', 'celery.chunks'):
        out['subtask_type'] = None
    return out


def upgraded(sig: Any) -> Any:
    """Celery's ``chain(...)`` turns a group followed by a step into a chord as it is built;
    taskflow keeps the steps as given and upgrades when the chain is frozen or sent (both send
    the same thing; see test_group_followed_by_task_in_a_chain_is_upgraded_when_sent)."""
    if isinstance(sig, chain):
        return chain(*sig._steps(), app=app)
    return sig


@pytest.mark.parametrize('name', SHAPES)
def test_dict_shape_matches_celery(name: str) -> None:
    ours, theirs = shapes()[name]
    ours_wire = without_map_subtask_type(wire(upgraded(ours)))
    theirs_wire = celery_header_as_group(wire(theirs))
    assert ours_wire == theirs_wire
    assert keys(ours_wire) == keys(theirs_wire)
    assert set(wire(ours)) == {'task', 'args', 'kwargs', 'options', 'subtask_type', 'immutable'}


@pytest.mark.parametrize('name', list(MAP_TYPES))
def test_map_types_carry_their_type_name(name: str) -> None:
    """The one deliberate difference from Celery's dicts (see MAP_TYPES)."""
    ours, theirs = shapes()[name]
    assert wire(ours)['subtask_type'] == MAP_TYPES[name]
    assert wire(theirs)['subtask_type'] is None


def test_composite_kwargs_keys() -> None:
    c = wire(chain(add.s(1, 2), add.s(3)))
    assert (c['task'], c['subtask_type'], list(c['kwargs'])) == ('celery.chain', 'chain', ['tasks'])
    g = wire(group(add.s(1, 2)))
    assert (g['task'], g['subtask_type'], list(g['kwargs'])) == ('celery.group', 'group', ['tasks'])
    d = wire(chord([add.s(1, 2)], xsum.s()))
    assert (d['task'], d['subtask_type']) == ('celery.chord', 'chord')
    assert set(d['kwargs']) == {'header', 'body', 'kwargs'}
    assert d['kwargs']['kwargs'] == {}
    assert d['kwargs']['body']['task'] == 't.xsum'
    assert [t['task'] for t in d['kwargs']['header']['kwargs']['tasks']] == ['t.add']
    m = wire(add.chunks([(1, 2)], 5))
    assert m['kwargs'] == {'task': wire(add.s()), 'it': [[1, 2]], 'n': 5} and m['immutable'] is True


def test_frozen_shapes_have_celery_keys() -> None:
    """After freeze both sides carry task ids in the same places (Celery adds ``reply_to`` for
    its RPC backend; taskflow has none)."""
    for ours, theirs in (shapes()['chain'], shapes()['group'], shapes()['chord']):
        ours.freeze()
        theirs.freeze()
        o, t = wire(ours), wire(theirs)
        assert set(o) == set(t)

        def member_ids(d: dict[str, Any]) -> list[bool]:
            members = d['kwargs'].get('tasks') or d['kwargs']['header']['kwargs']['tasks']
            return [bool(m['options'].get('task_id')) for m in members]
        assert member_ids(o) == member_ids(t) and all(member_ids(o))
    ours_chord, theirs_chord = shapes()['chord']
    ours_chord.freeze()
    theirs_chord.freeze()
    assert wire(ours_chord)['kwargs']['header']['subtask_type'] == 'group'
    assert wire(theirs_chord)['kwargs']['header']['subtask_type'] == 'group'  # Celery too, once frozen


# --- JSON round trip -----------------------------------------------------------------------------
def type_tree(sig: Any) -> Any:
    """The class names of a signature and everything nested in it."""
    name = type(sig).__name__
    if isinstance(sig, chain):
        return (name, [type_tree(t) for t in sig.tasks])
    if isinstance(sig, chord):
        return (name, type_tree(sig.header), type_tree(sig.body))
    if isinstance(sig, group):
        return (name, [type_tree(t) for t in sig.tasks])
    if isinstance(sig, (xmap, xstarmap, chunks)):
        return (name, type_tree(maybe_signature(sig['kwargs']['task'], app=app)))
    return name


EXPECTED_TYPES = {
    'task': 'Signature',
    'task-kwargs-options': 'Signature',
    'immutable': 'Signature',
    'by-name': 'Signature',
    'chain': ('chain', ['Signature'] * 3),
    'chain-pipe': ('chain', ['Signature'] * 3),
    'group': ('group', ['Signature'] * 3),
    'empty-group': ('group', []),
    'chord': ('chord', ('group', ['Signature', 'Signature']), 'Signature'),
    'group-pipe-task': ('chord', ('group', ['Signature', 'Signature']), 'Signature'),
    'chord-pipe-task': ('chord', ('group', ['Signature']), ('chain', ['Signature', 'Signature'])),
    'chord-body-chain': ('chord', ('group', ['Signature']), ('chain', ['Signature', 'Signature'])),
    'group-of-chains': ('group', [('chain', ['Signature', 'Signature'])] * 2),
    'chain-with-group': ('chain', ['Signature', ('group', ['Signature', 'Signature']), 'Signature']),
    'chord-of-chords': ('chord', ('group', [('chord', ('group', ['Signature']), 'Signature')] * 2), 'Signature'),
    'map': ('xmap', 'Signature'),
    'starmap': ('xstarmap', 'Signature'),
    'chunks': ('chunks', 'Signature'),
}


@pytest.mark.parametrize('name', SHAPES)
def test_json_roundtrip_gives_the_right_classes(name: str) -> None:
    ours, _ = shapes()[name]
    assert type_tree(ours) == EXPECTED_TYPES[name]
    data = roundtrip(ours)
    assert type(data) is dict
    for back in (signature(data, app=app), maybe_signature(data, app=app), Signature.from_dict(data, app=app)):
        assert type_tree(back) == EXPECTED_TYPES[name]
        assert wire(back) == wire(ours)
        assert back.app is app
    again = maybe_signature(roundtrip(maybe_signature(data, app=app)), app=app)
    assert wire(again) == wire(ours)


def test_maybe_signature_passes_through() -> None:
    sig = add.s(1, 2)
    assert maybe_signature(None) is None
    assert maybe_signature(sig) is sig
    cloned = maybe_signature(sig, clone=True)
    assert cloned is not sig and cloned == sig
    listed = maybe_signature([wire(sig), sig], app=app)
    assert [type(s) for s in listed] == [Signature, Signature] and listed[1] is sig


@pytest.mark.parametrize('name', SHAPES)
def test_celery_reads_our_dicts(name: str) -> None:
    """A Celery process handed our dict (a chain step, a chord body, ...) gets the same canvas
    it would have built itself."""
    ours, theirs = shapes()[name]
    read = CelerySignature.from_dict(roundtrip(upgraded(ours)), app=capp)
    assert without_map_subtask_type(celery_header_as_group(wire(read))) == \
        without_map_subtask_type(celery_header_as_group(wire(theirs)))
    if name in MAP_TYPES:  # our type name picks Celery's own class
        assert type(read).__name__ == MAP_TYPES[name]
    elif name != 'task-kwargs-options':
        assert type(read).__name__ in ('Signature', type(theirs).__name__)


@pytest.mark.parametrize('name', SHAPES)
def test_we_read_celery_dicts(name: str) -> None:
    ours, theirs = shapes()[name]
    read = maybe_signature(roundtrip(theirs), app=app)
    assert without_map_subtask_type(wire(read)) == celery_header_as_group(wire(theirs))
    if name in MAP_TYPES:  # Celery wrote subtask_type None: a plain signature of celery.map/...
        assert type(read) is Signature and read['task'] == ours['task']
    else:
        assert type_tree(read) == type_tree(upgraded(ours))


# --- composition ---------------------------------------------------------------------------------
def test_task_pipe_task_is_a_chain() -> None:
    c = add.s(1, 2) | mul.s(3)
    assert type(c) is chain and [t['task'] for t in c.tasks] == ['t.add', 't.mul']


def test_chain_pipe_task_and_task_pipe_chain_flatten() -> None:
    left = chain(add.s(1, 2), add.s(3)) | mul.s(4)
    right = add.s(1, 2) | chain(add.s(3), mul.s(4))
    both = chain(add.s(1, 2), add.s(3)) | chain(mul.s(4), mul.s(5))
    for c, n in ((left, 3), (right, 3), (both, 4)):
        assert type(c) is chain and len(c.tasks) == n
        assert all(type(t) is Signature for t in c.tasks)
    assert wire(left) == wire(right)


def test_group_pipe_task_is_a_chord() -> None:
    c = group(add.s(1, 1), add.s(2, 2)) | xsum.s()
    assert type(c) is chord
    assert [t.args for t in c.header.tasks] == [(1, 1), (2, 2)]
    assert c.body['task'] == 't.xsum'


def test_chord_pipe_task_extends_the_body() -> None:
    original = chord([add.s(1, 1)], xsum.s())
    c = original | mul.s(10)
    assert type(c) is chord and type(c.body) is chain
    assert [t['task'] for t in c.body.tasks] == ['t.xsum', 't.mul']
    assert original.body['task'] == 't.xsum'  # the original chord is unchanged
    c2 = c | add.s(1)
    assert [t['task'] for t in c2.body.tasks] == ['t.xsum', 't.mul', 't.add']


def test_a_chord_refuses_to_start_without_a_result_backend() -> None:
    """As Celery: the join needs somewhere to count the header's results; nothing is sent."""
    bare = Taskflow('t-bare', broker='memory://', set_as_current=False)
    bare_add = bare.task(name='t.add')(add.run)
    with bare.connection_for_write() as conn:
        queue = bare.broker.queues.default(conn.default_channel)
        queue.declare()
        with pytest.raises(NotImplementedError, match='result backend'):
            chord([bare_add.s(1, 1)], app=bare)(bare_add.s(2))
        assert queue.queue_declare(passive=True).message_count == 0


def test_chain_then_group_stays_a_chain() -> None:
    c = add.s(1, 1) | group(add.s(1), add.s(2))
    assert type(c) is chain and type(c.tasks[1]) is group


def test_group_followed_by_task_in_a_chain_is_upgraded_when_sent() -> None:
    c = chain(add.s(1, 1), group(add.s(1), add.s(2)), xsum.s(), mul.s(2))
    c.freeze()
    assert [type(t).__name__ for t in c.tasks] == ['Signature', 'chord', 'Signature']
    assert c.tasks[1].body['task'] == 't.xsum'


# --- partials, immutability, options -------------------------------------------------------------
def test_partial_args_are_prepended_and_kwargs_merged() -> None:
    sig = echo.s(2, 3, a=1)
    assert sig.clone((1,), {'b': 2}).args == (1, 2, 3)
    assert sig.clone((1,), {'b': 2, 'a': 0}).kwargs == {'a': 0, 'b': 2}
    assert sig.args == (2, 3) and sig.kwargs == {'a': 1}  # the original is unchanged
    assert sig(1) == [[1, 2, 3], {'a': 1}]
    assert add.s(2)(1) == 3
    assert add.s(2).apply((1,)).get() == 3
    assert signature('t.add', (2,), app=app).apply((40,)).get() == 42


def test_immutable_ignores_call_arguments() -> None:
    sig = echo.si(1, a=1)
    assert sig.immutable and repr(sig).endswith('!')
    assert sig.clone((9,), {'b': 9}).args == (1,)
    assert sig.clone((9,), {'b': 9}).kwargs == {'a': 1}
    assert sig.apply((9,), {'b': 9}).get() == [[1], {'a': 1}]
    mutable = echo.s(1)
    mutable.set(immutable=True)
    assert mutable.immutable and wire(mutable)['immutable'] is True
    mutable.set(immutable=False)
    assert mutable.clone((0,)).args == (0, 1)


def test_clone_is_deep_and_keeps_class_and_options() -> None:
    sig = add.s(1).set(queue='q')
    sig.link(mul.s(2))
    copy = sig.clone(kwargs={'y': 2}, countdown=5)
    assert copy is not sig and type(copy) is Signature
    assert copy.options == {'queue': 'q', 'link': [mul.s(2)], 'countdown': 5}
    copy.options['link'].append(xsum.s())
    assert sig.options['link'] == [mul.s(2)]
    assert copy.type is add
    for composite in (chain(add.s(1), mul.s(2)), group(add.s(1, 1)), chord([add.s(1, 1)], xsum.s())):
        cloned = composite.clone()
        assert type(cloned) is type(composite) and wire(cloned) == wire(composite)
        cloned['kwargs'].clear()
        assert composite['kwargs']


def test_set_updates_options_and_returns_the_signature() -> None:
    sig = add.s(1, 2)
    assert sig.set(queue='q', priority=3, countdown=1) is sig
    assert sig.options == {'queue': 'q', 'priority': 3, 'countdown': 1}


def test_link_and_link_error_append_once() -> None:
    sig = add.s(1, 2)
    assert sig.link(mul.s(2)) == mul.s(2)
    sig.link(mul.s(2))
    sig.link_error(echo.s())
    assert sig.options['link'] == [mul.s(2)]
    assert sig.options['link_error'] == [echo.s()]
    assert sig.on_error(xsum.s()) is sig and len(sig.options['link_error']) == 2
    c = chain(add.s(1, 2), mul.s(3))
    c.link(xsum.s())
    assert c.tasks[-1].options['link'] == [xsum.s()] and 'link' not in c.tasks[0].options
    g = group(add.s(1, 1), add.s(2, 2))
    g.link_error(echo.s())
    assert all(t.options['link_error'] == [echo.s()] for t in g.tasks)
    d = chord([add.s(1, 1)], xsum.s())
    d.link_error(echo.s())
    assert d.body.options['link_error'] == [echo.s()]
    assert 'link_error' not in d.header.tasks[0].options  # task_allow_error_cb_on_chord_header off


# --- freeze: ids and parents before sending ---------------------------------------------------------
def test_freeze_task() -> None:
    sig = add.s(1, 2)
    result = sig.freeze()
    assert isinstance(result, AsyncResult) and result.id == sig.id == sig.options['task_id']
    assert sig.freeze().id == result.id  # stable
    fixed = add.s(1, 2)
    assert fixed.freeze('my-id').id == 'my-id'


def test_freeze_chain_parents_lead_back_to_the_first_step() -> None:
    c = add.s(1, 2) | add.s(3) | mul.s(4)
    result = c.freeze()
    ids = [t.id for t in c.tasks]
    assert all(ids) and len(set(ids)) == 3
    assert result.id == ids[2]
    assert result.parent.id == ids[1]
    assert result.parent.parent.id == ids[0]
    assert result.parent.parent.parent is None
    assert c.tasks[1].options['root_id'] == ids[0] == c.tasks[2].options['root_id']


def test_freeze_group() -> None:
    g = group(add.s(i, i) for i in range(3))
    result = g.freeze()
    assert isinstance(result, GroupResult) and result.id == g.options['task_id']
    assert [r.id for r in result.results] == [t.id for t in g.tasks]
    assert [t.options['group_index'] for t in g.tasks] == [0, 1, 2]
    assert {t.options['group_id'] for t in g.tasks} == {result.id}


def test_freeze_chord_body_parent_is_the_header_group() -> None:
    d = chord([add.s(1, 1), add.s(2, 2)], xsum.s())
    result = d.freeze()
    assert isinstance(result, AsyncResult) and result.id == d.body.id
    header = result.parent
    assert isinstance(header, GroupResult)
    assert header.id == d.options['task_id'] == d.header.id  # Celery: a chord's id is its header group's
    assert [r.id for r in header.results] == [t.id for t in d.header.tasks]
    assert d.freeze().id == result.id


def test_freeze_chain_ending_in_chord() -> None:
    c = add.s(1, 1) | chord([add.s(1), add.s(2)], xsum.s())
    result = c.freeze()
    assert result.id == c.tasks[1].body.id
    assert isinstance(result.parent, GroupResult)
    assert result.parent.parent.id == c.tasks[0].id


# --- eager mode ----------------------------------------------------------------------------------
@pytest.fixture
def eager() -> Iterator[None]:
    app.conf.task_always_eager = True
    try:
        yield
    finally:
        app.conf.task_always_eager = False


EAGER_CASES = {
    'task': (lambda: add.s(1, 2), 3),
    'partial': (lambda: add.s(2), 3),
    'immutable-in-chain': (lambda: add.s(1, 1) | mul.si(3, 3), 9),
    'chain': (lambda: add.s(1, 2) | add.s(3) | mul.s(10), 60),
    'group': (lambda: group(add.s(i, i) for i in range(5)), [0, 2, 4, 6, 8]),
    'empty-group': (lambda: group([]), []),
    'chord': (lambda: chord([add.s(i, i) for i in range(5)], xsum.s()), 20),
    'group-pipe-task': (lambda: group(add.s(1, 1), add.s(2, 2)) | xsum.s(), 6),
    'chord-pipe-task': (lambda: chord([add.s(1, 1)], xsum.s()) | mul.s(10), 20),
    'chord-body-chain': (lambda: chord([add.s(1, 1), add.s(2, 2)], xsum.s() | mul.s(10)), 60),
    'chord-of-chords': (lambda: chord([chord([add.s(1, 1), add.s(2, 2)], xsum.s()),
                                       chord([add.s(3, 3)], xsum.s())], xsum.s()), 12),
    'chord-in-chain': (lambda: add.s(1, 1) | chord([add.s(1), add.s(2)], xsum.s()) | mul.s(10), 70),
    'chain-group-task': (lambda: chain(add.s(1, 1), group(add.s(1), add.s(2)), xsum.s()), 7),
    'group-of-chains': (lambda: group(add.s(1, 1) | mul.s(2), add.s(2, 2) | mul.s(3)), [4, 12]),
    'chain-of-groups': (lambda: chain(group(add.s(1, 1), add.s(2, 2)), group(xsum.s(), xsum.s())), [6, 6]),
    'map': (lambda: xsum.map([[1, 2], [3]]), [3, 3]),
    'starmap': (lambda: add.starmap([(1, 2), (3, 4)]), [3, 7]),
    'chunks': (lambda: add.chunks([(i, i) for i in range(7)], 3), [[0, 2, 4], [6, 8, 10], [12]]),
    'chunks-group': (lambda: add.chunks([(i, i) for i in range(7)], 3).group(), [[0, 2, 4], [6, 8, 10], [12]]),
}


EAGER_BUGS: dict[str, Any] = {}


def eager_params(names: list[str]) -> list[Any]:
    return [pytest.param(n, marks=EAGER_BUGS[n]) if n in EAGER_BUGS else n for n in names]


@pytest.mark.parametrize('name', eager_params(list(EAGER_CASES)))
def test_eager_apply_async(eager: None, name: str) -> None:
    make, expected = EAGER_CASES[name]
    sig = make()
    args = (1,) if name == 'partial' else ()
    result = sig.apply_async(args)
    assert isinstance(result, (EagerResult, GroupResult)), type(result)
    assert result.get(timeout=5) == expected
    # the same canvas after a JSON round trip runs the same
    again = maybe_signature(roundtrip(make()), app=app)
    assert again.apply_async(args).get(timeout=5) == expected


@pytest.mark.parametrize('name', eager_params([n for n in EAGER_CASES if n != 'partial']))
def test_eager_delay_and_call(eager: None, name: str) -> None:
    make, expected = EAGER_CASES[name]
    assert make().delay().get(timeout=5) == expected


def test_apply_runs_in_process_without_eager_setting() -> None:
    assert not app.conf.task_always_eager
    assert (add.s(1, 2) | mul.s(3)).apply().get() == 9
    assert group(add.s(1, 1), add.s(2, 2)).apply().get() == [2, 4]
    assert chord([add.s(1, 1), add.s(2, 2)], xsum.s()).apply().get() == 6
    assert add.chunks([(1, 1), (2, 2)], 1).apply().get() == [[2], [4]]
    assert xsum.map([[1], [2, 3]]).apply().get() == [1, 5]


def test_eager_chain_stops_at_the_failing_step(eager: None) -> None:
    result = (add.s(1, 1) | fail.s() | add.s(1)).apply_async()
    assert result.state == 'FAILURE'
    assert isinstance(result.result, ValueError)
    with pytest.raises(ValueError, match='boom'):
        result.get()
    assert result.parent.get() == 2


def test_group_apply_uses_its_partial_args() -> None:
    """The root of the eager chain bug above, without a chain."""
    assert group(add.s(1), add.s(2)).clone((10,)).apply().get(timeout=5) == [11, 12]


def test_eager_chain_results_have_parents(eager: None) -> None:
    result = (add.s(1, 2) | add.s(3) | mul.s(10)).apply_async()
    assert result.get() == 60
    assert result.parent.get() == 6
    assert result.parent.parent.get() == 3


def test_eager_chord_header_failure_raises(eager: None) -> None:
    with pytest.raises(ValueError, match='boom'):
        chord([add.s(1, 1), fail.s()], xsum.s()).apply_async()


def test_chunks_validates_n() -> None:
    with pytest.raises(ValueError):
        add.chunks([(1, 2)], 0)


def test_unknown_task_cannot_be_applied_here() -> None:
    with pytest.raises(NotRegistered):
        signature('t.missing', (), app=app).apply()


def test_composite_takes_the_app_of_its_tasks() -> None:
    other = Taskflow('other', broker='memory://', backend='memory://', set_as_current=False)
    _state.set_current_app(other)
    c_group = celery.group(c_add.s(1, 1), c_add.s(2, 2))
    assert c_group.app is capp  # Celery, for contrast
    for composite in (group(add.s(1, 1), add.s(2, 2)), chain(add.s(1, 1), mul.s(2)),
                      chord([add.s(1, 1)], xsum.s())):
        assert composite.app is app, type(composite).__name__

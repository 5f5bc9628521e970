"""Canvas: signatures and their compositions, in Celery's dict shapes so a canvas built by
either side runs on the other.

- ``Signature``: one task call (name, args, kwargs, options) as a JSON-serialisable dict;
- ``chain``: steps run one after another, each result the first argument of the next; the
  remaining steps travel in the message's ``chain`` field, next step last;
- ``group``: members run in parallel; a ``GroupResult`` reads them in order;
- ``chord``: a group whose results, in order, go to a body once all are done. Redis joins
  natively (an atomic counter in the backend, see ``on_chord_part_return``); other backends
  poll with the ``celery.chord_unlock`` task;
- ``xmap``/``xstarmap``/``chunks``: one message running a task over many items.

The built-in tasks (``celery.chord_unlock``, ``celery.map``, ...) are registered on every app by
``register_builtin_tasks``. Tasks are found through ``app.tasks``; this module never imports
``task``.
"""
from __future__ import annotations

import copy
import inspect
import itertools
import logging
from typing import Any, Iterable, Iterator

import taskflow._state as _state
import taskflow.states as states
from .exceptions import ChordError, NotRegistered
from .protocol import Context, new_id
from .result import AsyncResult, GroupResult, result_from_tuple

__all__ = ['Signature', 'signature', 'maybe_signature', 'subtask', 'chain', 'group', 'chord',
           'chunks', 'xmap', 'xstarmap', 'register_builtin_tasks', 'on_chord_part_return']

logger = logging.getLogger(__name__)

#: subtask_type -> class, so a dict from the wire becomes the right kind of signature.
_TYPES: dict[str | None, type['Signature']] = {}


class Signature(dict):
    """``{'task', 'args', 'kwargs', 'options', 'subtask_type', 'immutable'}`` with methods to call it.

    Arguments given when calling are prepended to the stored ones, keyword arguments merged;
    an immutable signature ignores both.
    """

    _app: Any = None

    def __init__(self, task: Any = None, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
                 options: dict[str, Any] | None = None, type: Any = None, subtask_type: str | None = None,
                 immutable: bool = False, app: Any = None, **ex: Any) -> None:
        self._app = app
        if isinstance(task, dict):
            super().__init__(task)  # a signature's dict form
            self.setdefault('args', [])
            self.setdefault('kwargs', {})
            self.setdefault('options', {})
            self.setdefault('subtask_type', None)
            self.setdefault('immutable', False)
            return
        self._type = type
        name = task if isinstance(task, str) else getattr(task, 'name', None)
        if not isinstance(task, str) and task is not None:
            self._type = task
        super().__init__(task=name, args=tuple(args or ()), kwargs=dict(kwargs or {}),
                         options=dict(options or {}, **ex), subtask_type=subtask_type,
                         immutable=immutable)

    def __init_subclass__(cls, subtask_type: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if subtask_type:
            _TYPES[subtask_type] = cls

    @classmethod
    def from_dict(cls, d: dict[str, Any], app: Any = None) -> 'Signature':
        """The signature of the right kind (task, chain, group, chord, ...) for ``d``."""
        return _TYPES.get(d.get('subtask_type'), Signature)._from_dict(d, app)

    @classmethod
    def _from_dict(cls, d: dict[str, Any], app: Any) -> 'Signature':
        return Signature(d, app=app)

    # --- dict fields as attributes --------------------------------------------------------
    name = property(lambda self: self.get('task'))
    task = property(lambda self: self.get('task'))
    args = property(lambda self: self.get('args'), lambda self, v: self.__setitem__('args', v))
    kwargs = property(lambda self: self.get('kwargs'), lambda self, v: self.__setitem__('kwargs', v))
    options = property(lambda self: self.get('options'), lambda self, v: self.__setitem__('options', v))
    subtask_type = property(lambda self: self.get('subtask_type'))
    immutable = property(lambda self: self.get('immutable', False))

    @property
    def app(self) -> Any:
        return self._app if self._app is not None else (
            getattr(getattr(self, '_type', None), 'app', None) or _state.get_current_app())

    @property
    def type(self) -> Any:
        """The registered ``Task`` for this signature (``None`` when this process lacks it)."""
        found = getattr(self, '_type', None)
        return found if found is not None else self.app.tasks.get(self['task'])

    @property
    def id(self) -> str | None:
        return self['options'].get('task_id')

    # --- calling ---------------------------------------------------------------------------
    def _merge(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
               options: dict[str, Any] | None = None) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        merged_options = dict(self['options'], **options) if options else dict(self['options'])
        if self.immutable:
            return tuple(self['args']), dict(self['kwargs']), merged_options
        merged_args = tuple(args) + tuple(self['args']) if args else tuple(self['args'])
        merged_kwargs = dict(self['kwargs'], **kwargs) if kwargs else dict(self['kwargs'])
        return merged_args, merged_kwargs, merged_options

    def apply_async(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
                    route_name: str | None = None, **options: Any) -> Any:
        """Send the task (merging arguments); returns its ``AsyncResult``."""
        args, kwargs, options = self._merge(args, kwargs, options)
        task = self.type
        if task is not None:
            return task.apply_async(args, kwargs, **options)
        return self.app.send_task(self['task'], args, kwargs, route_name=route_name, **options)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
        """Run the task in this process; returns an ``EagerResult``."""
        args, kwargs, options = self._merge(args, kwargs, options)
        task = self.type
        if task is None:
            raise NotRegistered(self['task'])
        return task.apply(args, kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task body directly, here and now."""
        args, kwargs, _ = self._merge(args, kwargs)
        return self.type(*args, **kwargs)

    # --- building --------------------------------------------------------------------------
    def clone(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **opts: Any) -> 'Signature':
        """A deep copy, with arguments merged as a call would merge them."""
        merged_args, merged_kwargs, merged_opts = self._merge(args, kwargs, opts)
        data = copy.deepcopy(dict(self, args=merged_args, kwargs=merged_kwargs, options=merged_opts))
        sig = Signature.from_dict(data, app=self._app)
        sig._type = getattr(self, '_type', None)
        return sig

    partial = clone

    def set(self, immutable: bool | None = None, **options: Any) -> 'Signature':
        if immutable is not None:
            self.set_immutable(immutable)
        self['options'].update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self['immutable'] = immutable

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None, group_index: int | None = None) -> Any:
        """Fix the task id now (so the result is known before sending) and return its result.
        An id fixed earlier is kept (as Celery does): ``_id`` only names a task that has none."""
        opts = self['options']
        opts['task_id'] = opts.get('task_id') or _id or new_id()
        for key, value in (('group_id', group_id), ('chord', chord), ('root_id', root_id),
                           ('parent_id', parent_id), ('group_index', group_index)):
            if value is not None:
                opts[key] = value
        return self.AsyncResult(opts['task_id'])

    def AsyncResult(self, task_id: str) -> Any:
        return AsyncResult(task_id, app=self.app, task_name=self['task'])

    def _append_option(self, key: str, sig: Any) -> Any:
        items = self['options'].setdefault(key, [])
        if not isinstance(items, list):
            items = self['options'][key] = [items]
        if sig not in items:
            items.append(sig)
        return sig

    def link(self, callback: Any) -> Any:
        """Run ``callback`` with this task's result when it succeeds."""
        return self._append_option('link', callback)

    def link_error(self, errback: Any) -> Any:
        """Run ``errback`` when this task fails."""
        return self._append_option('link_error', errback)

    def on_error(self, errback: Any) -> 'Signature':
        self.link_error(errback)
        return self

    def __or__(self, other: Any) -> 'Signature':
        """``a | b``: a chain (``group | task`` makes a chord, as in Celery)."""
        if isinstance(other, chain):
            return chain(self, *other.tasks, app=self._app)
        if isinstance(other, Signature):
            return chain(self, other, app=self._app)
        return NotImplemented

    def __deepcopy__(self, memo: Any) -> 'Signature':
        sig = Signature.from_dict(copy.deepcopy(dict(self), memo), app=self._app)
        sig._type = getattr(self, '_type', None)
        return sig

    def __reduce__(self) -> Any:
        return signature, (dict(self),)

    def __json__(self) -> dict[str, Any]:
        return dict(self)

    def reprcall(self) -> str:
        args = ', '.join([repr(a) for a in self['args']] + [f'{k}={v!r}' for k, v in self['kwargs'].items()])
        return f'{self["task"]}({args})'

    def __repr__(self) -> str:
        return self.reprcall() + ('!' if self.immutable else '')




def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature:
    """A ``Signature`` from a task name, a task, or a signature's dict form."""
    app = kwargs.get('app')
    if isinstance(varies, dict):
        if isinstance(varies, Signature):
            return varies.clone()
        return Signature.from_dict(varies, app=app)
    return Signature(varies, *args, **kwargs)


subtask = signature


def maybe_signature(d: Any, app: Any = None, clone: bool = False) -> Any:
    """``d`` as a ``Signature`` of the right kind (dicts converted; ``None`` and signatures
    pass through)."""
    if d is None:
        return None
    if isinstance(d, Signature):
        return d.clone() if clone else d
    if isinstance(d, dict):
        return Signature.from_dict(d, app=app)
    if isinstance(d, (list, tuple)):
        return [maybe_signature(s, app) for s in d]
    return d


def _sigs(tasks: Iterable[Any], app: Any) -> list[Signature]:
    return [maybe_signature(t, app=app) for t in tasks]


# Options that describe *where a result goes* (set by a parent composition), never copied from
# a composition to its members.
_PLACEMENT = ('task_id', 'group_id', 'group_index', 'chord', 'chain', 'link', 'link_error')


def _member_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in _PLACEMENT and v is not None}


class _Composite(Signature):
    """chain, group and chord: ``kwargs`` holds their parts, so call arguments are kept apart."""

    @property
    def app(self) -> Any:
        """The app given, else the app of the parts (as Celery does), else the current one."""
        if self._app is not None:
            return self._app
        for part in self._parts():
            app = getattr(part, '_app', None) or getattr(getattr(part, '_type', None), 'app', None)
            if app is None and isinstance(part, _Composite):
                app = part.app
            if app is not None:
                return app
        return _state.get_current_app()

    def _parts(self) -> list[Signature]:
        return list(self['kwargs'].get('tasks') or ())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``chain(...)()`` / ``group(...)()``: send it, as Celery does."""
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
                    route_name: str | None = None, **options: Any) -> Any:
        """Send it (``_send`` of each kind). Each apply is a new run, so a copy is sent: the ids
        frozen for this run stay out of the signature the caller holds (ids the caller froze
        himself are kept)."""
        fresh: _Composite = self.clone()  # type: ignore[assignment]  # from_dict gives this same kind
        return fresh._send(args, kwargs, route_name=route_name, **options)

    def _send(self, args: Iterable[Any] | None, kwargs: dict[str, Any] | None, route_name: str | None = None,
              **options: Any) -> Any:
        raise NotImplementedError

    def _merge(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
               options: dict[str, Any] | None = None) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        merged_options = dict(self['options'], **options) if options else dict(self['options'])
        if self.immutable:
            return tuple(self['args']), {}, merged_options
        return tuple(args or ()) + tuple(self['args']), dict(kwargs or {}), merged_options

    def clone(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **opts: Any) -> 'Signature':
        sig = Signature.from_dict(copy.deepcopy(dict(self)), app=self._app)
        sig['args'] = tuple(args or ()) + tuple(sig['args'])
        sig['options'].update(opts)
        return sig


class chain(_Composite, subtask_type='chain'):
    """Steps run one after another: ``chain(a.s(1), b.s(), c.s())`` or ``a.s(1) | b.s() | c.s()``.

    Its result is the last step's, with ``.parent`` leading back to the first.
    """

    def __init__(self, *tasks: Any, app: Any = None, **options: Any) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], dict) and isinstance(tasks[0], Iterable):
            tasks = tuple(tasks[0])  # chain(generator or list)
        steps: list[Signature] = []
        for step in _sigs(tasks, app):
            steps.extend(step.tasks if type(step) is chain else [step])  # flatten nested chains
        super().__init__('celery.chain', (), {'tasks': steps}, options, subtask_type='chain', app=app)

    @classmethod
    def _from_dict(cls, d: dict[str, Any], app: Any) -> 'chain':
        sig = cls(*d['kwargs']['tasks'], app=app, **d.get('options', {}))
        sig.update(args=d.get('args', ()), immutable=d.get('immutable', False))
        return sig

    @property
    def tasks(self) -> list[Signature]:
        return self['kwargs']['tasks']

    def __or__(self, other: Any) -> Signature:
        if isinstance(other, chain):
            return chain(*self.tasks, *other.tasks, app=self._app)
        if isinstance(other, Signature):
            return chain(*self.tasks, other, app=self._app)
        return NotImplemented

    def link(self, callback: Any) -> Any:
        return self.tasks[-1].link(callback) if self.tasks else callback

    def link_error(self, errback: Any) -> Any:
        for step in self.tasks:
            step.link_error(errback)
        return errback

    def _steps(self) -> list[Signature]:
        """The steps, cloned, with each ``group`` followed by a step upgraded to a chord."""
        steps = [s.clone() for s in self.tasks]
        out: list[Signature] = []
        for step in steps:
            if out and isinstance(out[-1], group) and not isinstance(out[-1], chord):
                out[-1] = chord(out[-1].tasks, step, app=self._app, **_member_options(out[-1].options))
            else:
                out.append(step)
        return out

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None, group_index: int | None = None) -> Any:
        """Fix every step's id; the last step takes ``_id`` and the placement options."""
        steps = self._steps()
        self['kwargs']['tasks'] = steps
        if not steps:
            return None
        first = steps[0].freeze(root_id=root_id, parent_id=parent_id) if len(steps) > 1 else None
        root_id = root_id or (first.id if first is not None else None)
        previous = first
        for step in steps[1:-1]:
            result = step.freeze(root_id=root_id)
            _set_root_parent(result, previous)
            previous = result
        last = steps[-1].freeze(_id, group_id=group_id, chord=chord, root_id=root_id,
                                parent_id=parent_id if len(steps) == 1 else None, group_index=group_index)
        if previous is not None:
            _set_root_parent(last, previous)
        return last

    def _send(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              route_name: str | None = None, **options: Any) -> Any:
        """Send the first step; the rest ride along in its message. Returns the last result."""
        app = self.app
        args, kwargs, options = self._merge(args, kwargs, options)
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        if not self.tasks:
            return None
        producer = options.pop('producer', None)
        chain_rest = options.pop('chain', None) or []
        result = self.freeze(options.pop('task_id', None), options.pop('group_id', None),
                             options.pop('chord', None), options.pop('root_id', None),
                             options.pop('parent_id', None), options.pop('group_index', None))
        steps = self.tasks
        shared = _member_options(options)  # routing and similar options apply to every step
        for step in steps:
            for key, value in shared.items():
                step['options'].setdefault(key, value)
        link, link_error = options.pop('link', None), options.pop('link_error', None)
        if link:
            for cb in (link if isinstance(link, list) else [link]):
                steps[-1].link(cb)
        if link_error:
            for eb in (link_error if isinstance(link_error, list) else [link_error]):
                self.link_error(eb)
        first, rest = steps[0], steps[1:]
        # The first step's message carries the rest, next step last; steps that follow this
        # whole chain (it was itself a step) come before them in that list.
        remaining = list(chain_rest) + [dict(s) for s in reversed(rest)]
        first.apply_async(args, kwargs, chain=remaining or None, producer=producer)
        return result

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **options: Any) -> Any:
        """Run every step here, in order."""
        args, kwargs, options = self._merge(args, kwargs, options)
        last = None
        call_args: tuple[Any, ...] = tuple(args or ())
        call_kwargs = dict(kwargs or {})
        for step in self._steps():
            result = step.clone(call_args, call_kwargs).apply(**_member_options(options))
            _set_root_parent(result, last)
            last = result
            if result.failed():
                break
            call_args, call_kwargs = (result.get(disable_sync_subtasks=False),), {}
        return last

    def __repr__(self) -> str:
        return ' | '.join(repr(t) for t in self.tasks) if self.tasks else 'chain()'


def _set_root_parent(result: Any, parent: Any) -> None:
    """Attach ``parent`` to the first result without one, walking ``result``'s parents."""
    node, seen = result, set()
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if getattr(node, 'parent', None) is None:
            node.parent = parent
            return
        node = node.parent


class group(_Composite, subtask_type='group'):
    """Members run in parallel: ``group(add.s(i, i) for i in range(10))``."""

    def __init__(self, *tasks: Any, app: Any = None, **options: Any) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], dict) and isinstance(tasks[0], Iterable):
            tasks = tuple(tasks[0])
        super().__init__('celery.group', (), {'tasks': _sigs(tasks, app)}, options,
                         subtask_type='group', app=app)

    @classmethod
    def _from_dict(cls, d: dict[str, Any], app: Any) -> 'group':
        sig = cls(*d['kwargs']['tasks'], app=app, **d.get('options', {}))
        sig.update(args=d.get('args', ()), immutable=d.get('immutable', False))
        return sig

    @property
    def tasks(self) -> list[Signature]:
        return self['kwargs']['tasks']

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Signature]:  # type: ignore[override]
        return iter(self.tasks)

    def __or__(self, other: Any) -> Signature:
        if isinstance(other, Signature) and not isinstance(other, group):
            return chord(self.tasks, other, app=self._app, **_member_options(self.options))
        return chain(self, other, app=self._app) if isinstance(other, Signature) else NotImplemented

    def link(self, callback: Any) -> Any:
        for task in self.tasks:
            task.link(callback)
        return callback

    def link_error(self, errback: Any) -> Any:
        for task in self.tasks:
            task.link_error(errback)
        return errback

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None, group_index: int | None = None) -> Any:
        """Fix the group id (``_id``) and every member's id; returns the ``GroupResult``."""
        gid = self['options'].get('task_id') or _id or new_id()
        self['options']['task_id'] = gid
        results = [task.freeze(group_id=gid, chord=chord, root_id=root_id, parent_id=parent_id, group_index=i)
                   for i, task in enumerate(self.tasks)]
        return GroupResult(gid, results, app=self.app)

    def _send(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              route_name: str | None = None, **options: Any) -> Any:
        """Send every member (through one producer); returns a ``GroupResult`` in member order."""
        app = self.app
        args, kwargs, options = self._merge(args, kwargs, options)
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        if options.get('chain'):
            # a group with steps after it (sent by a Celery chain): those steps join on it
            rest = [maybe_signature(s, app=app) for s in reversed(options.pop('chain'))]
            return chord(self.tasks, chain(*rest, app=app), app=app).apply_async(args, kwargs, **options)
        result = self.freeze(options.pop('task_id', None), root_id=options.pop('root_id', None),
                             parent_id=options.pop('parent_id', None), chord=options.pop('chord', None))
        options.pop('group_id', None)
        options.pop('group_index', None)
        producer = options.pop('producer', None)
        shared = _member_options(options)
        if producer is None and self.tasks:
            with app.producer_pool.acquire(block=True) as pooled:  # one producer for all members
                for task in self.tasks:
                    task.apply_async(args, kwargs, producer=pooled, **shared)
        else:
            for task in self.tasks:
                task.apply_async(args, kwargs, producer=producer, **shared)
        return result

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **options: Any) -> Any:
        args, kwargs, options = self._merge(args, kwargs, options)
        gid = options.pop('task_id', None) or self['options'].get('task_id') or new_id()
        results = [task.clone(args, kwargs).apply(
            group_id=gid, group_index=i, **_member_options(options)) for i, task in enumerate(self.tasks)]
        return GroupResult(gid, results, app=self.app)

    def __repr__(self) -> str:
        return f'group([{", ".join(repr(t) for t in self.tasks)}])'


def _header_list(header: Any, app: Any) -> list[Signature]:
    if isinstance(header, dict) and not isinstance(header, Signature):
        header = Signature.from_dict(header, app=app)
    if isinstance(header, group):
        return list(header.tasks)
    if isinstance(header, Signature):
        return [header]
    return _sigs(header, app)


class chord(_Composite, subtask_type='chord'):
    """A group (the header) whose results, in order, are passed to the body when all are done:
    ``chord(add.s(i, i) for i in range(10))(xsum.s())``."""

    def __init__(self, header: Any, body: Any = None, task: str = 'celery.chord', args: Any = None,
                 kwargs: dict[str, Any] | None = None, app: Any = None, **options: Any) -> None:
        members = _header_list(header, app)
        kw = dict(kwargs or {'kwargs': {}})
        kw.update(header=group(members, app=app), body=maybe_signature(body, app=app))
        super().__init__(task, args or (), kw, options, subtask_type='chord', app=app)

    @classmethod
    def _from_dict(cls, d: dict[str, Any], app: Any) -> 'chord':
        kw = dict(d['kwargs'])
        header, body = kw.pop('header'), kw.pop('body', None)
        sig = cls(header, body, args=d.get('args', ()), kwargs=kw, app=app, **d.get('options', {}))
        sig['immutable'] = d.get('immutable', False)
        return sig

    @property
    def header(self) -> group:
        header = self['kwargs']['header']
        if not isinstance(header, group):
            header = self['kwargs']['header'] = group(_header_list(header, self._app), app=self._app)
        return header

    @property
    def tasks(self) -> list[Signature]:
        return self.header.tasks

    def _parts(self) -> list[Signature]:
        body = self['kwargs'].get('body')
        return [*(self.tasks), *([body] if body is not None else [])]

    @property
    def body(self) -> Signature | None:
        return self['kwargs'].get('body')

    @body.setter
    def body(self, value: Any) -> None:
        self['kwargs']['body'] = maybe_signature(value, app=self._app)

    def __call__(self, body: Any = None, **options: Any) -> Any:  # type: ignore[override]
        """``chord(header)(body)``: send it with this body."""
        if body is not None:
            self.body = body
        return self.apply_async(**options)

    def __or__(self, other: Any) -> Signature:
        if isinstance(other, Signature) and not isinstance(other, group):
            sig = self.clone()
            assert isinstance(sig, chord)
            sig.body = sig.body | other if sig.body is not None else other
            return sig
        return super().__or__(other)

    def link(self, callback: Any) -> Any:
        return self.body.link(callback) if self.body is not None else callback

    def link_error(self, errback: Any) -> Any:
        """An errback of the chord runs when the body fails, and when a header task fails the
        chord (the body then fails with ``ChordError``)."""
        if self.app.conf.task_allow_error_cb_on_chord_header:
            self.header.link_error(errback)
        return self.body.link_error(errback) if self.body is not None else errback

    def __len__(self) -> int:
        return len(self.tasks)

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None, group_index: int | None = None) -> Any:
        """Fix the header group id and the body id (``_id``); returns the body's result, whose
        first parent is the header's ``GroupResult``. As in Celery, a chord's own ``task_id``
        option is its header's group id, so either side can send a chord the other froze."""
        body = self.body
        if body is None:
            raise ValueError('A chord needs a body: chord(header)(body) or chord(header, body)')
        header_result = self.header.freeze(self['options'].get('task_id'), root_id=root_id, parent_id=parent_id)
        self['options']['task_id'] = header_result.id
        body_result = body.freeze(_id, group_id=group_id, chord=chord, root_id=root_id, group_index=group_index)
        _set_root_parent(body_result, header_result)
        return body_result

    def _send(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              route_name: str | None = None, task_id: str | None = None, **options: Any) -> Any:
        """Send the header members; the body (with id ``task_id``) follows when all are done."""
        app = self.app
        body_override = (kwargs or {}).pop('body', None) if kwargs else None
        if body_override is not None:
            self.body = body_override
        args, kwargs, options = self._merge(args, kwargs, options)
        kwargs.pop('kwargs', None)
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        backend = app.backend
        if getattr(backend, 'disabled', False):
            raise NotImplementedError('Starting chords requires a result backend to be configured '
                                      '(result_backend).')
        chain_rest = options.pop('chain', None)
        body = self.body
        if body is None:
            raise ValueError('A chord needs a body: chord(header)(body) or chord(header, body)')
        if chain_rest:  # steps after the chord continue from its body
            body = self.body = chain(body, *[maybe_signature(s, app=app) for s in reversed(chain_rest)], app=app)
        options.pop('task_id', None)  # the chord's own id option is the header group id: freeze reads it
        result = self.freeze(task_id, options.pop('group_id', None),
                             options.pop('chord', None), options.pop('root_id', None),
                             options.pop('parent_id', None), options.pop('group_index', None))
        header, gid = self.header, self['options']['task_id']
        producer = options.pop('producer', None)
        shared = _member_options(options)
        for key, value in shared.items():
            body['options'].setdefault(key, value)
        size = len(header.tasks)
        native = backend.supports_native_join and app.conf.result_chord_join != 'poll'
        if size == 0:
            body.apply_async(([],))
            return result
        if native:
            body_dict = dict(body, chord_size=size)
            backend.set_chord_size(gid, size)  # before the first header message (never hangs)
            for task in header.tasks:
                _set_chord(task, body_dict)
            header.apply_async(args, kwargs, task_id=gid, producer=producer, **shared)
        else:
            header_result = header.apply_async(args, kwargs, task_id=gid, producer=producer, **shared)
            interval = app.conf.result_chord_retry_interval
            app.tasks['celery.chord_unlock'].apply_async(
                (gid, dict(body)), {'result': [r.as_tuple() for r in header_result.results],
                                    'interval': interval, 'max_retries': None},
                countdown=interval, **shared)
        return result

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **options: Any) -> Any:
        args, kwargs, options = self._merge(args, kwargs, options)
        header_result = self.header.apply(args, kwargs)
        values = header_result.join(propagate=True, disable_sync_subtasks=False)
        body = self.body
        assert body is not None
        return body.apply((values,), **_member_options(options))

    def __repr__(self) -> str:
        return f'chord([{", ".join(repr(t) for t in self.tasks)}], {self.body!r})'


def _set_chord(sig: Signature, body: dict[str, Any]) -> None:
    """Make ``sig`` (a header member) report to the chord whose body is ``body``."""
    if isinstance(sig, chain):
        if sig.tasks:
            _set_chord(sig.tasks[-1], body)
    elif isinstance(sig, chord):
        if sig.body is not None:
            _set_chord(sig.body, body)
    else:
        sig['options']['chord'] = body


class _MapBase(Signature):
    _task_name = ''

    def __init__(self, task: Any, it: Iterable[Any], app: Any = None, **options: Any) -> None:
        super().__init__(self._task_name, (), {'task': maybe_signature(task, app=app) if not isinstance(task, str)
                                               else Signature(task, app=app), 'it': list(it)},
                         options, subtask_type=self._subtask_type, immutable=True, app=app)

    _subtask_type = ''

    @classmethod
    def _from_dict(cls, d: dict[str, Any], app: Any) -> 'Signature':
        return cls(d['kwargs']['task'], d['kwargs']['it'], app=app, **d.get('options', {}))

    def apply_async(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
                    route_name: str | None = None, **options: Any) -> Any:
        # routed like the task it maps
        return super().apply_async(args, kwargs, route_name=self['kwargs']['task']['task'], **options)


class xmap(_MapBase, subtask_type='xmap'):
    """One message that runs ``task(item)`` for every item: ``add_one.map([1, 2, 3])``."""
    _task_name, _subtask_type = 'celery.map', 'xmap'


class xstarmap(_MapBase, subtask_type='xstarmap'):
    """One message that runs ``task(*item)`` for every item: ``add.starmap([(1, 2), (3, 4)])``."""
    _task_name, _subtask_type = 'celery.starmap', 'xstarmap'


def _chunked(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    iterator = iter(it)
    while True:
        part = list(itertools.islice(iterator, n))
        if not part:
            return
        yield part


class chunks(Signature, subtask_type='chunks'):
    """Items split into chunks of ``n``, one ``starmap`` message per chunk:
    ``add.chunks(zip(xs, ys), 10)``. ``.group()`` gives the group of those messages."""

    def __init__(self, task: Any, it: Iterable[Any], n: int, app: Any = None, **options: Any) -> None:
        if int(n) < 1:
            raise ValueError(f'chunk size must be at least 1, got {n!r}')
        super().__init__('celery.chunks', (), {'task': maybe_signature(task, app=app), 'it': list(it), 'n': int(n)},
                         options, subtask_type='chunks', immutable=True, app=app)

    @classmethod
    def _from_dict(cls, d: dict[str, Any], app: Any) -> 'chunks':
        kw = d['kwargs']
        return cls(kw['task'], kw['it'], kw['n'], app=app, **d.get('options', {}))

    def group(self) -> group:
        task, it, n = self['kwargs']['task'], self['kwargs']['it'], self['kwargs']['n']
        return group((xstarmap(task, part, app=self._app) for part in _chunked(it, n)), app=self._app)

    def apply_async(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
                    route_name: str | None = None, **options: Any) -> Any:
        return self.group().apply_async(args, kwargs, **options)

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **options: Any) -> Any:
        return self.group().apply(args, kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async()


# --- errbacks, chains that fail, and the chord join ----------------------------------------------
def run_errbacks(app: Any, request: Context, exc: BaseException, traceback: str) -> None:
    """Errbacks taking ``(request, exc, traceback)`` run here (Celery's new style); others are
    sent with the failed task's id."""
    for errback in request.errbacks or ():
        sig = maybe_signature(errback, app=app)
        target = sig.type
        try:
            run = getattr(target, 'run', None) if target is not None else None
            if run is not None and _arity(run) > 1:
                sig.apply((request, exc, traceback), {})
            else:
                sig.apply_async((request.id,), parent_id=request.id, root_id=request.root_id)
        except Exception as err:  # an errback must not hide the task's own failure
            logger.exception('Errback %r for task %s failed: %r', sig, request.id, err)


def _arity(fun: Any) -> int:
    try:
        params = inspect.signature(fun).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 3
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def fail_signature(app: Any, sig: Any, exc: BaseException, traceback: str | None = None,
                   errbacks: bool = True) -> None:
    """Record ``exc`` as the outcome of ``sig`` (a step that will now never run), including
    the steps and chords behind it, so nobody waits for it forever. With ``errbacks`` the
    errbacks of the first task reached run (once, as for a task that failed itself)."""
    sig = maybe_signature(sig, app=app)
    if isinstance(sig, chain):
        for i, step in enumerate(sig.tasks):
            fail_signature(app, step, exc, traceback, errbacks=errbacks and i == 0)
        return
    if isinstance(sig, group):
        for member in sig.tasks:
            fail_signature(app, member, exc, traceback, errbacks=errbacks)
        return
    if isinstance(sig, chord):
        if sig.body is not None:
            fail_signature(app, sig.body, exc, traceback, errbacks=errbacks)
        return
    opts = sig['options']
    if not opts.get('task_id'):
        return
    ctx = Context(id=opts['task_id'], name=sig['task'], group=opts.get('group_id'),
                  group_index=opts.get('group_index'), chord=opts.get('chord'), errbacks=opts.get('link_error'),
                  root_id=opts.get('root_id'), parent_id=opts.get('parent_id'), args=sig['args'],
                  kwargs=sig['kwargs'], delivery_info={})
    app.backend.mark_as_failure(ctx.id, exc, traceback, request=ctx)
    if errbacks:
        run_errbacks(app, ctx, exc, traceback or '')
    if ctx.chord:
        on_chord_part_return(app, ctx, states.FAILURE, exc)


def on_chord_part_return(app: Any, request: Context, state: str, result: Any) -> None:
    """A header member finished: record it; the one that completes the set sends the body.

    The backend's join is atomic and idempotent (a redelivered member is counted once) and
    hands the results to exactly one caller. A failed member fails the body with
    ``ChordError`` instead.
    """
    backend = app.backend
    if not request.group or not getattr(backend, 'supports_native_join', False):
        return  # joined by celery.chord_unlock polling instead
    joined = backend.chord_part_return(request.group, request.id, request.group_index, state, result)
    if joined is None:
        return
    token, entries = joined
    body = maybe_signature(request.chord, app=app)
    try:
        for task_id, member_state, value in entries:
            if member_state in states.PROPAGATE_STATES:
                raise ChordError(f'Dependency {task_id} raised {value!r}')
        body.apply_async(([value for _, _, value in entries],))
    except ChordError as exc:
        logger.error('Chord %s failed: %s', request.group, exc)
        fail_signature(app, body, exc)
    except Exception as exc:
        logger.exception('Chord %s could not send its body: %r', request.group, exc)
        fail_signature(app, body, ChordError(f'Callback error: {exc!r}'))
    finally:
        backend.chord_cleanup(request.group, token)


# --- built-in tasks ------------------------------------------------------------------------------
def register_builtin_tasks(app: Any) -> None:
    """Register Celery's built-in task names on ``app`` so messages naming them run here."""

    def unlock_chord(self: Any, group_id: str, callback: Any, interval: float | None = None,
                     max_retries: int | None = None, result: Any = None, **kwargs: Any) -> None:
        interval = app.conf.result_chord_retry_interval if interval is None else interval
        deps = GroupResult(group_id, [result_from_tuple(r, app) for r in result or ()], app=app)
        try:
            ready = deps.ready()
        except Exception as exc:
            raise self.retry(exc=exc, countdown=interval, max_retries=max_retries) from exc
        if not ready:
            raise self.retry(countdown=interval, max_retries=max_retries)
        body = maybe_signature(callback, app=app)
        try:
            values = deps.join(timeout=app.conf.result_chord_join_timeout, propagate=True,
                               disable_sync_subtasks=False)
        except Exception as exc:
            culprit = next((r for r in deps.results if r.failed()), None)
            reason = f'Dependency {culprit.id} raised {exc!r}' if culprit is not None else repr(exc)
            logger.error('Chord %s failed: %s', group_id, reason)
            fail_signature(app, body, ChordError(reason))
            return
        try:
            body.apply_async((values,))
        except Exception as exc:
            fail_signature(app, body, ChordError(f'Callback error: {exc!r}'))

    def task_of(sig: Any) -> Any:
        sig = maybe_signature(sig, app=app)
        found = sig.type
        if found is None:
            raise NotRegistered(sig['task'])
        return found

    def xmap_task(task: Any, it: Iterable[Any]) -> list[Any]:
        fun = task_of(task)
        return [fun(item) for item in it]

    def xstarmap_task(task: Any, it: Iterable[Any]) -> list[Any]:
        fun = task_of(task)
        return [fun(*item) for item in it]

    def chunks_task(task: Any, it: Iterable[Any], n: int) -> Any:
        return chunks(task, it, n, app=app).apply_async().id

    def group_task(tasks: Any, result: Any = None, group_id: str | None = None, partial_args: Any = None,
                   add_to_parent: bool = True) -> Any:
        return group(tasks, app=app).apply_async(partial_args or (), task_id=group_id).id

    def chain_task(*args: Any, **kwargs: Any) -> None:
        raise NotImplementedError('chain is not a real task')

    def chord_task(header: Any, body: Any, partial_args: Any = (), interval: Any = None, countdown: Any = 1,
                   max_retries: Any = None, eager: bool = False, **kwargs: Any) -> Any:
        return chord(header, body, app=app).apply_async(partial_args or ()).id

    def accumulate(*args: Any, **kwargs: Any) -> Any:
        index = kwargs.get('index')
        return args[index] if index is not None else args

    def backend_cleanup() -> None:
        app.backend.cleanup()

    builtins: list[tuple[str, Any, dict[str, Any]]] = [
        ('celery.chord_unlock', unlock_chord, {'bind': True, 'max_retries': None, 'ignore_result': True,
                                               'default_retry_delay': 1.0}),
        ('celery.map', xmap_task, {}),
        ('celery.starmap', xstarmap_task, {}),
        ('celery.chunks', chunks_task, {}),
        ('celery.group', group_task, {}),
        ('celery.chain', chain_task, {}),
        ('celery.chord', chord_task, {}),
        ('celery.accumulate', accumulate, {}),
        ('celery.backend_cleanup', backend_cleanup, {'ignore_result': True}),
    ]
    for name, fun, options in builtins:
        app._task_from_fun(fun, name=name, typing=False, **options)

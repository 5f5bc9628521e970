"""Signatures: a task call (name, args, kwargs, options) as a JSON-serialisable dict,
exactly Celery's shape, so a signature built by either side runs on the other.

Tasks are found through ``app.tasks``; this module never imports ``task``.
"""
from __future__ import annotations

import copy
import uuid
from typing import Any, Iterable

from . import _state

__all__ = ['Signature', 'signature', 'maybe_signature', 'subtask']


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
            from .exceptions import NotRegistered  # noqa: PLC0415
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
        sig = type(self)(dict(self, args=merged_args, kwargs=merged_kwargs,
                              options=copy.deepcopy(merged_opts)), app=self._app)
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
        """Fix the task id now (so the result is known before sending) and return its result."""
        opts = self['options']
        opts['task_id'] = _id or opts.get('task_id') or str(uuid.uuid4())
        for key, value in (('group_id', group_id), ('chord', chord), ('root_id', root_id),
                           ('parent_id', parent_id), ('group_index', group_index)):
            if value is not None:
                opts[key] = value
        return self.AsyncResult(opts['task_id'])

    def AsyncResult(self, task_id: str) -> Any:
        from .result import AsyncResult  # noqa: PLC0415 - result is a lower layer; kept local for clarity
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

    def __deepcopy__(self, memo: Any) -> 'Signature':
        sig = type(self)(copy.deepcopy(dict(self), memo), app=self._app)
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
        return Signature(varies, app=app)
    return Signature(varies, *args, **kwargs)


subtask = signature


def maybe_signature(d: Any, app: Any = None, clone: bool = False) -> Any:
    """``d`` as a ``Signature`` (dicts converted; ``None`` and signatures pass through)."""
    if d is None:
        return None
    if isinstance(d, Signature):
        return d.clone() if clone else d
    if isinstance(d, dict):
        return Signature(d, app=app)
    if isinstance(d, (list, tuple)):
        return [maybe_signature(s, app) for s in d]
    return d

"""Result handles: ``AsyncResult`` (one task), ``ResultSet`` and ``GroupResult`` (many), and
``EagerResult`` (a task run in this process).

Reads go through the app's backend; ``get()`` on Redis is woken by pub/sub, not by polling.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Sequence

from vine import promise

import taskflow._state as _state
import taskflow.states as states
from .exceptions import TaskRevokedError, TimeoutError
from .protocol import from_iso

__all__ = ['AsyncResult', 'ResultSet', 'GroupResult', 'EagerResult', 'result_from_tuple',
           'assert_will_not_block']

E_WOULDBLOCK = ('Never call result.get() within a task!\n'
                'See https://docs.celeryq.dev/en/latest/userguide/tasks.html'
                '#avoid-launching-synchronous-subtasks')


def assert_will_not_block() -> None:
    """Raise ``RuntimeError`` when called from a task running in a worker."""
    task = _state.get_current_worker_task()
    if task is not None and not getattr(task.request, 'is_eager', False):
        raise RuntimeError(E_WOULDBLOCK)


class AsyncResult:
    """The result of one task, by id. Reading its state asks the backend."""

    def __init__(self, id: str, backend: Any = None, task_name: str | None = None,
                 app: Any = None, parent: 'AsyncResult | None' = None) -> None:
        if id is None:
            raise ValueError(f'AsyncResult requires a task id, got {id!r}')
        self.app = app if app is not None else _state.get_current_app()
        self.id = id
        self._backend = backend
        self.task_name = task_name
        self.parent = parent
        self._cache: dict[str, Any] | None = None
        self.on_ready: Any = None

    @property
    def backend(self) -> Any:
        return self._backend if self._backend is not None else self.app.backend

    @property
    def task_id(self) -> str:
        return self.id

    # --- waiting -------------------------------------------------------------------------------
    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
            no_ack: bool = True, follow_parents: bool = True, callback: Callable[..., Any] | None = None,
            on_message: Callable[..., Any] | None = None, on_interval: Callable[[], Any] | None = None,
            disable_sync_subtasks: bool = True, EXCEPTION_STATES: frozenset[str] = states.EXCEPTION_STATES,
            PROPAGATE_STATES: frozenset[str] = states.PROPAGATE_STATES) -> Any:
        """Wait for the task and return its result; re-raise its exception when it failed
        (``propagate``). ``TimeoutError`` when ``timeout`` seconds pass first."""
        if disable_sync_subtasks:
            assert_will_not_block()
        if follow_parents and propagate:
            for node in reversed(list(self._parents())):
                node.maybe_throw()
        if self._cache is None or self._cache['status'] not in states.READY_STATES:
            self._cache = self.backend.wait_for(self.id, timeout=timeout, interval=interval,
                                                on_interval=on_interval)
        meta = self._cache
        if self.on_ready is not None and meta['status'] in states.READY_STATES:
            on_ready, self.on_ready = self.on_ready, None
            on_ready(self)
        if on_message is not None:
            on_message(meta)
        if callback is not None:
            callback(self.id, meta['result'])
        if propagate and meta['status'] in PROPAGATE_STATES:
            raise self._exception(meta)
        return meta['result']

    wait = get

    def _parents(self) -> Iterator[Any]:
        node, seen = self.parent, set()
        while node is not None and id(node) not in seen:
            seen.add(id(node))
            yield node
            node = getattr(node, 'parent', None)

    def maybe_throw(self, propagate: bool = True) -> None:
        """Raise the task's exception if it failed (and ``propagate``)."""
        meta = self._get_task_meta()
        if propagate and meta['status'] in states.PROPAGATE_STATES:
            raise self._exception(meta)

    @staticmethod
    def _exception(meta: dict[str, Any]) -> BaseException:
        exc = meta['result']
        if isinstance(exc, BaseException):
            return exc
        return TaskRevokedError(meta['status']) if meta['status'] == states.REVOKED else Exception(exc)

    def then(self, callback: Callable[..., Any], on_error: Callable[..., Any] | None = None,
             weak: bool = False) -> Any:
        """Call ``callback(self)`` when this result is read ready by ``get()``/``wait()``
        (a vine promise; there is no background thread that resolves it by itself)."""
        self.on_ready = promise(callback, on_error=on_error)
        return self.on_ready

    # --- state ---------------------------------------------------------------------------------
    def _get_task_meta(self) -> dict[str, Any]:
        if self._cache is None or self._cache['status'] not in states.READY_STATES:
            meta = self.backend.get_task_meta(self.id)
            if meta['status'] in states.READY_STATES:
                self._cache = meta
            return meta
        return self._cache

    @property
    def state(self) -> str:
        return self._get_task_meta()['status']

    status = state

    @property
    def result(self) -> Any:
        """The return value, or the exception when the task failed (without raising it)."""
        return self._get_task_meta()['result']

    info = result

    @property
    def traceback(self) -> str | None:
        return self._get_task_meta().get('traceback')

    @property
    def date_done(self) -> Any:
        value = self._get_task_meta().get('date_done')
        return from_iso(value) if isinstance(value, str) else value

    @property
    def children(self) -> list[Any]:
        return [result_from_tuple(child, self.app) for child in self._get_task_meta().get('children') or []]

    def _meta_field(self, name: str) -> Any:
        return self._get_task_meta().get(name)

    name = property(lambda self: self._meta_field('name'))
    args = property(lambda self: self._meta_field('args'))
    kwargs = property(lambda self: self._meta_field('kwargs'))
    worker = property(lambda self: self._meta_field('worker'))
    retries = property(lambda self: self._meta_field('retries'))
    queue = property(lambda self: self._meta_field('queue'))

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def exists(self) -> bool:
        """True when the backend has a record of this task (any state but PENDING)."""
        return self.state != states.PENDING

    def forget(self) -> None:
        """Remove the stored result."""
        self._cache = None
        if self.parent is not None:
            self.parent.forget()
        self.backend.forget(self.id)

    def revoke(self, connection: Any = None, terminate: bool = False, signal: str | None = None,
               wait: bool = False, timeout: float | None = None) -> None:
        """Ask every worker not to run this task (and to kill it when ``terminate``)."""
        self.app.control.revoke(self.id, connection=connection, terminate=terminate, signal=signal,
                                reply=wait, timeout=timeout)

    def as_tuple(self) -> Any:
        parent = self.parent
        return (self.id, parent.as_tuple() if parent is not None else None), None

    def as_list(self) -> list[str]:
        return [self.id]

    def collect(self, intermediate: bool = False, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
        """Yield ``(result, value)`` for this result and its children, depth first."""
        value = self.get(**kwargs)
        yield self, value
        for child in self.children:
            yield from child.collect(intermediate=intermediate, **kwargs)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f'<{type(self).__name__}: {self.id}>'

    def __str__(self) -> str:
        return self.id

    def __reduce__(self) -> Any:
        return self.__class__, (self.id, None, self.task_name, None, self.parent)


class EagerResult(AsyncResult):
    """The result of a task applied in this process (``apply()`` or ``task_always_eager``)."""

    def __init__(self, id: str, ret_value: Any, state: str, traceback: str | None = None,
                 name: str | None = None, app: Any = None) -> None:
        super().__init__(id, app=app, task_name=name)
        self._result = ret_value
        self._state = state
        self._traceback = traceback
        self._cache = {'status': state, 'result': ret_value, 'traceback': traceback,
                       'task_id': id, 'children': [], 'date_done': None, 'name': name}

    def get(self, timeout: float | None = None, propagate: bool = True,  # type: ignore[override]
            disable_sync_subtasks: bool = True, **kwargs: Any) -> Any:
        if disable_sync_subtasks:
            assert_will_not_block()
        if self._state == states.SUCCESS:
            return self._result
        if self._state in states.PROPAGATE_STATES and propagate:
            raise self._exception(self._get_task_meta())
        return self._result

    wait = get  # type: ignore[assignment]

    def _get_task_meta(self) -> dict[str, Any]:
        return self._cache  # type: ignore[return-value]

    def forget(self) -> None:
        pass

    def revoke(self, *args: Any, **kwargs: Any) -> None:
        self._state = self._cache['status'] = states.REVOKED  # type: ignore[index]

    def __repr__(self) -> str:
        return f'<EagerResult: {self.id}>'


class ResultSet:
    """Several results, read together. ``get()``/``join()`` return values in order."""

    def __init__(self, results: Sequence[AsyncResult], app: Any = None, **kwargs: Any) -> None:
        self.app = app if app is not None else _state.get_current_app()
        self.results = list(results)

    @property
    def backend(self) -> Any:
        return self.app.backend

    def add(self, result: AsyncResult) -> None:
        if result not in self.results:
            self.results.append(result)

    def discard(self, result: AsyncResult) -> None:
        if result in self.results:
            self.results.remove(result)

    remove = discard

    def clear(self) -> None:
        self.results.clear()

    def _metas(self) -> list[dict[str, Any]]:
        flat = [r for r in self.results if not isinstance(r, ResultSet)]
        metas = self.backend.get_many_metas(r.id for r in flat) if flat else {}
        out = []
        for r in self.results:
            if isinstance(r, ResultSet):
                out.append({'status': states.SUCCESS if r.ready() and r.successful() else
                            states.FAILURE if r.ready() else states.PENDING})
            else:
                out.append(metas[r.id])
        return out

    def successful(self) -> bool:
        return all(m['status'] == states.SUCCESS for m in self._metas())

    def failed(self) -> bool:
        return any(m['status'] == states.FAILURE for m in self._metas())

    def waiting(self) -> bool:
        return any(m['status'] not in states.READY_STATES for m in self._metas())

    def ready(self) -> bool:
        return all(m['status'] in states.READY_STATES for m in self._metas())

    def completed_count(self) -> int:
        """How many of the results are SUCCESS."""
        return sum(m['status'] == states.SUCCESS for m in self._metas())

    def maybe_throw(self, propagate: bool = True) -> None:
        for r in self.results:
            if isinstance(r, ResultSet):
                r.maybe_throw(propagate)
        for meta in self._metas():
            if propagate and meta['status'] in states.PROPAGATE_STATES and 'result' in meta:
                raise AsyncResult._exception(meta)

    def forget(self) -> None:
        for r in self.results:
            r.forget()

    def revoke(self, connection: Any = None, terminate: bool = False, signal: str | None = None,
               wait: bool = False, timeout: float | None = None) -> None:
        self.app.control.revoke([r.id for r in self.results], connection=connection,
                                terminate=terminate, signal=signal, reply=wait, timeout=timeout)

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
            callback: Callable[..., Any] | None = None, no_ack: bool = True, on_message: Any = None,
            disable_sync_subtasks: bool = True, on_interval: Any = None) -> list[Any]:
        """The results' values in order (see ``join``)."""
        return self.join(timeout=timeout, propagate=propagate, interval=interval, callback=callback,
                         disable_sync_subtasks=disable_sync_subtasks, on_interval=on_interval)

    def join(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
             callback: Callable[..., Any] | None = None, no_ack: bool = True, on_message: Any = None,
             disable_sync_subtasks: bool = True, on_interval: Any = None) -> list[Any]:
        """Wait for every result in order; ``timeout`` bounds the whole wait."""
        if disable_sync_subtasks:
            assert_will_not_block()
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for r in self.results:
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError('join operation timed out')
            value = r.get(timeout=remaining, propagate=propagate, interval=interval,
                          disable_sync_subtasks=False, on_interval=on_interval)
            if callback is not None and not isinstance(r, ResultSet):
                callback(r.id, value)
            else:
                values.append(value)
        return values

    join_native = join

    def iter_native(self, timeout: float | None = None, interval: float = 0.5) -> Iterator[tuple[str, Any]]:
        for r in self.results:
            yield r.id, r.backend.wait_for(r.id, timeout=timeout, interval=interval)

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult]:
        return iter(self.results)

    def __getitem__(self, index: int) -> AsyncResult:
        return self.results[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ResultSet):
            return other.results == self.results
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f'<{type(self).__name__}: [{", ".join(r.id for r in self.results)}]>'

    @property
    def supports_native_join(self) -> bool:
        return bool(getattr(self.backend, 'supports_native_join', False))


class GroupResult(ResultSet):
    """The results of a group, with the group's id; ``save()``/``restore()`` keep it in the backend."""

    def __init__(self, id: str | None = None, results: Sequence[AsyncResult] | None = None,
                 parent: AsyncResult | None = None, app: Any = None, **kwargs: Any) -> None:
        super().__init__(results or [], app=app)
        self.id = id
        self.parent = parent

    @property
    def children(self) -> list[AsyncResult]:
        return self.results

    def save(self, backend: Any = None) -> 'GroupResult':
        """Store the group so ``GroupResult.restore(id)`` finds it."""
        return (backend or self.backend).save_group(self.id, self)

    def delete(self, backend: Any = None) -> None:
        (backend or self.backend).delete_group(self.id)

    @classmethod
    def restore(cls, id: str, backend: Any = None, app: Any = None) -> 'GroupResult | None':
        app = app if app is not None else _state.get_current_app()
        meta = (backend or app.backend).restore_group(id)
        if meta is None:
            return None
        restored = result_from_tuple(meta['result'], app)
        return restored if isinstance(restored, GroupResult) else None

    def as_tuple(self) -> Any:
        parent = self.parent.as_tuple() if self.parent is not None else None
        return (self.id, parent), [r.as_tuple() for r in self.results]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GroupResult):
            return other.id == self.id and other.results == self.results
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f'<GroupResult: {self.id} [{", ".join(r.id for r in self.results)}]>'


def result_from_tuple(value: Any, app: Any = None) -> Any:
    """Rebuild an ``AsyncResult`` or ``GroupResult`` from its ``as_tuple()`` form."""
    if isinstance(value, (AsyncResult, ResultSet)) or value is None:
        return value
    app = app if app is not None else _state.get_current_app()
    head, nodes = value
    id_, parent = head if isinstance(head, (list, tuple)) else (head, None)
    parent_result = result_from_tuple(parent, app) if parent else None
    if nodes is not None:
        return GroupResult(id_, [result_from_tuple(child, app) for child in nodes],
                           parent=parent_result, app=app)
    return AsyncResult(id_, app=app, parent=parent_result)

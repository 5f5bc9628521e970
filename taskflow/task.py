"""``Task``: what ``@app.task`` returns. Calling API (``delay``, ``apply_async``, ``apply``,
``retry``, signatures) and the hooks a task class may override.

Options left ``None`` on the class are read from ``app.conf`` when used (``acks_late`` ->
``task_acks_late``, ...), so configuring the app after defining tasks works.
"""
from __future__ import annotations

import inspect
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Callable, Iterable

import taskflow._state as _state
import taskflow.states as states
from .canvas import Signature, chunks, signature, xmap, xstarmap
from .exceptions import MaxRetriesExceededError, NotRegistered, Retry
from .protocol import Context, new_id
from .result import EagerResult
from .tracer import trace_task

__all__ = ['Task', 'shared_task']

# Message headers that describe the message itself; never copied into a retry's extra headers.
_PROTOCOL_HEADERS = frozenset({
    'lang', 'task', 'id', 'shadow', 'eta', 'expires', 'group', 'group_index', 'retries',
    'timelimit', 'root_id', 'parent_id', 'argsrepr', 'kwargsrepr', 'origin', 'ignore_result',
    'replaced_task_nesting', 'stamped_headers', 'stamps', 'compression'})


class _FromConf:
    """A task option that falls back to an app setting while the class leaves it unset."""

    def __init__(self, setting: str) -> None:
        self.setting = setting

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, task: Any, owner: type) -> Any:
        if task is None:
            return None
        if self.name in task.__dict__:
            return task.__dict__[self.name]
        return task.app.conf[self.setting]

    def __set__(self, task: Any, value: Any) -> None:
        task.__dict__[self.name] = value


_default_request = Context(called_directly=True)


class Task:
    """A task type. Subclass it (``base=``) to share options and hooks between tasks."""

    #: The app this task belongs to (set when it is created by ``app.task``).
    app: Any = None
    #: Registered name (``module.function`` unless given).
    name: str = None  # type: ignore[assignment]
    #: Check call arguments against the function signature when sending.
    typing = True
    max_retries: int | None = 3
    default_retry_delay: float = 3 * 60
    #: Options read from the configuration unless set on the class or in ``@app.task(...)``.
    serializer = _FromConf('task_serializer')
    compression = _FromConf('task_compression')
    rate_limit = _FromConf('task_default_rate_limit')
    priority = _FromConf('task_default_priority')
    track_started = _FromConf('task_track_started')
    acks_late = _FromConf('task_acks_late')
    acks_on_failure_or_timeout = _FromConf('task_acks_on_failure_or_timeout')
    reject_on_worker_lost = _FromConf('task_reject_on_worker_lost')
    ignore_result = _FromConf('task_ignore_result')
    store_errors_even_if_ignored = _FromConf('task_store_errors_even_if_ignored')
    store_eager_result = _FromConf('task_store_eager_result')
    time_limit = _FromConf('task_time_limit')
    soft_time_limit = _FromConf('task_soft_time_limit')
    queue: str | None = None
    routing_key: str | None = None
    exchange: str | None = None
    expires: Any = None
    send_events = True
    trail = True
    throws: tuple[type[BaseException], ...] = ()
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = {}
    retry_backoff: bool | float = False
    retry_backoff_max = 600
    retry_jitter = True
    resultrepr_maxsize = 1024
    abstract = True

    _request_var: ContextVar[Context | None]
    _signature_cache: inspect.Signature | None = None
    _positional_counts: tuple[float, float] = (0, 0)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in list(cls.__dict__.items()):
            # `acks_late = None` on a subclass means "ask the configuration", as on Task itself.
            if value is None and isinstance(Task.__dict__.get(name), _FromConf):
                delattr(cls, name)
        cls._request_var = ContextVar(f'request:{cls.__qualname__}', default=None)
        cls._signature_cache = None

    # --- running -----------------------------------------------------------------------------
    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The task body (replaced by the decorated function)."""
        raise NotImplementedError('Tasks must define the run method.')

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the body here and now, as a plain function call.

        Outside a worker ``self.request`` is then a ``called_directly`` one; when the tracer
        calls a subclass's own ``__call__`` the worker's request stays in place.
        """
        token_task = _state.current_task_var.set(self)
        try:
            return self.run(*args, **kwargs)
        finally:
            _state.current_task_var.reset(token_task)

    __call__.plain_call = True  # type: ignore[attr-defined]  # the tracer calls run() directly

    @property
    def request(self) -> Context:
        """The request of the run in progress (a ``called_directly`` one outside a run)."""
        return self._request_var.get() or _default_request

    @property
    def backend(self) -> Any:
        return self.app.backend

    # --- sending -----------------------------------------------------------------------------
    def delay(self, *args: Any, **kwargs: Any) -> Any:
        """``apply_async(args, kwargs)``."""
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
                    task_id: str | None = None, producer: Any = None, link: Any = None,
                    link_error: Any = None, shadow: str | None = None, **options: Any) -> Any:
        """Send this task to a worker; returns an ``AsyncResult``.

        Runs it here instead (returning an ``EagerResult``) when ``task_always_eager`` is set.
        """
        if args is not None and not isinstance(args, (list, tuple)):
            raise TypeError(f'{self.name}: args must be a list or tuple, not {type(args).__name__}')
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f'{self.name}: kwargs must be a dict, not {type(kwargs).__name__}')
        args = tuple(args) if args is not None else ()
        kwargs = dict(kwargs) if kwargs is not None else {}
        if self.typing:
            self._check_arguments(args, kwargs)
        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, task_id=task_id or new_id(), link=link,
                              link_error=link_error, **options)
        for key in ('queue', 'routing_key', 'exchange', 'expires', 'priority', 'time_limit',
                    'soft_time_limit', 'serializer', 'compression'):
            if key not in options:
                value = getattr(self, key)
                if value is not None:
                    options[key] = value
        if 'ignore_result' not in options and self.ignore_result:
            options['ignore_result'] = True
        return app.send_task(self.name, args, kwargs, task_id=task_id, producer=producer,
                             link=link, link_error=link_error, shadow=shadow, task_type=self, **options)

    def _check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cls = type(self)
        sig = cls._signature_cache
        if sig is None:
            try:
                sig = inspect.signature(self.run)
            except (TypeError, ValueError):
                return
            cls._signature_cache, cls._positional_counts = sig, _positional_counts(sig)
        if not kwargs:  # the common call: positional arguments only, counted without bind()
            low, high = cls._positional_counts
            if low <= len(args) <= high:
                return
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f'{self.name}: {exc}') from None

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              link: Any = None, link_error: Any = None, task_id: str | None = None,
              retries: int | None = None, throw: bool | None = None, **options: Any) -> EagerResult:
        """Run the task in this process through the same tracer as a worker; returns an
        ``EagerResult``. Exceptions propagate when ``throw`` (or ``task_eager_propagates``)."""
        task_id = task_id or new_id()
        request = Context(
            id=task_id, name=self.name, args=list(args or ()), kwargs=dict(kwargs or {}),
            retries=retries or 0, is_eager=True, called_directly=False,
            callbacks=_as_list(link), errbacks=_as_list(link_error),
            root_id=options.get('root_id') or task_id, parent_id=options.get('parent_id'),
            group=options.get('group_id'), group_index=options.get('group_index'),
            chord=options.get('chord'), chain=options.get('chain'), headers=options.get('headers'),
            delivery_info={'is_eager': True, 'priority': options.get('priority')},
            hostname=None, ignore_result=options.get('ignore_result', False), eta=None, expires=None)
        outcome = trace_task(self, request, eager=True)
        retval = outcome.retval
        if isinstance(retval, Retry) and retval.sig is not None:
            return retval.sig.apply(retries=(retries or 0) + 1)
        throw = self.app.conf.task_eager_propagates if throw is None else throw
        if throw and outcome.state == states.FAILURE:
            raise retval
        return EagerResult(task_id, retval, outcome.state, traceback=outcome.traceback,
                           name=self.name, app=self.app)

    def retry(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              exc: BaseException | None = None, throw: bool = True, eta: datetime | None = None,
              countdown: float | None = None, max_retries: int | None = None, **options: Any) -> Retry:
        """Send this task again (same id, ``retries + 1``) and end this run with ``Retry``.

        Past ``max_retries`` it raises ``exc`` when given, else ``MaxRetriesExceededError``.
        """
        request = self.request
        retries = request.retries + 1
        if request.called_directly:
            # Called as a plain function: nothing to re-send; surface the cause (Celery's behaviour).
            raise exc if exc is not None else Retry('Task can be retried', None)
        max_retries = self.max_retries if max_retries is None else max_retries
        if max_retries is not None and retries > max_retries:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} kwargs:{request.kwargs}",
                task_args=request.args, task_kwargs=request.kwargs)
        if eta is None and countdown is None:
            countdown = self.default_retry_delay
        sig = self.signature_from_request(request, args, kwargs, countdown=countdown, eta=eta,
                                          retries=retries, **options)
        ret = Retry(exc=exc, when=eta or countdown, is_eager=bool(request.is_eager), sig=sig)
        if not request.is_eager:
            sig.apply_async()
        if throw:
            raise ret
        return ret

    def signature_from_request(self, request: Context | None = None, args: Any = None, kwargs: Any = None,
                               queue: str | None = None, **extra_options: Any) -> Signature:
        """A signature that re-sends the run described by ``request`` (used by ``retry``)."""
        request = request or self.request
        hard, soft = request.timelimit or (None, None)
        headers = {k: v for k, v in (request.headers or {}).items() if k not in _PROTOCOL_HEADERS}
        options: dict[str, Any] = {
            'task_id': request.id, 'root_id': request.root_id, 'parent_id': request.parent_id,
            'group_id': request.group, 'group_index': request.group_index, 'shadow': request.shadow,
            'chord': request.chord, 'chain': request.chain, 'link': request.callbacks,
            'link_error': request.errbacks, 'expires': request.expires, 'time_limit': hard,
            'soft_time_limit': soft, 'reply_to': request.reply_to,
            'replaced_task_nesting': request.replaced_task_nesting, 'headers': headers or None,
        }
        delivery = request.delivery_info or {}
        if delivery.get('priority') is not None:
            options['priority'] = delivery['priority']
        if queue:
            options['queue'] = queue
        elif delivery.get('routing_key'):
            options['exchange'] = delivery.get('exchange') or ''
            options['routing_key'] = delivery['routing_key']
        options.update(extra_options)
        args = request.args if args is None else args
        kwargs = request.kwargs if kwargs is None else kwargs
        return self.signature(args, kwargs, options=options, type=self)

    # --- signatures --------------------------------------------------------------------------
    def signature(self, args: Any = None, *starargs: Any, **starkwargs: Any) -> Signature:
        """``signature(self, args, kwargs, options)``: a call of this task as a dict."""
        starkwargs.setdefault('app', self.app)
        return signature(self, args, *starargs, **starkwargs)

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature with these arguments (``add.s(2)``: a partial that takes more)."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: it ignores the parent's result in a chain or callback."""
        return self.signature(args, kwargs, immutable=True)

    def map(self, it: Iterable[Any]) -> Any:
        """One message running this task for every item: ``task.map([1, 2])``."""
        return xmap(self.s(), it, app=self.app)

    def starmap(self, it: Iterable[Any]) -> Any:
        """One message running ``task(*item)`` for every item."""
        return xstarmap(self.s(), it, app=self.app)

    def chunks(self, it: Iterable[Any], n: int) -> Any:
        """The items in chunks of ``n``, one ``starmap`` message per chunk."""
        return chunks(self.s(), it, n, app=self.app)

    def AsyncResult(self, task_id: str, **kwargs: Any) -> Any:
        return self.app.AsyncResult(task_id, task_name=self.name, **kwargs)

    def update_state(self, task_id: str | None = None, state: str | None = None, meta: Any = None,
                     **kwargs: Any) -> None:
        """Store a custom state (for example ``PROGRESS`` with ``{'current': 1, 'total': 2}``)."""
        request = self.request
        self.backend.store_result(task_id or request.id, meta, state or states.SUCCESS,
                                  request=request if request.id else None)

    def send_event(self, type_: str, retry: bool = True, retry_policy: Any = None, **fields: Any) -> None:
        """Send a custom event about this task (needs events enabled on the worker)."""
        self.app.send_event(type_, uuid=self.request.id, **fields)

    def add_to_chord(self, sig: Any, lazy: bool = False) -> Any:
        raise NotImplementedError('add_to_chord needs a backend with a native chord join')

    # --- hooks -------------------------------------------------------------------------------
    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        """Called in the worker after the task succeeded."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Called in the worker after the task failed."""

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Called in the worker when the task is to be retried."""

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Called in the worker after any run."""

    def __repr__(self) -> str:
        return f'<@task: {self.name} of {getattr(self.app, "main", None)}>'

    def __reduce__(self) -> Any:
        # Tasks pickle by name: the receiving process finds them in its own registry.
        return _task_by_name, (self.name,)


Task._request_var = ContextVar('request:Task', default=None)


def _task_by_name(name: str) -> Task:
    app = _state.get_current_app()
    try:
        return app.tasks[name]
    except KeyError:
        raise NotRegistered(name) from None


def _positional_counts(sig: inspect.Signature) -> tuple[float, float]:
    """How many positional arguments alone satisfy ``sig``: (fewest, most). (inf, 0) when a
    keyword-only parameter is required, so that such calls always go through ``bind``."""
    kinds = inspect.Parameter
    low, high = 0, 0.0
    for param in sig.parameters.values():
        if param.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD):
            high += 1
            if param.default is param.empty:
                low += 1
        elif param.kind is kinds.VAR_POSITIONAL:
            high = float('inf')
        elif param.kind is kinds.KEYWORD_ONLY and param.default is param.empty:
            return float('inf'), 0
    return low, high


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    return list(value) if isinstance(value, (list, tuple)) else [value]


def make_task_class(app: Any, fun: Callable[..., Any], base: type[Task], name: str, bind: bool,
                    options: dict[str, Any]) -> Task:
    """Make the ``Task`` subclass for ``fun`` and return its one instance."""
    run = fun if bind else staticmethod(fun)
    attrs = {'app': app, 'name': name, 'run': run, '_decorated': True, '__doc__': fun.__doc__,
             '__module__': fun.__module__, '__wrapped__': staticmethod(fun), '__qualname__': fun.__qualname__,
             **options}
    cls = type(fun.__name__, (base,), attrs)
    return cls()


class _CurrentApp:
    """``task.app`` of a shared task: the current app, looked up on each use."""

    def __get__(self, task: Any, owner: type) -> Any:
        return _state.get_current_app()


def shared_task(*args: Any, **options: Any) -> Any:
    """``@shared_task``: a task for whichever app is current, usable from reusable modules.

    Every app, made before or after, registers it; ``task.app`` is the current app.
    """
    def create(fun: Callable[..., Any]) -> Task:
        name = options.get('name') or f'{fun.__module__}.{fun.__name__}'
        task_options = {k: v for k, v in options.items() if k != 'name'}

        def register(app: Any) -> None:
            app._task_from_fun(fun, name=name, **task_options)

        _state.connect_on_app_finalize(register)
        # The object returned follows whichever app is current when it is used (Celery returns a
        # proxy to current_app.tasks[name]); each app's registry holds its own bound copy.
        options_for_class = {k: v for k, v in task_options.items() if k not in ('base', 'bind')}
        return make_task_class(_CurrentApp(), fun, task_options.get('base') or Task, name,
                               bool(task_options.get('bind')), options_for_class)

    if len(args) == 1 and callable(args[0]) and not options:
        return create(args[0])
    return create

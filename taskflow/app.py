"""``Taskflow`` (also importable as ``Celery``): configuration, the task registry, the
``@app.task`` decorator, ``send_task`` and result factories.

``@app.task`` returns the real ``Task`` at once; there is no finalize step and no proxy.
"""
from __future__ import annotations

import importlib
import logging
import os
import threading
from datetime import datetime, timezone as dt_timezone
from functools import cached_property
from typing import Any, Callable, Iterable
from zoneinfo import ZoneInfo

import taskflow._state as _state
import taskflow.signals as signals
from .backends import by_url
from .broker import Broker
from .canvas import register_builtin_tasks
from .config import Settings, result_backend_url
from .control import Control
from .events import EventDispatcher
from .exceptions import ImproperlyConfigured, NotRegistered
from .protocol import task_message, from_iso, new_id, utcnow
from .result import AsyncResult, GroupResult
from .task import Task as BaseTask, make_task_class

__all__ = ['Taskflow', 'TaskRegistry']

logger = logging.getLogger(__name__)


class TaskRegistry(dict):
    """Task name -> ``Task``; a missing name raises ``NotRegistered``."""

    def __missing__(self, name: str) -> BaseTask:
        raise NotRegistered(name)

    def register(self, task: BaseTask | type[BaseTask]) -> BaseTask:
        instance = task() if isinstance(task, type) else task
        self[instance.name] = instance
        return instance

    def unregister(self, name: str | BaseTask) -> None:
        try:
            del self[name if isinstance(name, str) else name.name]
        except KeyError:
            raise NotRegistered(name) from None

    def regular(self) -> dict[str, BaseTask]:
        return dict(self)


class Taskflow:
    """A taskflow application: one configuration, one set of tasks."""

    #: Base class of tasks made by ``@app.task`` (``base=`` overrides it per task).
    Task: type[BaseTask] = BaseTask

    def __init__(self, main: str | None = None, broker: str | None = None, backend: str | None = None,
                 include: Iterable[str] | None = None, config_source: Any = None,
                 set_as_current: bool = True, task_cls: type[BaseTask] | str | None = None,
                 namespace: str | None = None, **settings: Any) -> None:
        self.main = main
        self.namespace = namespace
        self.conf = Settings()
        self.tasks = TaskRegistry()
        self.broker = Broker(self)
        self._autodiscover: list[tuple[Any, str]] = []
        self._events_lock = threading.Lock()
        self._sent_events: Any = None
        if task_cls is not None:
            self.Task = task_cls if isinstance(task_cls, type) else _import_attr(task_cls)
        if config_source is not None:
            self.config_from_object(config_source, namespace=namespace)
        if broker:
            self.conf.broker_url = broker
        if backend:
            self.conf.result_backend = backend
        if include:
            self.conf.include = tuple(include)
        if settings:
            self.conf.update(settings)
        register_builtin_tasks(self)
        if set_as_current:
            _state.set_current_app(self)
        _state.register_app(self)

    # --- configuration ------------------------------------------------------------------------
    def config_from_object(self, obj: Any, silent: bool = False, force: bool = False,
                           namespace: str | None = None) -> None:
        """Read settings from a module, object, dict or import path (see ``Settings.from_object``)."""
        self.conf.from_object(obj, namespace=namespace or self.namespace, silent=silent)
        self._reset_clients()

    def config_from_envvar(self, variable_name: str, silent: bool = False, force: bool = False) -> bool:
        """``config_from_object`` with the import path held in environment variable ``variable_name``."""
        module_name = os.environ.get(variable_name)
        if not module_name:
            if silent:
                return False
            raise ImproperlyConfigured(f'The environment variable {variable_name!r} is not set, '
                                       'and has to be set to a module name.')
        self.config_from_object(module_name, silent=silent)
        return True

    def _reset_clients(self) -> None:
        self.__dict__.pop('backend', None)
        self.broker = Broker(self)
        with self._events_lock:
            if self._sent_events is not None:
                self._sent_events.close()
            self._sent_events = None

    @property
    def timezone(self) -> Any:
        if not self.conf.timezone:
            return dt_timezone.utc
        return ZoneInfo(self.conf.timezone)

    def now(self) -> datetime:
        """The current time, aware, in the app's time zone (UTC unless ``timezone`` is set)."""
        return datetime.now(self.timezone)

    def uuid(self) -> str:
        return new_id()

    # --- tasks --------------------------------------------------------------------------------
    def task(self, *args: Any, **options: Any) -> Any:
        """``@app.task`` or ``@app.task(name=..., bind=True, base=..., **task_attributes)``."""
        if len(args) == 1 and callable(args[0]) and not options:
            return self._task_from_fun(args[0])
        if args:
            raise TypeError('@app.task takes keyword arguments only, as in @app.task(bind=True)')

        def decorate(fun: Callable[..., Any]) -> BaseTask:
            return self._task_from_fun(fun, **options)
        return decorate

    def _task_from_fun(self, fun: Callable[..., Any], name: str | None = None, base: type[BaseTask] | None = None,
                       bind: bool = False, **options: Any) -> BaseTask:
        name = name or self.gen_task_name(fun.__name__, fun.__module__)
        existing = self.tasks.get(name)
        if existing is not None and getattr(existing, '__wrapped__', None) is fun:
            return existing
        task = make_task_class(self, fun, base or self.Task, name, bind, options)
        self._annotate(task)
        self.tasks[name] = task
        return task

    def _annotate(self, task: BaseTask) -> None:
        """Apply ``task_annotations``: ``{name or '*': {attribute: value}}``, or callables
        ``(task) -> {attribute: value} | None``, in order."""
        annotations = self.conf.task_annotations
        if not annotations:
            return
        for entry in annotations if isinstance(annotations, (list, tuple)) else [annotations]:
            if callable(entry):
                found = entry(task)
            else:
                found = entry.get(task.name) or entry.get('*')
            for attr, value in (found or {}).items():
                setattr(task, attr, value)

    def gen_task_name(self, name: str, module: str) -> str:
        """``module.name``; a task defined in ``__main__`` takes the app's ``main`` as module."""
        if module == '__main__' and self.main:
            module = self.main
        return f'{module}.{name}'

    def register_task(self, task: BaseTask | type[BaseTask]) -> BaseTask:
        """Register a class-based task (an instance or the class)."""
        instance = task() if isinstance(task, type) else task
        if instance.app is None:
            instance.app = self
        if not instance.name:
            cls = type(instance)
            instance.name = self.gen_task_name(cls.__name__, cls.__module__)
        self.tasks[instance.name] = instance
        return instance

    def autodiscover_tasks(self, packages: Iterable[str] | Callable[[], Iterable[str]] | None = None,
                           related_name: str = 'tasks', force: bool = False) -> None:
        """Import ``<package>.tasks`` for each package: now when ``force``, else when a worker
        starts (``import_modules``)."""
        self._autodiscover.append((packages or (), related_name))
        if force:
            self._import_autodiscovered()

    def _import_autodiscovered(self) -> None:
        pending, self._autodiscover = self._autodiscover, []
        for packages, related_name in pending:
            for package in (packages() if callable(packages) else packages):
                try:
                    importlib.import_module(f'{package}.{related_name}')
                except ModuleNotFoundError as exc:
                    if exc.name != f'{package}.{related_name}':
                        raise

    def import_modules(self) -> None:
        """Import ``imports``, ``include`` and autodiscovered modules (the worker does this)."""
        signals.import_modules.send(sender=self)
        for module in (*self.conf.imports, *self.conf.include):
            importlib.import_module(module)
        self._import_autodiscovered()

    # --- sending ------------------------------------------------------------------------------
    def send_task(self, name: str, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
                  countdown: float | None = None, eta: datetime | str | None = None, task_id: str | None = None,
                  producer: Any = None, connection: Any = None, router: Any = None,
                  result_cls: Any = None, expires: Any = None, link: Any = None, link_error: Any = None,
                  add_to_parent: bool = True, group_id: str | None = None, group_index: int | None = None,
                  retries: int = 0, chord: Any = None, reply_to: str | None = None,
                  time_limit: float | None = None, soft_time_limit: float | None = None,
                  root_id: str | None = None, parent_id: str | None = None, route_name: str | None = None,
                  shadow: str | None = None, chain: Any = None, task_type: Any = None,
                  replaced_task_nesting: int = 0, headers: dict[str, Any] | None = None,
                  ignore_result: bool = False, argsrepr: str | None = None, kwargsrepr: str | None = None,
                  stamped_headers: Any = None, stamps: Any = None, **options: Any) -> AsyncResult:
        """Send task ``name`` by name (it need not be registered here); returns an ``AsyncResult``."""
        task_id = task_id or new_id()
        parent = _state.get_current_worker_task()
        if parent is not None:
            request = parent.request
            root_id = root_id or request.root_id or request.id
            parent_id = parent_id or request.id
            if self.conf.task_inherit_parent_priority and 'priority' not in options:
                priority = (request.delivery_info or {}).get('priority')
                if priority is not None:
                    options['priority'] = priority
        options = self.broker.router.route(options, route_name or name, args, kwargs, task_type)
        if expires is not None:
            options['expiration'] = self._expiration_seconds(task_id, expires)
        msg_headers, properties, body = task_message(
            name, task_id, tuple(args) if args is not None else (), kwargs,
            countdown=countdown, eta=eta, expires=expires, group_id=group_id, group_index=group_index,
            retries=retries, chord=chord, callbacks=_sig_list(link), errbacks=_sig_list(link_error),
            chain=chain, reply_to=reply_to, time_limit=time_limit, soft_time_limit=soft_time_limit,
            root_id=root_id, parent_id=parent_id, shadow=shadow, argsrepr=argsrepr,
            kwargsrepr=kwargsrepr, ignore_result=ignore_result,
            replaced_task_nesting=replaced_task_nesting, stamped_headers=stamped_headers, stamps=stamps)
        if headers:
            msg_headers.update(headers)
        options.pop('task_id', None)
        if producer is None and connection is not None:
            producer = connection.Producer()
        self.broker.publish_task(name, msg_headers, properties, body, producer=producer, **options)
        if self.conf.task_send_sent_event:
            queue = options.get('queue')
            self.send_event(
                'task-sent', uuid=msg_headers['id'], root_id=msg_headers['root_id'],
                parent_id=msg_headers['parent_id'], name=name, args=msg_headers['argsrepr'],
                kwargs=msg_headers['kwargsrepr'], retries=retries, eta=msg_headers['eta'],
                expires=msg_headers['expires'], queue=getattr(queue, 'name', queue),
                exchange=options.get('exchange') or '',
                routing_key=options.get('routing_key') or getattr(queue, 'routing_key', None))
        result = (result_cls or AsyncResult)(task_id, app=self, task_name=name)
        if add_to_parent and parent is not None and parent.request.id:
            parent.request.children.append(result)
        return result

    def send_event(self, type_: str, **fields: Any) -> None:
        """Send one event (``task-sent``, custom ``Task.send_event`` ones) on this process's
        event connection, made on first use."""
        with self._events_lock:
            if self._sent_events is None:
                self._sent_events = EventDispatcher(self)
            self._sent_events.send(type_, **fields)

    def _expiration_seconds(self, task_id: str, expires: Any) -> float:
        if isinstance(expires, (int, float)):
            return float(expires)
        if hasattr(expires, 'total_seconds'):
            return expires.total_seconds()
        remaining = (from_iso(expires) - utcnow()).total_seconds()  # type: ignore[operator]
        if remaining < 0:
            logger.warning('Task %s has an expiry in the past (%.1fs ago); it will expire on arrival.',
                           task_id, -remaining)
            return 0.0
        return remaining

    @cached_property
    def control(self) -> Any:
        """Remote control of workers: ``app.control.revoke(id)``, ``app.control.inspect().active()``."""
        return Control(self)

    # --- periodic tasks (beat) -----------------------------------------------------------------
    @cached_property
    def on_after_configure(self) -> signals.Signal:
        """Sent once by beat, before it reads the schedule, as ``receiver(sender=app,
        source=app.conf)``: the place to call ``sender.add_periodic_task(...)``."""
        return signals.Signal('app.on_after_configure')

    @cached_property
    def on_after_finalize(self) -> signals.Signal:
        """Sent once by beat, right after ``on_after_configure``, as ``receiver(sender=app)``."""
        return signals.Signal('app.on_after_finalize')

    def add_periodic_task(self, schedule: Any, sig: Any, args: Iterable[Any] = (), kwargs: Any = (),
                          name: str | None = None, **opts: Any) -> str:
        """Add a beat entry to ``conf.beat_schedule``: run signature ``sig`` (or a task, or a task
        name) on ``schedule`` (seconds, ``timedelta``, ``crontab``, ``solar``). ``args`` and
        ``kwargs`` are merged into the signature's; ``opts`` are sending options (``queue``,
        ``expires``, ...; ``relative=True`` goes to the schedule). The entry is keyed by ``name``,
        by default the signature's repr, so adding the same call twice keeps one entry.
        Returns the key."""
        relative = bool(opts.pop('relative', False))
        options = dict(opts.pop('options', None) or {}, **opts)
        if hasattr(sig, 'clone'):
            sig = sig.clone(tuple(args or ()), dict(kwargs or {}))
            task_name, call_args, call_kwargs = sig['task'], tuple(sig['args']), dict(sig['kwargs'])
            options = dict(sig['options'], **options)
            key = name or repr(sig)
        else:
            task_name = sig if isinstance(sig, str) else sig.name
            call_args, call_kwargs = tuple(args or ()), dict(kwargs or {})
            shown = [repr(a) for a in call_args] + [f'{k}={v!r}' for k, v in call_kwargs.items()]
            key = name or f'{task_name}({", ".join(shown)})'  # a signature's repr
        entry: dict[str, Any] = {'task': task_name, 'schedule': schedule, 'args': call_args,
                                 'kwargs': call_kwargs, 'options': options}
        if relative:
            entry['relative'] = True
        beat_schedule = dict(self.conf.beat_schedule or {})  # never mutate the shared default
        beat_schedule[key] = entry
        self.conf.beat_schedule = beat_schedule
        return key

    # --- results ------------------------------------------------------------------------------
    @cached_property
    def backend(self) -> Any:
        """The result backend in use (``config.result_backend_url``), made once per app and process."""
        return by_url(self, result_backend_url(self.conf))

    def AsyncResult(self, id: str, backend: Any = None, task_name: str | None = None,
                    parent: Any = None) -> AsyncResult:
        return AsyncResult(id, backend=backend, task_name=task_name, app=self, parent=parent)

    def GroupResult(self, id: str | None = None, results: Any = None, **kwargs: Any) -> GroupResult:
        return GroupResult(id, results, app=self, **kwargs)

    # --- broker ---------------------------------------------------------------------------
    def connection(self, url: str | None = None, **kwargs: Any) -> Any:
        """A new kombu connection to the broker (the caller closes it)."""
        return self.broker.connection(url, **kwargs)

    broker_connection = connection

    def connection_for_write(self, url: str | None = None, **kwargs: Any) -> Any:
        return self.broker.connection(url or self.conf.broker_write_url, **kwargs)

    def connection_for_read(self, url: str | None = None, **kwargs: Any) -> Any:
        return self.broker.connection(url or self.conf.broker_read_url, **kwargs)

    @property
    def pool(self) -> Any:
        return self.broker.pool

    @property
    def producer_pool(self) -> Any:
        return self.broker.producer_pool

    def close(self) -> None:
        """Release pooled connections and the backend's clients."""
        if 'backend' in self.__dict__:
            self.backend.close()
        self.broker.close()
        self._reset_clients()

    # --- running ------------------------------------------------------------------------------
    def worker_main(self, argv: list[str] | None = None) -> None:
        """Run ``taskflow worker`` for this app with ``argv`` options."""
        self.start(['worker', *(argv or [])[1 if argv and argv[0] == 'worker' else 0:]])

    def start(self, argv: list[str] | None = None) -> None:
        """Run the ``taskflow`` command line for this app."""
        from .cli import main  # noqa: PLC0415 - the CLI is a higher layer, used only here
        main(argv, app=self)

    def __repr__(self) -> str:
        return f'<Taskflow {self.main or "__main__"} at {id(self):#x}>'

    def __reduce__(self) -> Any:
        return _current_app_for_unpickle, ()


def _current_app_for_unpickle() -> Any:
    return _state.get_current_app()


def _sig_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _import_attr(path: str) -> Any:
    module, _, attr = path.replace(':', '.').rpartition('.')
    return getattr(importlib.import_module(module), attr)

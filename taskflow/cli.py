"""The ``taskflow`` command line (click): ``taskflow [-A APP] VERB [OPTIONS]``.

``-A/--app`` is accepted before and after the verb. Every failure the user can cause (a bad
``-A`` path, bad JSON arguments, an unreachable broker) ends with one ``Error: ...`` line and
a non-zero exit status.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any, Callable

import click

from . import __version__
from .app import Taskflow
from .exceptions import AppLoadError, ImproperlyConfigured

__all__ = ['main', 'cli', 'load_app']


def load_app(path: str) -> Taskflow:
    """Find the app named by ``-A``: ``pkg.mod:app``, ``pkg.mod.app``, or a module holding
    an app (as ``app`` or ``celery``, or any ``Taskflow`` attribute), or its ``celery`` submodule."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = path.partition(':')
    try:
        found = _import_target(module_name, attr)
    except AppLoadError:
        raise
    except Exception as exc:
        raise AppLoadError(f"Unable to load app {path!r}: {type(exc).__name__}: {exc}") from exc
    app = _app_in(found)
    if app is None and not attr and isinstance(found, type(sys)):
        try:
            app = _app_in(importlib.import_module(f'{found.__name__}.celery'))
        except ModuleNotFoundError:
            app = None
    if app is None:
        raise AppLoadError(f'Unable to load app {path!r}: no taskflow app found there '
                           '(name it app, or give it as module:attribute)')
    return app


def _import_target(module_name: str, attr: str) -> Any:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # 'pkg.mod.app': the last part may be an attribute of 'pkg.mod'
        parent, _, last = module_name.rpartition('.')
        if attr or not parent or exc.name != module_name:
            raise
        module, attr = importlib.import_module(parent), last
    if not attr:
        return module
    obj = getattr(module, attr)
    return obj() if callable(obj) and not isinstance(obj, Taskflow) else obj


def _app_in(obj: Any) -> Taskflow | None:
    if isinstance(obj, Taskflow):
        return obj
    for name in ('app', 'celery'):
        candidate = getattr(obj, name, None)
        if isinstance(candidate, Taskflow):
            return candidate
    for value in vars(obj).values() if hasattr(obj, '__dict__') else ():
        if isinstance(value, Taskflow):
            return value
    return None


class _Context:
    def __init__(self, app_path: str | None, app: Taskflow | None, broker: str | None,
                 backend: str | None) -> None:
        self.app_path, self._app, self.broker, self.backend = app_path, app, broker, backend

    def app(self, override: str | None = None) -> Taskflow:
        if override:
            self.app_path, self._app = override, None
        if self._app is None:
            if self.app_path:
                try:
                    self._app = load_app(self.app_path)
                except AppLoadError as exc:
                    raise click.ClickException(str(exc)) from None
            else:
                self._app = Taskflow('default')
        if self.broker:
            self._app.conf.broker_url = self.broker
        if self.backend:
            self._app.conf.result_backend = self.backend
        return self._app


def app_option(fun: Callable[..., Any]) -> Callable[..., Any]:
    """``-A/--app`` on a sub-command too (``taskflow worker -A proj``)."""
    return click.option('-A', '--app', 'app_path', default=None, help='The app: module or module:attribute.')(fun)


@click.group(context_settings={'help_option_names': ['-h', '--help']})
@click.option('-A', '--app', 'app_path', envvar='TASKFLOW_APP', help='The app: module or module:attribute.')
@click.option('-b', '--broker', help='Broker URL (overrides broker_url).')
@click.option('--result-backend', help='Result backend URL (overrides result_backend).')
@click.option('--workdir', type=click.Path(file_okay=False), help='Change to this directory first.')
@click.version_option(__version__, '--version', prog_name='taskflow', message='%(prog)s %(version)s')
@click.pass_context
def cli(ctx: click.Context, app_path: str | None, broker: str | None, result_backend: str | None,
        workdir: str | None) -> None:
    """taskflow: a distributed task queue, compatible with Celery 5."""
    if workdir:
        os.chdir(workdir)
    preset = ctx.obj if isinstance(ctx.obj, Taskflow) else None
    ctx.obj = _Context(app_path, preset, broker, result_backend)


def _load_json(value: str | None, what: str, kind: type) -> Any:
    if not value:
        return kind()
    try:
        loaded = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f'not valid JSON: {exc}', param_hint=what) from None
    if not isinstance(loaded, kind):
        raise click.BadParameter(f'must be a JSON {kind.__name__}', param_hint=what)
    return loaded


@cli.command()
@app_option
@click.option('-c', '--concurrency', type=int, help='Pool size (default: number of CPUs).')
@click.option('-P', '--pool', type=click.Choice(['prefork', 'threads', 'solo', 'processes']),
              help='Pool implementation.')
@click.option('-Q', '--queues', help='Comma-separated queues to consume (default: all configured).')
@click.option('-X', '--exclude-queues', help='Comma-separated queues not to consume.')
@click.option('-n', '--hostname', help='Node name (%h: host name), default celery@%h.')
@click.option('-l', '--loglevel', default='WARNING', show_default=True, help='DEBUG, INFO, WARNING, ERROR, CRITICAL.')
@click.option('-f', '--logfile', type=click.Path(dir_okay=False), help='Log to this file.')
@click.option('--pidfile', type=click.Path(dir_okay=False), help='Write the pid here; refuse to start if it is held.')
@click.option('--prefetch-multiplier', type=int, help='Messages reserved per pool slot.')
@click.option('--max-tasks-per-child', type=int, help='Replace a child after this many tasks.')
@click.option('--max-memory-per-child', type=int, help='Replace a child above this resident memory (KiB).')
@click.option('--time-limit', type=float, help='Hard time limit per task (seconds).')
@click.option('--soft-time-limit', type=float, help='Soft time limit per task (seconds).')
@click.option('-O', 'optimization', help='Accepted for Celery compatibility (fair scheduling is the only mode).')
@click.option('--without-gossip', is_flag=True, help='Accepted for Celery compatibility (there is no gossip).')
@click.option('--without-mingle', is_flag=True, help='Accepted for Celery compatibility (there is no mingle).')
@click.option('--without-heartbeat', is_flag=True, help='Accepted for Celery compatibility.')
@click.pass_obj
def worker(obj: _Context, app_path: str | None, concurrency: int | None, pool: str | None,
           queues: str | None, exclude_queues: str | None, hostname: str | None, loglevel: str,
           logfile: str | None, pidfile: str | None, prefetch_multiplier: int | None,
           max_tasks_per_child: int | None, max_memory_per_child: int | None, time_limit: float | None,
           soft_time_limit: float | None, **ignored: Any) -> None:
    """Start a worker."""
    from .log import setup_logging  # noqa: PLC0415
    from .worker import Worker  # noqa: PLC0415
    app = obj.app(app_path)
    try:
        setup_logging(loglevel, logfile, app.conf.worker_log_format, app.conf.worker_task_log_format,
                      hijack_root=app.conf.worker_hijack_root_logger)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint='--loglevel') from None
    split = lambda value: [q.strip() for q in value.split(',') if q.strip()] if value else None  # noqa: E731
    try:
        instance = Worker(app, hostname=hostname, concurrency=concurrency, pool=pool, queues=split(queues),
                          exclude_queues=split(exclude_queues), prefetch_multiplier=prefetch_multiplier,
                          max_tasks_per_child=max_tasks_per_child, max_memory_per_child=max_memory_per_child,
                          time_limit=time_limit, soft_time_limit=soft_time_limit)
    except (ValueError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
    release = _take_pidfile(pidfile) if pidfile else None
    try:
        code = instance.start()
    except ImproperlyConfigured as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if release:
            release()
    sys.exit(code)


def _take_pidfile(path: str) -> Callable[[], None]:
    if os.path.exists(path):
        try:
            pid = int(open(path).read().strip() or 0)
        except ValueError:
            pid = 0
        if pid and _alive(pid):
            raise click.ClickException(f'pidfile {path} is held by running process {pid}')
    with open(path, 'w') as fh:
        fh.write(f'{os.getpid()}\n')

    def release() -> None:
        if os.path.exists(path):
            os.unlink(path)
    return release


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@cli.command()
@app_option
@click.argument('name')
@click.option('-a', '--args', help='JSON list of positional arguments.')
@click.option('-k', '--kwargs', help='JSON object of keyword arguments.')
@click.option('--eta', help='ISO-8601 time to run at.')
@click.option('--countdown', type=float, help='Seconds to wait before running.')
@click.option('--expires', help='Seconds, or an ISO-8601 time, after which the task is discarded.')
@click.option('--serializer', default=None, help='Serializer (default: task_serializer).')
@click.option('--queue', help='Queue to send to.')
@click.option('--exchange', help='Exchange to send to.')
@click.option('--routing-key', help='Routing key.')
@click.pass_obj
def call(obj: _Context, app_path: str | None, name: str, args: str | None, kwargs: str | None,
         eta: str | None, countdown: float | None, expires: str | None, serializer: str | None,
         queue: str | None, exchange: str | None, routing_key: str | None) -> None:
    """Send task NAME by name; print its id."""
    app = obj.app(app_path)
    expires_value: Any = expires
    if expires is not None:
        try:
            expires_value = float(expires)
        except ValueError:
            pass
    options: dict[str, Any] = {k: v for k, v in dict(queue=queue, exchange=exchange, routing_key=routing_key,
                                     serializer=serializer).items() if v is not None}
    try:
        result = app.send_task(name, _load_json(args, '--args', list), _load_json(kwargs, '--kwargs', dict),
                               eta=eta, countdown=countdown, expires=expires_value, **options)
    except click.ClickException:
        raise
    except Exception as exc:
        raise click.ClickException(f'Could not send {name}: {type(exc).__name__}: {exc}') from None
    click.echo(result.id)


@cli.command()
@app_option
@click.argument('task_id')
@click.option('-t', '--task', 'task_name', help='Name of the task (for its result class).')
@click.option('--traceback', is_flag=True, help='Show the traceback of a failed task.')
@click.option('--timeout', type=float, default=None, help='Seconds to wait (default: forever).')
@click.pass_obj
def result(obj: _Context, app_path: str | None, task_id: str, task_name: str | None, traceback: bool,
           timeout: float | None) -> None:
    """Wait for the result of TASK_ID and print it."""
    from .exceptions import TimeoutError as ResultTimeout  # noqa: PLC0415
    app = obj.app(app_path)
    handle = app.AsyncResult(task_id, task_name=task_name)
    try:
        value = handle.get(timeout=timeout, propagate=False)
    except ResultTimeout:
        raise click.ClickException(f'No result for {task_id} within {timeout}s (state {handle.state})') from None
    except NotImplementedError as exc:
        raise click.ClickException(str(exc)) from None
    if traceback and handle.failed():
        click.echo(handle.traceback)
    else:
        click.echo(repr(value) if isinstance(value, BaseException) else json.dumps(value, default=repr))


@cli.command()
@app_option
@click.option('-f', '--force', is_flag=True, help="Don't ask for confirmation.")
@click.option('-Q', '--queues', help='Comma-separated queues to purge (default: all configured).')
@click.option('-X', '--exclude-queues', help='Comma-separated queues to keep.')
@click.pass_obj
def purge(obj: _Context, app_path: str | None, force: bool, queues: str | None, exclude_queues: str | None) -> None:
    """Delete all waiting task messages from the queues."""
    app = obj.app(app_path)
    names = [q.strip() for q in queues.split(',')] if queues else list(app.broker.queues)
    excluded = {q.strip() for q in exclude_queues.split(',')} if exclude_queues else set()
    names = [n for n in names if n not in excluded]
    if not force:
        click.confirm(f'Delete all messages from {", ".join(names)}? This cannot be undone.', abort=True)
    try:
        count = app.broker.purge(names)
    except Exception as exc:
        raise click.ClickException(f'Could not purge: {type(exc).__name__}: {exc}') from None
    click.echo(f'Purged {count} message{"" if count == 1 else "s"} from {", ".join(names)}.')


def main(argv: list[str] | None = None, app: Taskflow | None = None) -> None:
    """Entry point of the ``taskflow`` script and ``python -m taskflow``."""
    cli.main(args=argv, prog_name='taskflow', obj=app)

"""The ``taskflow`` command line (click): ``taskflow [-A APP] VERB [OPTIONS]``.

``-A/--app`` is accepted before and after the verb. Every failure the user can cause (a bad
``-A`` path, bad JSON arguments, an unreachable broker) ends with one ``Error: ...`` line and
a non-zero exit status.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from typing import Any, Callable

import click

from ._version import __version__
from .app import Taskflow
from .bulk import bulk_map
from .bulk import watch as watch_group
from .config import _import_object
from .events import EventReceiver
from .exceptions import AppLoadError, ImproperlyConfigured
from .exceptions import TimeoutError as ResultTimeout
from .log import setup_logging
from .result import GroupResult
from .worker import Worker

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


def broadcast_options(fun: Callable[..., Any]) -> Callable[..., Any]:
    """``-t/--timeout``, ``-d/--destination`` and ``-j/--json`` of ``inspect`` and ``control``."""
    fun = click.option('-j', '--json', 'as_json', is_flag=True, help='Print the replies as JSON.')(fun)
    fun = click.option('-d', '--destination', help='Comma-separated node names to ask (default: all).')(fun)
    return click.option('-t', '--timeout', type=float, default=1.0, show_default=True,
                        help='Seconds to wait for replies.')(fun)


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
@click.option('-E', '--task-events', 'task_events', is_flag=True, default=None,
              help='Send task events (for monitors such as Flower).')
@click.option('--statedb', type=click.Path(dir_okay=False), help='Keep revoked task ids in this file across restarts.')
@click.option('--autoscale', help='MAX,MIN: grow the pool up to MAX under load, shrink to MIN when idle.')
@click.option('-O', 'optimization', help='Accepted for Celery compatibility (fair scheduling is the only mode).')
@click.option('--without-gossip', is_flag=True, help='Accepted for Celery compatibility (there is no gossip).')
@click.option('--without-mingle', is_flag=True, help='Accepted for Celery compatibility (there is no mingle).')
@click.option('--without-heartbeat', is_flag=True, help='Accepted for Celery compatibility.')
# -B: run beat in this worker (EmbeddedBeat, a thread), with its -s/-S options
@click.option('-B', '--beat', 'embed_beat', is_flag=True, help='Also run beat (periodic tasks) in this worker.')
@click.option('-s', '--schedule', 'beat_schedule_file', type=click.Path(dir_okay=False),
              help='With -B: file for the beat run state (default: beat_schedule_filename).')
@click.option('-S', '--scheduler', 'beat_scheduler', help='With -B: scheduler class, module:Class.')
@click.pass_obj
def worker(obj: _Context, app_path: str | None, concurrency: int | None, pool: str | None,
           queues: str | None, exclude_queues: str | None, hostname: str | None, loglevel: str,
           logfile: str | None, pidfile: str | None, prefetch_multiplier: int | None,
           max_tasks_per_child: int | None, max_memory_per_child: int | None, time_limit: float | None,
           soft_time_limit: float | None, task_events: bool | None, statedb: str | None,
           autoscale: str | None, embed_beat: bool = False, beat_schedule_file: str | None = None,
           beat_scheduler: str | None = None, **ignored: Any) -> None:
    """Start a worker."""
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
                          time_limit=time_limit, soft_time_limit=soft_time_limit, send_events=task_events,
                          statedb=statedb, autoscale=_parse_autoscale(autoscale))
    except (ValueError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
    release = _take_pidfile(pidfile) if pidfile else None
    embedded = _start_embedded_beat(app, beat_schedule_file, beat_scheduler) if embed_beat else None
    try:
        code = instance.start()
    except ImproperlyConfigured as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if embedded is not None:
            embedded.stop()
            embedded.join(timeout=10)
        if release:
            release()
    if instance.mode == 'cold':
        # Cold shutdown means now: threads of the thread pool still running a task would
        # otherwise be joined by the interpreter at exit.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)


def _start_embedded_beat(app: Taskflow, schedule_file: str | None, scheduler: str | None) -> Any:
    """``worker -B``: beat in a thread; it starts sending once the worker is ready."""
    try:
        embedded = EmbeddedBeat(app, scheduler_cls=scheduler, schedule_filename=schedule_file, wait_for_worker=True)
    except ImproperlyConfigured as exc:
        raise click.ClickException(str(exc)) from None
    embedded.start()
    return embedded


def _parse_autoscale(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        parts = [int(p) for p in value.split(',')]
    except ValueError:
        raise click.BadParameter('expected MAX,MIN (for example 10,3)', param_hint='--autoscale') from None
    maximum, minimum = (parts + [0])[:2] if len(parts) == 1 else parts[:2]
    if minimum > maximum:
        maximum, minimum = minimum, maximum
    return maximum, minimum


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


# --- remote control ---------------------------------------------------------------------------
def _destination(value: str | None) -> list[str] | None:
    return [d.strip() for d in value.split(',') if d.strip()] if value else None


def _print_replies(replies: Any, as_json: bool, what: str) -> None:
    if not replies:
        raise click.ClickException('No nodes replied within time constraint')
    if isinstance(replies, list):  # control replies: [{node: reply}, ...]
        merged: dict[str, Any] = {}
        for reply in replies:
            merged.update(reply)
        replies = merged
    if as_json:
        click.echo(json.dumps(replies, indent=2, default=repr))
        return
    for node, reply in replies.items():
        click.echo(f'-> {node}: {_summary(reply)}')
    click.echo(f'\n{len(replies)} node{"" if len(replies) == 1 else "s"} online.' if what == 'ping' else '')


def _summary(reply: Any) -> str:
    if isinstance(reply, dict) and set(reply) <= {'ok', 'error'}:
        return 'OK ' + str(reply['ok']) if 'ok' in reply else 'ERROR ' + str(reply['error'])
    return json.dumps(reply, indent=4, default=repr).replace('\n', '\n    ')


INSPECT_METHODS = ('ping', 'active', 'reserved', 'scheduled', 'revoked', 'registered', 'stats',
                   'active_queues', 'conf', 'report', 'clock', 'query_task')


@cli.command()
@app_option
@click.argument('method', type=click.Choice(INSPECT_METHODS))
@click.argument('arguments', nargs=-1)
@broadcast_options
@click.pass_obj
def inspect(obj: _Context, app_path: str | None, method: str, arguments: tuple[str, ...], timeout: float,
            destination: str | None, as_json: bool) -> None:
    """Ask workers about their state (ping, active, stats, ...)."""
    app = obj.app(app_path)
    handle = app.control.inspect(destination=_destination(destination), timeout=timeout)
    try:
        replies = getattr(handle, method)(*arguments)
    except Exception as exc:
        raise click.ClickException(f'inspect {method} failed: {type(exc).__name__}: {exc}') from None
    _print_replies(replies, as_json, method)


CONTROL_METHODS = {
    'revoke': ('task_id',), 'terminate': ('signal', 'task_id'), 'rate_limit': ('task_name', 'rate_limit'),
    'time_limit': ('task_name', 'soft', 'hard'), 'shutdown': (), 'pool_grow': ('n',), 'pool_shrink': ('n',),
    'autoscale': ('max', 'min'), 'add_consumer': ('queue', 'exchange', 'exchange_type', 'routing_key'),
    'cancel_consumer': ('queue',), 'enable_events': (), 'disable_events': (), 'heartbeat': (),
}


@cli.command()
@app_option
@click.argument('method', type=click.Choice(sorted(CONTROL_METHODS)))
@click.argument('arguments', nargs=-1)
@broadcast_options
@click.pass_obj
def control(obj: _Context, app_path: str | None, method: str, arguments: tuple[str, ...], timeout: float,
            destination: str | None, as_json: bool) -> None:
    """Send a command to workers (revoke, rate_limit, shutdown, pool_grow, ...)."""
    app = obj.app(app_path)
    names = CONTROL_METHODS[method]
    if len(arguments) > len(names) and method != 'revoke':
        raise click.UsageError(f'{method} takes at most {len(names)} argument(s): {" ".join(names) or "none"}')
    values: dict[str, Any] = {}
    for name, raw in zip(names, arguments):
        values[name] = _coerce(raw)
    if method == 'revoke':
        values['task_id'] = list(arguments)
    try:
        replies = app.control.broadcast(method, arguments=values, destination=_destination(destination),
                                        reply=True, timeout=timeout)
    except Exception as exc:
        raise click.ClickException(f'control {method} failed: {type(exc).__name__}: {exc}') from None
    _print_replies(replies, as_json, method)


def _coerce(raw: str) -> Any:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


@cli.command()
@app_option
@click.option('-t', '--timeout', type=float, default=1.0, show_default=True, help='Seconds to wait for replies.')
@click.pass_obj
def status(obj: _Context, app_path: str | None, timeout: float) -> None:
    """List the workers that answer a ping."""
    app = obj.app(app_path)
    replies = app.control.inspect(timeout=timeout).ping()
    if not replies:
        raise click.ClickException('No nodes replied within time constraint')
    for node in sorted(replies):
        click.echo(f'{node}: OK')
    click.echo(f'\n{len(replies)} node{"" if len(replies) == 1 else "s"} online.')


@cli.command()
@app_option
@click.option('--dump', is_flag=True, help='Print every event as it arrives.')
@click.option('--timeout', type=float, default=None, help='Stop after this many quiet seconds.')
@click.option('--limit', type=int, default=None, help='Stop after this many events.')
@click.pass_obj
def events(obj: _Context, app_path: str | None, dump: bool, timeout: float | None, limit: int | None) -> None:
    """Watch the events workers send (start them with -E for task events)."""
    app = obj.app(app_path)

    def show(event: dict[str, Any]) -> None:
        fields = {k: v for k, v in event.items() if k not in ('type', 'hostname', 'timestamp')}
        click.echo(f'{event.get("hostname")} [{event.get("timestamp")}] {event.get("type")}: '
                   f'{json.dumps(fields, default=repr)}')

    click.echo('-> taskflow events: capturing (Ctrl-C to stop)...', err=True)
    try:
        EventReceiver(app, {'*': show}).capture(limit=limit, timeout=timeout)
    except KeyboardInterrupt:
        pass


# --- beat ---------------------------------------------------------------------------------------
# Imported here, with the section it serves (beat is L8, below the CLI; `worker -B` uses
# EmbeddedBeat from the function above, resolved at call time).
from .beat import Beat, EmbeddedBeat  # noqa: E402


@cli.command()
@app_option
@click.option('-s', '--schedule', 'schedule_file', type=click.Path(dir_okay=False),
              help='File for the run state of the schedule (default: beat_schedule_filename).')
@click.option('-S', '--scheduler', help='Scheduler class, module:Class (default: beat_scheduler).')
@click.option('--max-interval', type=float, help='Longest sleep between checks, seconds (default: 300).')
@click.option('-l', '--loglevel', default='WARNING', show_default=True, help='DEBUG, INFO, WARNING, ERROR, CRITICAL.')
@click.option('-f', '--logfile', type=click.Path(dir_okay=False), help='Log to this file.')
@click.option('--pidfile', type=click.Path(dir_okay=False), help='Write the pid here; refuse to start if it is held.')
@click.pass_obj
def beat(obj: _Context, app_path: str | None, schedule_file: str | None, scheduler: str | None,
         max_interval: float | None, loglevel: str, logfile: str | None, pidfile: str | None) -> None:
    """Send periodic tasks (beat_schedule) when they fall due.

    With a Redis broker or backend, beats of one app elect a leader: start two for fail-over.
    Without Redis run exactly one."""
    app = obj.app(app_path)
    try:
        setup_logging(loglevel, logfile, app.conf.worker_log_format, hijack_root=app.conf.worker_hijack_root_logger)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint='--loglevel') from None
    try:
        service = Beat(app, max_interval=max_interval, scheduler_cls=scheduler, schedule_filename=schedule_file)
    except ImproperlyConfigured as exc:
        raise click.ClickException(str(exc)) from None
    release = _take_pidfile(pidfile) if pidfile else None
    click.echo(f'taskflow {__version__} beat: app {app.main or "__main__"}, '
               f'scheduler {service.scheduler_cls.__module__}:{service.scheduler_cls.__name__}')
    service.install_signal_handlers()
    try:
        service.run()
    except ImproperlyConfigured as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if release:
            release()


# --- bulk jobs ----------------------------------------------------------------------------------
@cli.command('map')
@app_option
@click.argument('task_name')
@click.option('--source', required=True, help='module:callable returning (or being) the iterable of items.')
@click.option('--window', type=int, default=1000, show_default=True, help='Most tasks in flight at once.')
@click.option('--checkpoint', type=click.Path(dir_okay=False), help='Resume file (default: <task>.bulk.json).')
@click.option('--no-resume', is_flag=True, help='Start from the first item even if a checkpoint exists.')
@click.option('--star', is_flag=True, help='Call task(*item) instead of task(item).')
@click.option('--total', type=int, default=None, help='Number of items, when known (for the ETA).')
@click.pass_obj
def map_command(obj: _Context, app_path: str | None, task_name: str, source: str, window: int,
                checkpoint: str | None, no_resume: bool, star: bool, total: int | None) -> None:
    """Run TASK_NAME over every item of --source, at most --window at a time, resumable."""
    app = obj.app(app_path)
    try:
        task = app.tasks[task_name]
    except KeyError:
        raise click.ClickException(f'Unknown task {task_name!r}: is it imported by the app (-A)?') from None
    try:
        items = _import_object(source)
    except (ImportError, AttributeError) as exc:
        raise click.ClickException(f'Cannot import --source {source!r}: {exc}') from None
    if callable(items):
        items = items()
    summary = bulk_map(task, items, window=window, checkpoint=checkpoint or f'{task_name}.bulk.json',
                       resume=not no_resume, star=star, total=total)
    click.echo(str(summary))
    if summary.interrupted:
        sys.exit(130)
    sys.exit(1 if summary.failed else 0)


@cli.command()
@app_option
@click.argument('group_id')
@click.option('--interval', type=float, default=0.5, show_default=True, help='Seconds between refreshes.')
@click.option('--timeout', type=float, default=None, help='Stop watching after this many seconds.')
@click.pass_obj
def watch(obj: _Context, app_path: str | None, group_id: str, interval: float, timeout: float | None) -> None:
    """Show the progress of a saved group (GroupResult.save()) until it is done."""
    app = obj.app(app_path)
    restored = GroupResult.restore(group_id, app=app)
    if restored is None:
        raise click.ClickException(f'No saved group {group_id!r} (call GroupResult.save() to make it watchable)')
    finished, failed, total = watch_group(restored, interval=interval, timeout=timeout)
    click.echo(f'{finished}/{total} finished, {failed} failed')
    sys.exit(0 if finished == total and not failed else 1)

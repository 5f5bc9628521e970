"""Configuration: every setting with its Celery 5 name, default, type and a one-line doc.

``DEFAULTS`` is the single source: the docs' configuration reference is generated from it, the
environment override parser reads its types, and ``Settings`` warns on keys it does not know.

Precedence, lowest first: ``DEFAULTS`` < values set in code (``Taskflow(...)`` arguments,
``config_from_object``, ``conf.update``, ``conf.x = y``) < environment variables
``TASKFLOW_<NAME>`` (for example ``TASKFLOW_BROKER_URL``). ``CELERY_BROKER_URL`` and
``CELERY_RESULT_BACKEND`` are honoured as well, as Celery does.
"""
from __future__ import annotations

import difflib
import importlib
import json
import logging
import os
import warnings
from datetime import timedelta
from typing import Any, Iterable, Mapping, NamedTuple

from .exceptions import ImproperlyConfigured, TaskflowWarning

__all__ = ['Option', 'DEFAULTS', 'Settings', 'find_option', 'EMBEDDED_URL', 'broker_url', 'result_backend_url']

logger = logging.getLogger(__name__)


class Option(NamedTuple):
    default: Any
    type: str  # 'str' 'int' 'float' 'bool' 'dict' 'list' 'any'
    doc: str


def _o(default: Any, type_: str, doc: str) -> Option:
    return Option(default, type_, doc)


DEFAULTS: dict[str, Option] = {
    # --- general
    'accept_content': _o(['json'], 'list', 'Content types (serializer names or MIME types) the worker accepts; JSON only unless you opt in.'),
    'enable_utc': _o(True, 'bool', 'Dates in messages and results are UTC.'),
    'timezone': _o(None, 'str', 'Time zone for crontab schedules and local dates (IANA name); UTC when unset.'),
    'imports': _o((), 'list', 'Modules the worker imports at start-up so their tasks are registered.'),
    'include': _o((), 'list', 'Like imports, imported after them.'),
    # --- broker
    'broker_url': _o(None, 'str', 'Broker URL: redis://, amqp:// (pyamqp), memory:// or sqlite://; several separated by ";" for failover. Unset: the embedded broker in ./taskflow.sqlite.'),
    'broker_read_url': _o(None, 'str', 'Broker URL for consuming, when it differs from broker_url.'),
    'broker_write_url': _o(None, 'str', 'Broker URL for publishing, when it differs from broker_url.'),
    'broker_transport': _o(None, 'str', 'kombu transport name, when the URL does not give it.'),
    'broker_transport_options': _o({}, 'dict', 'Options passed to the kombu transport (Redis: visibility_timeout, default 3600 s: an unacked message is redelivered after it).'),
    'broker_connection_timeout': _o(4.0, 'float', 'Seconds to wait when connecting to the broker.'),
    'broker_connection_retry': _o(True, 'bool', 'Retry when the broker connection is lost.'),
    'broker_connection_retry_on_startup': _o(True, 'bool', 'Retry when the broker cannot be reached at start-up.'),
    'broker_connection_max_retries': _o(100, 'int', 'Connection attempts before giving up (0 or None: forever).'),
    'broker_channel_error_retry': _o(False, 'bool', 'Retry on channel errors too.'),
    'broker_failover_strategy': _o('round-robin', 'str', 'How to pick the next URL when several are given.'),
    'broker_heartbeat': _o(120.0, 'float', 'AMQP heartbeat interval in seconds (0 disables).'),
    'broker_heartbeat_checkrate': _o(3.0, 'float', 'How many times per heartbeat interval the worker checks it.'),
    'broker_login_method': _o(None, 'str', 'AMQP login method.'),
    'broker_pool_limit': _o(10, 'int', 'Connections kept in the publishing pool.'),
    'broker_use_ssl': _o(False, 'any', 'TLS options for the broker connection (True or a dict).'),
    'broker_native_delayed_delivery_queue_type': _o('quorum', 'str', 'Queue type for native delayed delivery (RabbitMQ quorum queues).'),
    # --- results
    'result_backend': _o(None, 'str', 'Result backend URL: redis://, db+postgresql://, sqlite://, memory://. Unset: the broker\'s file when the broker is SQLite (the default), else disabled.'),
    'result_serializer': _o('json', 'str', 'Serializer for stored results.'),
    'result_accept_content': _o(None, 'list', 'Content types accepted from the result backend (accept_content when unset).'),
    'result_compression': _o(None, 'str', 'Compression for stored results (gzip, bzip2, zlib).'),
    'result_expires': _o(timedelta(days=1), 'float', 'How long results are kept (seconds or timedelta; None or 0: forever).'),
    'result_extended': _o(False, 'bool', 'Store name, args, kwargs, worker, retries and queue with each result.'),
    'result_persistent': _o(None, 'bool', 'Persistent result messages (rpc:// backend).'),
    'result_cache_max': _o(-1, 'int', 'Client-side cache of ready results (-1 disables).'),
    'result_backend_transport_options': _o({}, 'dict', 'Options for the result backend client (global_keyprefix, ...).'),
    'result_backend_always_retry': _o(False, 'bool', 'Retry backend operations that fail with a recoverable error.'),
    'result_backend_max_retries': _o(float('inf'), 'float', 'Maximum backend retries when result_backend_always_retry is on.'),
    'result_backend_base_sleep_between_retries_ms': _o(10, 'int', 'First backoff between backend retries (ms).'),
    'result_backend_max_sleep_between_retries_ms': _o(10000, 'int', 'Longest backoff between backend retries (ms).'),
    'result_backend_thread_safe': _o(False, 'bool', 'Share one backend object between threads.'),
    'result_chord_join_timeout': _o(3.0, 'float', 'Seconds a chord join may take to read the header results.'),
    'result_chord_retry_interval': _o(1.0, 'float', 'Seconds between celery.chord_unlock polls.'),
    'result_chord_ordered': _o(True, 'bool', 'Chord bodies get header results in header order.'),
    'result_chord_join': _o('native', 'str', "Chord join: 'native' (Redis atomic counter) or 'poll' (celery.chord_unlock on any backend)."),
    'result_exchange': _o('celeryresults', 'str', 'Exchange of the rpc:// backend.'),
    'result_exchange_type': _o('direct', 'str', 'Exchange type of the rpc:// backend.'),
    # --- redis client (result backend)
    'redis_backend_health_check_interval': _o(0, 'int', 'Seconds between health checks of idle Redis connections.'),
    'redis_max_connections': _o(None, 'int', 'Connections in the Redis client pool.'),
    'redis_socket_timeout': _o(120.0, 'float', 'Redis socket timeout (seconds).'),
    'redis_socket_connect_timeout': _o(None, 'float', 'Redis connect timeout (seconds).'),
    'redis_socket_keepalive': _o(False, 'bool', 'TCP keepalive on Redis connections.'),
    'redis_retry_on_timeout': _o(False, 'bool', 'Retry Redis commands that time out.'),
    'redis_username': _o(None, 'str', 'Redis user (ACL).'),
    'redis_password': _o(None, 'str', 'Redis password.'),
    # --- SQL result backend
    'database_engine_options': _o({'pool_pre_ping': True, 'pool_recycle': 3600}, 'dict', 'Extra keyword arguments for sqlalchemy.create_engine.'),
    'database_short_lived_sessions': _o(False, 'bool', 'Open a new session per operation.'),
    'database_table_names': _o({}, 'dict', "Table names: {'task': 'celery_taskmeta', 'group': 'celery_tasksetmeta'}."),
    'database_table_schemas': _o({}, 'dict', 'Schemas of the result tables.'),
    'database_create_tables_at_setup': _o(True, 'bool', 'Create the result tables when the backend starts.'),
    # --- tasks
    'task_serializer': _o('json', 'str', 'Serializer for task messages (json, msgpack, yaml, pickle).'),
    'task_compression': _o(None, 'str', 'Compression for task messages (gzip, bzip2, zlib).'),
    'task_protocol': _o(2, 'int', 'Task message protocol version; only 2 is sent.'),
    'task_always_eager': _o(False, 'bool', 'Run tasks in the calling process instead of sending them.'),
    'task_eager_propagates': _o(False, 'bool', 'Eager tasks re-raise their exceptions.'),
    'task_store_eager_result': _o(False, 'bool', 'Eager tasks store their results in the backend.'),
    'task_ignore_result': _o(False, 'bool', 'Do not store task results (the default for every task).'),
    'task_store_errors_even_if_ignored': _o(False, 'bool', 'Store failures even when results are ignored.'),
    'task_acks_late': _o(False, 'bool', 'Acknowledge after the task ran (at-least-once) instead of before (at-most-once).'),
    'task_acks_on_failure_or_timeout': _o(True, 'bool', 'With acks_late, acknowledge failed and timed-out tasks too.'),
    'task_reject_on_worker_lost': _o(None, 'bool', 'With acks_late, requeue a task whose worker process died.'),
    'task_track_started': _o(False, 'bool', 'Record STARTED when a worker begins a task.'),
    'task_time_limit': _o(None, 'float', 'Hard time limit (seconds): the process running the task is killed.'),
    'task_soft_time_limit': _o(None, 'float', 'Soft time limit (seconds): SoftTimeLimitExceeded is raised in the task.'),
    'task_default_queue': _o('celery', 'str', 'Queue for tasks with no route.'),
    'task_default_queue_type': _o('classic', 'str', "Type of the default queue on RabbitMQ: 'classic' or 'quorum'."),
    'task_default_exchange': _o(None, 'str', 'Exchange of the default queue (the queue name when unset).'),
    'task_default_exchange_type': _o('direct', 'str', 'Type of the default exchange.'),
    'task_default_routing_key': _o(None, 'str', 'Routing key of the default queue (the queue name when unset).'),
    'task_default_delivery_mode': _o('persistent', 'str', "'persistent' or 'transient' messages."),
    'task_default_priority': _o(None, 'int', 'Priority for tasks that do not set one.'),
    'task_default_rate_limit': _o(None, 'str', "Rate limit for every task ('10/s', '100/m', '1000/h')."),
    'task_inherit_parent_priority': _o(False, 'bool', 'Tasks sent from a task inherit its priority.'),
    'task_queue_max_priority': _o(None, 'int', 'x-max-priority of declared queues (RabbitMQ).'),
    'task_queues': _o(None, 'list', 'The queues (kombu Queue objects) workers consume by default.'),
    'task_routes': _o(None, 'any', 'Routes: a dict (names or glob patterns to options), a callable, or a list of them.'),
    'task_create_missing_queues': _o(True, 'bool', 'Create queues that are routed to but not declared in task_queues.'),
    'task_create_missing_queue_type': _o('classic', 'str', 'Type of queues created that way.'),
    'task_create_missing_queue_exchange_type': _o(None, 'str', 'Exchange type of queues created that way.'),
    'task_publish_retry': _o(True, 'bool', 'Retry publishing when the broker connection fails.'),
    'task_publish_retry_policy': _o({'max_retries': 3, 'interval_start': 0, 'interval_step': 0.2, 'interval_max': 1},
                                    'dict', 'kombu retry policy for publishing.'),
    'task_send_sent_event': _o(False, 'bool', 'Send a task-sent event for every published task.'),
    'task_annotations': _o(None, 'any', 'Override task attributes by name ({name: {attr: value}}).'),
    'task_remote_tracebacks': _o(False, 'bool', 'Show the remote traceback when a failure is re-raised.'),
    'task_allow_error_cb_on_chord_header': _o(False, 'bool', 'A chord errback also runs for header failures.'),
    # --- worker
    'worker_concurrency': _o(None, 'int', 'Pool size (the number of CPUs when unset).'),
    'worker_pool': _o('prefork', 'str', 'Pool: prefork, threads or solo.'),
    'worker_pool_batch_scheduling': _o(True, 'bool', 'Linux: prefork children run as SCHED_BATCH, so a child waking up does not preempt the worker process.'),
    'worker_prefetch_multiplier': _o(4, 'int', 'Messages reserved per pool slot (1 for long tasks).'),
    'worker_disable_prefetch': _o(False, 'bool', 'Reserve only what can start now.'),
    'worker_max_tasks_per_child': _o(None, 'int', 'Tasks a child process runs before it is replaced.'),
    'worker_max_memory_per_child': _o(None, 'int', 'Resident KiB above which a child is replaced after its task.'),
    'worker_send_task_events': _o(False, 'bool', 'Send task events (-E), for monitors such as Flower.'),
    'worker_hijack_root_logger': _o(True, 'bool', 'The worker configures the root logger.'),
    'worker_log_color': _o(None, 'bool', 'Colour log output (when a terminal).'),
    'worker_log_format': _o('[%(asctime)s: %(levelname)s/%(processName)s] %(message)s', 'str', 'Log format of the worker.'),
    'worker_task_log_format': _o('[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s',
                                 'str', 'Log format for records from get_task_logger loggers.'),
    'worker_redirect_stdouts': _o(True, 'bool', 'Send print output of tasks to the log.'),
    'worker_redirect_stdouts_level': _o('WARNING', 'str', 'Level of redirected output.'),
    'worker_state_db': _o(None, 'str', 'File that keeps revoked ids across restarts (--statedb).'),
    'worker_timer_precision': _o(1.0, 'float', 'Longest sleep of the ETA timer (seconds).'),
    'worker_lost_wait': _o(10.0, 'float', 'Seconds to wait for a lost child result.'),
    'worker_proc_alive_timeout': _o(4.0, 'float', 'Seconds a new child has to start.'),
    'worker_cancel_long_running_tasks_on_connection_loss': _o(False, 'bool', 'Cancel acks_late tasks when the broker connection is lost.'),
    'worker_direct': _o(False, 'bool', 'Each worker also consumes a queue of its own name.'),
    'worker_disable_rate_limits': _o(False, 'bool', 'Ignore rate limits.'),
    'worker_pool_restarts': _o(False, 'bool', 'Allow pool_restart remote control.'),
    'worker_autoscaler': _o(None, 'str', 'Autoscaler class.'),
    'worker_enable_remote_control': _o(True, 'bool', 'Listen for remote control commands.'),
    'worker_deduplicate_successful_tasks': _o(False, 'bool', 'Skip a redelivered acks_late task already stored as SUCCESS.'),
    'worker_soft_shutdown_timeout': _o(0.0, 'float', 'Seconds a warm shutdown waits before it turns cold (0: forever).'),
    'worker_enable_soft_shutdown_on_idle': _o(False, 'bool', 'Apply the soft shutdown timeout even when idle.'),
    'worker_eta_task_limit': _o(None, 'int', 'Most ETA tasks one worker holds.'),
    'worker_shutdown_timeout': _o(None, 'float', 'Seconds a warm shutdown waits for running tasks (None: until they finish).'),
    # --- events
    'event_queue_ttl': _o(5.0, 'float', 'Message TTL of event receiver queues.'),
    'event_queue_expires': _o(60.0, 'float', 'Expiry of idle event receiver queues.'),
    'event_queue_prefix': _o('celeryev', 'str', 'Prefix of event receiver queue names.'),
    'event_queue_durable': _o(False, 'bool', 'Durable event queues.'),
    'event_queue_exclusive': _o(True, 'bool', 'Exclusive event queues.'),
    'event_serializer': _o('json', 'str', 'Serializer of events.'),
    'event_exchange': _o('celeryev', 'str', 'Exchange events are sent to.'),
    # --- remote control
    'control_queue_ttl': _o(300.0, 'float', 'Message TTL of control queues.'),
    'control_queue_expires': _o(10.0, 'float', 'Expiry of idle control queues.'),
    'control_exchange': _o('celery', 'str', 'Name the pidbox exchanges are derived from.'),
    'control_queue_durable': _o(False, 'bool', 'Durable control queues.'),
    'control_queue_exclusive': _o(True, 'bool', 'Exclusive control queues.'),
    # --- beat
    'beat_schedule': _o({}, 'dict', 'Periodic tasks: {name: {task, schedule, args, kwargs, options, relative}}.'),
    'beat_scheduler': _o('taskflow.beat:PersistentScheduler', 'str', 'Scheduler class (module:Class).'),
    'beat_schedule_filename': _o('celerybeat-schedule', 'str', 'File that keeps beat state.'),
    'beat_sync_every': _o(0, 'int', 'Sends between state saves (0: save after each send).'),
    'beat_max_loop_interval': _o(0, 'float', 'Longest sleep of beat (0: 300 s).'),
    'beat_cron_starting_deadline': _o(None, 'int', 'Missed crontab runs older than this (seconds) are skipped.'),
}

# Settings that hold mutable defaults: each Settings gets its own copy.
_MUTABLE = (dict, list)

#: Celery 3-style upper-case setting names Celery 5 still reads, and their new names.
OLD_NAMES = {
    'BROKER_URL': 'broker_url', 'BROKER_TRANSPORT': 'broker_transport',
    'BROKER_TRANSPORT_OPTIONS': 'broker_transport_options', 'BROKER_POOL_LIMIT': 'broker_pool_limit',
    'BROKER_CONNECTION_RETRY': 'broker_connection_retry', 'BROKER_CONNECTION_TIMEOUT': 'broker_connection_timeout',
    'BROKER_CONNECTION_MAX_RETRIES': 'broker_connection_max_retries', 'BROKER_HEARTBEAT': 'broker_heartbeat',
    'BROKER_USE_SSL': 'broker_use_ssl', 'BROKER_LOGIN_METHOD': 'broker_login_method',
    'CELERY_RESULT_BACKEND': 'result_backend', 'CELERY_RESULT_SERIALIZER': 'result_serializer',
    'CELERY_TASK_RESULT_EXPIRES': 'result_expires', 'CELERY_RESULT_EXPIRES': 'result_expires',
    'CELERY_RESULT_PERSISTENT': 'result_persistent', 'CELERY_RESULT_COMPRESSION': 'result_compression',
    'CELERY_TASK_SERIALIZER': 'task_serializer', 'CELERY_ACCEPT_CONTENT': 'accept_content',
    'CELERY_TIMEZONE': 'timezone', 'CELERY_ENABLE_UTC': 'enable_utc', 'CELERY_IMPORTS': 'imports',
    'CELERY_INCLUDE': 'include', 'CELERY_ALWAYS_EAGER': 'task_always_eager',
    'CELERY_EAGER_PROPAGATES_EXCEPTIONS': 'task_eager_propagates', 'CELERY_IGNORE_RESULT': 'task_ignore_result',
    'CELERY_ACKS_LATE': 'task_acks_late', 'CELERY_TRACK_STARTED': 'task_track_started',
    'CELERY_STORE_ERRORS_EVEN_IF_IGNORED': 'task_store_errors_even_if_ignored',
    'CELERY_MESSAGE_COMPRESSION': 'task_compression', 'CELERY_ROUTES': 'task_routes', 'CELERY_QUEUES': 'task_queues',
    'CELERY_DEFAULT_QUEUE': 'task_default_queue', 'CELERY_DEFAULT_EXCHANGE': 'task_default_exchange',
    'CELERY_DEFAULT_EXCHANGE_TYPE': 'task_default_exchange_type',
    'CELERY_DEFAULT_ROUTING_KEY': 'task_default_routing_key', 'CELERY_DEFAULT_RATE_LIMIT': 'task_default_rate_limit',
    'CELERY_DEFAULT_DELIVERY_MODE': 'task_default_delivery_mode', 'CELERY_CREATE_MISSING_QUEUES': 'task_create_missing_queues',
    'CELERY_ANNOTATIONS': 'task_annotations', 'CELERY_SEND_TASK_SENT_EVENT': 'task_send_sent_event',
    'CELERY_TASK_PUBLISH_RETRY': 'task_publish_retry', 'CELERY_TASK_PUBLISH_RETRY_POLICY': 'task_publish_retry_policy',
    'CELERYD_CONCURRENCY': 'worker_concurrency', 'CELERYD_PREFETCH_MULTIPLIER': 'worker_prefetch_multiplier',
    'CELERYD_MAX_TASKS_PER_CHILD': 'worker_max_tasks_per_child',
    'CELERYD_MAX_MEMORY_PER_CHILD': 'worker_max_memory_per_child', 'CELERYD_TASK_TIME_LIMIT': 'task_time_limit',
    'CELERYD_TASK_SOFT_TIME_LIMIT': 'task_soft_time_limit', 'CELERYD_SEND_EVENTS': 'worker_send_task_events',
    'CELERYD_HIJACK_ROOT_LOGGER': 'worker_hijack_root_logger', 'CELERYD_LOG_FORMAT': 'worker_log_format',
    'CELERYD_TASK_LOG_FORMAT': 'worker_task_log_format', 'CELERYD_POOL': 'worker_pool',
    'CELERYD_STATE_DB': 'worker_state_db', 'CELERY_DISABLE_RATE_LIMITS': 'worker_disable_rate_limits',
    'CELERYBEAT_SCHEDULE': 'beat_schedule', 'CELERYBEAT_SCHEDULER': 'beat_scheduler',
    'CELERYBEAT_SCHEDULE_FILENAME': 'beat_schedule_filename', 'CELERYBEAT_MAX_LOOP_INTERVAL': 'beat_max_loop_interval',
    'CELERY_EVENT_SERIALIZER': 'event_serializer', 'CELERY_EVENT_QUEUE_TTL': 'event_queue_ttl',
    'CELERY_EVENT_QUEUE_EXPIRES': 'event_queue_expires',
}

_NAMESPACES = ('accept_', 'broker_', 'result_', 'redis_', 'database_', 'task_', 'worker_', 'event_',
               'control_', 'beat_', 'cache_', 'security_')

_TRUE = {'1', 'true', 'yes', 'on', 'y'}
_FALSE = {'0', 'false', 'no', 'off', 'n', ''}


#: The broker and result store when nothing is configured: one SQLite file in the working
#: directory (``taskflow.transports.sqlite``), so the first task needs no server.
EMBEDDED_URL = 'sqlite:///./taskflow.sqlite'


def broker_url(conf: Mapping[str, Any]) -> Any:
    """The broker in use: ``broker_url``, or the embedded SQLite file when none is set."""
    return conf.get('broker_url') or EMBEDDED_URL


def result_backend_url(conf: Mapping[str, Any]) -> str | None:
    """The result backend in use: ``result_backend``; when none is set and the broker is SQLite
    (the embedded default included), the broker's own file; otherwise ``None`` (results
    disabled, as in Celery)."""
    if conf.get('result_backend'):
        return conf['result_backend']
    broker = broker_url(conf)
    return broker if isinstance(broker, str) and broker.startswith('sqlite:') else None


def find_option(name: str) -> Option | None:
    return DEFAULTS.get(name)


def parse_env_value(name: str, raw: str) -> Any:
    """Convert an environment string to the type ``DEFAULTS`` gives for ``name``."""
    kind = DEFAULTS[name].type
    text = raw.strip()
    try:
        if kind == 'bool':
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError('expected true/false')
        if kind == 'int':
            return None if text.lower() in ('', 'none') else int(text)
        if kind == 'float':
            return None if text.lower() in ('', 'none') else float(text)
        if kind == 'list':
            if text.startswith('['):
                return json.loads(text)
            return [part.strip() for part in text.split(',') if part.strip()]
        if kind == 'dict':
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError('expected a JSON object')
            return value
        if kind == 'any' and text[:1] in '{[':
            return json.loads(text)
    except ValueError as exc:
        raise ImproperlyConfigured(f'Environment variable for {name!r}: cannot read {raw!r}: {exc}') from exc
    return text


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for celery_name, key in (('CELERY_BROKER_URL', 'broker_url'), ('CELERY_RESULT_BACKEND', 'result_backend')):
        if environ.get(celery_name):
            found[key] = environ[celery_name]
    for key in DEFAULTS:
        raw = environ.get('TASKFLOW_' + key.upper())
        if raw is not None:
            found[key] = parse_env_value(key, raw)
    return found


def _import_object(path: str) -> Any:
    """``'pkg.mod'``, ``'pkg.mod:attr'`` or ``'pkg.mod.attr'`` -> the object."""
    module_name, _, attr = path.partition(':')
    if attr:
        return getattr(importlib.import_module(module_name), attr)
    try:
        return importlib.import_module(path)
    except ImportError:
        module_name, _, attr = path.rpartition('.')
        if not module_name:
            raise
        return getattr(importlib.import_module(module_name), attr)


class Settings(dict):
    """The app's configuration: a dict of setting name -> value, also readable as attributes.

    Every name in ``DEFAULTS`` is present. ``TASKFLOW_*`` environment variables win over values
    set any other way; such a write is kept in ``shadowed`` and logged.
    """

    def __init__(self, values: Mapping[str, Any] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        for key, option in DEFAULTS.items():
            default = option.default
            dict.__setitem__(self, key, type(default)(default) if isinstance(default, _MUTABLE) else default)
        object.__setattr__(self, 'env', _env_overrides(os.environ if environ is None else environ))
        object.__setattr__(self, 'shadowed', {})
        dict.update(self, self.env)
        if values:
            self.update(values)

    # attribute access: conf.broker_url
    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f'No setting named {name!r}') from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self.env:
            self.shadowed[key] = value
            logger.debug('Setting %s comes from the environment; ignoring %r set in code', key, value)
            return
        dict.__setitem__(self, key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for key, value in dict(*args, **kwargs).items():
            self._warn_if_unknown(key)
            self[key] = value

    def setdefault(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        if key not in self:
            self[key] = default
        return self[key]

    def from_object(self, obj: Any, namespace: str | None = None, silent: bool = False) -> None:
        """Read settings from a module, class, object, dict, or an import path to one.

        With ``namespace='CELERY'`` only ``CELERY_``-prefixed names are read, and
        ``CELERY_BROKER_URL`` sets ``broker_url`` (the Django convention).
        """
        if isinstance(obj, str):
            try:
                obj = _import_object(obj)
            except (ImportError, AttributeError):
                if silent:
                    return
                raise
        items: Iterable[tuple[str, Any]]
        if isinstance(obj, Mapping):
            items = obj.items()
        else:
            items = ((name, getattr(obj, name)) for name in dir(obj))
        prefix = f'{namespace}_' if namespace else None
        for name, value in list(items):
            if name.startswith('_'):
                continue
            if prefix:
                if not name.startswith(prefix):
                    continue
                name = name[len(prefix):].lower()
            elif not name.islower():
                if name not in OLD_NAMES:
                    continue
                name = OLD_NAMES[name]  # a Celery 3-style upper-case name
            if callable(value) and not isinstance(value, (dict, list, tuple)) and name not in DEFAULTS:
                continue  # functions and classes of a config module are not settings
            if type(value).__name__ == 'module':
                continue
            self._warn_if_unknown(name)
            self[name] = value

    def _warn_if_unknown(self, key: str) -> None:
        if key in DEFAULTS or not key.startswith(_NAMESPACES):
            return
        close = difflib.get_close_matches(key, DEFAULTS, n=1)
        hint = f' (did you mean {close[0]!r}?)' if close else ''
        warnings.warn(f'Unknown setting {key!r}{hint}', TaskflowWarning, stacklevel=3)

    @property
    def changes(self) -> dict[str, Any]:
        """Settings whose value differs from the default."""
        return {k: v for k, v in self.items() if k not in DEFAULTS or DEFAULTS[k].default != v}

    def first(self, *keys: str) -> Any:
        for key in keys:
            value = self.get(key)
            if value is not None:
                return value
        return None

    def table(self, with_defaults: bool = False, censored: bool = True) -> dict[str, Any]:
        """The settings as a plain dict (secrets masked), for ``inspect conf``."""
        source = self if with_defaults else self.changes
        return {k: (_censor(k, v) if censored else v) for k, v in source.items()}

    def humanize(self, with_defaults: bool = False, censored: bool = True) -> str:
        return '\n'.join(f'{k}: {v!r}' for k, v in sorted(self.table(with_defaults, censored).items()))


_SECRET_WORDS = ('password', 'secret', 'key', 'token', 'signature')


def _censor(key: str, value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _censor(str(k), v) for k, v in value.items()}
    if isinstance(value, str) and '://' in value:
        return mask_url(value)
    if any(word in key.lower() for word in _SECRET_WORDS) and key not in ('task_default_routing_key',):
        return '********' if value else value
    return value


def mask_url(url: str) -> str:
    """``redis://:secret@host/0`` -> ``redis://:**@host/0`` (for banners and logs)."""
    scheme, sep, rest = url.partition('://')
    if not sep or '@' not in rest:
        return url
    creds, _, host = rest.rpartition('@')
    user, colon, _password = creds.partition(':')
    return f'{scheme}://{user}{":**" if colon else ""}@{host}'


def seconds(value: Any) -> float | None:
    """A duration setting (seconds or ``timedelta``) as float seconds; None/0 stay None."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    return float(value) or None

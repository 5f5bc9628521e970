"""Everything a Celery process can observe of us, in one pure module (no I/O).

- the task message, protocol v2: ``task_message`` builds ``(headers, properties, body)``;
  ``request_from_message`` reads one back into the fields of a ``Context``;
- ``Context``: what a running task sees as ``self.request``;
- result metas and the exception codec, as stored under ``celery-task-meta-<id>``;
- key prefixes, node names and the names of the built-in tasks.

Wire details: ``shared/reference/CELERY-NOTES.md`` part D. Note ``timelimit`` is ``[hard, soft]``.
"""
from __future__ import annotations

import json
import os
import reprlib
import socket
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping, Sequence

from .exceptions import CELERY_NAMES, InvalidTaskError, SecurityError

# --- names shared with Celery -----------------------------------------------------------------
TASK_KEYPREFIX = 'celery-task-meta-'
GROUP_KEYPREFIX = 'celery-taskset-meta-'
CHORD_KEYPREFIX = 'chord-unlock-'

DEFAULT_QUEUE = 'celery'
DEFAULT_NODENAME_PREFIX = 'celery'

CHORD_UNLOCK = 'celery.chord_unlock'
BUILTIN_TASK_NAMES = ('celery.chord_unlock', 'celery.chord', 'celery.group', 'celery.chain',
                      'celery.map', 'celery.starmap', 'celery.chunks', 'celery.accumulate',
                      'celery.backend_cleanup')

HOSTNAME = socket.gethostname()


def new_id() -> str:
    """A random (version 4) UUID as text: task, group and delivery ids. Formatted from 16
    random bytes directly: ``str(uuid.uuid4())`` builds a ``UUID`` object on the way, which
    cost 2.5 us of the 4 per id (two ids per ``delay()``)."""
    h = '%032x' % (_from_bytes(os.urandom(16), 'big') & _UUID4_KEEP | _UUID4_SET)
    return f'{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}'


_from_bytes = int.from_bytes
_UUID4_KEEP = ~((0xf000 << 64) | (0xc000 << 48)) & ((1 << 128) - 1)  # clears version and variant bits
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


def nodename(name: str, hostname: str) -> str:
    return f'{name}@{hostname}'


def anon_nodename() -> str:
    """The ``origin`` of messages sent outside a worker: ``gen<pid>@<host>``, as Celery writes it."""
    return nodename(f'gen{os.getpid()}', HOSTNAME)


def host_format(template: str, hostname: str | None = None) -> str:
    """Expand ``%h`` (full host), ``%n`` (name part) and ``%d`` (domain part) in a node name."""
    host = hostname or HOSTNAME
    name, _, domain = host.partition('.')
    return template.replace('%h', host).replace('%n', name).replace('%d', domain).replace('%%', '%')


def default_nodename(hostname: str | None) -> str:
    """``-n`` value -> full node name: ``None`` -> ``celery@host``; ``w1`` -> ``w1@host``."""
    if not hostname:
        return nodename(DEFAULT_NODENAME_PREFIX, HOSTNAME)
    expanded = host_format(hostname)
    return expanded if '@' in expanded else nodename(expanded, HOSTNAME)


# --- dates -----------------------------------------------------------------------------------
def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def to_iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


def is_expired(expires: str | datetime | None) -> bool:
    """Whether an ``expires`` header (ISO-8601, or empty) lies in the past."""
    moment = from_iso(expires)
    return moment is not None and moment.timestamp() < time.time()


def from_iso(value: str | datetime | None) -> datetime | None:
    """Parse an ISO-8601 header value; a naive time is UTC (protocol v2 says so)."""
    if value is None or value == '':
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        parsed = datetime.fromisoformat(value.replace('Z', '+00:00'))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _as_eta(eta: datetime | str | None, countdown: float | None, now: datetime) -> str | None:
    if countdown is not None:
        return (now + timedelta(seconds=float(countdown))).isoformat()
    if isinstance(eta, str):
        return to_iso(from_iso(eta))
    return to_iso(eta)


def _as_expires(expires: datetime | timedelta | float | str | None, now: datetime) -> str | None:
    if expires is None:
        return None
    if isinstance(expires, (int, float)):
        return (now + timedelta(seconds=expires)).isoformat()
    if isinstance(expires, timedelta):
        return (now + expires).isoformat()
    if isinstance(expires, str):
        return to_iso(from_iso(expires))
    return to_iso(expires)


# --- reprs for logs and events -----------------------------------------------------------------
_repr = reprlib.Repr()
_repr.maxstring = 256
_repr.maxother = 256
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 64
_repr.maxlevel = 4


_PLAIN = frozenset((bool, float, type(None)))
_BIG_INT = 10 ** 30  # under reprlib's maxlong of 40 characters


def _plain(value: Any) -> bool:
    """Whether ``repr(value)`` is short, cheap, and what ``_repr`` would give."""
    kind = type(value)
    return (kind in _PLAIN or (kind is int and -_BIG_INT < value < _BIG_INT)
            or (kind is str and len(value) < _repr.maxstring - 10))



def saferepr(obj: Any, maxlen: int = 1024) -> str:
    """A bounded ``repr`` that never raises: for ``argsrepr``, logs and events."""
    if (type(obj) is tuple and len(obj) <= 8 and all(map(_plain, obj))) or (type(obj) is dict and not obj):
        text = repr(obj)  # the usual arguments: a few numbers and short strings, five times faster
        if len(text) <= maxlen:
            return text
    try:
        text = _repr.repr(obj)
    except Exception as exc:  # a broken __repr__ must not break publishing
        text = f'<unrepresentable {type(obj).__name__}: {exc!r}>'
    if len(text) <= maxlen:
        return text
    return text[: maxlen - 3] + '...' if maxlen >= 3 else text[:maxlen]


# --- the task message --------------------------------------------------------------------------
def task_message(
    name: str, task_id: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, *,
    countdown: float | None = None, eta: datetime | str | None = None,
    expires: datetime | timedelta | float | str | None = None,
    group_id: str | None = None, group_index: int | None = None, retries: int = 0,
    chord: Any = None, callbacks: Any = None, errbacks: Any = None, chain: Any = None,
    reply_to: str | None = None, time_limit: float | None = None, soft_time_limit: float | None = None,
    root_id: str | None = None, parent_id: str | None = None, shadow: str | None = None,
    origin: str | None = None, argsrepr: str | None = None, kwargsrepr: str | None = None,
    ignore_result: bool = False, replaced_task_nesting: int = 0,
    stamped_headers: list[str] | None = None, stamps: dict[str, Any] | None = None,
    now: Callable[[], datetime] = utcnow,
) -> tuple[dict[str, Any], dict[str, Any], tuple[Any, Any, Any]]:
    """Build a protocol v2 task message: ``(headers, properties, body)``.

    ``body`` is ``(args, kwargs, embed)``; serialising it is the producer's job.
    """
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(args, (list, tuple)):
        raise TypeError(f'task args must be a list or tuple, not {type(args).__name__}')
    if type(kwargs) is not dict and not isinstance(kwargs, Mapping):  # (typing's check is slow)
        raise TypeError(f'task kwargs must be a mapping, not {type(kwargs).__name__}')
    eta_header = expires_header = None
    if eta is not None or countdown or expires is not None:  # (no clock read for most messages)
        current = now()
        if eta is not None or countdown:
            eta_header = _as_eta(eta, countdown or None, current)
        if expires is not None:
            expires_header = _as_expires(expires, current)
    headers = {
        'lang': 'py',
        'task': name,
        'id': task_id,
        'shadow': shadow,
        'eta': eta_header,
        'expires': expires_header,
        'group': group_id,
        'group_index': group_index,
        'retries': retries,
        'timelimit': [time_limit, soft_time_limit],
        'root_id': root_id or task_id,
        'parent_id': parent_id,
        'argsrepr': argsrepr if argsrepr is not None else saferepr(args),
        'kwargsrepr': kwargsrepr if kwargsrepr is not None else saferepr(kwargs),
        'origin': origin or anon_nodename(),
        'ignore_result': ignore_result,
        'replaced_task_nesting': replaced_task_nesting,
        'stamped_headers': stamped_headers,
        'stamps': stamps or {},
    }
    properties = {'correlation_id': task_id, 'reply_to': reply_to or ''}
    embed = {'callbacks': callbacks, 'errbacks': errbacks, 'chain': chain, 'chord': chord}
    return headers, properties, (list(args), dict(kwargs), embed)


_REQUIRED_HEADERS = ('task', 'id')


def request_from_message(headers: Mapping[str, Any], properties: Mapping[str, Any], body: Any,
                         delivery_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a decoded message into the fields of a ``Context``. Raises ``InvalidTaskError``.

    Accepts protocol v2 (the ``task`` header) and protocol v1 (everything in a dict body).
    """
    delivery_info = dict(delivery_info or {})
    if headers and 'task' in headers:
        missing = [h for h in _REQUIRED_HEADERS if not headers.get(h)]
        if missing:
            raise InvalidTaskError(f'message is missing header(s) {", ".join(missing)}')
        try:
            args, kwargs, embed = body
        except (TypeError, ValueError):
            raise InvalidTaskError(f'body is not [args, kwargs, embed]: {saferepr(body, 200)}') from None
        embed = embed or {}
        if not isinstance(embed, Mapping):
            raise InvalidTaskError(f'body[2] must be a mapping of callbacks/errbacks/chain/chord, '
                                   f'not {type(embed).__name__}')
        fields = dict(headers)
    elif isinstance(body, Mapping) and 'task' in body and 'id' in body:  # protocol v1
        args, kwargs, embed = body.get('args') or (), body.get('kwargs') or {}, body
        timelimit = body.get('timelimit') or (None, None)
        fields = {'task': body['task'], 'id': body['id'], 'eta': body.get('eta'),
                  'expires': body.get('expires'), 'retries': body.get('retries', 0),
                  'group': body.get('taskset'), 'timelimit': list(timelimit)}
    else:
        raise InvalidTaskError('message has no task name (no "task" header and not a protocol v1 body)')
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, Mapping):
        raise InvalidTaskError(f'args must be a list and kwargs a mapping, got {type(args).__name__} '
                               f'and {type(kwargs).__name__}')
    fields.update(
        name=fields.pop('task'),
        args=list(args), kwargs=dict(kwargs),
        callbacks=embed.get('callbacks'), errbacks=embed.get('errbacks'),
        chain=embed.get('chain'), chord=embed.get('chord'),
        correlation_id=properties.get('correlation_id'),
        reply_to=properties.get('reply_to') or None,
        delivery_info={'exchange': delivery_info.get('exchange'),
                       'routing_key': delivery_info.get('routing_key'),
                       'priority': properties.get('priority', delivery_info.get('priority')),
                       'redelivered': delivery_info.get('redelivered')},
        headers=headers,
    )
    fields.setdefault('root_id', fields['id'])
    fields.setdefault('retries', 0)
    if fields.get('timelimit') is None:
        fields['timelimit'] = [None, None]
    return fields


class Context:
    """The request of a running task, ``self.request``: Celery's field names, ``None`` by default."""

    id: str | None = None
    name: str | None = None
    args: Any = ()
    kwargs: Any = None
    retries: int = 0
    is_eager: bool = False
    delivery_info: Any = None
    group: str | None = None
    group_index: int | None = None
    chord: Any = None
    chain: Any = None
    callbacks: Any = None
    errbacks: Any = None
    timelimit: Any = None
    origin: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    eta: str | None = None
    expires: str | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    hostname: str | None = None
    ignore_result: bool = False
    shadow: str | None = None
    stamps: Any = None
    stamped_headers: Any = None
    replaced_task_nesting: int = 0
    headers: Any = None
    properties: Any = None
    called_directly: bool = True
    utc: bool = True
    loglevel: Any = None
    logfile: Any = None
    taskset: str | None = None
    argsrepr: str | None = None
    kwargsrepr: str | None = None
    lang: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.update(*args, **kwargs)
        if 'children' not in self.__dict__:
            self.children: list[Any] = []

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__.update(*args, **kwargs)

    def clear(self) -> None:
        self.__dict__.clear()
        self.children = []

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    @property
    def group_id(self) -> str | None:
        return self.group

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f'<Context: {self.__dict__!r}>'


# --- results --------------------------------------------------------------------------------
def result_meta(task_id: str, status: str, result: Any, traceback: str | None = None,
                children: list[Any] | None = None, date_done: str | None = None,
                request: Context | None = None, extended: bool = False) -> dict[str, Any]:
    """The dict stored under ``celery-task-meta-<id>`` (before serialisation)."""
    meta: dict[str, Any] = {'status': status, 'result': result, 'traceback': traceback,
                            'children': children or [], 'date_done': date_done, 'task_id': task_id}
    if request is not None:
        if request.group:
            meta['group_id'] = request.group
        if request.parent_id:
            meta['parent_id'] = request.parent_id
        if extended:
            delivery = request.delivery_info or {}
            meta.update(name=getattr(request, 'name', None) or getattr(request, 'task', None),
                        args=request.args, kwargs=request.kwargs, worker=request.hostname,
                        retries=request.retries, queue=delivery.get('routing_key'))
    return meta


def exception_to_meta(exc: BaseException) -> dict[str, Any]:
    """An exception as Celery's JSON form: ``{exc_type, exc_message, exc_module}``."""
    cls = type(exc)
    module = cls.__module__
    if module == 'taskflow.exceptions' and cls.__qualname__ in CELERY_NAMES:
        module = 'celery.exceptions'  # Celery clients catch their own class of that name
    return {'exc_type': cls.__qualname__, 'exc_message': list(_jsonable_args(exc.args)),
            'exc_module': module}


def _jsonable_args(args: Sequence[Any]) -> list[Any]:
    """Exception args as JSON can carry them: as they are when they encode, else their repr."""
    out = []
    for arg in args:
        try:
            json.dumps(arg)
        except (TypeError, ValueError):
            arg = saferepr(arg)
        out.append(list(arg) if isinstance(arg, tuple) else arg)
    return out


def exception_from_meta(meta: Any) -> BaseException:
    """Rebuild an exception from ``{exc_type, exc_message, exc_module}`` (or pass one through).

    The class is looked up in its module only if that module is already imported (a stored
    result must never make us import code) and must be an ``Exception`` subclass: a backend
    entry naming anything else raises ``SecurityError``. Otherwise a stand-in class of the same
    name and module is made.
    """
    if isinstance(meta, BaseException):
        return meta
    if not isinstance(meta, Mapping) or 'exc_type' not in meta:
        return Exception(meta)
    name, module = meta['exc_type'], meta.get('exc_module') or 'builtins'
    if module == 'celery.exceptions' and name in CELERY_NAMES:
        module = 'taskflow.exceptions'  # ours, so `except taskflow.exceptions.ChordError` works
    message = meta.get('exc_message', ())
    args = tuple(message) if isinstance(message, (list, tuple)) else (message,)
    cls = _find_exception_class(module, name)
    if cls is None:
        cls = _stand_in(module, name)
    try:
        return cls(*args)
    except Exception:  # a constructor with another signature: set args directly
        exc = cls.__new__(cls)
        exc.args = args
        return exc


def _find_exception_class(module_name: str, qualname: str) -> type[BaseException] | None:
    module = sys.modules.get(module_name)
    if module is None:
        return None
    obj: Any = module
    for part in qualname.split('.'):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    if not (isinstance(obj, type) and issubclass(obj, BaseException)):
        raise SecurityError(f'Expected an exception class, got {module_name}.{qualname} with payload')
    return obj


_STAND_INS: dict[tuple[str, str], type[Exception]] = {}


def _stand_in(module: str, name: str) -> type[Exception]:
    key = (module, name)
    if key not in _STAND_INS:
        _STAND_INS[key] = type(name.rsplit('.', 1)[-1], (Exception,), {'__module__': module})
    return _STAND_INS[key]

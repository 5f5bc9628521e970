"""The error tree, with Celery's names so ``except celery.exceptions.X`` code ports unchanged.

    TaskflowError (alias CeleryError)
     ├── TaskPredicate            control flow raised inside a task body
     │    ├── Retry               the task was re-sent; this run ends in RETRY
     │    ├── Ignore              the worker records nothing for this run
     │    └── Reject              the worker rejects the message (optionally requeue)
     ├── TaskError
     │    ├── NotRegistered       no task of that name in the registry
     │    ├── MaxRetriesExceededError
     │    ├── TaskRevokedError
     │    ├── InvalidTaskError    a message we cannot read as a task
     │    └── ChordError          a chord's header failed
     ├── ImproperlyConfigured
     ├── BackendError (BackendGetMetaError, BackendStoreError)
     └── TimeoutError             AsyncResult.get() ran out of time

billiard's ``SoftTimeLimitExceeded``, ``TimeLimitExceeded``, ``WorkerLostError`` and kombu's
``OperationalError`` are re-exported, not wrapped: they cross process boundaries as they are.
"""
from __future__ import annotations

from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError, Terminated
from kombu.exceptions import OperationalError

__all__ = [
    'TaskflowError', 'CeleryError', 'TaskPredicate', 'Retry', 'Ignore', 'Reject', 'TaskError',
    'NotRegistered', 'AlreadyRegistered', 'MaxRetriesExceededError', 'TaskRevokedError',
    'InvalidTaskError', 'ChordError', 'ImproperlyConfigured', 'BackendError', 'BackendGetMetaError',
    'BackendStoreError', 'TimeoutError', 'QueueNotFound', 'IncompleteStream', 'SecurityError',
    'SoftTimeLimitExceeded', 'TimeLimitExceeded', 'WorkerLostError', 'Terminated',
    'OperationalError', 'TaskflowWarning', 'CPendingDeprecationWarning', 'AppLoadError',
]


#: Errors that Celery defines under the same names in ``celery.exceptions``: stored results
#: name that module, so Celery clients catch them, and we read it back as ours.
CELERY_NAMES = frozenset({
    'CeleryError', 'TaskPredicate', 'Retry', 'Ignore', 'Reject', 'TaskError', 'NotRegistered',
    'AlreadyRegistered', 'MaxRetriesExceededError', 'TaskRevokedError', 'InvalidTaskError', 'ChordError',
    'QueueNotFound', 'ImproperlyConfigured', 'SecurityError', 'BackendError', 'BackendGetMetaError',
    'BackendStoreError', 'TimeoutError', 'IncompleteStream',
})


class TaskflowWarning(UserWarning):
    """Base class for warnings we emit."""


CPendingDeprecationWarning = TaskflowWarning


class TaskflowError(Exception):
    """Base class for every taskflow error."""


CeleryError = TaskflowError


class TaskPredicate(TaskflowError):
    """Raised inside a task to steer what the worker does with this run."""


class Retry(TaskPredicate):
    """The task is to be retried: raised by ``Task.retry`` after the new message is sent.

    ``when`` is the countdown (seconds) or ETA of the next attempt; ``exc`` the cause.
    """

    def __init__(self, message: str | None = None, exc: BaseException | str | None = None,
                 when: Any = None, is_eager: bool = False, sig: Any = None, **kwargs: Any) -> None:
        self.message = message
        self.exc = exc
        self.excs = str(exc) if isinstance(exc, BaseException) else exc
        self.when = when
        self.is_eager = is_eager
        self.sig = sig
        super().__init__(message, exc, when)

    def humanize(self) -> str:
        if isinstance(self.when, (int, float)):
            return f'in {self.when}s'
        return f'at {self.when}'

    def __str__(self) -> str:
        if self.message:
            return self.message
        if self.excs:
            return f'Retry {self.humanize()}: {self.excs}'
        return f'Retry {self.humanize()}'

    def __reduce__(self) -> Any:
        return self.__class__, (self.message, self.exc, self.when)


RetryTaskError = Retry


class Ignore(TaskPredicate):
    """Do not record a state for this run (the task managed its state itself)."""


class Reject(TaskPredicate):
    """Reject the message: dropped, or sent back to the queue when ``requeue`` is true."""

    def __init__(self, reason: Any = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)

    def __repr__(self) -> str:
        return f'reject requeue={self.requeue}: {self.reason}'


class TaskError(TaskflowError):
    """A task could not be run as asked."""


class NotRegistered(KeyError, TaskError):
    """No task of this name is registered with the app."""

    def __repr__(self) -> str:
        return f'Task of kind {self.args[0]!r} never registered, please make sure it\'s imported.'

    __str__ = __repr__


class AlreadyRegistered(TaskError):
    """A task of this name is registered already."""


class MaxRetriesExceededError(TaskError):
    """``Task.retry`` was called more than ``max_retries`` times."""

    def __init__(self, *args: Any, task_args: Any = None, task_kwargs: Any = None, **kwargs: Any) -> None:
        self.task_args = task_args
        self.task_kwargs = task_kwargs
        super().__init__(*args, **kwargs)


class TaskRevokedError(TaskError):
    """The task was revoked, so it has no result."""


class InvalidTaskError(TaskError):
    """A message that cannot be read as a task (missing headers, bad body)."""


class ChordError(TaskError):
    """A task in a chord's header failed, so the body cannot run."""


class QueueNotFound(KeyError, TaskError):
    """A task was routed to a queue that is not defined (``task_create_missing_queues`` off)."""


class ImproperlyConfigured(TaskflowError):
    """The configuration cannot work (bad URL, unknown backend, ...)."""


class AppLoadError(ImproperlyConfigured):
    """The ``-A`` argument does not name an importable app."""


class SecurityError(TaskflowError):
    """A message was refused for security reasons."""


class BackendError(TaskflowError):
    """The result backend failed."""


class BackendGetMetaError(BackendError):
    """Reading a result from the backend failed."""


class BackendStoreError(BackendError):
    """Storing a result in the backend failed."""


class TimeoutError(TaskflowError):  # noqa: A001 - Celery's public name
    """``AsyncResult.get`` (or a join) did not finish within its timeout."""


class IncompleteStream(TaskflowError):
    """A stream of results ended before it was complete."""

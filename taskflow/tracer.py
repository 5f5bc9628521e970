"""``trace_task``: the only place a task body runs, in a worker child and for eager ``apply()``.

In order: signals, STARTED (when tracked), the body, then by outcome:
- success: link callbacks and the next chain step are sent, then the result is stored
  (children first, so the stored meta lists them, as Celery does);
- ``Retry``: RETRY is stored (the new message was already sent by ``Task.retry``);
- ``Ignore``: nothing stored; ``Reject``: the worker rejects the message;
- any other exception: ``autoretry_for`` may turn it into a retry; else FAILURE is stored
  and the errbacks run.
The caller gets a small ``Outcome`` tuple: it crosses the process boundary.
"""
from __future__ import annotations

import logging
import os
import pickle
import random
import time
import traceback as tb_module
from typing import Any, NamedTuple

import taskflow._state as _state
import taskflow.signals as signals
import taskflow.states as states
from .canvas import fail_signature, maybe_signature, on_chord_part_return, run_errbacks
from .exceptions import Ignore, Reject, Retry
from .protocol import Context, saferepr

__all__ = ['Outcome', 'trace_task', 'trace_from_message', 'backoff_interval']

logger = logging.getLogger('taskflow.app.trace')


class Outcome(NamedTuple):
    """What the worker needs to know about a finished run."""
    state: str
    task_id: str
    retval: Any        # the return value (eager) or its repr (worker); the exception on failure
    runtime: float
    requeue: bool = False       # for REJECTED
    traceback: str | None = None


def backoff_interval(factor: float, retries: int, maximum: float, full_jitter: bool) -> int:
    """Celery's exponential backoff: ``min(maximum, factor * 2**retries)``, with full jitter."""
    countdown = min(maximum, factor * (2 ** retries))
    if full_jitter:
        countdown = random.randrange(int(countdown) + 1)
    return max(0, int(countdown))


def _autoretry(task: Any, exc: BaseException) -> None:
    """Turn ``exc`` into a retry when the task asks for it (raises ``Retry`` or ``exc``)."""
    autoretry_for = tuple(task.autoretry_for or ())
    if not autoretry_for or not isinstance(exc, autoretry_for):
        return
    if task.dont_autoretry_for and isinstance(exc, tuple(task.dont_autoretry_for)):
        return
    options = dict(task.retry_kwargs or {})
    if task.retry_backoff:
        options['countdown'] = backoff_interval(
            factor=max(1.0, float(task.retry_backoff)), retries=task.request.retries,
            maximum=task.retry_backoff_max, full_jitter=task.retry_jitter)
    task.retry(exc=exc, **options)


def _send_children(task: Any, request: Context, retval: Any) -> None:
    """Send link callbacks and the next chain step with ``retval`` as their first argument.

    ``send_task`` records each in ``request.children`` (this task is the current one)."""
    app = task.app
    options = {'parent_id': request.id, 'root_id': request.root_id or request.id}
    priority = (request.delivery_info or {}).get('priority')
    if priority is not None:
        options['priority'] = priority
    for callback in request.callbacks or ():
        sig = maybe_signature(callback, app=app)
        sig.apply_async((retval,), **options)
    chain = request.chain
    if chain:
        next_step = maybe_signature(chain[-1], app=app)
        next_step.apply_async((retval,), chain=chain[:-1] or None, **options)


def fail_rest(app: Any, request: Context, exc: BaseException, traceback: str) -> None:
    """A failed task ends its chain: the remaining steps and its chord get the failure too."""
    for step in reversed(request.chain or ()):
        fail_signature(app, step, exc, traceback, errbacks=False)  # the failed task ran them
    if request.chord:
        on_chord_part_return(app, request, states.FAILURE, exc)


def trace_task(task: Any, request: Context, eager: bool = False) -> Outcome:
    """Run ``task`` for ``request``; store its state; return the ``Outcome``."""
    task_id: str = request.id or ''
    args, kwargs = request.args, request.kwargs
    backend = task.backend
    ignore_result = bool(request.ignore_result or task.ignore_result)
    store = not eager or task.store_eager_result
    token_task = _state.current_task_var.set(task)
    token_worker = None if eager else _state.current_worker_task_var.set(task)
    token_request = task._request_var.set(request)
    started = time.monotonic()
    signals.task_prerun.send(sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs)
    state, retval, tb_text, requeue = states.SUCCESS, None, None, False
    try:
        try:
            if task.track_started and store and not ignore_result:
                backend.mark_as_started(task_id, pid=os.getpid(), hostname=request.hostname)
            try:
                # A task class may wrap its body in its own __call__ (set up a DB session, ...).
                body = task.run if getattr(type(task).__call__, 'plain_call', False) else task
                retval = body(*args, **kwargs)
            except (Retry, Ignore, Reject):
                raise
            except Exception as exc:
                _autoretry(task, exc)
                raise
        except Reject as exc:
            state, retval, requeue = states.REJECTED, exc, exc.requeue
            signals.task_rejected.send(sender=task, message=None, exc=exc)
            logger.info('Task %s[%s] rejected: %r', task.name, task_id, exc.reason)
        except Ignore as exc:
            state, retval = states.IGNORED, exc
            logger.info('Task %s[%s] ignored', task.name, task_id)
        except Retry as exc:
            state, retval = states.RETRY, exc
            tb_text = tb_module.format_exc()
            reason = exc.exc if isinstance(exc.exc, BaseException) else exc
            if store:
                backend.mark_as_retry(task_id, reason, tb_text, request)
            task.on_retry(reason, task_id, args, kwargs, tb_text)
            signals.task_retry.send(sender=task, request=request, reason=exc, einfo=tb_text)
            logger.info('Task %s[%s] retry: %s', task.name, task_id, exc)
        except Exception as exc:
            state, retval = states.FAILURE, exc
            tb_text = tb_module.format_exc()
            if store and (not ignore_result or task.store_errors_even_if_ignored):
                backend.mark_as_failure(task_id, exc, tb_text, request)
            run_errbacks(task.app, request, exc, tb_text)
            if store:
                fail_rest(task.app, request, exc, tb_text)
            task.on_failure(exc, task_id, args, kwargs, tb_text)
            signals.task_failure.send(sender=task, task_id=task_id, exception=exc, args=args,
                                      kwargs=kwargs, traceback=tb_text, einfo=tb_text)
            logger.error('Task %s[%s] raised unexpected: %r', task.name, task_id, exc,
                         extra={'traceback': tb_text}, exc_info=not eager)
        else:
            _send_children(task, request, retval)
            if store and not ignore_result:
                backend.mark_as_done(task_id, retval, request)
            if store and request.chord:
                on_chord_part_return(task.app, request, states.SUCCESS, retval)
            task.on_success(retval, task_id, args, kwargs)
            signals.task_success.send(sender=task, result=retval)
            if logger.isEnabledFor(logging.INFO):  # (the repr costs more than the rest of this branch)
                logger.info('Task %s[%s] succeeded in %.6fs: %s', task.name, task_id,
                            time.monotonic() - started, saferepr(retval, 256))
        task.after_return(state, retval, task_id, args, kwargs, tb_text)
    except Exception as exc:  # our own bookkeeping failed (backend down, ...): report, don't die
        state, retval, tb_text = states.FAILURE, exc, tb_module.format_exc()
        logger.critical('Internal error while tracing %s[%s]: %r', task.name, task_id, exc, exc_info=True)
        signals.task_internal_error.send(sender=task, task_id=task_id, args=args, kwargs=kwargs,
                                         request=request, exception=exc, traceback=tb_text, einfo=tb_text)
    finally:
        runtime = time.monotonic() - started
        signals.task_postrun.send(sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs,
                                  retval=retval, state=state)
        task._request_var.reset(token_request)
        if token_worker is not None:
            _state.current_worker_task_var.reset(token_worker)
        _state.current_task_var.reset(token_task)
    return Outcome(state, task_id, retval, runtime, requeue, tb_text)


def trace_from_message(fields: dict[str, Any]) -> Outcome:
    """Worker entry point (runs in the pool): find the task, build its request, trace it.

    The returned ``retval`` is a repr for successes and the exception for failures, so it
    always pickles back to the worker.
    """
    app = _state.get_current_app()
    task = app.tasks[fields['name']]
    request = Context(fields, called_directly=False, is_eager=False)
    outcome = trace_task(task, request)
    retval = outcome.retval
    if outcome.state == states.SUCCESS:
        retval = saferepr(retval, 1024)
    elif isinstance(retval, BaseException):
        retval = _picklable(retval)
    return outcome._replace(retval=retval)


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return Exception(f'{type(exc).__name__}: {saferepr(exc.args, 512)}')

"""Logging set-up for the worker and beat, and ``get_task_logger``.

Records from a task logger carry ``task_id`` and ``task_name`` (``???`` outside a task), so the
worker's task format can show them.
"""
from __future__ import annotations

import logging
import sys
from typing import Any

import taskflow._state as _state
import taskflow.signals as signals

__all__ = ['get_logger', 'get_task_logger', 'setup_logging', 'TaskFormatter']

task_logger_root = logging.getLogger('taskflow.task')


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


class _TaskLoggerAdapter(logging.LoggerAdapter):
    """Adds the running task's id and name to each record."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        task = _state.get_current_task()
        request = getattr(task, 'request', None) if task is not None else None
        extra = kwargs.setdefault('extra', {})
        extra.setdefault('task_id', getattr(request, 'id', None) or '???')
        extra.setdefault('task_name', getattr(task, 'name', None) or '???')
        return msg, kwargs


def get_task_logger(name: str) -> Any:
    """A logger for task modules; its records carry ``task_id`` and ``task_name``."""
    logger = logging.getLogger(name)
    if logger.parent is logging.root or logger.parent is None:
        logger.parent = task_logger_root
    return _TaskLoggerAdapter(logger, {})


class TaskFormatter(logging.Formatter):
    """Formats ``%(task_id)s`` and ``%(task_name)s``, filling ``???`` when a record lacks them."""

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, 'task_id'):
            task = _state.get_current_task()
            request = getattr(task, 'request', None) if task is not None else None
            record.task_id = getattr(request, 'id', None) or '???'
            record.task_name = getattr(task, 'name', None) or '???'
        return super().format(record)


def setup_logging(loglevel: str | int = 'WARNING', logfile: str | None = None,
                  fmt: str | None = None, task_fmt: str | None = None, hijack_root: bool = True) -> None:
    """Configure the root logger for a worker or beat process (unless ``setup_logging`` is hooked)."""
    level = logging.getLevelName(loglevel.upper()) if isinstance(loglevel, str) else loglevel
    if not isinstance(level, int):
        raise ValueError(f'Unknown log level {loglevel!r}')
    if signals.setup_logging.send(sender=None, loglevel=level, logfile=logfile, format=fmt, colorize=False):
        return  # a receiver took over logging, as Celery allows
    if not hijack_root:
        return
    handler: logging.Handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    handler.setFormatter(TaskFormatter(fmt or '[%(asctime)s: %(levelname)s/%(processName)s] %(message)s'))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if task_fmt:
        task_handler: logging.Handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
        task_handler.setFormatter(TaskFormatter(task_fmt))
        task_logger_root.handlers[:] = [task_handler]
        task_logger_root.propagate = False
    task_logger_root.setLevel(level)
    signals.after_setup_logger.send(sender=None, logger=root, loglevel=level, logfile=logfile,
                                    format=fmt, colorize=False)
    signals.after_setup_task_logger.send(sender=None, logger=task_logger_root, loglevel=level,
                                         logfile=logfile, format=task_fmt, colorize=False)

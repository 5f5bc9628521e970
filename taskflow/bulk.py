"""Bulk jobs: one task over a huge iterable, with bounded memory, progress and resume.

``bulk_map(task, items)`` keeps at most ``window`` tasks in flight: it sends until the window is
full, then waits (one batched read of the in-flight results from the backend per poll) for
some to finish before it sends more, so a generator of millions of ids never sits in memory.

Progress is a tqdm bar (done, failed, rate, ETA). The checkpoint is a low watermark: the
number of leading items that are all finished, written atomically to a JSON file every few
seconds and on exit (Ctrl-C included). A resumed run skips those items and sends the rest;
tasks that were in flight when the run stopped are sent again, so handlers must be idempotent
(the same contract as Disqus's taskmaster, but a crash never re-runs more than one window).

Needs a result backend: completion is read from it. ``watch(group_result)`` shows the progress
of any running group the same way.
"""
from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from tqdm import tqdm

import taskflow.states as states

if TYPE_CHECKING:
    from .result import GroupResult
    from .task import Task

__all__ = ['bulk_map', 'BulkSummary', 'watch', 'iter_progress']


@dataclass
class BulkSummary:
    """What a bulk run did: counts, the checkpoint reached, and the failures (index, id, error)."""
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0          # items before the checkpoint of an earlier run
    done_upto: int = 0        # every item before this index is finished
    interrupted: bool = False
    failures: list[tuple[int, str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f'{self.succeeded} succeeded, {self.failed} failed, {self.sent} sent'
                 + (f', {self.skipped} skipped (done before)' if self.skipped else '')
                 + (' (interrupted: run again to resume)' if self.interrupted else '')]
        lines += [f'  item {index} [{task_id}]: {error}' for index, task_id, error in self.failures[:20]]
        if len(self.failures) > 20:
            lines.append(f'  ... and {len(self.failures) - 20} more')
        return '\n'.join(lines)


def _load_checkpoint(path: str | None) -> int:
    if not path or not os.path.exists(path):
        return 0
    with open(path) as fh:
        return int(json.load(fh).get('done_upto', 0))


def _save_checkpoint(path: str | None, summary: BulkSummary, task_name: str) -> None:
    if not path:
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.bulk-')
    with os.fdopen(fd, 'w') as fh:
        json.dump({'task': task_name, 'done_upto': summary.done_upto, 'failed': summary.failed,
                   'failures': summary.failures[-1000:]}, fh)
    os.replace(tmp, path)


def bulk_map(task: 'Task', items: Iterable[Any], *, window: int = 1000, checkpoint: str | None = None,
             resume: bool = True, star: bool = False, progress: bool = True, poll_interval: float = 0.05,
             checkpoint_every: float = 2.0, total: int | None = None,
             options: dict[str, Any] | None = None) -> BulkSummary:
    """Run ``task(item)`` (``task(*item)`` with ``star``) for every item, at most ``window`` at a
    time; returns a ``BulkSummary``. With ``checkpoint`` the run can be resumed after Ctrl-C or
    a crash. ``total`` (when known) gives the bar an ETA."""
    if window < 1:
        raise ValueError('window must be at least 1')
    backend = task.app.backend
    summary = BulkSummary()
    start = _load_checkpoint(checkpoint) if resume else 0
    summary.skipped = summary.done_upto = start
    pending = itertools.islice(iter(items), start, None)
    in_flight: dict[int, Any] = {}      # index -> AsyncResult
    finished: set[int] = set()          # finished indexes above the watermark
    bar = tqdm(total=total, initial=start, unit='task', disable=not progress, dynamic_ncols=True)
    next_index, last_save, exhausted = start, time.monotonic(), False
    try:
        while True:
            while not exhausted and len(in_flight) < window:
                try:
                    item = next(pending)
                except StopIteration:
                    exhausted = True
                    break
                args = tuple(item) if star else (item,)
                in_flight[next_index] = task.apply_async(args, **(options or {}))
                next_index += 1
                summary.sent += 1
            if not in_flight:
                break
            done = _collect(backend, in_flight, summary)
            if done:
                finished.update(done)
                while summary.done_upto in finished:  # advance the low watermark
                    finished.discard(summary.done_upto)
                    summary.done_upto += 1
                bar.update(len(done))
                bar.set_postfix(failed=summary.failed, in_flight=len(in_flight), refresh=False)
            else:
                time.sleep(poll_interval)
            if time.monotonic() - last_save >= checkpoint_every:
                _save_checkpoint(checkpoint, summary, task.name)
                last_save = time.monotonic()
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        bar.close()
        _save_checkpoint(checkpoint, summary, task.name)
    return summary


def _collect(backend: Any, in_flight: dict[int, Any], summary: BulkSummary) -> list[int]:
    """Remove the finished results from ``in_flight`` (one batched backend read)."""
    metas = backend.get_many_metas(r.id for r in in_flight.values())
    done = []
    for index, result in list(in_flight.items()):
        meta = metas[result.id]
        if meta['status'] not in states.READY_STATES:
            continue
        del in_flight[index]
        done.append(index)
        if meta['status'] == states.SUCCESS:
            summary.succeeded += 1
        else:
            summary.failed += 1
            summary.failures.append((index, result.id, repr(meta.get('result'))))
    return done


def iter_progress(group_result: 'GroupResult', interval: float = 0.5,
                  timeout: float | None = None) -> Iterator[tuple[int, int, int]]:
    """Yield ``(finished, failed, total)`` for a running group until every member is ready
    (or ``timeout`` seconds pass)."""
    ids = [r.id for r in group_result.results]
    backend = group_result.backend
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        metas = backend.get_many_metas(ids)
        finished = sum(m['status'] in states.READY_STATES for m in metas.values())
        failed = sum(m['status'] in states.PROPAGATE_STATES for m in metas.values())
        yield finished, failed, len(ids)
        if finished == len(ids) or (deadline is not None and time.monotonic() >= deadline):
            return
        time.sleep(interval)


def watch(group_result: 'GroupResult', interval: float = 0.5, timeout: float | None = None,
          progress: bool = True, on_update: Callable[[int, int, int], Any] | None = None) -> tuple[int, int, int]:
    """Show a progress bar for a running group; returns the last ``(finished, failed, total)``."""
    bar = tqdm(total=len(group_result.results), unit='task', disable=not progress, dynamic_ncols=True)
    last = (0, 0, len(group_result.results))
    try:
        for last in iter_progress(group_result, interval, timeout):
            bar.update(last[0] - bar.n)
            bar.set_postfix(failed=last[1], refresh=False)
            if on_update is not None:
                on_update(*last)
    finally:
        bar.close()
    return last

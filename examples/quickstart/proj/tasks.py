"""The quickstart app and its tasks.

Start a worker with ``taskflow worker -A proj.tasks -c 2 -l INFO`` (from examples/quickstart).
The URLs below are the defaults; ``TASKFLOW_BROKER_URL``, ``TASKFLOW_RESULT_BACKEND`` and any
other ``TASKFLOW_<SETTING>`` environment variable override them without code changes.
"""
from taskflow import Taskflow

app = Taskflow('proj', broker='redis://127.0.0.1:6379/0', backend='redis://127.0.0.1:6379/1')


@app.task
def add(x, y):
    return x + y


@app.task
def fail(message):
    """Always fails: the caller's ``get()`` re-raises the ``ValueError``."""
    raise ValueError(message)


@app.task(bind=True, max_retries=3, default_retry_delay=0.2)
def flaky(self, succeed_on):
    """Fails (and retries itself) until attempt ``succeed_on``; returns the number of retries."""
    if self.request.retries < succeed_on:
        raise self.retry(exc=ConnectionError(f'attempt {self.request.retries} failed'))
    return self.request.retries

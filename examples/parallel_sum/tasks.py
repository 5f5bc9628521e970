"""The parallel-sum app: one task, ``xsum``, used both for the chunks and for the total.

Start a worker from the repository root::

    python -m taskflow -A examples.parallel_sum.tasks worker -l INFO -c 2

then send the work with ``python -m examples.parallel_sum.run``. The broker and the result
backend are Redis DBs 0 and 1 unless ``TASKFLOW_BROKER_URL`` / ``TASKFLOW_RESULT_BACKEND`` say
otherwise (a chord needs a result backend: the body waits for every chunk's result).
"""
import os

from taskflow import Taskflow

app = Taskflow(
    'parallel_sum',
    broker=os.environ.get('TASKFLOW_BROKER_URL', 'redis://127.0.0.1:6379/0'),
    backend=os.environ.get('TASKFLOW_RESULT_BACKEND', 'redis://127.0.0.1:6379/1'),
)


@app.task
def xsum(numbers):
    """The sum of a list of numbers: of one chunk in the chord header, of the partial sums
    in the chord body."""
    return sum(numbers)

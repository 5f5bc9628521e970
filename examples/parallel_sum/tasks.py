"""The parallel-sum app: one task, ``xsum``, used both for the chunks and for the total.

Start a worker from the repository root::

    python -m taskflow -A examples.parallel_sum.tasks worker -l INFO -c 2

then send the work with ``python -m examples.parallel_sum.run``. With no broker configured,
the worker and ``run`` share ``./taskflow.sqlite`` (run both from the same directory); a chord
needs a result backend, and the embedded one keeps results in that file too.
"""
from taskflow import Taskflow

# No broker configured: the embedded default (./taskflow.sqlite), unless TASKFLOW_BROKER_URL /
# TASKFLOW_RESULT_BACKEND (or any other TASKFLOW_<SETTING>) say otherwise.
app = Taskflow('parallel_sum')


@app.task
def xsum(numbers):
    """The sum of a list of numbers: of one chunk in the chord header, of the partial sums
    in the chord body."""
    return sum(numbers)

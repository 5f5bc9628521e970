"""The word-count app: a mapper, a reducer and a per-key reduction.

Start a worker from the repository root::

    python -m taskflow -A examples.wordcount.tasks worker -l INFO -c 2

then send the work with ``python -m examples.wordcount.run``. With no broker configured, the
worker and ``run`` share ``./taskflow.sqlite`` (run both from the same directory).
"""
import re
from collections import Counter

from taskflow import Taskflow

# No broker configured: the embedded default (./taskflow.sqlite), unless TASKFLOW_BROKER_URL /
# TASKFLOW_RESULT_BACKEND (or any other TASKFLOW_<SETTING>) say otherwise.
app = Taskflow('wordcount')

WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")  # "don't" is one word; quotes and dashes are not words


def words(text):
    return WORD.findall(text.lower())


@app.task
def count_words(text):
    """Map: ``{word: count}`` for one document."""
    return dict(Counter(words(text)))


@app.task
def merge_counts(partial_counts):
    """Reduce: the chord body gets every mapper's counts (in document order) and adds them up."""
    total = Counter()
    for counts in partial_counts:
        total.update(counts)
    return dict(total)


@app.task
def top_words(counts, letter, n=3):
    """Per-key reduction: the ``n`` most common words starting with ``letter``, as
    ``[letter, [[word, count], ...]]`` (ties in alphabetical order)."""
    found = sorted(((w, c) for w, c in counts.items() if w.startswith(letter)), key=lambda wc: (-wc[1], wc[0]))
    return [letter, [list(wc) for wc in found[:n]]]

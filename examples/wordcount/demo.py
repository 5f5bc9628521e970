"""The README's first command (``make demo``): the MapReduce word count on the embedded default.

No Redis, no RabbitMQ: with no broker configured, the worker and this process share one SQLite
file, ``./taskflow.sqlite`` (queue and results). This starts a real worker process through the
CLI (``taskflow worker -A examples.wordcount.tasks``), sends the chord of ``run.py`` and prints
its result, then stops the worker. Exit status 0 when everything worked.

Run from anywhere: ``python examples/wordcount/demo.py``; the file is made in the current
directory. ``TASKFLOW_BROKER_URL`` / ``TASKFLOW_RESULT_BACKEND`` point both sides elsewhere.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))  # the examples package

from examples.demo_worker import run_demo  # noqa: E402
from examples.wordcount import run  # noqa: E402
from examples.wordcount.tasks import app, count_words  # noqa: E402
from taskflow.config import broker_url, result_backend_url  # noqa: E402


def main() -> int:
    print(f'broker:  {broker_url(app.conf)}\nbackend: {result_backend_url(app.conf)}', flush=True)
    return run_demo(app, 'examples.wordcount.tasks', path=ROOT, body=run.main,
                    probe=lambda: count_words.delay('ready').get(timeout=2) == {'ready': 1})


if __name__ == '__main__':
    sys.exit(main())

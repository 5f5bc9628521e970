"""Sum ``range(N)`` in parallel: split it into chunks, sum every chunk in its own task, and add
up the partial sums in the chord body, the classic Celery chord::

    chord(xsum.s(chunk) for chunk in chunks)(xsum.s())

Usage (a worker must be running, see ``tasks.py``)::

    python -m examples.parallel_sum.run [N] [CHUNKS]      # defaults: 1000000 100

Prints the total and checks it against ``N * (N - 1) // 2``; exit status 0 when it matches.
"""
import sys

from taskflow import chord

from .tasks import app, xsum

TIMEOUT = 120  # seconds to wait for the total


def split(numbers, parts):
    """``numbers`` cut into ``parts`` chunks of (nearly) equal size, in order."""
    size = -(-len(numbers) // parts)  # ceiling division
    return [numbers[i:i + size] for i in range(0, len(numbers), size)]


def main(argv):
    n = int(argv[0]) if argv else 1_000_000
    parts = int(argv[1]) if len(argv) > 1 else 100
    chunks = split(list(range(n)), parts)

    result = chord(xsum.s(chunk) for chunk in chunks)(xsum.s())
    total = result.get(timeout=TIMEOUT)
    partial_sums = result.parent.get(timeout=TIMEOUT)  # the header's results, in chunk order

    expected = n * (n - 1) // 2
    print(f'chunks: {len(chunks)} of up to {len(chunks[0]) if chunks else 0} numbers')
    print(f'first partial sums: {partial_sums[:3]}')
    print(f'sum(range({n})) = {total}')
    print('OK' if total == expected else f'WRONG: expected {expected}')
    app.close()
    return 0 if total == expected else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

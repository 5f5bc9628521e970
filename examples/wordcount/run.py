"""Word count, MapReduce style, over the documents bundled in ``texts/``::

    chain(
        chord((count_words.s(text) for text in documents), merge_counts.s()),   # map, reduce
        group(top_words.s(letter) for letter in 'abc...z'),                     # per key
    )

The chord runs one mapper per document in parallel and hands all their counts to the reducer;
the chain then passes the merged counts to every task of the group (one per first letter).

Usage (a worker must be running, see ``tasks.py``)::

    python -m examples.wordcount.run
"""
import string
import sys
from pathlib import Path

from taskflow import chain, chord, group

from .tasks import app, count_words, merge_counts, top_words

TEXTS = Path(__file__).resolve().parent / 'texts'
TIMEOUT = 60  # seconds to wait for the results


def load_documents():
    """``{name: text}`` for every ``texts/*.txt``, in name order."""
    return {path.stem: path.read_text(encoding='utf-8') for path in sorted(TEXTS.glob('*.txt'))}


def ranked(pairs):
    return ', '.join(f'{word} {count}' for word, count in pairs)


def main():
    documents = load_documents()
    workflow = chain(
        chord((count_words.s(text) for text in documents.values()), merge_counts.s()),
        group(top_words.s(letter) for letter in string.ascii_lowercase),
    )
    result = workflow.apply_async()
    per_letter = result.get(timeout=TIMEOUT)       # the group: one [letter, top words] per letter
    counts = result.parent.get(timeout=TIMEOUT)    # the reducer's merged counts

    print(f'documents: {len(documents)} ({", ".join(documents)})')
    print(f'words: {sum(counts.values())} in total, {len(counts)} distinct')
    print(f'most common: {ranked(sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))[:10])}')
    print('most common by first letter:')
    for letter, top in per_letter:
        if top:
            print(f'  {letter}: {ranked(top)}')
    app.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())

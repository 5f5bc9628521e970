"""Side-by-side benchmark of taskflow and Celery 5.7: ``python -m t.benchmarks --help``.

See README.md in this directory for what each row measures.
"""

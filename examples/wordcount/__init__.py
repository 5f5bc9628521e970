"""MapReduce word count over the documents in ``texts/``: mapper tasks count the words of one
document each, a reducer (the chord body) merges the counts, then a group of per-key reductions
finds the most common words for each first letter. See ``tasks.py`` and ``run.py``."""

"""Parallel sum: a chord of ``xsum`` tasks over chunks of a list, their partial sums added up
by one more ``xsum`` (the chord body). See ``tasks.py`` and ``run.py``."""

# taskflow: `make demo` runs the word-count chord on the embedded default (no server needed);
# `make quickstart` runs the Redis quickstart against a real worker; `make test` runs the suite;
# `make docs` builds the documentation (docs/_build/html), warnings being errors.
# Both create .venv (python3 -m venv) when it is missing, and (re)install taskflow into it with
# its dev extras when the venv is new or pyproject.toml changed.
# Another interpreter or venv path: `make test PYTHON=python3.12 VENV=/tmp/venv`.

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
REDIS_HOST ?= 127.0.0.1
REDIS_PORT ?= 6379
# seconds to wait for a Redis we started to answer
REDIS_WAIT ?= 20

.PHONY: help venv redis demo quickstart docs test

help:
	@echo "make demo   set up .venv, run the MapReduce word count with a real worker on the embedded SQLite default (no server)"
	@echo "make quickstart  set up .venv, start Redis if needed, run examples/quickstart against a real worker"
	@echo "make docs   set up .venv, build the documentation into docs/_build/html (warnings are errors)"
	@echo "make test   set up .venv, build the docs, run the unit and integration tests (needs Redis and RabbitMQ)"

$(VPY):
	$(PYTHON) -m venv $(VENV)

# (Re)install when the venv is new or pyproject.toml changed since the last install.
$(VENV)/.installed: pyproject.toml | $(VPY)
	$(VPY) -m pip install -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Start a local Redis when none answers; wait for it with a deadline.
redis:
	@if redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping 2>/dev/null | grep -q PONG; then \
		echo "Redis is running on $(REDIS_HOST):$(REDIS_PORT)"; \
	else \
		command -v redis-server >/dev/null || { echo "error: redis-server is not installed (Debian: apt-get install redis-server)" >&2; exit 1; }; \
		echo "Starting Redis on $(REDIS_HOST):$(REDIS_PORT)"; \
		redis-server --daemonize yes --bind $(REDIS_HOST) -::1 --port $(REDIS_PORT) --save "" --appendonly no >/dev/null || exit 1; \
		deadline=$$(( $$(date +%s) + $(REDIS_WAIT) )); \
		until redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping 2>/dev/null | grep -q PONG; do \
			if [ $$(date +%s) -ge $$deadline ]; then echo "error: Redis did not answer within $(REDIS_WAIT)s" >&2; exit 1; fi; \
			sleep 0.2; \
		done; \
		echo "Redis is up"; \
	fi

# No broker configured: the worker and the client share ./taskflow.sqlite (queue and results).
demo: venv
	$(VPY) examples/wordcount/demo.py

quickstart: venv redis
	$(VPY) examples/quickstart/run_demo.py

# Sphinx with -W: a warning (broken reference, bad markup) fails the build. The configuration
# reference page is generated from taskflow.config.DEFAULTS during the build (docs/_ext).
docs: venv
	$(VENV)/bin/sphinx-build -W -b html docs docs/_build/html

# The docs are built first, so CI (`make test`) fails on a documentation warning too.
# pytest exits 5 when it collected no tests: that is a failure too (any non-zero status is).
test: venv docs
	@status=0; $(VENV)/bin/pytest t/unit t/integration || status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; \
	exit $$status

# Switchyard developer entry points. `make demo` and `make test` are the README's two commands:
# each creates the virtualenv on first use, and the local Kafka/PostgreSQL start on demand.
#
# `make test` is the fast suite, every scenario but the slow ones: unit, integration, packaging,
# secured broker and three-node cluster tests, first on PYTEST_WORKERS pytest-xdist workers
# (default 4: most of a test's time is waiting on the broker; `make test PYTEST_WORKERS=2`), then
# the `serial` tests alone (they assert wall-clock bounds that other workers' load would break).
# `make test-slow` is the fault suite (tests/faults: kills, restarts, a hostile tenant) and the
# benchmark smoke, one at a time: minutes each, and timing-sensitive. CI (.ci/run) runs both;
# `python -m pytest` alone still runs everything serially. Markers: tests/conftest.py. Each part
# ends with its slowest tests (--durations): where the suite's time goes, run by run.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PYTEST_WORKERS ?= 4

.PHONY: demo test test-slow lint install clean-venv

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/switchyard demo

# Both parts always run; the target fails with the first part's failing exit code.
test: $(BIN)/.installed
	rc=0; \
	$(BIN)/python -m pytest -m "not slow and not serial" -n $(PYTEST_WORKERS) --dist loadgroup --durations=25 || rc=$$?; \
	$(BIN)/python -m pytest -m "serial and not slow" --durations=10 || { s=$$?; [ "$$rc" -ne 0 ] || rc=$$s; }; \
	exit $$rc

test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -m slow --durations=10

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean-venv:
	rm -rf $(VENV)

# Switchyard developer entry points. `make demo` and `make test` are the README's two commands:
# each creates the virtualenv on first use, and the local Kafka/PostgreSQL start on demand.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test lint install clean-venv

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/switchyard demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean-venv:
	rm -rf $(VENV)

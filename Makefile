# The two commands of the README: `make demo` and `make test`. Each bootstraps what it needs on a fresh
# Debian machine: the virtualenv with pinned packages, and a running RabbitMQ and PostgreSQL.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test chaos lint typecheck unit bench services venv clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
	  { echo "Python 3.11 is required (found $$($(PYTHON) --version)); install python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

services:
	@scripts/services.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy .

# two pytest-xdist workers, a test file each at a time (--dist loadfile: a file's module fixtures stay in one
# worker): most tests wait on the broker, a simulator or a subprocess, so two share the 2-CPU CI machine well
# --durations: the slowest tests close the output, to keep the whole run under its 20 minutes
TEST_WORKERS ?= 2
test: venv services lint typecheck
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20

# the long runs (thousands of events, fault schedules, soaks); each has a smaller version in `make test`
chaos: venv services
	$(BIN)/pytest -q -m chaos

demo: venv services
	$(BIN)/igate-bus demo

# real routes against the simulators beside a plain client (`real-route ratio:`), then the no-I/O route
# beside raw pika, whose `ratio:` line stays the last one printed
bench: venv services
	$(BIN)/python bench/bench_routes.py $(BENCH_ARGS)
	$(BIN)/python bench/bench.py

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache

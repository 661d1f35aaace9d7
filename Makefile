# The verbs of the project. Everything works on a fresh machine without Docker: `make setup` installs what
# is missing (uv + Python deps, Kafka jars from Maven Central, Redis from Debian) and is run by the others.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: setup up down reset demo test test-fast lint bench chaos docs audit status

# Bytecode is compiled ahead (the libraries once, the project's own files when they change): where the
# environment says PYTHONDONTWRITEBYTECODE, as here, every process would otherwise compile every module it
# imports each time it starts (≈ 4.7 s of CPU for a service instead of 1.5 s; the suite starts hundreds).
setup: .venv/.compiled
	@$(PY) -m compileall -q -j 0 contracts shared services infra ops sim bench tests
	@$(PY) -m infra.native prepare

.venv/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install -q uv
	@if command -v uv >/dev/null 2>&1; then uv sync --frozen -q; else python3 -m uv sync --frozen -q; fi
	@touch $@

.venv/.compiled: .venv/.synced
	@$(PY) -m compileall -q -j 0 .venv/lib || true  # an optimisation: a file it cannot compile is compiled when imported
	@touch $@

up: setup ## Kafka + Redis + every service under supervisord; starts only what is not running, never deletes data (BROKERS=3: a Kafka cluster, new stacks; PROMETHEUS=1: and Prometheus with the alert rules)
	@$(PY) -m ops.stack up

down: ## stop everything `make up` or `make demo` started; the data stays
	@$(PY) -m ops.stack down

reset: setup ## stop the stack and WIPE its data (accounts, ledgers, topics); prints what it wiped
	@$(PY) -m ops.stack reset

status: ## each process: state, pid, uptime, restarts (ARGS=--json for scripts)
	@$(PY) -m ops.stack status $(ARGS)

demo: setup ## the scripted day over the real local stack; exits non-zero if anything came out wrong
	@$(PY) -m ops.demo

test: setup ## every test; starts its own Kafka and Redis (and installs Chromium for the console's browser tests)
	@$(PY) -m infra.browser >/dev/null
	@$(PY) -m pytest -q -p no:cacheprovider

test-fast: setup ## unit and contract tests only (no servers)
	@$(PY) -m pytest -q tests/unit tests/contract

lint: setup
	@.venv/bin/ruff check .
	@.venv/bin/mypy contracts shared services infra ops sim bench

bench: setup ## throughput and latency over the real local stack, with raw Kafka/Redis capacity for scale
	@$(PY) -m bench.run

chaos: setup ## seeded bank test under faults over the real stack: make chaos SEED=<n> DURATION=<s> (defaults: random, 60)
	@$(PY) -m sim $(if $(SEED),--seed $(SEED)) --duration $(or $(DURATION),60)

docs: setup ## AsyncAPI documents, the topic page and the console's screenshot (a demo stack of its own) in docs/
	@$(PY) -m contracts.docs write
	@$(PY) -m ops.console_screenshot

audit: ## conservation audit of every province of the running stack
	@$(PY) -m ops.cli audit

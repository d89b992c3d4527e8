# Every target creates .venv and installs what it needs first, so each works on a fresh machine
# with nothing but Python 3.11 (and root for the system packages the tests need).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint proto bench loadtest check-python install test-deps clean

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory check-python
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "opamp-gateway needs Python >= 3.11; set PYTHON=python3.11")'

install: $(STAMP)

run: $(STAMP)
	$(BIN)/opamp-gateway serve

test-deps: $(STAMP)
	bash scripts/install-test-deps.sh

test: test-deps lint
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest $(PYTEST_ARGS)
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report --fail-under=$$(cat .coverage-floor)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

# Every suite: HTTP, WebSocket, config convergence; each runs even if one before it is INVALID, and
# the target fails if any does.
bench: test-deps
	bash scripts/install-bench-deps.sh
	status=0; \
	$(BIN)/python -m bench http || status=1; \
	$(BIN)/python -m bench ws || status=1; \
	$(BIN)/python -m bench config || status=1; \
	$(BIN)/python -m bench es || status=1; \
	exit $$status

clean:
	rm -rf $(VENV) .coverage .coverage.* .mypy_cache .ruff_cache .pytest_cache

# The Locust scale run (docs/loadtest.md): redis-server, gateways, Locust master and workers on this
# machine, all on loopback; e.g. make loadtest LOADTEST_ARGS="--agents 100000 --hold 600".
loadtest: test-deps
	$(BIN)/python -m loadtest.run $(LOADTEST_ARGS)

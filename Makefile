# Every target creates .venv and installs what it needs first, so each works on a fresh machine
# with nothing but Python 3.11 (and root for the system packages the tests need). Python packages come
# from requirements/lock.txt (exact versions with hashes): what was tested is what gets installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNTIME_STAMP := $(VENV)/.installed-runtime
LOCK := requirements/lock.txt
UV := $(BIN)/uv
# The lock is for the platform the project is developed and tested on (CPython 3.11, x86_64 glibc
# Linux): uv then picks only versions that ship a wheel or sdist for it. runtime.txt is resolved for every
# platform within the lock's versions, so the image also builds for arm64.
COMPILE := $(UV) pip compile --quiet --python-version 3.11 --generate-hashes
LOCK_PLATFORM := --python-platform x86_64-manylinux_2_28
# The suites that exercise the runtime dependencies: unit, store contract, interop, multi-node.
RUNTIME_TESTS := tests --ignore=tests/deploy --ignore=tests/bench --ignore=tests/loadtest
# What `make test` runs again at the dependency floors: the Elasticsearch client's (the floor most
# likely to be wrong: make_client passes options that appeared in 9.5) store, migrate and double tests.
FLOOR_TESTS := tests/store tests/test_migrate.py tests/harness/test_es_double.py
# Tests that start gateways, Locust, browsers or fuzzers: `make test` runs them beside the others.
PROCESS_TESTS := tests/integration tests/interop tests/loadtest tests/ui tests/bench tests/fuzz
FLOORS_TESTS ?= $(RUNTIME_TESTS)

.PHONY: venv run test lint proto bench loadtest check-python install test-deps clean lock test-floors test-latest test-es

# Everything the tests and tools need (the whole lock).
$(STAMP): $(LOCK) pyproject.toml
	@$(MAKE) --no-print-directory venv
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Just the gateway (`make run`): the runtime packages and the build backend, same versions as the lock.
$(RUNTIME_STAMP): requirements/runtime.txt requirements/build.txt pyproject.toml
	@$(MAKE) --no-print-directory venv
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/runtime.txt -r requirements/build.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(RUNTIME_STAMP)

venv: check-python
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "opamp-gateway needs Python >= 3.11; set PYTHON=python3.11")'

install: $(STAMP)

run: $(RUNTIME_STAMP)
	$(BIN)/opamp-gateway serve

test-deps: $(STAMP)
	bash scripts/install-test-deps.sh

test: test-deps lint
	rm -f .coverage .coverage.* build/test-processes.*
ifeq ($(strip $(PYTEST_ARGS)),)
	@# The suite waits on sockets and child processes far more than it computes (about one core busy
	@# of two): the tests that start processes run beside the rest, each half with its own coverage
	@# data (combined below); that half's output follows once both are done.
	mkdir -p build
	($(BIN)/coverage run -m pytest -q -p no:cacheprovider $(PROCESS_TESTS) > build/test-processes.log 2>&1; \
	  echo $$? > build/test-processes.rc) & \
	$(BIN)/coverage run -m pytest -p no:cacheprovider $(addprefix --ignore=,$(PROCESS_TESTS)); rest=$$?; \
	wait; echo "--- $(PROCESS_TESTS):"; cat build/test-processes.log; \
	test $$rest -eq 0 && test "$$(cat build/test-processes.rc)" -eq 0
else
	$(BIN)/coverage run -m pytest $(PYTEST_ARGS)
endif
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report --fail-under=$$(cat .coverage-floor)
	$(MAKE) --no-print-directory test-floors FLOORS_TESTS="$(FLOOR_TESTS)" PYTEST_ARGS=

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

# Regenerate the lock after a change to pyproject.toml; pins that still fit are kept. UPGRADE=1 moves
# every package to the newest version pyproject.toml allows (run `make test-latest` first).
# runtime.txt (the image's packages) and build.txt (the wheel's build backend) are cut from the same
# resolution, so their versions are the lock's.
lock: $(STAMP)
	$(COMPILE) $(LOCK_PLATFORM) pyproject.toml --all-extras $(if $(UPGRADE),--upgrade) -o $(LOCK)
	$(COMPILE) --universal pyproject.toml -c $(LOCK) -o requirements/runtime.txt
	$(BIN)/python scripts/build_requirements.py | $(COMPILE) --universal - -c $(LOCK) -o requirements/build.txt
	@echo "lock: $$(grep -c '^[a-z0-9].*==' $(LOCK)) packages in $(LOCK)"

# The lowest version of every runtime dependency pyproject.toml allows, everything else as locked
# where it fits: a floor that fails here must be raised.
test-floors: test-deps
	rm -rf .venv-floors && mkdir -p build
	$(BIN)/python scripts/floors.py build/floors
	$(UV) pip compile --quiet --python-version 3.11 pyproject.toml --all-extras \
	  --override build/floors/floors.txt -c build/floors/constraints.txt -o build/floors/lock.txt
	$(PYTHON) -m venv .venv-floors
	$(UV) pip sync --quiet --python .venv-floors/bin/python build/floors/lock.txt
	$(UV) pip install --quiet --python .venv-floors/bin/python --no-deps -e .
	.venv-floors/bin/python -m pytest -q -p no:cacheprovider $(FLOORS_TESTS) $(PYTEST_ARGS)

# The newest versions pyproject.toml allows, lint and every test: drift found here before users find
# it. Green means `make lock UPGRADE=1` is safe to commit.
test-latest: test-deps
	rm -rf .venv-latest && mkdir -p build
	$(UV) pip compile --quiet --python-version 3.11 pyproject.toml --all-extras --upgrade -o build/latest-lock.txt
	$(PYTHON) -m venv .venv-latest
	$(UV) pip sync --quiet --python .venv-latest/bin/python build/latest-lock.txt
	$(UV) pip install --quiet --python .venv-latest/bin/python --no-deps -e .
	.venv-latest/bin/ruff format --check . && .venv-latest/bin/ruff check . && .venv-latest/bin/mypy
	.venv-latest/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Every suite: HTTP, WebSocket, per-agent cost of an idle fleet, config convergence, ES requests; each runs even if one before it is INVALID, and
# the target fails if any does.
bench: test-deps
	bash scripts/install-bench-deps.sh
	status=0; \
	$(BIN)/python -m bench http || status=1; \
	$(BIN)/python -m bench ws || status=1; \
	$(BIN)/python -m bench fleet || status=1; \
	$(BIN)/python -m bench config || status=1; \
	$(BIN)/python -m bench es || status=1; \
	exit $$status

# The store contract, migrate and Elasticsearch tests against the official Elasticsearch 9 container
# (security on, an API key made for the run): what the double stands in for (docs/deployment.md).
test-es: test-deps
	bash scripts/test-es.sh

clean:
	rm -rf $(VENV) .venv-floors .venv-latest build .coverage .coverage.* .mypy_cache .ruff_cache .pytest_cache

# The Locust scale run (docs/loadtest.md): redis-server, gateways, Locust master and workers on this
# machine, all on loopback; e.g. make loadtest LOADTEST_ARGS="--agents 100000 --hold 600".
loadtest: test-deps
	$(BIN)/python -m loadtest.run $(LOADTEST_ARGS)

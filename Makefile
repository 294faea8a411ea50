# tidings: two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

# The tools that install the lock files and write them (`make lock`).
PIP_VERSION := 26.3
UV_VERSION  := 0.13.8
UV          := $(BIN)/uv
# uv runs the venv's Python; it never downloads one of its own.
export UV_PYTHON_DOWNLOADS := never
# Material for MkDocs' notice about its end of life (docs/maintaining.md says what it means).
export NO_MKDOCS_2_WARNING := 1

# Where the dependencies come from: `lock` installs requirements/*.txt, hash-checked.
# `highest` and `lowest-direct` ignore the lock and let uv resolve pyproject's ranges
# afresh (`make test-latest`, `make test-oldest`; see docs/maintaining.md).
RESOLUTION ?= lock

RUN_LOCK   := requirements/run.txt
TEST_LOCK  := requirements/test.txt
BENCH_LOCK := requirements/bench.txt
RUN_STAMP   := $(VENV)/.installed-run
TEST_STAMP  := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench

CODE := src tests examples benchmarks scripts docs/_ext
# make test-oldest leaves it empty: older releases ship other type annotations, which says
# nothing about whether tidings works with them (docs/maintaining.md).
TYPECHECK ?= $(BIN)/mypy

.PHONY: run test check pytest lint bench docs lock test-latest test-oldest system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'pip==$(PIP_VERSION)'

$(VENV)/.uv-$(UV_VERSION): | $(BIN)/python
	$(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	touch $@

# Each stamp is remade when its lock file or pyproject.toml is newer than it: the lock's
# pinned, hash-checked packages first, then tidings itself, editable and without deps.
$(RUN_STAMP): $(RUN_LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r $(RUN_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

ifeq ($(RESOLUTION),lock)
$(TEST_STAMP): $(TEST_LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r $(TEST_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@
else
$(TEST_STAMP): pyproject.toml | $(VENV)/.uv-$(UV_VERSION)
	$(UV) pip install --python $(BIN)/python --resolution $(RESOLUTION) -e '.[test,docs]'
	touch $@
endif

$(BENCH_STAMP): $(BENCH_LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r $(BENCH_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

## run: start `tidings serve` on http://127.0.0.1:8000 (memory backend, SQLite task store)
run: $(RUN_STAMP)
	$(BIN)/tidings serve

## test: install what the tests need, then lint, type-check, build the docs, run every test
test: system-deps check pytest

## check: lint, formatting, types, import contracts, and the docs build (strict: a broken
## link or anchor fails it)
check: $(TEST_STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(TYPECHECK)
	$(BIN)/lint-imports --no-logo
	$(BIN)/mkdocs build --strict

pytest: $(TEST_STAMP)
	$(BIN)/pytest -n 4

## lint: auto-fix what ruff can
lint: $(TEST_STAMP)
	$(BIN)/ruff check --fix $(CODE)
	$(BIN)/ruff format $(CODE)

## docs: the documentation site in site/ (mkdocs.yml)
docs: $(TEST_STAMP)
	$(BIN)/mkdocs build --strict

## lock: write requirements/*.txt from pyproject.toml, keeping the pins its ranges still
## allow (`make lock LOCK_ARGS=--upgrade` moves every pin to the newest release allowed)
LOCK_ARGS ?=
COMPILE := $(UV) pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock' --quiet $(LOCK_ARGS)
# The test lock is resolved first and constrains the others, so `make run` installs the very
# releases the tests ran on.
lock: | $(VENV)/.uv-$(UV_VERSION)
	$(COMPILE) --extra test --extra docs -o $(TEST_LOCK)
	$(COMPILE) -c $(TEST_LOCK) -o $(RUN_LOCK)
	$(COMPILE) --extra test --extra docs --extra bench -c $(TEST_LOCK) -o $(BENCH_LOCK)

## test-latest: `make test` in .venv-latest, on the newest releases pyproject allows
test-latest:
	rm -rf .venv-latest
	$(MAKE) -k test VENV=.venv-latest RESOLUTION=highest

## test-oldest: `make test` in .venv-oldest, on the lowest releases pyproject allows for
## tidings' direct dependencies
test-oldest:
	rm -rf .venv-oldest
	$(MAKE) -k test VENV=.venv-oldest RESOLUTION=lowest-direct TYPECHECK=

## system-deps: Debian's redis-server (with redis-sentinel, redis-tools), chromium and nginx
## when missing (root)
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v redis-sentinel >/dev/null 2>&1 || missing="$$missing redis-sentinel"; \
	command -v redis-cli >/dev/null 2>&1 || missing="$$missing redis-tools"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v nginx >/dev/null 2>&1 || missing="$$missing nginx"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

## bench: the side-by-side benchmarks (see docs/performance.md)
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-latest .venv-oldest site .mypy_cache .pytest_cache .ruff_cache \
		.hypothesis .import_linter_cache

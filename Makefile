# tidings: two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint check typecheck pytest bench docs system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[redis,test]'
	touch $(STAMP)

## run: start `tidings serve` on http://127.0.0.1:8000 (memory backend, SQLite task store)
run: $(STAMP)
	$(BIN)/tidings serve

## test: install what the tests need, then lint, type-check and run every test
test: system-deps $(STAMP) check pytest

check: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks scripts
	$(BIN)/ruff format --check src tests examples benchmarks scripts
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

## lint: auto-fix what ruff can
lint: $(STAMP)
	$(BIN)/ruff check --fix src tests examples benchmarks scripts
	$(BIN)/ruff format src tests examples benchmarks scripts

## system-deps: redis-server, chromium and nginx from Debian's packages, when missing (root)
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v nginx >/dev/null 2>&1 || missing="$$missing nginx"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

## bench: the side-by-side benchmarks (see docs/performance.md)
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]' && $(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis

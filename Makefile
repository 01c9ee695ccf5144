# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint tables clean

install: $(STAMP)

# torch is pinned to the CPU wheel (a looser spec pulls a multi-GB CUDA build).
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

demo: install
	$(BIN)/minimaxdd demo

# the test files spread over the CPU's cores (pytest-xdist; a file's tests stay in one process, so its
# module fixtures are built once): 5.6 min on 2 cores of an AVX2-only CPU, against 10.5 min in one process
test: install
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# everything but the slow tests (torchrun, torch.compile, long pipeline runs): under 2 minutes on 2 cores
test-fast: install
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m "not slow"

# import contracts (layers, no circles) and ruff; tests/test_layout.py runs both too
lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests benchmarks

# BENCHMARKS.md and README's current-results table, rebuilt from benchmarks/results/*.json (seconds: it renders
# tables and runs no benchmark; tests/benchmarks/test_tables.py fails when the committed files differ)
tables: install
	PY=$(BIN)/python bash benchmarks/build_benchmarks_md.sh
	$(BIN)/python benchmarks/tables.py readme

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

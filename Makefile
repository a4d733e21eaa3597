# Every target sets up its own virtual environment (.venv) on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SPECC   := $(BIN)/specc

.PHONY: venv demo test lint typecheck bench docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so pip takes the local CPU build instead of a multi-GB CUDA one
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

lint: $(STAMP)
	$(BIN)/ruff check specc tests benchmarks cli.py
	$(BIN)/ruff format --check specc tests benchmarks cli.py
	$(BIN)/mypy specc
	$(BIN)/lint-imports

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

docs: $(STAMP)
	$(BIN)/python -m specc.docgen --write

# side-by-side measurements; figures are recorded by hand in benchmarks/RESULTS.md (never asserted in tests)
bench: $(STAMP)
	for b in check cnn transformer export train ddp; do $(BIN)/python benchmarks/bench_$$b.py || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

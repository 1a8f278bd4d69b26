# Two entry points: `make demo` (Legato on SQLite with the example flows) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
DEMO_DB ?= sqlite:///demo.db

.PHONY: install demo test lint bench clean

$(BIN)/legato: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(BIN)/legato

install: $(BIN)/legato

demo: install
	LEGATO_DATABASE_URL=$(DEMO_DB) $(BIN)/python examples/submit_demo.py
	$(BIN)/legato up examples/flows.py --db $(DEMO_DB)

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/bench_engine.py --backend both

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo.db demo.db-*

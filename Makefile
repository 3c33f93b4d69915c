# `make demo` and `make test` work on a fresh clone with only python3, make and a package index.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all docs lint typecheck bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

# 300 requests at a demo limit of 200 a minute: a full bucket's burst, then a minute of pacing
# with the gauges moving. Its own state dir keeps simulated usage out of your real ledger, and
# starts its response cache empty: the sample's 300 bodies are distinct, so all 300 are sent.
demo: $(STAMP)
	rm -rf .demo-state samples/jobs.results.jsonl samples/.jobs.results.jsonl.batchrun
	BATCHRUN_HOME=.demo-state $(BIN)/batchrun submit samples/jobs.jsonl --simulate --rpm 200

# The quick suite in 3 processes (its time is mostly waiting on loopback servers, not CPU).
# test-all runs it the same way, then the slow tests in one process, so their multi-process
# throughput and kill -9 tests have the machine to themselves.
test: $(STAMP)
	$(BIN)/ruff check batchrun tests bench
	$(BIN)/mypy
	$(BIN)/pytest -m "not slow" -n 3

test-all: $(STAMP)
	$(BIN)/ruff check batchrun tests bench
	$(BIN)/mypy
	$(BIN)/mkdocs build --strict
	$(BIN)/pytest -m "not slow" -n 3
	$(BIN)/pytest -m slow

# The guide in docs/ as a static site in site/. --strict turns every warning (a link to a page or
# anchor that does not exist, a nav entry without its file) into a failure.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check batchrun tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/resume_speed.py
	$(BIN)/python bench/estimate_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info site

# agentio — every target creates .venv on first use, so a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: demo test lint protos bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,uvloop]'
	touch $(STAMP)

## demo: start a local agent and drive many sandboxes through it (ARGS="--sandboxes 200")
demo: $(STAMP)
	$(PY) -m agentio.demo $(ARGS)

## test: the whole test suite (what CI runs)
test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

## lint: ruff and mypy --strict
lint: $(STAMP)
	$(VENV)/bin/ruff check agentio tests examples bench
	$(VENV)/bin/mypy

## protos: regenerate the committed Python code from protos/ (needs the `protos` extra)
protos: $(STAMP)
	$(PY) -m pip install -q -e '.[test,protos]'
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) protos/generate.py

## bench: throughput figures against the local agent, with an in-run baseline
bench: $(STAMP)
	$(PY) -m bench $(ARGS)

## soak: the demo workload on many sandboxes with random faults (ARGS="--duration 600")
soak: $(STAMP)
	$(PY) -m bench.soak $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

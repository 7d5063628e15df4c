# The two commands of the README. Both install what they need into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench-serving

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) -m distill.run --program draft_verify

test: setup
	$(PY) -m pytest -q -ra

lint: setup
	$(VENV)/bin/ruff check .

bench-serving: setup
	$(PY) benchmarks/serving.py

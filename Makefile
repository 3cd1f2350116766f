# Set-up is part of each target: a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU build, so the package's torch range installs nothing more
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

.PHONY: demo test bench
demo: $(VENV)/.installed
	$(BIN)/distmatch demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -n 2

bench: $(VENV)/.installed
	$(BIN)/python bench/presets.py

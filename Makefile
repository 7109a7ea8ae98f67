# The two commands: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
JOBS := $(shell nproc 2>/dev/null || echo 2)

.PHONY: setup run test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# llama-cpp-python builds from source the first time (about 6-12 minutes on 2 cores);
# pip's wheel cache makes later installs take seconds.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(PY) -m pip install --quiet -e '.[llama,demo,test]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/edged serve

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check edged runtimes attribution sync tests bench
	$(VENV)/bin/mypy edged runtimes attribution sync

bench: setup
	$(PY) bench/bench_ledger.py
	$(PY) bench/bench_generation.py

clean:
	rm -rf $(VENV) build *.egg-info

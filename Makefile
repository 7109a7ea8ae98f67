# The two commands: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# llama.cpp's backend for llama-cpp-python: auto is CUDA when nvcc (or a CUDA toolkit) and
# an NVIDIA driver are there, Metal on Apple Silicon, else the CPU. Force one with
# EDGED_LLAMA_BACKEND=cpu|cuda|metal (see packaging/llama_wheel.py).
EDGED_LLAMA_BACKEND ?= auto
LLAMA_BACKEND := $(shell $(PYTHON) packaging/llama_wheel.py detect --backend $(EDGED_LLAMA_BACKEND))
STAMP := $(VENV)/.installed-$(LLAMA_BACKEND)
NODE_STAMP := node_modules/.installed-stamp
JOBS := $(shell nproc 2>/dev/null || echo 2)
# What the tests start for real: PostgreSQL (a throwaway cluster), Chromium (the fleet
# dashboard), Node.js + npm (solc and anvil). Installed from Debian when missing.
APT_PACKAGES := postgresql chromium nodejs npm

.PHONY: setup system-deps run test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# llama-cpp-python builds from source the first time (about 6-12 minutes on 2 cores for
# the CPU); a wheel cache keyed by the backend makes later installs take seconds.
$(STAMP): pyproject.toml packaging/llama_wheel.py | $(PY)
	@test -n "$(LLAMA_BACKEND)" || { echo "no llama.cpp backend detected" >&2; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(PY) packaging/llama_wheel.py install \
		--backend $(LLAMA_BACKEND) --python $(PY)
	$(PY) -m pip install --quiet -e '.[llama,demo,fleet,test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
		echo "installing from Debian:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/edged serve

test: system-deps setup $(NODE_STAMP)
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check edged runtimes attribution sync tests bench packaging
	$(VENV)/bin/mypy edged runtimes attribution sync

bench: setup
	$(PY) -m pip install --quiet -e '.[llama,demo,fleet,test,bench]'
	$(PY) bench/bench_ledger.py
	$(PY) bench/bench_generation.py

clean:
	rm -rf $(VENV) build *.egg-info node_modules

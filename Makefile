# `make run` and `make test` are the only set-up steps: each creates .venv and installs what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: run test browser bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Stamp files re-run pip only when the requirements change.
$(VENV)/.runtime-installed: requirements.txt requirements-lib.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt requirements.txt requirements-lib.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@ $(VENV)/.runtime-installed

# `make run` serves this machine only. SDATTN_ADDRESS=0.0.0.0 opens it to the network: read the
# README's "Deploying publicly" first (model uploads load Keras files: set
# SDATTN_ALLOW_MODEL_UPLOAD=0 for anyone but yourself).
SDATTN_ADDRESS ?= 127.0.0.1
SDATTN_PORT ?= 8501
SDATTN_ALLOW_MODEL_UPLOAD ?= 1

run: $(VENV)/.runtime-installed
	SDATTN_ALLOW_MODEL_UPLOAD=$(SDATTN_ALLOW_MODEL_UPLOAD) $(BIN)/streamlit run app.py \
	  --server.port $(SDATTN_PORT) --server.address $(SDATTN_ADDRESS)

# The end-to-end tests drive Debian's chromium; `playwright install` cannot download browsers here.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing chromium (Debian package) for the browser tests"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

# The whole suite on TensorFlow (the default backend), in TEST_WORKERS processes (pytest-xdist),
# then the `backend`-marked core tests again under JAX, in a process of their own (Keras picks
# its backend once per process).
TEST_WORKERS ?= 2
test: $(VENV)/.dev-installed browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) tests
	KERAS_BACKEND=jax $(BIN)/python -m pytest -m backend tests/test_backends.py

# The benchmark runs in a virtualenv of its own with the library's pinned dependencies only
# (requirements-lib.txt: what `pip install .[ann]` gives), not the app's or the tests': importing
# TensorFlow and Keras also imports JAX and pandas whenever they are installed, which adds
# about 170 MiB to every process's memory (benchmarks/NOTES.md, "`ann` at N = 1M: memory").
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: requirements-lib.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -r requirements-lib.txt
	touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python -m sdattn.bench --selectors dot,cosine,ann,random,window,lsh,hybrid --repeats 5 --json benchmarks/results.json --markdown benchmarks/results.md

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache

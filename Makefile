# Set-up and everyday commands. A fresh machine needs only Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench bench-gpu clean env

env: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,bench,files,plots]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jneuron demo --out demo-output

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --doctest-modules tests jneuron kernels

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

# Accelerator suite (GPU sizes; `python bench/gpu.py --small` checks it on CPU).
bench-gpu: $(STAMP)
	$(PY) bench/gpu.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache

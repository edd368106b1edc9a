# The two commands a newcomer needs: `make up` and `make test`. Both build the venv first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
STACK ?= local
PYTEST_ARGS ?=

# The Kubernetes scanner (checkov) lives in a venv of its own: it pins boto3==1.35.49,
# packaging<24 and networkx<2.7, which would downgrade the project's own. ~290 MB.
SCAN_VENV := .venv-scan
CHECKOV_VERSION := 3.3.30
CHECKOV := $(SCAN_VENV)/bin/checkov

.PHONY: venv scan-venv up down purge test lint fmt clean bench-train bench-serve bench-features bench-tune

# torch==2.13.0 first: it is the CPU build this machine has on disk; the range in
# pyproject.toml admits it, so the project install adds no CUDA packages. The sagemaker
# and kubernetes extras are the job backends' clients: the tests drive both (the SDK adds
# ~420 MB and 1-4 minutes to a fresh install).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[infra,dev,sagemaker,kubernetes,tune,features]'
	touch $(STAMP)

venv: $(STAMP)

$(CHECKOV):
	test -x $(SCAN_VENV)/bin/python || $(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)

scan-venv: $(CHECKOV)

up: venv
	$(VENV)/bin/mlinfra up --stack $(STACK)
	$(VENV)/bin/mlinfra pipeline --stack $(STACK)
	$(VENV)/bin/mlinfra status --stack $(STACK)

down: venv
	$(VENV)/bin/mlinfra down --stack $(STACK)

purge: venv
	$(VENV)/bin/mlinfra down --stack $(STACK) --purge

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# MLINFRA_CHECKOV makes the scanner test run (and fail if checkov is missing) under make.
test: venv lint scan-venv
	MLINFRA_CHECKOV=$(CHECKOV) $(PY) -m pytest -n 2 $(PYTEST_ARGS)

# Benchmarks print figures; see benchmarks/README.md. bench-serve needs wrk and Java 17.
bench-train: venv
	$(PY) benchmarks/train.py

bench-serve: venv
	$(PY) benchmarks/serve.py

bench-features: venv
	$(PY) benchmarks/features.py --small-rows 1e6,3e6

bench-tune: venv
	$(PY) benchmarks/tune.py

clean:
	rm -rf $(VENV) $(SCAN_VENV) .mlinfra .pytest_cache .ruff_cache

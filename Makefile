# difiisr: every target installs what it needs into .venv first (from nothing on a fresh machine).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_DIR ?= outputs/demo
STACK ?= 0
VARIANT ?= cuda
MODEL ?= models:/difiisr-x4@champion
SERVE_ARGS ?=

.PHONY: install test lint demo bench bench-quality clean stack-up stack-down stack-status serve image compile

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24"
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src components pipelines tests benchmarks
	$(VENV)/bin/ruff format --check src components pipelines tests benchmarks

# The lifecycle pipeline, run here with kfp.local (python pipelines/train_eval.py). STACK=1 runs it against the
# local service stack (SeaweedFS S3 + MLflow server, `make stack-up`) instead of a SQLite store under DEMO_DIR.
# DEMO_ARGS passes more options, e.g. DEMO_ARGS="--param training_steps=300".
DEMO_ARGS ?=
demo: $(STAMP)
ifeq ($(STACK),1)
	$(PY) -m difiisr.stack up
	eval "$$($(PY) -m difiisr.stack env)" && $(PY) pipelines/train_eval.py --root $(DEMO_DIR) $(DEMO_ARGS)
else
	$(PY) pipelines/train_eval.py --root $(DEMO_DIR) $(DEMO_ARGS)
endif

# Speed and memory figures (each script names the hardware). bench-quality trains tiny models on CPU (~50 min):
# the demo recipe against bicubic per seed, and gradient guidance / the spectral loss against unguided.
bench: $(STAMP)
	$(PY) benchmarks/degradation.py
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/batch.py
	$(PY) benchmarks/vqgan_memory.py

bench-quality: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/tiny_recipe.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/guidance.py

stack-up: $(STAMP)
	$(PY) -m difiisr.stack up

stack-down: $(STAMP)
	$(PY) -m difiisr.stack down

stack-status: $(STAMP)
	$(PY) -m difiisr.stack status

# REST endpoint of a registered model on 127.0.0.1:5001 (MLFLOW_TRACKING_URI must point at the registry);
# e.g. make serve MODEL=models:/difiisr-x4@champion SERVE_ARGS="--device cuda --port 5002"
serve: $(STAMP)
	$(VENV)/bin/difiisr serve $(MODEL) $(SERVE_ARGS)

image:
	@docker info >/dev/null 2>&1 || { echo "make image: no Docker daemon here; build on a machine with one"; exit 1; }
	docker build -f infra/docker/Dockerfile --build-arg VARIANT=$(VARIANT) -t $$($(PYTHON) infra/docker/image_tag.py --variant $(VARIANT)) .

clean:
	rm -rf outputs .pytest_cache .ruff_cache

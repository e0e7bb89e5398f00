# The two set-up commands the README gives: `make demo` and `make test`.
# Both create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV ?= .venv
# On these machines `pip install torch==2.13.0` takes a local CPU build; any other request
# pulls several GB of CUDA wheels. Override for a GPU machine, e.g. TORCH_SPEC="torch==2.13.0+cu128".
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.unet-med-installed
DEMO_DIR ?= outputs/demo
# `make mlflow`: tracking server on 127.0.0.1 (UI + REST API), store and artifacts in MLFLOW_DIR
MLFLOW_DIR ?= outputs/mlflow
MLFLOW_PORT ?= 5000

.PHONY: install test demo lint clean mlflow

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

demo: install
	$(VENV)/bin/unet-med presets

mlflow: install
	$(VENV)/bin/unet-med mlflow-server --output-dir $(MLFLOW_DIR) --port $(MLFLOW_PORT)

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache

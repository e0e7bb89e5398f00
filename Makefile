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

# The demo training: the 2D paper bundle on the demo data, CPU-sized (base width 16, a few epochs).
DEMO_BUNDLE := bundles/unet2d_paper
DEMO_TRAIN_ARGS ?= --base_width 16 --epochs 8 --lr 0.01 --intensity_scale 0.05 --intensity_shift 0.03

demo: install
	$(VENV)/bin/unet-med presets
	$(PY) -m monai.bundle run training --meta_file $(DEMO_BUNDLE)/configs/metadata.json \
		--config_file $(DEMO_BUNDLE)/configs/training.json --bundle_root $(DEMO_BUNDLE) \
		--logging_file $(DEMO_BUNDLE)/configs/logging.conf \
		--output_dir $(DEMO_DIR)/unet2d_paper --dataset_dir $(DEMO_DIR)/data/demo2d $(DEMO_TRAIN_ARGS)
	@echo "MLflow store: sqlite:///$(abspath $(DEMO_DIR))/unet2d_paper/mlflow.db (artifacts in $(DEMO_DIR)/unet2d_paper/mlartifacts)"
	@echo "Open its UI:  $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath $(DEMO_DIR))/unet2d_paper/mlflow.db"

mlflow: install
	$(VENV)/bin/unet-med mlflow-server --output-dir $(MLFLOW_DIR) --port $(MLFLOW_PORT)

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache

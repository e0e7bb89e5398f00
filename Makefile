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

.PHONY: install test demo lint clean mlflow ui-check

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,onnx]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

# The demo: train the 2D paper bundle on the demo data, CPU-sized (base width 16, a few epochs),
# segment the demo test scans as NIfTI files and as DICOM series with the trained model (mean
# Dice against the demo labels), then compare the runs of the demo's MLflow store.
DEMO_BUNDLE := bundles/unet2d_paper
# Everything else (normalisation, patch and batch size, base width 16 on a CPU, iterations per
# epoch) is planned from the demo data on first use, as for any user's data.
DEMO_TRAIN_ARGS ?= --epochs 8 --intensity_scale 0.05 --intensity_shift 0.03
DEMO_RUN := $(DEMO_DIR)/unet2d_paper
# the trained architecture and preprocessing come from models/network.json and models/plan.json
DEMO_INFER_ARGS := --bundle $(DEMO_BUNDLE) --checkpoint $(DEMO_RUN)/models/model.pt \
	--split test --overwrite --track

demo: install
	$(VENV)/bin/unet-med presets
	$(PY) -m monai.bundle run training --workflow_name unet_med.bundle.UNetMedWorkflow \
		--meta_file $(DEMO_BUNDLE)/configs/metadata.json \
		--config_file $(DEMO_BUNDLE)/configs/training.json --bundle_root $(DEMO_BUNDLE) \
		--logging_file $(DEMO_BUNDLE)/configs/logging.conf \
		--output_dir $(DEMO_RUN) --dataset_dir $(DEMO_DIR)/data/demo2d $(DEMO_TRAIN_ARGS)
	test -f $(DEMO_DIR)/data/demo2d_dicom/manifest.csv || \
		$(VENV)/bin/unet-med demo-data --out $(DEMO_DIR)/data/demo2d_dicom --dims 2 --format dicom
	$(VENV)/bin/unet-med infer $(DEMO_INFER_ARGS) --input $(DEMO_DIR)/data/demo2d/images \
		--output $(DEMO_DIR)/infer/nifti --reference $(DEMO_DIR)/data/demo2d/manifest.csv
	$(VENV)/bin/unet-med infer $(DEMO_INFER_ARGS) --input $(DEMO_DIR)/data/demo2d_dicom/images \
		--output $(DEMO_DIR)/infer/dicom --reference $(DEMO_DIR)/data/demo2d_dicom/manifest.csv --dicom-seg
	$(VENV)/bin/unet-med runs compare --experiment unet2d_paper \
		--csv $(DEMO_DIR)/runs_compare.csv --plot $(DEMO_DIR)/runs_compare.png
	@echo "MLflow store: $${MLFLOW_TRACKING_URI:-sqlite:///$(abspath mlflow.db)} (artifacts in ./mlartifacts),"
	@echo "shared by every run started from this folder; 'MLflow UI:' above opens its runs table."

mlflow: install
	$(VENV)/bin/unet-med mlflow-server --output-dir $(MLFLOW_DIR) --port $(MLFLOW_PORT)

# Not part of `make test`: two tiny trainings, `mlflow server` and headless Chromium (Debian's
# `chromium` package) check what a user sees in the MLflow UI; screenshots go to docs/images/.
ui-check: install
	$(PY) bench/ui_check.py --out docs/images

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache

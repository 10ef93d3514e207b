# The project's commands. Set-up is part of every target: the virtual environment is made
# and the pinned dependencies installed when missing or when requirements.lock changes.
#
#   make run                 dvc repro on the demo data (demo profile), tracked by the local MLflow server
#   make run DATA=<folder>   the same on a HAM10000 folder (official layout; CPU profile)
#   make run PROFILE=gpu     profiles/gpu.yaml instead (the study's set-up)
# The profile (profiles/<PROFILE>.yaml: demo for data/demo, cpu otherwise) is copied to params.yaml.
#   make test                the test suite
#   make ui / make server / make stop-server
#   make serve [MODEL=models:/NAME@ALIAS]   serve a registered model on 127.0.0.1:5002
#   make reproduce [DATA=…]  rerun from scratch and compare with the published metrics
#   make publish [DATA=…]    rerun from scratch and store the metrics as the published ones
#   make plots               dvc plots show, rendered offline (Vega from npm, inlined)
#   make pack [PACK=…]       train/val images + split files for a GPU node (the test split stays here)
#   make import-run BUNDLE=<folder> [RESTORE=1]   log an offline run bundle to the MLflow server

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 5000
DATA ?= data/demo
PROFILE ?= $(if $(filter data/demo data/demo/ ./data/demo ./data/demo/,$(DATA)),demo,cpu)
STORE ?= mlflow
PYTEST_ARGS ?=

BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
TRACKING_URI := http://$(HOST):$(PORT)
# Stage commands call `python`: make it the project's interpreter.
export PATH := $(BIN):$(PATH)
export MLFLOW_TRACKING_URI ?= $(TRACKING_URI)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv run test server ui stop-server serve reproduce publish bench demo-data clean-env pack import-run plots

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# tensorflow-cpu and the CUDA tensorflow wheel hold the same files: an older environment swaps.
	@if grep -q '^tensorflow-cpu==' requirements.lock && $(BIN)/python -m pip show -q tensorflow >/dev/null 2>&1; then \
		$(BIN)/python -m pip uninstall -y -q tensorflow; fi
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

server: venv
	$(BIN)/python -m pipeline.server start --host $(HOST) --port $(PORT) --store $(STORE)

ui: server
	@echo "MLflow UI: $(TRACKING_URI)/#/experiments?workflowType=machine_learning  (experiment: the base.experiment_name of params.yaml)"

stop-server: venv
	$(BIN)/python -m pipeline.server stop --store $(STORE)

# dvc exp run is dvc repro plus recording the run as an experiment; --set-param points ingest
# at DATA, so `dvc exp show` compares demo and real-data runs.
run: server
	@cmp -s profiles/$(PROFILE).yaml params.yaml || { echo "params.yaml <- profiles/$(PROFILE).yaml"; cp profiles/$(PROFILE).yaml params.yaml; }
	$(BIN)/dvc exp run --set-param ingest.data_dir=$(DATA)
	@echo
	@$(BIN)/python -m pipeline.evaluate
	@echo
	@echo "All metrics: dvc metrics show   report: reports/comparison.md   plots (offline): make plots"
	@echo "MLflow UI: $(TRACKING_URI)/#/experiments?workflowType=machine_learning  (experiment: base.experiment_name of params.yaml)"

test: venv
	@$(MAKE) --no-print-directory $(PLOTS_TEMPLATE) >/dev/null 2>&1 || echo "note: no offline plots template (npm missing?): its browser test is skipped"
	$(BIN)/python -m pytest $(PYTEST_ARGS)

MODEL ?= models:/ham10000-cnn-focal@champion
SERVE_PORT ?= 5002
serve: server
	$(BIN)/mlflow models serve -m $(MODEL) --env-manager local --host $(HOST) -p $(SERVE_PORT)

reproduce: server
	$(BIN)/python -m pipeline.reproduce --data $(DATA) --profile profiles/$(PROFILE).yaml

publish: server
	$(BIN)/python -m pipeline.reproduce --data $(DATA) --profile profiles/$(PROFILE).yaml --publish

# `dvc plots show` with the Vega scripts inlined from npm (vendor/vega): no CDN, works offline.
VEGA := vendor/vega
PLOTS_TEMPLATE := $(VEGA)/offline.html
$(VEGA)/node_modules/.package-lock.json: $(VEGA)/package.json $(VEGA)/package-lock.json
	@command -v npm >/dev/null || { echo "error: npm (Node.js) is needed once to fetch the Vega scripts for offline plots" >&2; exit 1; }
	cd $(VEGA) && npm ci --no-audit --no-fund --silent
$(PLOTS_TEMPLATE): $(VEGA)/node_modules/.package-lock.json pipeline/plots.py | $(STAMP)
	$(BIN)/python -m pipeline.plots --vendor $(VEGA)/node_modules --out $@
plots: $(PLOTS_TEMPLATE)
	$(BIN)/dvc plots show --html-template $(abspath $(PLOTS_TEMPLATE))

PACK ?= .device-data
pack: venv
	$(BIN)/python -m pipeline.pack --data $(DATA) --split $$($(BIN)/python -c "from pipeline.io import pipeline_path; print(pipeline_path('split'))") --out $(PACK)

import-run: venv
	@test -n "$(BUNDLE)" || { echo "error: name the bundle: make import-run BUNDLE=<folder>" >&2; exit 2; }
	$(BIN)/python -m pipeline.bundle check $(BUNDLE)
	@$(MAKE) --no-print-directory server
	$(BIN)/python -m pipeline.bundle import $(if $(RESTORE),--restore) $(BUNDLE)

bench: venv
	$(BIN)/python -m benchmarks.run

demo-data: venv
	$(BIN)/python -m pipeline.demo_data data/demo

clean-env:
	rm -rf $(VENV)

# The project's commands. Set-up is part of every target: the virtual environment is made
# and the pinned dependencies installed when missing or when requirements.lock changes.
#
#   make run                 dvc repro on the demo data (demo profile), tracked by the local MLflow server
#   make run DATA=<folder>   the same on a HAM10000 folder (official layout; CPU profile)
#   make run PROFILE=gpu     the gpu profile instead (the study's set-up)
#   make run SET="train_cnn_focal.dropout=0.4 ..."   one-off values on top (dvc exp run -S)
# Parameters: edit conf/config.yaml (defaults) or conf/profile/<PROFILE>.yaml (that profile's own
# keys); `dvc exp run` composes them into params.yaml (DVC's Hydra composition). PROFILE is demo
# for data/demo, cpu otherwise.
#   make test                the test suite
#   make ui / make server / make stop-server
#   make serve [MODEL=models:/NAME@ALIAS]   serve a registered Keras model on 127.0.0.1:5002 (SERVE_HOST, SERVE_PORT)
#   make seeds [N=3 SEED0=42 DATA=…]   N training seeds through DVC's experiment queue -> reports/seeds.md
#   make reproduce [DATA=…]  rerun from scratch and compare with the published metrics
#   make publish [DATA=…]    rerun from scratch and store the metrics as the published ones
#   make plots               dvc plots show, rendered offline (Vega from npm, inlined)
#   make pack [PACK=…]       train/val images + split files for a GPU node (the test split stays here)
#   make import-run BUNDLE=<folder> [RESTORE=1]   log an offline run bundle to the MLflow server
# Team mode (README, "Running it for a team"): a shared DVC remote on S3 and MLflow on PostgreSQL + S3.
#   make team-up / team-down / team-status   team servers on 127.0.0.1, or TEAM_HOST=<address> over TLS (settings: .team/client.env)
#   make team-user NAME=… ROLE=read|edit     an MLflow account; its settings in .team/users/NAME.env
#   make run TEAM=1          the pipeline against the team's servers: pulls what others computed, pushes what it computed
#   make push / make pull    dvc push / pull to / from the team remote ($(TEAM_ENV))

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 5000
DATA ?= data/demo
PROFILE ?= $(if $(filter data/demo data/demo/ ./data/demo ./data/demo/,$(DATA)),demo,cpu)
STORE ?= mlflow
PYTEST_ARGS ?=
# Test processes (pytest-xdist; each test file runs whole in one of them), 0 = in this process. 3 on 2 cores:
# a quarter of the suite waits on servers and child processes (measured: 456 tests in 395 s with 3, 547 s with 2).
TEST_WORKERS ?= 3
# Extra parameter values for `make run`, space-separated KEY=VALUE (Hydra overrides).
SET ?=
# Team mode: TEAM=1 runs the pipeline's commands with the settings in TEAM_ENV.
TEAM ?=
TEAM_DIR ?= .team
TEAM_ENV ?= $(TEAM_DIR)/client.env
TEAM_MLFLOW_PORT ?= 5010
TEAM_S3_PORT ?= 9010
TEAM_POSTGRES_PORT ?= 5433
# The address MLflow and S3 listen on: another machine's reach means HTTPS (a certificate made
# for it unless TEAM_TLS_CERT/TEAM_TLS_KEY[/TEAM_TLS_CA] name the lab's own).
TEAM_HOST ?= 127.0.0.1
TEAM_TLS_CERT ?=
TEAM_TLS_KEY ?=
TEAM_TLS_CA ?=

BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
TRACKING_URI := http://$(HOST):$(PORT)
TEAM_SERVERS := --dir $(TEAM_DIR) --host $(TEAM_HOST) --mlflow-port $(TEAM_MLFLOW_PORT) --s3-port $(TEAM_S3_PORT) \
	--postgres-port $(TEAM_POSTGRES_PORT) $(if $(TEAM_TLS_CERT),--cert $(TEAM_TLS_CERT) --key $(TEAM_TLS_KEY)) \
	$(if $(TEAM_TLS_CA),--ca $(TEAM_TLS_CA))
# Prefix of a command that runs with the team settings (env file, DVC remote `team`, checks first).
TEAM_EXEC := $(if $(TEAM),$(BIN)/python -m pipeline.team exec --env $(TEAM_ENV) --)
HASH := \#
UI_PATH := /$(HASH)/experiments?workflowType=machine_learning
UI_HINT := $(if $(TEAM),$(TEAM_EXEC) $(BIN)/python -c "import os; print('MLflow UI: ' + os.environ['MLFLOW_TRACKING_URI'] + '$(UI_PATH)')",echo "MLflow UI: $(TRACKING_URI)$(UI_PATH)  (experiment: the base.experiment_name of params.yaml)")
# Stage commands call `python`: make it the project's interpreter.
export PATH := $(BIN):$(PATH)
export MLFLOW_TRACKING_URI ?= $(TRACKING_URI)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv run test server ui stop-server serve seeds reproduce publish bench demo-data clean-env pack import-run plots \
	team-up team-down team-status team-user push pull

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
	$(BIN)/python -m pipeline.local_servers.mlflow_server start --host $(HOST) --port $(PORT) --store $(STORE)

ui: $(if $(TEAM),venv,server)
	@$(UI_HINT)

stop-server: venv
	$(BIN)/python -m pipeline.local_servers.mlflow_server stop --store $(STORE)

# dvc exp run is dvc repro plus recording the run as an experiment. It composes params.yaml from
# conf/ with the profile and DATA as overrides, so `dvc exp show` lists each run's profile and data.
# With TEAM=1: the team's MLflow; outputs another machine already pushed are pulled, not recomputed
# (--pull), and what this run computed is pushed for the others.
run: $(if $(TEAM),venv,server)
	@test -f conf/profile/$(PROFILE).yaml || { echo "error: no profile '$(PROFILE)' (conf/profile/: $$(ls conf/profile | sed 's/\.yaml//' | tr '\n' ' '))" >&2; exit 2; }
	$(TEAM_EXEC) $(BIN)/dvc exp run $(if $(TEAM),--pull) --set-param profile=$(PROFILE) --set-param ingest.data_dir=$(DATA) $(foreach item,$(SET),--set-param $(item))
	$(if $(TEAM),$(TEAM_EXEC) $(BIN)/dvc push)
	@echo
	@$(BIN)/python -m pipeline.evaluation.evaluate
	@echo
	@echo "All metrics: dvc metrics show   report: reports/comparison.md   plots (offline): make plots"
	@$(UI_HINT)

test: venv
	@$(MAKE) --no-print-directory $(PLOTS_TEMPLATE) >/dev/null 2>&1 || echo "note: no offline plots template (npm missing?): its browser test is skipped"
	$(BIN)/ruff check --quiet . && $(BIN)/ruff format --check --quiet .
	$(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

MODEL ?= models:/ham10000-cnn-focal@champion
SERVE_PORT ?= 5002
# The model server's own address (not HOST, the tracking server's): another machine's reach is a choice.
SERVE_HOST ?= 127.0.0.1
# Requests larger than this get HTTP 413 unread.
SERVE_MAX_MB ?= 16
serve: $(if $(TEAM),venv,server)
	$(TEAM_EXEC) $(BIN)/python -m pipeline.serving.server --model $(MODEL) --host $(SERVE_HOST) --port $(SERVE_PORT) \
		--max-body-mb $(SERVE_MAX_MB)

# The training-seed spread: N experiments (training seeds SEED0..SEED0+N-1 of cnn_focal and
# effnet_lite0; split and test images fixed) queued with `dvc exp run --queue`, run one at a time
# by `dvc queue start`, then summarised from `dvc exp show --json` into reports/seeds.md / .json.
N ?= 3
SEED0 ?= 42
seeds: server
	$(BIN)/python -m pipeline.reproduction.seeds queue --data $(DATA) --profile $(PROFILE) --seeds $$(seq $(SEED0) $$(( $(SEED0) + $(N) - 1 ))) --start
	$(BIN)/python -m pipeline.reproduction.seeds report --data $(DATA) --profile $(PROFILE)

reproduce: server
	$(BIN)/python -m pipeline.reproduction.reproduce --data $(DATA) --profile $(PROFILE)

publish: server
	$(BIN)/python -m pipeline.reproduction.reproduce --data $(DATA) --profile $(PROFILE) --publish

# `dvc plots show` with the Vega scripts inlined from npm (vendor/vega): no CDN, works offline.
VEGA := vendor/vega
PLOTS_TEMPLATE := $(VEGA)/offline.html
$(VEGA)/node_modules/.package-lock.json: $(VEGA)/package.json $(VEGA)/package-lock.json
	@command -v npm >/dev/null || { echo "error: npm (Node.js) is needed once to fetch the Vega scripts for offline plots" >&2; exit 1; }
	cd $(VEGA) && npm ci --no-audit --no-fund --silent
$(PLOTS_TEMPLATE): $(VEGA)/node_modules/.package-lock.json pipeline/evaluation/plots.py | $(STAMP)
	$(BIN)/python -m pipeline.evaluation.plots --vendor $(VEGA)/node_modules --out $@
plots: $(PLOTS_TEMPLATE)
	$(BIN)/dvc plots show --html-template $(abspath $(PLOTS_TEMPLATE))

# A GPU node's pack also carries its params, PACK_PROFILE composed here (the node needs no Hydra).
PACK ?= .device-data
PACK_PROFILE ?= gpu
pack: venv
	$(BIN)/python -m pipeline.data.pack --data $(DATA) --split $$($(BIN)/python -c "from pipeline.io import pipeline_path; print(pipeline_path('split'))") --out $(PACK)
	$(BIN)/python -m pipeline.profiles $(PACK_PROFILE) $(foreach item,$(SET),--set $(item)) --out $(PACK)/params.yaml

import-run: venv
	@test -n "$(BUNDLE)" || { echo "error: name the bundle: make import-run BUNDLE=<folder>" >&2; exit 2; }
	$(BIN)/python -m pipeline.tracking.bundle check $(BUNDLE)
	@$(MAKE) --no-print-directory server
	$(BIN)/python -m pipeline.tracking.bundle import $(if $(RESTORE),--restore) $(BUNDLE)

team-up: venv
	$(BIN)/python -m pipeline.team up $(TEAM_SERVERS)

team-down: venv
	$(BIN)/python -m pipeline.team down $(TEAM_SERVERS)

team-status: venv
	$(BIN)/python -m pipeline.team status $(TEAM_SERVERS)

# A team member's MLflow account (ROLE=read: see everything; edit: also log runs and register
# models of this project) and their settings file $(TEAM_DIR)/users/NAME.env (TEAM_ENV for them).
team-user: venv
	@test -n "$(NAME)" || { echo "error: name the user: make team-user NAME=<name> ROLE=read|edit" >&2; exit 2; }
	$(BIN)/python -m pipeline.team user add $(NAME) --role $(or $(ROLE),read) $(TEAM_SERVERS)

# TARGETS=split (say): only those stages' outputs and their dependencies' (default: all).
push: venv
	$(BIN)/python -m pipeline.team exec --env $(TEAM_ENV) --no-tracking -- $(BIN)/dvc push $(if $(TARGETS),--with-deps $(TARGETS))

pull: venv
	$(BIN)/python -m pipeline.team exec --env $(TEAM_ENV) --no-tracking -- $(BIN)/dvc pull $(if $(TARGETS),--with-deps $(TARGETS))

bench: venv
	$(BIN)/python -m benchmarks.run

demo-data: venv
	$(BIN)/python -m pipeline.data.demo_data data/demo

clean-env:
	rm -rf $(VENV)

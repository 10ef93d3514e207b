#!/usr/bin/env bash
# Train on a GPU node that has JAX (or PyTorch) but no TensorFlow, DVC or MLflow, and may
# have no route to the tracking server. Runs dvc.yaml's stage commands with the GPU profile
# (pipeline.training.stage_runner), records each training run as an offline bundle
# (pipeline.tracking.bundle), and leaves the test split at home (pipeline.data.pack made PACK).
#
#   PACK=.device-data RUNS=/tmp/runs scripts/train_on_gpu_node.sh train_cnn_focal train_effnet_lite0
#
# Stages named run side by side on the node's GPU (each gets a share of its memory), each
# logging to RUNS/<stage>.log. Environment:
#   PACK        what `make pack` wrote (ham10000/, split/, params.yaml)             [.device-data]
#   RUNS        where bundles and logs go                                          [required]
#   KERAS_BACKEND                                                                  [jax]
#   MAX_TRAIN_MINUTES   sets max_train_minutes of each named stage (0: no limit)    [0]
#   SETS        extra `KEY=VALUE` params edits, space-separated                   []
# The params are PACK/params.yaml (the GPU profile composed by `make pack`); every edit above
# goes into params.yaml, so the bundles record it.
# Back home: `make import-run BUNDLE=RUNS/<bundle>` logs each bundle to MLflow.
set -euo pipefail
PACK=${PACK:-.device-data}
RUNS=${RUNS:?set RUNS to the folder for the offline run bundles}
[ $# -gt 0 ] || { echo "error: name the training stages to run" >&2; exit 2; }
mkdir -p "$RUNS"
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PIPELINE_OFFLINE_RUNS=$RUNS PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PYTHON=${PYTHON:-python3}

[ -f "$PACK/params.yaml" ] || { echo "error: $PACK/params.yaml is missing: make it with make pack (it composes the GPU profile)" >&2; exit 2; }
cp "$PACK/params.yaml" params.yaml
sets=(--set base.image_size=224 --set "ingest.data_dir=$PACK/ham10000")
for stage in "$@"; do sets+=(--set "$stage.max_train_minutes=${MAX_TRAIN_MINUTES:-0}"); done
for item in ${SETS:-}; do sets+=(--set "$item"); done
$PYTHON -m pipeline.training.stage_runner "${sets[@]}" ingest
split_dir=$($PYTHON -c "from pipeline.io import pipeline_path; print(pipeline_path('split'))")
mkdir -p "$split_dir" && cp "$PACK"/split/*.csv "$split_dir"/
$PYTHON -m pipeline.training.stage_runner augment

share=$(python3 -c "print(round(0.9 / $#, 2))")
pids=()
for stage in "$@"; do
  XLA_PYTHON_CLIENT_MEM_FRACTION=$share $PYTHON -m pipeline.training.stage_runner "$stage" >"$RUNS/$stage.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for stage in "$@"; do echo "== $stage"; grep -E "^epoch |time limit|best epoch|error" "$RUNS/$stage.log" | tail -4 || true; done
exit $status

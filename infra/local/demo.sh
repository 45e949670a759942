#!/usr/bin/env bash
# `make demo`: the difiisr lifecycle on embedded defaults (synthetic data, tiny pixel-space model, local MLflow).
# STACK=1 runs it against the local service stack (SeaweedFS S3 + MLflow server) started by `make stack-up`.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=${DEMO_DIR:-outputs/demo}
DIFIISR=.venv/bin/difiisr
mkdir -p "$D"

if [ "${STACK:-0}" = "1" ]; then
  .venv/bin/python infra/local/stack.py up
  # shellcheck disable=SC1091
  eval "$(.venv/bin/python infra/local/stack.py env)"
else
  export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$(cd "$D" && pwd)/mlflow.db}
fi
echo "== tracking: $MLFLOW_TRACKING_URI"

echo "== 1/8 synthetic thermal frames (train and test splits; synthetic data, see README)"
$DIFIISR synth-data --out "$D/hr/train" --n 16 --size 256x256 --bit-depth 8 --seed 0
$DIFIISR synth-data --out "$D/hr/test" --n 4 --size 256x256 --bit-depth 8 --seed 1000

echo "== 2/8 validate HR frames"
$DIFIISR validate-data "$D/hr/train" --report-dir "$D/reports/validate_hr_train"

echo "== 3/8 degradation synthesis: bicubic protocol for train and test (the model is scored on bicubic LR)"
$DIFIISR degrade --hr "$D/hr/train" --out "$D/pairs/train" --protocol bicubic --seed 0 --device cpu
$DIFIISR degrade --hr "$D/hr/test" --out "$D/pairs/test" --protocol bicubic --seed 0 --device cpu

echo "== 4/8 validate pairs"
$DIFIISR validate-data "$D/pairs/train" --pairs --report-dir "$D/reports/validate_pairs_train"
$DIFIISR validate-data "$D/pairs/test" --pairs --report-dir "$D/reports/validate_pairs_test"

echo "== 4b/8 version the data with DVC"
if [ "${STACK:-0}" = "1" ]; then REMOTE=s3://difiisr-dvc/demo; else REMOTE="$(cd "$D" && pwd)/dvc-remote"; fi
$DIFIISR version-data --workspace "$D" --remote "$REMOTE" hr/train hr/test pairs/train pairs/test

echo "== 5/8 train the tiny pixel-space model (resumes if interrupted)"
$DIFIISR train --config train_tiny --resume \
  --set data.train_dir="$D/pairs/train" --set validation.dir="$D/pairs/test" \
  --set out_dir="$D/train" --set max_steps="${DEMO_STEPS:-200}"
RUN_ID=$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["run_id"])' "$D/train/mlflow_run.json")

echo "== 6/8 evaluate against bicubic on the test pairs (logged to run $RUN_ID)"
$DIFIISR evaluate --model "$D/train/model" --pairs "$D/pairs/test" --out "$D/eval" --run-id "$RUN_ID" --mlflow

echo "== 7/8 register (alias challenger) and promote (champion only if better)"
$DIFIISR register --run-id "$RUN_ID" --name difiisr-x4
rc=0; $DIFIISR promote --name difiisr-x4 --metric psnr_y --min-delta 0.05 || rc=$?
if [ "$rc" = 0 ]; then MODEL="models:/difiisr-x4@champion"
elif [ "$rc" = 3 ]; then MODEL="models:/difiisr-x4@challenger"; echo "   (not promoted: upscaling with the challenger)"
else exit "$rc"; fi

echo "== 8/8 batch upscale the test LR frames with $MODEL"
$DIFIISR upscale "$D/pairs/test/lr" --out "$D/upscaled" --model-dir "$MODEL" --seed 0

echo "demo finished: outputs under $D (MLflow: $MLFLOW_TRACKING_URI)"

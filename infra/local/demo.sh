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
  export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/$D/mlflow.db}
fi
echo "== tracking: $MLFLOW_TRACKING_URI"

echo "== 1/4 synthetic thermal frames (train and test splits; synthetic data, see README)"
$DIFIISR synth-data --out "$D/hr/train" --n 16 --size 256x256 --bit-depth 8 --seed 0
$DIFIISR synth-data --out "$D/hr/test" --n 4 --size 256x256 --bit-depth 8 --seed 1000

echo "== 2/4 validate HR frames"
$DIFIISR validate-data "$D/hr/train" --report-dir "$D/reports/validate_hr_train"

echo "== 3/4 degradation synthesis: Real-ESRGAN second order (train), bicubic protocol (test)"
$DIFIISR degrade --hr "$D/hr/train" --out "$D/pairs/train" --protocol realesrgan --variants 2 --crop 256 --seed 1 --device cpu
$DIFIISR degrade --hr "$D/hr/test" --out "$D/pairs/test" --protocol bicubic --seed 0 --device cpu

echo "== 4/4 validate pairs"
$DIFIISR validate-data "$D/pairs/train" --pairs --report-dir "$D/reports/validate_pairs_train"
$DIFIISR validate-data "$D/pairs/test" --pairs --report-dir "$D/reports/validate_pairs_test"

echo "demo finished: outputs under $D"

#!/bin/bash
# AMAL on SMAX 3m for 2M total env steps with the calibrated MI estimate and its per-iteration diagnostics
# (issue 14, section 3). Then: python docs/results/mi_diagnostics_3m/plot.py
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
python scripts/learning_curves.py --algos amal --scenario 3m --seeds 0 --env-steps 2000000 \
    --eval-interval 5 --eval-episodes 32 --out results/mi_diagnostics_3m > results/mi_diagnostics_3m.log 2>&1

#!/bin/bash
# MAPPO parity with JaxMARL (issue 14, section 2), the current defaults (the actor and the critic each with its own
# Adam and gradient clip), 2M env steps per run.
#   2s3z: seeds 0-2 with scripts/learning_curves.py (appends to <out>/curves.csv every iteration).
#   3m:   the MAPPO confirm trials of the issue-14 study (seeds 1000-1004, the same defaults and shape), read from
#         the study's report; the study's command is in docs/results/study_two_core_full/.
# The one-optimiser runs (the defaults before, commit c3e23ae) are in one_optimizer/: the same learning_curves.py
# line for 3m and 2s3z, seeds 0-2, `--out results/mappo_parity/<map>`.
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
OUT=results/mappo_parity_v2   # git-ignored; plot.py copies the curves it used next to itself
mkdir -p $OUT
python scripts/learning_curves.py --algos mappo --scenario 2s3z --seeds 0 1 2 --env-steps 2000000 \
    --eval-interval 5 --eval-episodes 32 --out $OUT/2s3z > $OUT/2s3z.log 2>&1
python tune_jobs/amal_vs_mappo.py --report-only results/tune/two_core_full
python docs/results/mappo_parity/plot.py --runs $OUT --study-report results/tune/two_core_full/report

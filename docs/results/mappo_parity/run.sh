#!/bin/bash
# MAPPO parity with JaxMARL (issue 14, section 2): the new defaults, 2M env steps per run, SMAX 3m seeds 0-2
# and 2s3z seeds 0-2. Each run appends to <out>/curves.csv every iteration; rerun a map's line with the
# seeds that are missing (and a new --out) if the session ended first. (The first 2s3z attempt stopped at
# RLlib's check that compares minibatch rows with env steps; MAPPOConfig now checks rows, and 2s3z was rerun
# with the same line plus --overwrite.)
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
OUT=results/mappo_parity
mkdir -p $OUT
python scripts/learning_curves.py --algos mappo --scenario 3m --seeds 0 1 2 --env-steps 2000000 \
    --eval-interval 5 --eval-episodes 32 --out $OUT/3m > $OUT/3m.log 2>&1
python scripts/learning_curves.py --algos mappo --scenario 2s3z --seeds 0 1 2 --env-steps 2000000 \
    --eval-interval 5 --eval-episodes 32 --out $OUT/2s3z > $OUT/2s3z.log 2>&1

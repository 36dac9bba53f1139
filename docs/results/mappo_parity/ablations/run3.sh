#!/bin/bash
# Issue 14, session 3: the actor and the critic each with their own Adam (eps 1e-5) and gradient clip (JaxMARL's
# two train states; `separate_critic_optimizer`, now the default) against the parity runs' first 1M steps
# (one Adam over both, the previous default; same lr schedule annealed to 0 at 2M, seed 0).
cd "$(dirname "$0")/../../../.."
. .venv/bin/activate
mkdir -p results/ablate2
COMMON="--algos mappo --seeds 0 --env-steps 1000000 --anneal-lr-steps 2000000 --eval-interval 5 --eval-episodes 32 --overwrite"
python scripts/learning_curves.py $COMMON --scenario 2s3z --out results/ablate2/sep_2s3z > results/ablate2/sep_2s3z.log 2>&1
python scripts/learning_curves.py $COMMON --scenario 3m --out results/ablate2/sep_3m > results/ablate2/sep_3m.log 2>&1
# The baseline (one Adam over both, the default before): the parity runs of commit c3e23ae (curves_*.csv at that commit) or add `--set separate_critic_optimizer=False --set adam_eps=1e-8`.

#!/bin/bash
# MAPPO baseline ablations on SMAX 3m, seed 0, 1M env steps (issue 14, section 2).
cd "$(dirname "$0")/../../../.."
. .venv/bin/activate
COMMON="--algos mappo --scenario 3m --seeds 0 --env-steps 1000000 --runners 0 --envs-per-runner 128 --train-batch 16384 --eval-interval 5 --eval-episodes 32 --overwrite"
JAXMARL="--num-minibatches 4 --anneal-lr --anneal-lr-steps 2000000 --set lr=2e-3 --set num_epochs=4 --set entropy_coeff=0.0 --set grad_clip=0.25 --set vf_loss_coeff=0.5"
python scripts/learning_curves.py $COMMON $JAXMARL --set 'actor_hidden=(128,128)' --set 'critic_hidden=(128,128)' --out results/ablate/jaxmarl_128 > results/ablate/jaxmarl_128.log 2>&1
python scripts/learning_curves.py $COMMON --out results/ablate/defaults_bigbatch > results/ablate/defaults_bigbatch.log 2>&1
python scripts/learning_curves.py $COMMON $JAXMARL --out results/ablate/jaxmarl_64 > results/ablate/jaxmarl_64.log 2>&1

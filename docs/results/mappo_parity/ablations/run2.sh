#!/bin/bash
# More MAPPO ablations on SMAX 3m (seed 0, 1M env steps), after run.sh.
cd "$(dirname "$0")/../../../.."
. .venv/bin/activate
while pgrep -f results/ablate/run.sh > /dev/null; do sleep 10; done
COMMON="--algos mappo --scenario 3m --seeds 0 --env-steps 1000000 --runners 0 --envs-per-runner 128 --train-batch 16384 --eval-interval 5 --eval-episodes 32 --overwrite"
JAXMARL="--num-minibatches 4 --anneal-lr --anneal-lr-steps 2000000 --set num_epochs=4 --set entropy_coeff=0.0 --set grad_clip=0.25 --set vf_loss_coeff=0.5 --set actor_hidden=(128,128) --set critic_hidden=(128,128)"
python scripts/learning_curves.py $COMMON $JAXMARL --set lr=4e-3 --out results/ablate/jaxmarl_128_lr4e-3 > results/ablate/jaxmarl_128_lr4e-3.log 2>&1
python scripts/learning_curves.py $COMMON $JAXMARL --set lr=2e-3 --set use_layer_norm=False --out results/ablate/jaxmarl_128_nolayernorm > results/ablate/jaxmarl_128_nolayernorm.log 2>&1
python scripts/learning_curves.py $COMMON $JAXMARL --set lr=2e-3 --set num_epochs=8 --out results/ablate/jaxmarl_128_ep8 > results/ablate/jaxmarl_128_ep8.log 2>&1

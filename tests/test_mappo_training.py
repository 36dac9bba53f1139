"""Real RLlib training runs of MAPPO with tiny budgets."""

import math

import pytest
from toy_envs import CoordinationEnv

from amal_rllib.mappo import MAPPOConfig
from amal_rllib.metrics import EPISODE_RETURN_MEAN, summarize_result

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_mappo_learns_a_tiny_cooperative_task(ray_local):
    """Random play scores ~2.5 per 10-step episode, optimal play 10; ~5k steps must clearly help."""
    config = (
        MAPPOConfig()
        .environment(CoordinationEnv)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=5)
        .training(train_batch_size_per_learner=500, minibatch_size=500, lr=3e-3)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        returns = [summarize_result(algo.train())[EPISODE_RETURN_MEAN] for _ in range(10)]
    finally:
        algo.stop()
    assert all(math.isfinite(r) for r in returns)
    assert returns[0] < 4.0
    assert returns[-1] > 6.5, returns

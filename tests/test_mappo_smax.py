"""End to end: MAPPO on SMAX 3m for two iterations, checkpoint, restore, continue."""

import math

import pytest

from amal_rllib.metrics import (
    ENTROPY,
    ENV_STEPS_SAMPLED,
    ENV_STEPS_SAMPLED_LIFETIME,
    EPISODE_LEN_MEAN,
    EVAL_WIN_RATE,
    POLICY_LOSS,
    TEAM_RETURN_MEAN,
    VF_LOSS,
    WIN_RATE,
    summarize_result,
)
from amal_rllib.presets import mappo_config

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.e2e]


def test_mappo_smax_3m_trains_checkpoints_and_resumes(ray_local, tmp_path):
    from ray.rllib.algorithms.algorithm import Algorithm

    config = mappo_config(
        "3m", num_env_runners=0, num_envs_per_env_runner=4, train_batch_size=400,
        evaluation_interval=2, evaluation_episodes=2, seed=1,
    )
    algo = config.build_algo()
    try:
        first = summarize_result(algo.train())
        second = summarize_result(algo.train())
        for key in (WIN_RATE, TEAM_RETURN_MEAN, EPISODE_LEN_MEAN, ENV_STEPS_SAMPLED, POLICY_LOSS, VF_LOSS, ENTROPY):
            assert math.isfinite(second[key]), (key, second)
        assert 0.0 <= second[WIN_RATE] <= 1.0
        assert 0.0 <= second[EVAL_WIN_RATE] <= 1.0  # greedy evaluation ran on iteration 2
        assert second[ENV_STEPS_SAMPLED] >= 400
        assert second[ENV_STEPS_SAMPLED_LIFETIME] == first[ENV_STEPS_SAMPLED] + second[ENV_STEPS_SAMPLED]
        weights = algo.get_module("shared_policy").state_dict()
        checkpoint = algo.save_to_path(str(tmp_path / "ckpt"))
    finally:
        algo.stop()

    restored = Algorithm.from_checkpoint(checkpoint)
    try:
        module = restored.get_module("shared_policy")
        for name, tensor in module.state_dict().items():
            assert (tensor == weights[name]).all(), name
        assert restored.training_iteration == 2
        third = summarize_result(restored.train())
        assert restored.training_iteration == 3
        assert math.isfinite(third[POLICY_LOSS])
        assert third[ENV_STEPS_SAMPLED_LIFETIME] > second[ENV_STEPS_SAMPLED_LIFETIME]
    finally:
        restored.stop()


def test_env_runners_use_the_cpus_ray_reserved_and_the_driver_learner_every_core(ray_local, monkeypatch):
    """A remote env runner (num_cpus_per_env_runner=1) runs torch on 1 thread; the learner in the driver that
    built the algorithm (no OMP_NUM_THREADS) on every core the driver may use."""
    import os

    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU threads are left alone when CUDA is present")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    algo = mappo_config(
        "3m", num_env_runners=1, num_envs_per_env_runner=2, train_batch_size=100, evaluation_interval=None
    ).build_algo()
    try:
        remote = algo.env_runner_group.foreach_env_runner(lambda runner: torch.get_num_threads(), local_env_runner=False)
        assert remote == [1]
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
    finally:
        algo.stop()

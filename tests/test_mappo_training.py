"""Real RLlib training runs of MAPPO with tiny budgets."""

import math
import time

import numpy as np
import pytest
from toy_envs import CoordinationEnv

from amal_rllib.mappo import MAPPOConfig
from amal_rllib.metrics import TEAM_RETURN_MEAN, summarize_result

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
        returns = [summarize_result(algo.train())[TEAM_RETURN_MEAN] for _ in range(10)]
    finally:
        algo.stop()
    assert all(math.isfinite(r) for r in returns)
    assert returns[0] < 4.0
    assert returns[-1] > 6.5, returns


def _flat(state: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}/")
        else:
            out[prefix + key] = np.asarray(value)
    return out


def test_restore_reaches_runners_even_while_a_sync_is_in_flight(ray_local, tmp_path):
    """RLlib's post-restore sync is an async request that is dropped while one of its tag is in flight."""
    from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE

    from amal_rllib.presets import mappo_config

    config = mappo_config(
        "3m", num_env_runners=1, num_envs_per_env_runner=2, train_batch_size=100, evaluation_interval=None, seed=0
    ).training(lr=3e-2)
    trained = config.build_algo()
    try:
        trained.train()
        path = trained.save_to_path(str(tmp_path / "ckpt"))
    finally:
        trained.stop()
    fresh = config.build_algo()
    try:
        # The build-time sync is still unfetched here; RLlib would drop any new request of its tag right now.
        fresh.env_runner_group.fetch_ready_async_reqs(tags="set_state", timeout_seconds=None)
        # A slow request with the sync's tag, as a busy runner still working on the build-time sync would hold.
        sent = fresh.env_runner_group.foreach_env_runner_async(lambda runner: time.sleep(3.0), tag="set_state")
        assert sent == 1
        fresh.restore_from_path(path)
        learner = _flat(
            fresh.learner_group.get_state(
                components=f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}", inference_only=True
            )[COMPONENT_LEARNER][COMPONENT_RL_MODULE]
        )
        (runner,) = fresh.env_runner_group.foreach_env_runner(
            lambda r: r.module.get_state(inference_only=True), local_env_runner=False
        )
        runner = _flat(runner)
        assert set(runner) <= set(learner) and runner
        assert all(np.allclose(runner[k], learner[k]) for k in runner), "the runner kept its initial weights"
    finally:
        fresh.stop()


def test_mappo_reports_the_study_metrics_and_checkpoints_the_greedy_history(ray_local, tmp_path):
    """One stop key for both algorithms (total env steps = primary for MAPPO) and flat greedy win rates."""
    from amal_rllib.mappo import MAPPO
    from amal_rllib.metrics import (
        ENV_STEPS_PRIMARY_LIFETIME,
        ENV_STEPS_TOTAL_LIFETIME,
        GREEDY_EVALUATIONS,
        GREEDY_WIN_RATE,
        GREEDY_WIN_RATE_MEAN,
    )
    from amal_rllib.presets import mappo_config

    config = mappo_config("3m", num_env_runners=0, num_envs_per_env_runner=4, train_batch_size=200,
                          evaluation_interval=2, evaluation_episodes=4)
    algo = config.build_algo()
    try:
        results = [algo.train() for _ in range(4)]
        path = algo.save_to_path(str(tmp_path / "ckpt"))
    finally:
        algo.stop()
    for r in results:
        primary = r["env_runners"]["num_env_steps_sampled_lifetime"]
        assert r[ENV_STEPS_TOTAL_LIFETIME] == r[ENV_STEPS_PRIMARY_LIFETIME] == primary
    assert [GREEDY_WIN_RATE in r for r in results] == [False, True, False, True]  # only iterations that evaluated
    assert math.isnan(results[0][GREEDY_WIN_RATE_MEAN])  # no evaluation yet
    greedy = [results[1][GREEDY_WIN_RATE], results[3][GREEDY_WIN_RATE]]
    assert greedy[0] == results[1]["evaluation"]["env_runners"]["battle_won"]
    assert results[3][GREEDY_WIN_RATE_MEAN] == pytest.approx(np.mean(greedy))
    assert results[3][GREEDY_EVALUATIONS] == 2
    restored = MAPPO.from_checkpoint(path)
    try:
        assert restored._greedy_win_rates == pytest.approx(greedy)
    finally:
        restored.stop()

"""Real AMAL training on SMAX 3m with auxiliary env runners (local Ray)."""

import math
import time

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

from amal_rllib.amal import AMAL
from amal_rllib.amal.algorithm import aux_envs_per_runner
from amal_rllib.amal.connectors import is_auxiliary_episode_id
from amal_rllib.amal.rollouts import actor_state_from_flat
from amal_rllib.core.mi import masked_log_policy
from amal_rllib.mappo.config import SHARED_POLICY
from amal_rllib.mappo.module import DEFAULT_MODEL_CONFIG, build_mlp
from amal_rllib.metrics import (
    AUX_BUFFER_SAMPLE_TIMER,
    AUX_COLLECT_TIMER,
    AUX_LAUNCH_TIMER,
    CEM_BEST_FITNESS,
    CEM_GENERATION,
    ENV_STEPS_AUX,
    ENV_STEPS_AUX_LIFETIME,
    ENV_STEPS_PRIMARY_LIFETIME,
    ENV_STEPS_SAMPLED_LIFETIME,
    ENV_STEPS_TOTAL_LIFETIME,
    WORLD_MODEL_LOSS,
    summarize_amal_result,
)
from amal_rllib.presets import amal_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def actor_logp(flat, layout, episodes):
    """Log-probs of the actions in ``episodes`` under the actor with flat parameters ``flat``."""
    shapes = dict(layout)
    in_dim = next(shape[1] for name, shape in layout if len(shape) == 2)
    cfg = DEFAULT_MODEL_CONFIG
    actor = build_mlp(in_dim, cfg["actor_hidden"], shapes[layout[-1][0]][0], cfg["use_layer_norm"], 0.01)
    actor.load_state_dict(
        {k[len("actor.") :]: torch.as_tensor(v) for k, v in actor_state_from_flat(flat, layout).items()}
    )
    out, stored = [], []
    for episode in episodes:
        for sa in episode.agent_episodes.values():
            obs = sa.get_observations()
            with torch.no_grad():
                log_pi = masked_log_policy(
                    actor(torch.tensor(np.array(obs["obs"][:-1]))), torch.tensor(np.array(obs["action_mask"][:-1]))
                )
            actions = torch.as_tensor(np.asarray(sa.get_actions())).long()
            out.append(log_pi.gather(1, actions[:, None]).squeeze(1).numpy())
            stored.append(np.asarray(sa.get_extra_model_outputs(Columns.ACTION_LOGP)))
    return np.concatenate(out), np.concatenate(stored)


def test_amal_end_to_end_with_auxiliary_runners(ray_local, tmp_path):
    config = amal_config(
        "3m",
        num_env_runners=0,
        num_envs_per_env_runner=4,
        train_batch_size=400,
        evaluation_interval=2,
        evaluation_episodes=2,
        num_aux_env_runners=2,
        cem_population_size=4,
        evolution_frequency=2,
        seed=0,
    ).training(num_epochs=2)
    assert config.aux_rollout_overlap == "learner"  # the default: candidates play during the learner update
    algo = config.build_algo()
    try:
        # Iteration 1 sends candidates 0, 1 of generation 1 out; iteration 2 collects them and sends 2, 3
        # (drawn around the actor after update 1); iteration 3 collects 2, 3 and completes the generation.
        results = [summarize_amal_result(algo.train())]
        assert results[0][ENV_STEPS_AUX] == 0 and algo._ledger.in_flight == [0, 1]
        phi_at_launch = algo._phi()
        results.append(summarize_amal_result(algo.train()))
        raw = algo.train()
        results.append(summarize_amal_result(raw))
        phi = algo._phi()

        # 6. Each candidate played whole episodes in an auxiliary runner with its own weights.
        rollouts = algo.last_aux_rollouts
        assert [(r.candidate, r.generation) for r in rollouts] == [(2, 1), (3, 1)]  # second half of generation 1
        for rollout in rollouts:
            episodes = rollout.episodes
            assert episodes and all(e.is_done for e in episodes)
            assert all(is_auxiliary_episode_id(e.id_) for e in episodes)
            assert np.allclose(rollout.params, phi_at_launch + rollout.offset)
            assert not np.allclose(rollout.params, phi)
            own, stored = actor_logp(rollout.params, algo._actor_layout, episodes)
            assert np.allclose(own, stored, atol=1e-5), "every step was played by the candidate"
            primary, _ = actor_logp(phi, algo._actor_layout, episodes)
            assert not np.allclose(primary, stored, atol=1e-3)
            # All of a runner's candidates play at once: one per runner here (2 candidates, 2 runners), each on
            # aux_episodes_per_candidate sub-envs, exactly that many whole episodes, one from each sub-env.
            assert len(episodes) == algo.config.aux_episodes_per_candidate
        assert algo._ledger.in_flight == [0, 1]  # generation 2 is out while the checkpoint below is taken
        assert aux_envs_per_runner(algo.config) == algo.config.aux_episodes_per_candidate == 4
        assert algo.aux_env_runner_group.foreach_env_runner(
            lambda r: (r.num_envs, r.can_sample_with_policy()), local_env_runner=False
        ) == [(4, True), (4, True)]

        # Env steps: primary and auxiliary counted apart, the total is their sum.
        last = results[-1]
        assert last[ENV_STEPS_PRIMARY_LIFETIME] == last[ENV_STEPS_SAMPLED_LIFETIME] >= 1200
        assert last[ENV_STEPS_AUX] > 0
        assert last[ENV_STEPS_TOTAL_LIFETIME] == last[ENV_STEPS_PRIMARY_LIFETIME] + last[ENV_STEPS_AUX_LIFETIME]
        assert last[CEM_GENERATION] == 1 and math.isfinite(last[CEM_BEST_FITNESS])
        for name in (
            "win_rate",
            "team_return_mean",
            "policy_loss",
            "vf_loss",
            "entropy",
            WORLD_MODEL_LOSS,
            "mi_estimate_mean",
            "mi_bonus_std",
            "aux_sample_fraction",
            "eval_win_rate",
        ):
            assert math.isfinite(last[name]), name
        assert last["learner_device"] == "cpu"
        for timer in (AUX_LAUNCH_TIMER, AUX_COLLECT_TIMER, AUX_BUFFER_SAMPLE_TIMER):  # this iteration's seconds
            assert 0.0 < raw["timers"][timer] < raw["time_this_iter_s"], timer

        # 7. Checkpoint -> restore -> continue.
        path = algo.save_to_path(str(tmp_path / "ckpt"))
        cem_state, aux_lifetime = algo.cem.get_state(), last[ENV_STEPS_AUX_LIFETIME]
        wm = {
            k: v.clone() for k, v in algo.learner_group._learner.module[SHARED_POLICY].world_model.state_dict().items()
        }
    finally:
        algo.stop()

    restored = AMAL.from_checkpoint(path)
    try:
        assert np.array_equal(restored.cem.get_state()["mean"], cem_state["mean"])
        assert restored.cem.generation == cem_state["generation"]
        restored_wm = restored.learner_group._learner.module[SHARED_POLICY].world_model.state_dict()
        assert all(torch.equal(wm[k], restored_wm[k]) for k in wm)
        assert restored._ledger.queue == [0, 1, 2, 3]  # the candidates that were out are played again
        restored.train()
        again = summarize_amal_result(restored.train())
        assert [r.candidate for r in restored.last_aux_rollouts] == [0, 1]
        assert again[ENV_STEPS_AUX_LIFETIME] > aux_lifetime
        assert math.isfinite(again["policy_loss"])
    finally:
        restored.stop()


def test_amal_under_tune_reserves_and_uses_its_auxiliary_runners(ray_local, tmp_path):
    """Tune places the trial in a placement group: the auxiliary runners must get bundles of their own."""
    from ray import tune

    from amal_rllib.amal import AMALConfig
    from amal_rllib.mappo import MAPPO

    config = amal_config(
        "3m", num_env_runners=0, num_envs_per_env_runner=4, train_batch_size=200, evaluation_interval=None,
        num_aux_env_runners=1, cem_population_size=4, evolution_frequency=2, seed=0,
        aux_rollout_overlap="sampling",  # sent and collected within the one iteration this trial runs
    )
    bundles = AMAL.default_resource_request(config).bundles
    assert len(bundles) == len(MAPPO.default_resource_request(config).bundles) + 1
    assert bundles[-1] == {"CPU": 1}
    assert isinstance(AMAL.get_default_config(), AMALConfig)

    tuner = tune.Tuner(
        AMAL,
        param_space=config,
        run_config=tune.RunConfig(stop={"training_iteration": 1}, storage_path=str(tmp_path), verbose=0),
    )
    result = tuner.fit().get_best_result(metric=ENV_STEPS_TOTAL_LIFETIME, mode="max")
    assert result.error is None
    metrics = result.metrics
    assert metrics[ENV_STEPS_AUX] > 0
    assert metrics[ENV_STEPS_TOTAL_LIFETIME] == metrics[ENV_STEPS_PRIMARY_LIFETIME] + metrics[ENV_STEPS_AUX_LIFETIME]


def test_a_hung_auxiliary_runner_is_restarted_and_its_candidates_played_again(ray_local, caplog):
    config = amal_config(
        "3m",
        num_env_runners=0,
        num_envs_per_env_runner=4,
        train_batch_size=200,
        evaluation_interval=None,
        num_aux_env_runners=1,
        cem_population_size=4,
        evolution_frequency=2,
        # Long enough for a restarted runner's first play (JAX compiles the env and the actor again: 3 s was
        # too short on a loaded machine, CI at 973c270: the fresh runner was killed again, and again).
        aux_collect_timeout_s=15.0,
        seed=0,
    ).training(num_epochs=1)
    def hang_next_sample(runner):
        """On an auxiliary runner: its env's next step never returns (a stuck env or simulator).
        (Nested, so Ray ships it by value to the runner process.)"""
        import time

        def stuck(*args, **kwargs):
            time.sleep(3600)

        runner.env.step_packed = stuck

    algo = config.build_algo()
    try:
        algo.aux_env_runner_group.foreach_env_runner(hang_next_sample, local_env_runner=False)
        algo.train()  # launches candidates 0, 1 on the (now stuck) runner
        assert algo._ledger.in_flight == [0, 1]
        with caplog.at_level("WARNING", logger="amal_rllib.amal.algorithm"):
            result = summarize_amal_result(algo.train())  # would block forever without the timeout
        assert "did not answer within aux_collect_timeout_s=15.0" in caplog.text
        assert result[ENV_STEPS_AUX] == 0
        assert algo._ledger.queue[:2] == [0, 1]  # queued again, first
        # Ray restarts the runner (a fresh process, no stuck sample): the candidates are played and scored.
        # (A restart re-imports JAX and compiles SMAX: ~10-30 s, while training goes on without auxiliary data.)
        aux_steps, deadline = 0.0, time.monotonic() + 180
        while time.monotonic() < deadline:
            aux_steps += summarize_amal_result(algo.train())[ENV_STEPS_AUX]
            if np.isfinite(algo._ledger.fitness[[0, 1]]).all():
                break
        assert aux_steps > 0 and np.isfinite(algo._ledger.fitness[[0, 1]]).all()
    finally:
        algo.stop()

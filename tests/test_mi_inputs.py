"""The MI bonus's inputs computed while the primary runner samples (``amal.mi_inputs``): the same
maths as the learner's connector, aligned with the learner batch's rows, errors surfaced."""

import logging
import math
import types

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from torch.func import functional_call

from amal_rllib.amal.mi_inputs import MI_LOG_LIK, MI_LOG_POLICIES, SamplerMIInputs
from amal_rllib.core.mi import (
    masked_log_policy,
    mi_estimate_parts,
    mi_parts_from_log_policies,
    per_row_log_policies,
    sample_parameter_noise,
)
from amal_rllib.core.world_model import GaussianWorldModel, gaussian_log_prob
from amal_rllib.envs.spec import ACTION_MASK_KEY, ALIVE_KEY, OBS_KEY, STATE_KEY
from amal_rllib.learner_connector import TeamEpisodesToBatch
from amal_rllib.mappo.module import build_mlp
from amal_rllib.rollout import build_episode

OBS, STATE, ACTIONS = 6, 3, 4
WIDTH = OBS + STATE + ACTIONS + 1
LAYOUT = {
    OBS_KEY: slice(0, OBS),
    STATE_KEY: slice(OBS, OBS + STATE),
    ACTION_MASK_KEY: slice(OBS + STATE, OBS + STATE + ACTIONS),
    ALIVE_KEY: slice(WIDTH - 1, WIDTH),
}


def toy_module(seed=0):
    torch.manual_seed(seed)
    world_model = GaussianWorldModel(OBS, OBS - 1, ACTIONS, hidden=(16,))
    torch.nn.init.normal_(world_model.heads.weight, std=0.3)
    with torch.no_grad():
        world_model.log_std.normal_(0.0, 0.3)
    return types.SimpleNamespace(actor=build_mlp(OBS, (8, 8), ACTIONS, False, 1.0), world_model=world_model)


def packed_steps(steps, envs, agents, seed=0, dead_fraction=0.25):
    """``[T, E, N, W]`` packed rows before and after each step, some agents dead at ``o``."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(steps, envs, agents, WIDTH)).astype(np.float32)
    after = (obs + 0.1 * rng.normal(size=obs.shape)).astype(np.float32)
    mask = (rng.random((steps, envs, agents, ACTIONS)) > 0.4).astype(np.float32)
    mask[..., 0] = 1.0
    obs[..., LAYOUT[ACTION_MASK_KEY]] = mask
    obs[..., LAYOUT[ALIVE_KEY]] = (rng.random((steps, envs, agents, 1)) > dead_fraction).astype(np.float32)
    return obs, after


def test_per_row_log_policies_use_each_rows_chunk_of_draws():
    module = toy_module()
    params = {n: p.detach() for n, p in module.actor.named_parameters()}
    rows, chunks, k = 11, 3, 4  # chunks of ceil(11 / 3) = 4 rows: 4, 4, 3
    noise = sample_parameter_noise(params, chunks, k, 0.2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(rows, OBS)
    mask = (torch.rand(rows, ACTIONS) > 0.3).float()
    mask[:, 0] = 1.0
    with torch.no_grad():
        got = per_row_log_policies(module.actor, params, noise, x, mask)
        assert got.shape == (rows, k + 1, ACTIONS)
        for b in range(rows):
            c = b // 4
            for j in range(k + 1):
                weights = params if j == 0 else {n: params[n] + noise[n][c, j - 1] for n in params}
                want = masked_log_policy(functional_call(module.actor, weights, (x[b : b + 1],)), mask[b : b + 1])[0]
                torch.testing.assert_close(got[b, j], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0, "fitted"])
def test_the_estimate_finished_from_per_row_inputs_equals_mi_estimate_parts(temperature):
    module = toy_module(1)
    params = {n: p.detach() for n, p in module.actor.named_parameters()}
    rows = 37
    noise = sample_parameter_noise(params, 5, 6, 0.3, generator=torch.Generator().manual_seed(2))
    x, x_next = torch.randn(rows, OBS), torch.randn(rows, OBS)
    mask = (torch.rand(rows, ACTIONS) > 0.3).float()
    mask[:, 0] = 1.0
    actions = torch.multinomial(mask, 1).squeeze(1)
    with torch.no_grad():
        from amal_rllib.core.world_model import action_log_likelihoods

        log_lik = action_log_likelihoods(module.world_model, x, x_next)
        tau = (lambda log_pi: 0.5 + float(log_pi.exp()[:, 0].mean())) if temperature == "fitted" else temperature
        whole = mi_estimate_parts(module.actor, params, noise, x, mask, log_lik, actions, tau)
        log_pis = per_row_log_policies(module.actor, params, noise, x, mask)
        split = mi_parts_from_log_policies(log_pis, log_lik, mask, actions, tau)
    assert whole.temperature == split.temperature
    for name in ("estimate", "untempered", "ceiling"):
        torch.testing.assert_close(getattr(split, name), getattr(whole, name), rtol=0, atol=0)


def test_sampler_inputs_are_the_learners_formulas_on_alive_rows_and_nan_on_dead_ones():
    module = toy_module(2)
    steps, envs, agents, k, m = 7, 2, 3, 4, 5
    observer = SamplerMIInputs(
        module, LAYOUT, mi_policies_K=k, perturbation_std=0.2, mi_samples_M=m, seed=3, block_steps=3
    )
    obs, after = packed_steps(steps, envs, agents)
    observer.start()
    for t in range(steps):
        observer.observe(obs[t], after[t])
    out = observer.finish()
    assert out[MI_LOG_LIK].shape == (steps, envs, agents, ACTIONS)
    assert out[MI_LOG_POLICIES].shape == (steps, envs, agents, k + 1, ACTIONS)
    alive = obs[..., LAYOUT[ALIVE_KEY]][..., 0] > 0.5
    assert np.isnan(out[MI_LOG_LIK][~alive]).all() and np.isnan(out[MI_LOG_POLICIES][~alive]).all()
    assert not np.isnan(out[MI_LOG_LIK][alive]).any() and not np.isnan(out[MI_LOG_POLICIES][alive]).any()

    x = torch.from_numpy(obs[alive][:, LAYOUT[OBS_KEY]])
    x_next = torch.from_numpy(after[alive][:, LAYOUT[OBS_KEY]])
    mask = torch.from_numpy(obs[alive][:, LAYOUT[ACTION_MASK_KEY]])
    wm = module.world_model
    with torch.no_grad():
        # The world model's Gaussian over every head's mean, and the unperturbed policy: no noise involved.
        want_lik = gaussian_log_prob(wm.target(x_next), wm(x), wm.clamped_log_std())
        want_pi = masked_log_policy(module.actor(x), mask)
    np.testing.assert_allclose(out[MI_LOG_LIK][alive], want_lik.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out[MI_LOG_POLICIES][alive][:, 0], want_pi.numpy(), rtol=1e-5, atol=1e-5)

    # The perturbed policies: blocks of 3, 3 and 1 steps, each block's alive rows cut into chunks of at most
    # M = 5 rows, each chunk with K draws of its own, drawn in order from the observer's generator.
    generator = torch.Generator().manual_seed(3)
    params = {n: p.detach() for n, p in module.actor.named_parameters()}
    for t0, t1 in ((0, 3), (3, 6), (6, 7)):
        block_alive = alive[t0:t1].reshape(-1)
        rows = torch.from_numpy(obs[t0:t1].reshape(-1, WIDTH)[block_alive])
        noise = sample_parameter_noise(params, math.ceil(len(rows) / m), k, 0.2, generator=generator)
        chunk = math.ceil(len(rows) / math.ceil(len(rows) / m))
        got = out[MI_LOG_POLICIES][t0:t1].reshape(-1, k + 1, ACTIONS)[block_alive]
        for b in range(len(rows)):
            weights = {n: params[n] + noise[n][b // chunk, 1] for n in params}  # the first perturbation
            with torch.no_grad():
                logits = functional_call(module.actor, weights, (rows[b : b + 1, LAYOUT[OBS_KEY]],))
            want = masked_log_policy(logits, rows[b : b + 1, LAYOUT[ACTION_MASK_KEY]])[0]
            np.testing.assert_allclose(got[b, 2], want.numpy(), rtol=1e-5, atol=1e-5)


def test_an_error_on_the_background_thread_is_raised_by_finish_and_the_observer_can_start_again():
    broken = toy_module(3)
    broken.world_model = GaussianWorldModel(OBS + 2, OBS - 1, ACTIONS, hidden=(16,))  # expects wider rows
    observer = SamplerMIInputs(broken, LAYOUT, mi_policies_K=2, perturbation_std=0.1, mi_samples_M=4, block_steps=2)
    obs, after = packed_steps(4, 2, 3)
    observer.start()
    for t in range(4):
        observer.observe(obs[t], after[t])
    with pytest.raises(RuntimeError, match="MI bonus's inputs during sampling failed") as caught:
        observer.finish()
    assert isinstance(caught.value.__cause__, RuntimeError)  # torch's shape error, chained
    observer.module = toy_module(3)
    observer.start()
    for t in range(4):
        observer.observe(obs[t], after[t])
    observer.cancel()
    observer.start()
    observer.observe(obs[0], after[0])
    assert observer.finish()[MI_LOG_LIK].shape == (1, 2, 3, ACTIONS)


# ------------------------------------------------------------------ the learner batch


def _episode(length, seed, extras, ids=("a0", "a1")):
    import gymnasium as gym

    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(length + 1, len(ids), WIDTH)).astype(np.float32)

    def box(s):
        return gym.spaces.Box(-np.inf, np.inf, (s.stop - s.start,), np.float32)

    space = gym.spaces.Dict({key: box(s) for key, s in LAYOUT.items()})
    return build_episode(
        episode_id=f"ep{seed}",
        env_t_started=0,
        observations=obs,
        actions=rng.integers(0, ACTIONS, size=(length, len(ids))),
        rewards=rng.normal(size=length),
        extra_model_outputs={Columns.ACTION_LOGP: np.zeros((length, len(ids)), np.float32), **extras},
        terminated=True,
        truncated=False,
        final_info=None,
        agent_ids=list(ids),
        module_id="m",
        layout=list(LAYOUT.values()),
        observation_space=dict.fromkeys(ids, space),
        action_space=dict.fromkeys(ids, gym.spaces.Discrete(ACTIONS)),
        mapping_fn=lambda aid, ep, **kw: "m",
    )


def test_a_float_extra_output_on_some_chunks_only_is_nan_on_the_others_and_an_int_one_is_refused():
    with_it = _episode(3, 0, {MI_LOG_LIK: np.arange(3 * 2 * ACTIONS, dtype=np.float32).reshape(3, 2, ACTIONS)})
    without = _episode(2, 1, {})
    module = types.SimpleNamespace()
    batch = TeamEpisodesToBatch(device="cpu")(rl_module={"m": module}, batch={}, episodes=[without, with_it])["m"]
    lik = batch[MI_LOG_LIK]
    # Chunks in order: the 2 agents of `without` (3 rows each: 2 steps + bootstrap), then those of `with_it` (4 rows).
    assert lik.shape == (2 * 3 + 2 * 4, ACTIONS)
    assert torch.isnan(lik[:6]).all() and not torch.isnan(lik[6:]).any()
    np.testing.assert_array_equal(lik[6:9].numpy(), np.arange(3 * 2 * ACTIONS).reshape(3, 2, ACTIONS)[:, 0])
    assert batch[Columns.ACTION_LOGP].shape == (14,)

    counted = _episode(2, 2, {"counts": np.ones((2, 2), np.int64)})
    with pytest.raises(ValueError, match="'counts'.*on 2 of 4 episode chunks"):
        TeamEpisodesToBatch(device="cpu")(rl_module={"m": module}, batch={}, episodes=[counted, without])


# ------------------------------------------------------------------ on real SMAX, in AMAL


SMALL = dict(num_env_runners=0, num_envs_per_env_runner=4, train_batch_size=200, evaluation_interval=None, seed=0)


@pytest.mark.slow
def test_inputs_from_a_real_smax_rollout_line_up_with_the_learner_batchs_transitions(ray_local):
    from amal_rllib.amal.connectors import AUXILIARY, AMALRewardsAndOffPolicy
    from amal_rllib.core.world_model import action_log_likelihoods
    from amal_rllib.env_runner import TeamEnvRunner
    from amal_rllib.mappo.config import SHARED_POLICY
    from amal_rllib.presets import amal_config
    from amal_rllib.rollout import OBS_KEYS

    config = amal_config("3m", **SMALL, num_aux_env_runners=0, aux_ratio=0.0, mi_temperature=1.0)
    runner = TeamEnvRunner(config=config)
    module = runner.module[SHARED_POLICY]  # the runner's own copy stands in for the learner's here
    n_actions = module.actor[-1].out_features
    world_model = GaussianWorldModel(module.actor[0].in_features, module.actor[0].in_features - 3, n_actions)
    torch.nn.init.normal_(world_model.heads.weight, std=0.05)
    both = types.SimpleNamespace(actor=module.actor, world_model=world_model)
    runner.step_observer = SamplerMIInputs(
        both, dict(zip(OBS_KEYS, runner.env.layout, strict=True)), mi_policies_K=3, perturbation_std=0.05,
        mi_samples_M=64, seed=0,
    )
    episodes = runner.sample(num_timesteps=200)
    runner.stop()
    batch = TeamEpisodesToBatch(device="cpu")(rl_module={SHARED_POLICY: module}, batch={}, episodes=episodes)
    batch = batch[SHARED_POLICY]
    x = batch[Columns.OBS][OBS_KEY]
    real = batch[Columns.LOSS_MASK].bool() & (batch[Columns.OBS][ALIVE_KEY].reshape(-1) > 0.5)
    rows = real.nonzero().squeeze(1)
    assert rows.numel() > 300
    with torch.no_grad():  # what the connector computes on the batch: o' is the batch's next row
        want_lik = action_log_likelihoods(world_model, x[rows], torch.roll(x, -1, 0)[rows])
        want_pi = masked_log_policy(module.actor(x[rows]), batch[Columns.OBS][ACTION_MASK_KEY][rows])
    torch.testing.assert_close(batch[MI_LOG_LIK][rows], want_lik, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(batch[MI_LOG_POLICIES][rows][:, 0], want_pi, rtol=1e-5, atol=1e-5)

    # The connector finishes the bonus from them, drops the columns and says where they came from.
    connector = AMALRewardsAndOffPolicy(
        lambda_info=0.5, perturbation_std=0.05, mi_samples_M=64, mi_policies_K=3, aux_importance_clip=1.0,
        mi_temperature=1.0,
    )
    target = types.SimpleNamespace(actor=module.actor, world_model=world_model)
    batch[AUXILIARY] = torch.zeros(len(x))
    rewards = batch[Columns.REWARDS].clone()
    stats = connector.process_module_batch(target, batch)
    assert MI_LOG_LIK not in batch and MI_LOG_POLICIES not in batch
    assert stats["mi_inputs_while_sampling"] == 1.0 and math.isfinite(stats["mi_estimate_mean"])
    assert not torch.equal(batch[Columns.REWARDS], rewards)

    batch[MI_LOG_LIK], batch[MI_LOG_POLICIES] = (
        want_lik.new_full((len(x), n_actions), math.nan),
        torch.zeros(len(x), 4, n_actions),
    )
    with pytest.raises(ValueError, match="sampler's MI inputs are NaN on .* alive primary rows"):
        connector.process_module_batch(target, batch)


@pytest.mark.slow
def test_amal_computes_the_inputs_while_sampling_where_it_can_and_says_so(ray_local, caplog):
    from amal_rllib.metrics import MI_ESTIMATE_MEAN, MI_INPUTS_WHILE_SAMPLING, summarize_amal_result
    from amal_rllib.presets import amal_config

    for on in (True, False):
        config = amal_config("3m", **SMALL, num_aux_env_runners=0, aux_ratio=0.0, mi_inputs_while_sampling=on)
        with caplog.at_level(logging.INFO, logger="amal_rllib.amal.algorithm"):
            algo = config.build_algo()
        try:
            assert algo.mi_inputs_on_sampler is on
            assert (algo.env_runner.step_observer is not None) is on
            result = summarize_amal_result(algo.train())
        finally:
            algo.stop()
        assert result[MI_INPUTS_WHILE_SAMPLING] == float(on)
        assert math.isfinite(result[MI_ESTIMATE_MEAN])
    assert "the learner computes the MI bonus's inputs (not the sampler) because mi_inputs_while_sampling is off" in (
        caplog.text
    )

"""AMAL's learner on real SMAX 3m episodes (no Ray actors): isolation, the bonus
reaching the gradient, and the exact reduction to MAPPO."""

import copy
import pickle

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing

from amal_rllib.amal.algorithm import cyclic_minibatch_count, mixed_minibatches
from amal_rllib.amal.connectors import AUXILIARY, WORLD_MODEL_MASK, AMALRewardsAndOffPolicy, standardize_per_group
from amal_rllib.amal.learner import world_model_rows
from amal_rllib.amal.rollouts import episode_transitions, learner_rows, mark_auxiliary
from amal_rllib.core.mi import masked_log_policy
from amal_rllib.core.world_model import world_model_loss
from amal_rllib.env_runner import TeamEnvRunner
from amal_rllib.envs.registry import make_env
from amal_rllib.mappo.config import SHARED_POLICY
from amal_rllib.mappo.learner import SAMPLE_WEIGHT
from amal_rllib.presets import amal_config, mappo_config

pytestmark = pytest.mark.slow

SMALL = dict(num_env_runners=0, num_envs_per_env_runner=4, train_batch_size=200, evaluation_interval=None, seed=0)


def amal(**knobs):
    knobs = {"num_aux_env_runners": 0, **knobs}
    return amal_config("3m", **SMALL, **knobs).training(minibatch_size=256, num_epochs=2)


@pytest.fixture(scope="module")
def episodes_blob():
    """Pickled (primary episode chunks, whole 'auxiliary' episodes) from a real SMAX runner."""
    config = amal()
    runner = TeamEnvRunner(config=config)
    primary = runner.sample(num_timesteps=200)
    # Different behaviour weights for the "auxiliary" episodes, as a CEM candidate would have.
    module = runner.module[SHARED_POLICY]
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.actor.parameters():
            p.add_(0.3 * torch.randn_like(p))
    aux = runner.sample(num_episodes=4)
    runner.stop()
    mark_auxiliary(aux)
    return pickle.dumps((primary, aux))


def fresh(blob):
    return pickle.loads(blob)


def build_learner(config, seed=0):
    spec = make_env("3m", "smax").get_env_info()
    torch.manual_seed(seed)
    learner = config.build_learner(spaces={SHARED_POLICY: (spec.observation_space(), spec.action_space())})
    return learner


def connector_batch(learner, episodes):
    return learner._learner_connector(
        rl_module=learner.module, batch={}, episodes=episodes, shared_data={}, metrics=learner.metrics
    )[SHARED_POLICY]


def update(learner, episodes, seed=0):
    np.random.seed(seed)
    torch.manual_seed(seed)
    learner.update(episodes=episodes, num_epochs=2, minibatch_size=256, shuffle_batch_per_epoch=True)


def params_of(learner, prefix):
    return {k: v.detach().clone() for k, v in learner.module[SHARED_POLICY].named_parameters() if k.startswith(prefix)}


def test_world_model_gradient_ignores_auxiliary_samples(episodes_blob):
    learner = build_learner(amal(lambda_info=0.0, aux_ratio=0.0))
    primary, aux = fresh(episodes_blob)
    # Poison the auxiliary observations: any of them reaching the world model changes its loss.
    for episode in aux:
        for sa in episode.agent_episodes.values():
            sa.observations.data["obs"][:] = 1e6
    batches = [connector_batch(learner, fresh(episodes_blob)[0]), connector_batch(learner, primary + aux)]
    assert batches[1][AUXILIARY].sum() > 0 and batches[0][AUXILIARY].sum() == 0

    grads = []
    wm = learner.module[SHARED_POLICY].world_model
    for batch in batches:
        wm.zero_grad()
        loss = world_model_loss(wm, *world_model_rows(batch))
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in wm.named_parameters()})
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name

    # Exactly the alive, real, primary agent-steps reach the loss, with the true next observation.
    truth = episode_transitions(fresh(episodes_blob)[0])
    obs, actions, next_obs = world_model_rows(batches[1])
    assert obs.shape[0] == len(truth["actions"]) == int(batches[1][WORLD_MODEL_MASK].sum())

    def rows(o, a, n):  # the transitions as a sorted multiset (batch order is RLlib's business)
        table = np.concatenate(
            [np.asarray(o, np.float64), np.asarray(a, np.float64)[:, None], np.asarray(n, np.float64)], 1
        )
        return table[np.lexsort(table.T[::-1])]

    assert np.array_equal(rows(obs, actions, next_obs), rows(truth["obs"], truth["actions"], truth["next_obs"]))
    assert not torch.any(obs >= 1e6)


@pytest.mark.parametrize("bulk", [True, False])
def test_auxiliary_rows_get_clipped_importance_weights(episodes_blob, bulk):
    """w = min(pi(a|o) / mu(a|o), clip) on every auxiliary row, with pi the learner's actor and mu the
    candidate's stored log-prob; 1 on primary rows; PPO's ratio is then taken against pi on auxiliary rows."""
    clip = 1.2
    learner = build_learner(
        amal(lambda_info=0.0, aux_ratio=0.5, num_aux_env_runners=1, aux_importance_clip=clip).training(
            bulk_learner_connector=bulk
        )
    )
    assert learner.bulk_pipeline == bulk
    primary, aux = fresh(episodes_blob)
    pipeline = learner._learner_connector.connectors
    position = next(i for i, c in enumerate(pipeline) if isinstance(c, AMALRewardsAndOffPolicy))
    batch = {}
    kwargs = dict(rl_module=learner.module, episodes=primary + aux, shared_data={}, metrics=None)
    for connector in pipeline[:position]:  # the batch as it reaches AMAL's connector
        batch = connector(batch=batch, **kwargs)
    before = batch[SHARED_POLICY]
    behaviour = before[Columns.ACTION_LOGP].clone()
    obs = before[Columns.OBS]
    with torch.no_grad():
        log_pi = masked_log_policy(learner.module[SHARED_POLICY].actor(obs["obs"]), obs["action_mask"])
    current = log_pi.gather(1, before[Columns.ACTIONS].long()[:, None]).squeeze(1)
    after = pipeline[position](batch=batch, **kwargs)[SHARED_POLICY]
    is_aux = (after[AUXILIARY] > 0.5) & after[Columns.LOSS_MASK].bool()
    assert is_aux.any() and (~is_aux).any()
    weights = after[SAMPLE_WEIGHT]
    expected = torch.exp(current - behaviour).clamp(max=clip)
    torch.testing.assert_close(weights[is_aux], expected[is_aux].float())
    assert torch.all(weights[~is_aux] == 1.0)
    assert (expected[is_aux] < clip).any() and (expected[is_aux] == clip).any()  # both sides of the clip occur
    torch.testing.assert_close(after[Columns.ACTION_LOGP][is_aux], current[is_aux].to(behaviour.dtype))
    torch.testing.assert_close(after[Columns.ACTION_LOGP][~is_aux], behaviour[~is_aux])


def test_standardize_per_group():
    x = torch.tensor([1.0, 2.0, 3.0, 10.0, 30.0])
    group = torch.tensor([True, True, True, False, False])
    out = standardize_per_group(x, group)
    assert torch.allclose(out, torch.tensor([-1.224745, 0.0, 1.224745, -1.0, 1.0]), atol=1e-6)
    everything = standardize_per_group(x, torch.ones(5, dtype=torch.bool))
    assert torch.allclose(everything, (x - x.mean()) / x.std(unbiased=False))
    assert torch.equal(standardize_per_group(torch.ones(3), torch.tensor([True, False, False])), torch.zeros(3))


def test_auxiliary_advantages_are_standardised_on_their_own(episodes_blob):
    """Per source, primary and auxiliary advantages each have mean 0 and std 1; jointly, only their union does."""
    batches = {}
    for norm in ("per_source", "joint"):
        learner = build_learner(amal(lambda_info=0.0, aux_ratio=0.5, num_aux_env_runners=1, aux_advantage_norm=norm))
        batches[norm] = connector_batch(learner, fresh(episodes_blob)[0] + fresh(episodes_blob)[1])
        primary_only = connector_batch(learner, fresh(episodes_blob)[0])[Postprocessing.ADVANTAGES]
        batches[norm + " primary only"] = primary_only
    aux = batches["joint"][AUXILIARY].reshape(-1) > 0.5
    assert torch.equal(batches["per_source"][AUXILIARY].reshape(-1) > 0.5, aux) and 0 < int(aux.sum()) < len(aux)
    per_source, joint = (batches[n][Postprocessing.ADVANTAGES].reshape(-1) for n in ("per_source", "joint"))
    for rows in (aux, ~aux):
        assert abs(float(per_source[rows].mean())) < 1e-5
        assert abs(float(per_source[rows].std(unbiased=False)) - 1.0) < 1e-4
    assert abs(float(joint.mean())) < 1e-5 and abs(float(joint.std(unbiased=False)) - 1.0) < 1e-4
    assert not torch.allclose(per_source[aux], joint[aux])
    # Without auxiliary rows nothing changes: AMAL without auxiliary data stays MAPPO.
    assert torch.equal(batches["per_source primary only"], batches["joint primary only"])


def test_mi_bonus_reaches_the_policy_update(episodes_blob):
    # The likelihood temperature is pinned at 1 (Proposition 1 as written): a fitted one may legitimately be 0
    # for a random world model (it explains no action better than the policy alone), and then there is no bonus
    # to reach anything. Which of the two a random model gets depends on the sampled episodes, so a fitted
    # temperature made this test pass on one machine and fail on another.
    learners = {lam: build_learner(amal(lambda_info=lam, aux_ratio=0.0, mi_temperature=1.0)) for lam in (0.0, 0.5)}
    for learner in learners.values():
        # A world model whose predictions depend on the action (fresh heads predict "no change").
        torch.manual_seed(1)
        torch.nn.init.normal_(learner.module[SHARED_POLICY].world_model.heads.weight, std=0.05)
    rewards = {lam: connector_batch(lrn, fresh(episodes_blob)[0])[Columns.REWARDS] for lam, lrn in learners.items()}
    assert not torch.equal(rewards[0.0], rewards[0.5])
    before = params_of(learners[0.0], "actor.")
    assert all(torch.equal(before[k], v) for k, v in params_of(learners[0.5], "actor.").items())
    for learner in learners.values():
        update(learner, fresh(episodes_blob)[0])
    after0, after5 = params_of(learners[0.0], "actor."), params_of(learners[0.5], "actor.")
    assert any(not torch.equal(after0[k], after5[k]) for k in after0)


def test_amal_without_its_ideas_is_mappo(episodes_blob):
    mappo = build_learner(mappo_config("3m", **SMALL).training(minibatch_size=256, num_epochs=2))
    amal_learner = build_learner(amal(lambda_info=0.0, aux_ratio=0.0))
    shared = ("actor.", "critic.")
    for prefix in shared:
        a, b = params_of(mappo, prefix), params_of(amal_learner, prefix)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    update(mappo, fresh(episodes_blob)[0])
    update(amal_learner, fresh(episodes_blob)[0])
    for prefix in shared:
        a, b = params_of(mappo, prefix), params_of(amal_learner, prefix)
        assert all(torch.equal(a[k], b[k]) for k in a), prefix
    moved = params_of(mappo, "actor.")
    assert any(
        not torch.equal(moved[k], v) for k, v in copy.deepcopy(params_of(build_learner(amal()), "actor.")).items()
    )


def test_mixed_batches_take_as_many_gradient_steps_as_mappo(episodes_blob):
    """Auxiliary rows are added to the batch; the minibatch grows with them and the step count stays MAPPO's."""
    assert mixed_minibatches(None, 5, 100, 100) == (None, 0)
    assert mixed_minibatches(256, 5, 100, 0) == (256, 0)
    assert mixed_minibatches(256, 2, 1000, 1000) == (512, cyclic_minibatch_count(1000, 256, 2))
    learner = build_learner(amal(lambda_info=0.0))
    steps = []
    loss = learner.compute_loss_for_module
    learner.compute_loss_for_module = lambda **kw: steps.append(len(kw["batch"][Columns.LOSS_MASK])) or loss(**kw)
    primary, aux = fresh(episodes_blob)
    n_primary, n_aux = learner_rows(primary), learner_rows(aux)
    assert n_primary == len(connector_batch(learner, fresh(episodes_blob)[0])[Columns.LOSS_MASK])
    learner.update(episodes=primary, num_epochs=2, minibatch_size=256)
    mappo_steps, steps[:] = len(steps), []
    assert mappo_steps == cyclic_minibatch_count(n_primary, 256, 2) > 2  # several minibatches per epoch
    size, count = mixed_minibatches(256, 2, n_primary, n_aux)
    learner.update(episodes=primary + aux, num_epochs=2, minibatch_size=size, num_total_minibatches=count)
    assert len(steps) == mappo_steps and set(steps) == {size}
    steps[:] = []
    learner.update(episodes=fresh(episodes_blob)[0] + fresh(episodes_blob)[1], num_epochs=2, minibatch_size=256)
    assert len(steps) > mappo_steps  # what MAPPO's minibatch size alone would do


def test_config_rejects_out_of_range_knobs():
    config = amal_config("3m", **SMALL).training(
        lambda_info=-1.0,
        perturbation_std=0.0,
        mi_policies_K=0,
        cem_elite_fraction=1.5,
        aux_ratio=1.0,
        world_model_hidden=(0,),
        evolution_frequency=0,
        aux_advantage_norm="global",
        aux_rollout_overlap="always",
    )
    with pytest.raises(ValueError) as err:
        config.validate()
    message = str(err.value)
    for knob in (
        "lambda_info",
        "perturbation_std",
        "mi_policies_K",
        "cem_elite_fraction",
        "aux_ratio",
        "world_model_hidden",
        "evolution_frequency",
        "aux_advantage_norm",
        "aux_rollout_overlap",
    ):
        assert knob in message, knob
    with pytest.raises(ValueError, match="num_aux_env_runners"):
        amal_config("3m", num_aux_env_runners=0, aux_ratio=0.5, **SMALL).validate()
    with pytest.raises(ValueError, match="count_steps_by"):
        amal_config("3m", **SMALL).multi_agent(count_steps_by="agent_steps").validate()
    with pytest.raises(ValueError, match="aux_collect_timeout_s"):
        amal_config("3m", **SMALL).training(aux_collect_timeout_s=0).validate()


def test_mi_on_real_smax_transitions_is_nonnegative_with_an_overconfident_world_model():
    """Real SMAX 3m transitions from a peaked policy (entropy well below uniform, as late in training)
    and a world model fitted to them, then made sure of itself (sigma / e^3, as a model that sharpens over
    a long run): the batch mean of the calibrated I_hat is >= 0 and at most the ceiling E[log pi / pibar]
    (up to noise), while Proposition 1 as written turns negative on the same rows."""
    from amal_rllib.metrics import MI_CEILING_MEAN, MI_ESTIMATE_MEAN, MI_ESTIMATE_UNTEMPERED_MEAN, MI_TEMPERATURE

    config = amal(lambda_info=0.1, perturbation_std=0.1)
    runner = TeamEnvRunner(config=config)
    module = runner.module[SHARED_POLICY]
    with torch.no_grad():  # a peaked policy: the head's weights scaled up
        module.actor[-1].weight.mul_(1500.0)
    torch.manual_seed(0)  # the sampler draws actions with torch's generator
    episodes = runner.sample(num_timesteps=2400)
    runner.stop()
    learner = build_learner(config)
    learner.module[SHARED_POLICY].actor.load_state_dict(module.actor.state_dict())
    pipeline = learner._learner_connector.connectors
    position = next(i for i, c in enumerate(pipeline) if isinstance(c, AMALRewardsAndOffPolicy))
    batch = {}
    for connector in pipeline[:position]:
        batch = connector(batch=batch, rl_module=learner.module, episodes=episodes, shared_data={}, metrics=None)
    mb = batch[SHARED_POLICY]
    mpl = learner.module[SHARED_POLICY]
    x = mb[Columns.OBS]["obs"]
    alive = mb[Columns.OBS]["alive"].reshape(-1) > 0.5
    rows = (alive & mb[Columns.LOSS_MASK].reshape(-1).bool()).nonzero().squeeze(1)
    next_x = torch.roll(x, -1, 0)
    with torch.no_grad():
        log_pi = masked_log_policy(mpl.actor(x[rows]), mb[Columns.OBS]["action_mask"][rows])
    entropy = float(-(log_pi.exp() * torch.nan_to_num(log_pi, neginf=0.0)).sum(1).mean())
    assert entropy < 0.7, entropy  # uniform over the valid actions would be ~1.9 nats
    optimizer = torch.optim.Adam(mpl.world_model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    for _ in range(200):
        optimizer.zero_grad()
        loss = world_model_loss(mpl.world_model, x[rows], mb[Columns.ACTIONS][rows], next_x[rows])
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        mpl.world_model.log_std.sub_(3.0)
    stats = pipeline[position].process_module_batch(mpl, mb)
    assert stats[MI_TEMPERATURE] < 1.0  # the trained model is overconfident about which action acted
    assert stats[MI_ESTIMATE_MEAN] >= -0.005, stats
    assert stats[MI_ESTIMATE_MEAN] <= stats[MI_CEILING_MEAN] + 0.02, stats
    print({k: round(v, 4) for k, v in stats.items()})
    assert stats[MI_ESTIMATE_UNTEMPERED_MEAN] < 0, stats


def test_a_fresh_world_model_gives_finite_rewards_and_a_broken_one_a_clear_error(episodes_blob):
    """At the first iteration the world model is fresh (zero heads: every action predicts the same ``o'``):
    the fitted temperature is 0 and the bonus must be 0, not nan (``0 * -inf`` on invalid actions made it
    nan, and the nan rewards stopped 2 of 5 study trials for good). A world model that outputs nan stops
    the batch with an error that says so."""
    for temperature in (None, 0.0):  # fitted (0 up to float noise, which decided it in the study) and exactly 0
        learner = build_learner(amal(lambda_info=0.5, aux_ratio=0.0, mi_temperature=temperature))
        batch = connector_batch(learner, fresh(episodes_blob)[0])
        assert torch.isfinite(batch[Columns.REWARDS]).all()
        assert (batch[Columns.OBS]["action_mask"] < 0.5).any()  # invalid actions are in the batch
    with torch.no_grad():
        learner.module[SHARED_POLICY].world_model.heads.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="MI bonus is nan/inf"):
        connector_batch(learner, fresh(episodes_blob)[0])

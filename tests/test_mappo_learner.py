"""MAPPO's module and learner on hand-made batches (no env runners, no Ray actors)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing
from toy_envs import CoordinationEnv

from amal_rllib.callbacks import BattleMetricsCallback
from amal_rllib.mappo import MAPPOConfig, MAPPOTorchRLModule
from amal_rllib.mappo.config import MAPPO_PAPER_SETTINGS, SHARED_POLICY

OBS_DIM, STATE_DIM, N_ACTIONS = 6, 9, 5


def spaces():
    obs_space = gym.spaces.Dict(
        {
            "obs": gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
            "state": gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
            "action_mask": gym.spaces.Box(0.0, 1.0, (N_ACTIONS,), np.float32),
            "alive": gym.spaces.Box(0.0, 1.0, (1,), np.float32),
        }
    )
    return obs_space, gym.spaces.Discrete(N_ACTIONS)


def make_module(**model_config):
    obs_space, act_space = spaces()
    torch.manual_seed(0)
    return MAPPOTorchRLModule(observation_space=obs_space, action_space=act_space, model_config=model_config)


def fake_batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, N_ACTIONS, generator=g) > 0.4).float()
    mask[:, 0] = 1.0  # at least one valid action per row
    alive = (torch.rand(n, 1, generator=g) > 0.25).float()
    obs = {
        "obs": torch.randn(n, OBS_DIM, generator=g),
        "state": torch.randn(n, STATE_DIM, generator=g),
        "action_mask": mask,
        "alive": alive,
    }
    valid = [torch.nonzero(m).flatten() for m in mask]
    actions = torch.stack([v[torch.randint(len(v), (1,), generator=g)][0] for v in valid])
    return {
        Columns.OBS: obs,
        Columns.ACTIONS: actions,
        Columns.ACTION_LOGP: torch.log(torch.full((n,), 0.3)),
        Postprocessing.ADVANTAGES: torch.randn(n, generator=g),
        Postprocessing.VALUE_TARGETS: torch.randn(n, generator=g) * 2 + 1,
    }


def test_masked_actions_never_get_probability():
    module = make_module()
    batch = fake_batch(256)
    logits = module.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS]
    probs = torch.softmax(logits, -1)
    assert torch.all(probs[batch[Columns.OBS]["action_mask"] == 0] == 0)
    dist = module.get_exploration_action_dist_cls().from_logits(logits)
    for _ in range(20):
        sampled = dist.sample()
        assert torch.all(batch[Columns.OBS]["action_mask"].gather(1, sampled[:, None]) == 1)
    greedy = module.get_inference_action_dist_cls().from_logits(
        module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS]
    ).to_deterministic().sample()
    assert torch.all(batch[Columns.OBS]["action_mask"].gather(1, greedy[:, None]) == 1)


def test_critic_reads_global_state_and_actor_reads_local_obs():
    module = make_module()
    batch = fake_batch(32)
    values = module.compute_values(batch)
    logits = module.forward_train(batch)[Columns.ACTION_DIST_INPUTS]

    changed_obs = {**batch, Columns.OBS: {**batch[Columns.OBS], "obs": torch.randn(32, OBS_DIM)}}
    assert torch.equal(module.compute_values(changed_obs), values)
    assert not torch.allclose(module.forward_train(changed_obs)[Columns.ACTION_DIST_INPUTS], logits)

    changed_state = {**batch, Columns.OBS: {**batch[Columns.OBS], "state": torch.randn(32, STATE_DIM)}}
    assert not torch.allclose(module.compute_values(changed_state), values)
    assert torch.equal(module.forward_train(changed_state)[Columns.ACTION_DIST_INPUTS], logits)


def test_inference_only_module_has_no_critic():
    obs_space, act_space = spaces()
    module = MAPPOTorchRLModule(observation_space=obs_space, action_space=act_space, inference_only=True)
    assert not hasattr(module, "critic")
    assert set(make_module().get_non_inference_attributes()) == {"critic", "value_norm"}


@pytest.fixture(scope="module")
def learner():
    config = MAPPOConfig().environment(CoordinationEnv)
    learner = config.build_learner(env=CoordinationEnv())
    return config, learner


def loss_and_grads(config, learner, batch):
    module = learner.module[SHARED_POLICY]
    module.zero_grad()
    fwd_out = module.forward_train(batch)
    loss = learner.compute_loss_for_module(
        module_id=SHARED_POLICY, config=config.get_config_for_module(SHARED_POLICY), batch=batch, fwd_out=fwd_out
    )
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def env_batch(n=64, seed=0):
    """A batch shaped like CoordinationEnv's spaces (6 obs dims, 5 actions)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, 5)
    mask[:, 4] = 0.0
    alive = (torch.rand(n, 1, generator=g) > 0.3).float()
    obs = {"obs": torch.randn(n, 6, generator=g), "state": torch.randn(n, 6, generator=g),
           "action_mask": mask, "alive": alive}
    return {
        Columns.OBS: obs,
        Columns.ACTIONS: torch.randint(4, (n,), generator=g),
        Columns.ACTION_LOGP: torch.log(torch.full((n,), 0.25)),
        Postprocessing.ADVANTAGES: torch.randn(n, generator=g),
        Postprocessing.VALUE_TARGETS: torch.randn(n, generator=g),
    }


def test_dead_agents_are_masked_out_of_the_loss(learner):
    """Whatever a dead agent's row holds (observation, state, action, behaviour log-prob, advantage,
    value target), the loss and every gradient are the same: dead rows count in no term."""
    config, lrn = learner
    batch = env_batch()
    value_norm = lrn.module[SHARED_POLICY].value_norm
    state = value_norm.state_dict()
    loss, grads = loss_and_grads(config, lrn, batch)
    after_first = value_norm.state_dict()
    value_norm.load_state_dict(state)
    dead = batch[Columns.OBS]["alive"][:, 0] == 0
    assert dead.any() and (~dead).any()
    g = torch.Generator().manual_seed(7)

    def scramble(x, scale=50.0):
        noise = torch.randn(x.shape, generator=g) * scale
        rows = dead.reshape((-1,) + (1,) * (x.dim() - 1))
        return torch.where(rows, x + noise.to(x.dtype), x)

    other = {**batch, Columns.OBS: {**batch[Columns.OBS]}}
    other[Columns.OBS]["obs"] = scramble(batch[Columns.OBS]["obs"])
    other[Columns.OBS]["state"] = scramble(batch[Columns.OBS]["state"])
    other[Columns.ACTIONS] = torch.where(dead, (batch[Columns.ACTIONS] + 1) % 4, batch[Columns.ACTIONS])
    other[Columns.ACTION_LOGP] = scramble(batch[Columns.ACTION_LOGP], 2.0)
    other[Postprocessing.ADVANTAGES] = scramble(batch[Postprocessing.ADVANTAGES])
    other[Postprocessing.VALUE_TARGETS] = scramble(batch[Postprocessing.VALUE_TARGETS])
    for key in ("obs", "state"):
        assert not torch.equal(other[Columns.OBS][key], batch[Columns.OBS][key])
    assert not torch.equal(other[Postprocessing.VALUE_TARGETS], batch[Postprocessing.VALUE_TARGETS])
    loss2, grads2 = loss_and_grads(config, lrn, other)
    # The value normaliser's running statistics see alive targets only, too.
    for key, value in value_norm.state_dict().items():
        torch.testing.assert_close(value, after_first[key], msg=key)
    value_norm.load_state_dict(state)
    torch.testing.assert_close(loss, loss2)
    assert grads.keys() == grads2.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads2[name], msg=name)


def test_loss_is_finite_and_reaches_actor_and_critic(learner):
    config, lrn = learner
    loss, grads = loss_and_grads(config, lrn, env_batch(seed=1))
    assert torch.isfinite(loss)
    assert any(n.startswith("actor") and g.abs().sum() > 0 for n, g in grads.items())
    assert any(n.startswith("critic") and g.abs().sum() > 0 for n, g in grads.items())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_param": 1.5}, "clip_param"),
        ({"actor_hidden": (64, 0)}, "actor_hidden"),
        ({"huber_delta": 0.0}, "huber_delta"),
        ({"value_norm_beta": 1.0}, "value_norm_beta"),
        ({"lambda_": 1.5}, "lambda_"),
        ({"lr": -1.0}, "lr"),
        ({"lr": [[0, 1e-3], [100, -1.0]], "lr_anneal_env_steps": None}, "lr"),
        ({"lr": [[10, 1e-3], [100, 0.0]], "lr_anneal_env_steps": None}, "timestep"),
        ({"lr_anneal_env_steps": 0}, "lr_anneal_env_steps"),
        ({"use_kl_loss": True}, "use_kl_loss"),
        ({"vf_clip_param": 10.0}, "vf_clip_param"),
        ({"adam_eps": 0.0}, "adam_eps"),
        ({"separate_critic_optimizer": "yes"}, "separate_critic_optimizer"),
    ],
)
def test_invalid_config_values_are_rejected(kwargs, match):
    config = MAPPOConfig().environment(CoordinationEnv).training(**kwargs)
    with pytest.raises(ValueError, match=match):
        config.validate()


def test_lr_schedules_are_accepted():
    MAPPOConfig().environment(CoordinationEnv).training(lr=[[0, 2e-3], [1000, 0.0]], lr_anneal_env_steps=None).validate()
    with pytest.raises(ValueError, match="give one of them"):
        MAPPOConfig().environment(CoordinationEnv).training(lr=[[0, 2e-3], [1000, 0.0]]).validate()


class _UserCallback(RLlibCallback):
    pass


def test_user_callbacks_run_beside_the_battle_metrics():
    config = MAPPOConfig().environment(CoordinationEnv).callbacks(_UserCallback)
    assert config.callbacks_class == [BattleMetricsCallback, _UserCallback]
    config.validate()
    config.callbacks([_UserCallback, BattleMetricsCallback])  # already there: kept as given
    assert config.callbacks_class == [_UserCallback, BattleMetricsCallback]
    config.callbacks_class = _UserCallback  # set around callbacks(): validate() says what to do
    with pytest.raises(ValueError, match="lacks BattleMetricsCallback"):
        config.validate()


def test_defaults_are_jaxmarls_smax_settings_and_the_papers_stay_reachable():
    config = MAPPOConfig()
    assert (config.lr, config.lr_anneal_env_steps, config.clip_param, config.entropy_coeff) == (2e-3, 2_000_000, 0.2, 0.0)
    assert (config.gamma, config.lambda_, config.vf_loss_coeff, config.grad_clip, config.num_epochs) == (
        0.99, 0.95, 0.5, 0.25, 4)
    assert config.actor_hidden == (128, 128) and not config.use_layer_norm and config.use_value_norm
    assert config.lr_or_schedule() == [[0, 2e-3], [2_000_000, 0.0]]  # annealed linearly to 0
    paper = MAPPOConfig().training(**MAPPO_PAPER_SETTINGS)
    assert (paper.lr, paper.entropy_coeff, paper.grad_clip, paper.num_epochs) == (5e-4, 0.01, 10.0, 5)
    assert paper.actor_hidden == (64, 64) and paper.use_layer_norm and paper.lr_or_schedule() == 5e-4
    assert config.separate_critic_optimizer and config.adam_eps == 1e-5
    assert not paper.separate_critic_optimizer and paper.adam_eps == 1e-8


def test_team_env_runner_returns_numpy_episodes_once():
    from amal_rllib.env_runner import TeamEnvRunner

    config = MAPPOConfig().environment(CoordinationEnv).env_runners(num_envs_per_env_runner=2)
    runner = TeamEnvRunner(config=config)
    episodes = runner.sample(num_timesteps=45)
    assert episodes and all(ep.is_numpy for ep in episodes)
    assert sum(ep.env_steps() for ep in episodes) >= 45
    # Sampling continues from the cut chunks (the runner's own episodes stay lists).
    more = runner.sample(num_timesteps=10)
    assert all(ep.is_numpy for ep in more)
    runner.stop()


def test_minibatches_are_counted_in_agent_rows_not_env_steps():
    """JaxMARL's 4 minibatches of a 5-agent batch hold more rows than the batch has env steps: valid."""
    from amal_rllib.presets import mappo_config

    config = mappo_config("2s3z", num_minibatches=4)
    assert config.minibatch_size == 16384 * 5 // 4 > config.train_batch_size_per_learner
    config.validate()
    with pytest.raises(ValueError, match="more agent rows than a batch holds"):
        mappo_config("3m").training(minibatch_size=16384 * 3 + 1).validate()


def _clipped_actor_and_critic_grads(config, lrn, batch):
    """The module's gradients after ``grad_clip`` (RLlib's per-optimiser clip), actor and critic apart."""
    loss_and_grads(config, lrn, batch)
    module = lrn.module[SHARED_POLICY]
    grads = {lrn.get_param_ref(p): p.grad.clone() for p in module.parameters() if p.grad is not None}
    raw = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    out = lrn.postprocess_gradients_for_module(
        module_id=SHARED_POLICY, config=config.get_config_for_module(SHARED_POLICY), module_gradients_dict=grads
    )
    by_name = {name: out[lrn.get_param_ref(p)] for name, p in module.named_parameters() if p.grad is not None}
    norm = lambda d, part: torch.sqrt(sum((g**2).sum() for n, g in d.items() if n.startswith(part)))  # noqa: E731
    return {part: (norm(raw, part), norm(by_name, part)) for part in ("actor", "critic")}


def test_actor_and_critic_get_their_own_adam_and_gradient_clip(learner):
    """JaxMARL's two train states: a critic gradient far above ``grad_clip`` does not shrink the
    actor's step (each network's norm is clipped apart); with one optimiser it does."""
    config, lrn = learner
    module = lrn.module[SHARED_POLICY]
    optimizers = dict(lrn.get_optimizers_for_module(SHARED_POLICY))
    assert set(optimizers) == {"default_optimizer", "critic"}
    critic_ids = {id(p) for p in module.critic.parameters()}
    groups = {name: {id(p) for g in opt.param_groups for p in g["params"]} for name, opt in optimizers.items()}
    assert groups["critic"] == critic_ids
    assert groups["default_optimizer"] == {id(p) for p in module.parameters()} - critic_ids
    assert all(g["eps"] == 1e-5 for opt in optimizers.values() for g in opt.param_groups)

    batch = env_batch(seed=3)
    batch[Postprocessing.VALUE_TARGETS] = batch[Postprocessing.VALUE_TARGETS] * 1e4  # a large critic gradient
    norms = _clipped_actor_and_critic_grads(config, lrn, batch)
    (actor_raw, actor_clipped), (critic_raw, critic_clipped) = norms["actor"], norms["critic"]
    assert critic_raw > 2 * config.grad_clip
    torch.testing.assert_close(critic_clipped, torch.tensor(config.grad_clip))
    torch.testing.assert_close(actor_clipped, torch.clamp(actor_raw, max=config.grad_clip))

    joint_config = MAPPOConfig().environment(CoordinationEnv).training(separate_critic_optimizer=False)
    joint = joint_config.build_learner(env=CoordinationEnv())
    assert [name for name, _ in joint.get_optimizers_for_module(SHARED_POLICY)] == ["default_optimizer"]
    norms = _clipped_actor_and_critic_grads(joint_config, joint, batch)
    (actor_raw, actor_clipped), (critic_raw, _) = norms["actor"], norms["critic"]
    total = torch.sqrt(actor_raw**2 + critic_raw**2)
    torch.testing.assert_close(actor_clipped, actor_raw * config.grad_clip / total)


def test_a_nan_value_target_stops_the_update_with_a_clear_error(learner):
    """A nan reward reaching a value target would enter the value normaliser for good; the loss refuses it
    (RLlib alone would zero the nan gradients and go on, update after update)."""
    config, lrn = learner
    batch = env_batch(seed=5)
    value_norm = lrn.module[SHARED_POLICY].value_norm
    before = {k: v.clone() for k, v in value_norm.state_dict().items()}
    targets = batch[Postprocessing.VALUE_TARGETS].clone()
    targets[3] = float("nan")
    with pytest.raises(FloatingPointError, match="1 of 64 value targets are nan/inf"):
        loss_and_grads(config, lrn, {**batch, Postprocessing.VALUE_TARGETS: targets})
    for key, value in value_norm.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)


def test_torch_threads_follow_the_cpus_the_process_was_given(monkeypatch):
    """Ray writes a worker's reserved CPUs into OMP_NUM_THREADS; a driver without it gets every core it may use."""
    import os

    from amal_rllib.mappo.module import cpu_threads_for_this_process, set_cpu_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads_for_this_process() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads_for_this_process() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_threads_for_this_process() == len(os.sched_getaffinity(0))
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        with pytest.raises(ValueError, match=f"OMP_NUM_THREADS='{bad}'"):
            cpu_threads_for_this_process()
    before = torch.get_num_threads()
    try:
        set_cpu_threads(1)
        assert torch.get_num_threads() == 1 or torch.cuda.is_available()
    finally:
        torch.set_num_threads(before)

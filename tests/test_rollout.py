"""The vectorised sampler (``amal_rllib.rollout``) and the bulk learner pipeline keep RLlib's contracts."""

import copy
import logging

import numpy as np
import pytest
import torch
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core.columns import Columns
from ray.rllib.env.multi_agent_episode import MultiAgentEpisode
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.postprocessing.value_predictions import compute_value_targets

from amal_rllib.envs.spec import ACTION_MASK_KEY, ALIVE_KEY, OBS_KEY, STATE_KEY
from amal_rllib.learner_connector import TeamEpisodesToBatch, TeamGAE, gae
from amal_rllib.rollout import Segment, build_episode, episode_quota, episode_segments, quota_segments


# ---------------------------------------------------------------------------------------------- pure pieces
def test_episode_segments_cut_after_each_end_and_order_by_finish():
    done = np.zeros((5, 3), dtype=bool)
    done[1, 0] = done[4, 0] = True  # env 0: episodes end at steps 1 and 4
    done[2, 2] = True  # env 2: one end, then a running chunk
    segs = episode_segments(done)
    assert segs == [
        Segment(0, 0, 2, True),
        Segment(2, 0, 3, True),
        Segment(0, 2, 5, True),
        Segment(1, 0, 5, False),
        Segment(2, 3, 5, False),
    ]
    # Every step of every env is in exactly one segment.
    covered = np.zeros_like(done, dtype=int)
    for s in segs:
        covered[s.start : s.stop, s.env] += 1
    assert (covered == 1).all()


def test_episode_quota_deals_episodes_to_sub_envs_round_by_round():
    assert episode_quota(10, 4).tolist() == [3, 3, 2, 2]
    assert episode_quota(2, 4).tolist() == [1, 1, 0, 0]
    assert episode_quota(8, 4).tolist() == [2, 2, 2, 2]
    assert episode_quota(0, 3).tolist() == [0, 0, 0]
    for n, e in [(7, 3), (1, 1), (13, 5)]:
        q = episode_quota(n, e)
        assert q.sum() == n and q.max() - q.min() <= 1
    with pytest.raises(ValueError, match="num_envs"):
        episode_quota(3, 0)


def test_quota_segments_keep_each_sub_envs_first_episodes_not_the_first_to_finish():
    done = np.zeros((10, 3), dtype=bool)
    done[[1, 3, 5], 0] = True  # env 0 plays short episodes: three end before env 1's first
    done[7, 1] = True
    done[[8, 9], 2] = True
    segs = episode_segments(done)
    # "First 3 to finish" would be all three of env 0's; a quota of one each takes every env's first.
    assert [s.env for s in segs if s.ended][:3] == [0, 0, 0]
    assert quota_segments(segs, np.array([1, 1, 1])) == [
        Segment(0, 0, 2, True), Segment(1, 0, 8, True), Segment(2, 0, 9, True)
    ]
    # Round order: every env's first episode, then the second ones; a quota of 0 takes nothing.
    assert quota_segments(segs, np.array([2, 0, 2])) == [
        Segment(0, 0, 2, True), Segment(2, 0, 9, True), Segment(0, 2, 4, True), Segment(2, 9, 10, True)
    ]
    with pytest.raises(ValueError, match="sub-env 1 ended 1 episodes, its quota is 2"):
        quota_segments(segs, np.array([1, 2, 1]))


@pytest.mark.parametrize("seed", range(5))
def test_gae_equals_rllibs_compute_value_targets(seed):
    rng = np.random.default_rng(seed)
    n = 300
    values = rng.normal(size=n).astype(np.float32)
    rewards = rng.normal(size=n)
    terminateds = rng.random(n) < 0.05
    truncateds = ~terminateds & (rng.random(n) < 0.05)
    ours = gae(values, rewards, terminateds, truncateds, 0.99, 0.95)
    targets = compute_value_targets(values, rewards, terminateds.astype(float), truncateds.astype(float), 0.99, 0.95)
    np.testing.assert_allclose(ours, targets - values, rtol=1e-5, atol=1e-5)


def _packed_episode_data(length, n_agents=3, n_actions=5, obs_dim=4, state_dim=6, seed=0):
    rng = np.random.default_rng(seed)
    width = obs_dim + state_dim + n_actions + 1
    layout = (
        slice(0, obs_dim),
        slice(obs_dim, obs_dim + state_dim),
        slice(obs_dim + state_dim, obs_dim + state_dim + n_actions),
        slice(width - 1, width),
    )
    obs = rng.normal(size=(length + 1, n_agents, width)).astype(np.float32)
    actions = rng.integers(0, n_actions, size=(length, n_agents)).astype(np.int32)
    rewards = rng.normal(size=length).astype(np.float32)
    logp = rng.normal(size=(length, n_agents)).astype(np.float32)
    return obs, actions, rewards, logp, layout


def _spaces(ids, layout):
    import gymnasium as gym

    def box(s):
        return gym.spaces.Box(-np.inf, np.inf, (s.stop - s.start,), np.float32)

    obs_space = gym.spaces.Dict(dict(zip((OBS_KEY, STATE_KEY, ACTION_MASK_KEY, ALIVE_KEY), map(box, layout))))
    return dict.fromkeys(ids, obs_space), dict.fromkeys(ids, gym.spaces.Discrete(5))


@pytest.mark.parametrize("ended", [True, False])
def test_build_episode_equals_an_episode_built_step_by_step(ended):
    length, ids = 7, ["agent_0", "agent_1", "agent_2"]
    obs, actions, rewards, logp, layout = _packed_episode_data(length)
    obs_spaces, act_spaces = _spaces(ids, layout)
    keys = (OBS_KEY, STATE_KEY, ACTION_MASK_KEY, ALIVE_KEY)

    def split(t):
        return {aid: {k: obs[t, j, s] for k, s in zip(keys, layout, strict=True)} for j, aid in enumerate(ids)}

    final_info = {"battle_won": True} if ended else None
    reference = MultiAgentEpisode(observation_space=obs_spaces, action_space=act_spaces)
    reference.add_env_reset(observations=split(0))
    for t in range(length):
        last = t == length - 1
        reference.add_env_step(
            observations=split(t + 1),
            actions={aid: actions[t, j] for j, aid in enumerate(ids)},
            rewards=dict.fromkeys(ids, float(rewards[t])),
            infos={aid: dict(final_info) for aid in ids} if (last and ended) else {},
            terminateds={**dict.fromkeys(ids, last and ended), "__all__": last and ended},
            truncateds={**dict.fromkeys(ids, False), "__all__": False},
            extra_model_outputs={aid: {Columns.ACTION_LOGP: logp[t, j]} for j, aid in enumerate(ids)},
        )
    reference.to_numpy()

    built = build_episode(
        episode_id="x",
        env_t_started=0,
        observations=obs,
        actions=actions,
        rewards=rewards,
        extra_model_outputs={Columns.ACTION_LOGP: logp},
        terminated=ended,
        truncated=False,
        final_info=final_info,
        agent_ids=ids,
        module_id="m",
        layout=layout,
        observation_space=obs_spaces,
        action_space=act_spaces,
        mapping_fn=lambda aid, ep, **kw: "m",
    )
    assert len(built) == len(reference) == length
    assert built.is_terminated == reference.is_terminated and built.is_done == ended
    assert built.get_return() == pytest.approx(reference.get_return())
    for aid in ids:
        a, b = built.agent_episodes[aid], reference.agent_episodes[aid]
        for k in keys:
            np.testing.assert_array_equal(a.get_observations()[k], b.get_observations()[k])
        np.testing.assert_array_equal(a.get_actions(), b.get_actions())
        np.testing.assert_allclose(a.get_rewards(), b.get_rewards())
        np.testing.assert_array_equal(
            a.get_extra_model_outputs(Columns.ACTION_LOGP), b.get_extra_model_outputs(Columns.ACTION_LOGP)
        )
        assert a.get_infos(-1) == b.get_infos(-1)
        assert a.module_id == "m" and a.multi_agent_episode_id == "x"
    built.validate()  # RLlib's own consistency checks (build_episode leaves them to the tests)
    # A chunk continues: cut() works on it as on RLlib's own episodes.
    if not ended:
        successor = built.cut()
        assert successor.id_ == built.id_ and successor.env_t_started == length


def test_fast_agent_episodes_equal_rllibs_constructor_attribute_for_attribute():
    """``EpisodeParts`` skips ``SingleAgentEpisode.__init__``: every attribute must still be what the
    constructor (plus the space setters, as RLlib's runner leaves them) sets, and nothing mutable shared."""
    from ray.rllib.env.single_agent_episode import _REWARDS_BOX_SPACE, SingleAgentEpisode
    from ray.rllib.env.utils.infinite_lookback_buffer import InfiniteLookbackBuffer

    from amal_rllib.rollout import EpisodeParts, _buffer

    length, ids = 6, ["agent_0", "agent_1"]
    obs, actions, rewards, logp, layout = _packed_episode_data(length, n_agents=2)
    obs_spaces, act_spaces = _spaces(ids, layout)
    parts = EpisodeParts(ids, "m", obs_spaces, act_spaces)
    keys = (OBS_KEY, STATE_KEY, ACTION_MASK_KEY, ALIVE_KEY)
    for ended in (True, False):
        data = dict(
            observations={k: np.ascontiguousarray(obs[:, 1, s]) for k, s in zip(keys, layout, strict=True)},
            infos=[{} for _ in range(length)] + [{"battle_won": ended}],
            actions=np.ascontiguousarray(actions[:, 1]),
            rewards=rewards.astype(np.float64),
            extra_model_outputs={Columns.ACTION_LOGP: np.ascontiguousarray(logp[:, 1])},
        )
        fast = parts.agent_episode("agent_1", episode_id="x", t_started=4, terminated=ended, truncated=False, **data)
        slow = SingleAgentEpisode(
            agent_id="agent_1",
            module_id="m",
            multi_agent_episode_id="x",
            observations=_buffer(data["observations"]),
            infos=_buffer(data["infos"]),
            actions=_buffer(data["actions"]),
            rewards=_buffer(data["rewards"], space=_REWARDS_BOX_SPACE),
            extra_model_outputs={k: _buffer(v) for k, v in data["extra_model_outputs"].items()},
            terminated=ended,
            truncated=False,
            t_started=4,
            len_lookback_buffer=0,
        )
        slow.observation_space = obs_spaces["agent_1"]
        slow.action_space = act_spaces["agent_1"]
        for name in SingleAgentEpisode.__slots__:
            value = getattr(slow, name)
            if name == "id_":
                assert isinstance(fast.id_, str) and len(fast.id_) == 32
            elif name == "extra_model_outputs":
                assert value.keys() == fast.extra_model_outputs.keys()
                assert all(fast.extra_model_outputs[k] == v for k, v in value.items())
            else:
                assert getattr(fast, name) == value, name
                if isinstance(value, InfiniteLookbackBuffer):
                    assert vars(getattr(fast, name)).keys() == vars(value).keys(), name
        fast.validate()
        assert len(fast) == length and fast.t == 4 + length and fast.is_done == ended
    again = parts.agent_episode("agent_1", episode_id="y", t_started=0, terminated=False, truncated=False, **data)
    for name in ("observations", "infos", "actions", "rewards", "extra_model_outputs", "_custom_data"):
        assert getattr(again, name) is not getattr(fast, name), name  # no state shared between episodes
    assert again.id_ != fast.id_


def test_episode_metrics_equal_rllibs_log_dict_version_key_for_key():
    """TeamEnvRunner logs RLlib's per-episode metrics without log_dict: same keys, order, reductions and
    windows (more episodes than the window, so the window is what is compared, and min/max too)."""
    from types import SimpleNamespace

    import tree
    from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner
    from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

    from amal_rllib.env_runner import TeamEnvRunner

    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(25):
        length = int(rng.integers(5, 60))
        returns = {f"agent_{j}": float(rng.normal()) for j in (2, 0, 1)}
        episodes.append((length, sum(returns.values()), float(rng.random()), returns,
                         {"shared_policy": sum(returns.values())}, dict.fromkeys(returns, length)))
    runs = {}
    for cls in (MultiAgentEnvRunner, TeamEnvRunner):
        runner = SimpleNamespace(
            config=SimpleNamespace(metrics_num_episodes_for_smoothing=20, num_env_runners=2), metrics=MetricsLogger()
        )
        for episode in episodes:
            cls._log_episode_metrics(runner, *episode)
        reduced = runner.metrics.reduce()
        runs[cls] = [(path, stats.peek(), type(stats).__name__, getattr(stats, "_window", None))
                     for path, stats in tree.flatten_with_path(reduced)]
    ours, rllibs = runs[TeamEnvRunner], runs[MultiAgentEnvRunner]
    assert len(rllibs) == 3 + 3 + 3 + 1 + 2 + 2  # 3 means, 3 agent returns, 3 agent steps, 1 module, min, max
    assert ours == rllibs


# ----------------------------------------------------------------------------------- against real SMAX + RLlib


def _mappo(ray_local, **kw):
    from amal_rllib.presets import mappo_config

    args = dict(num_env_runners=0, num_envs_per_env_runner=8, train_batch_size=400, evaluation_interval=None)
    args.update(kw)
    return mappo_config("3m", **args)


@pytest.fixture(scope="module")
def fast_algo(ray_local):
    algo = _mappo(ray_local).build_algo()
    yield algo
    algo.stop()


@pytest.mark.slow
def test_fast_sampler_chunks_continue_under_the_same_id_and_metrics_count_every_step(fast_algo):
    runner = fast_algo.env_runner
    assert runner._fast_rollout() is not None, "the fast path should serve MAPPO on SMAX"
    runner.get_metrics()  # drop what earlier samples logged
    first = runner.sample(num_timesteps=8 * 30)
    second = runner.sample(num_timesteps=8 * 30)
    assert all(e.is_numpy for e in first + second)
    for e in first + second:
        e.validate()  # RLlib's consistency checks on every bulk-built episode
    assert sum(len(e) for e in first) == 8 * 30  # every env step of every sub-env is in some episode
    chunks = {e.id_: e for e in first if not e.is_done}
    assert 1 <= len(chunks) <= 8  # one running chunk per sub-env whose last step did not end its episode
    continued = [e for e in second if e.id_ in chunks]
    assert len(continued) == len(chunks)
    assert sum(e.env_t_started == 0 for e in second if e.id_ not in chunks) >= 8 - len(chunks)
    for e in continued:
        prev = chunks[e.id_]
        assert e.env_t_started == prev.env_t  # the next chunk starts where the last one stopped
        for aid in e.agent_episodes:
            np.testing.assert_array_equal(
                e.agent_episodes[aid].get_observations(0)[OBS_KEY],
                prev.agent_episodes[aid].get_observations(-1)[OBS_KEY],
            )
    for e in first + second:
        for sa in e.agent_episodes.values():
            mask = sa.get_observations()[ACTION_MASK_KEY][:-1]
            acts = sa.get_actions()
            assert (mask[np.arange(len(acts)), acts] > 0.5).all(), "only valid actions are sampled"
        if e.is_done:
            info = e.agent_episodes["agent_0"].get_infos(-1)
            assert "battle_won" in info
    metrics = runner.get_metrics()
    assert metrics["num_env_steps_sampled"].peek() == 2 * 8 * 30
    finished = [e for e in first + second if e.is_done]
    assert metrics["num_episodes"].peek() == len(finished) > 0
    assert 0.0 <= metrics["battle_won"].peek() <= 1.0
    # RLlib's episode metrics add up the chunks of an episode returned in earlier calls.
    assert metrics["episode_len_mean"].peek() > 0


@pytest.mark.slow
def test_fast_sampler_episodes_mode_returns_exactly_that_many_finished_episodes(fast_algo):
    runner = fast_algo.env_runner
    episodes = runner.sample(num_episodes=5, explore=False)
    assert len(episodes) == 5 and all(e.is_done and e.env_t_started == 0 for e in episodes)
    # Greedy: every action is the argmax of the stored (masked) logits.
    for e in episodes:
        for sa in e.agent_episodes.values():
            logits = sa.get_extra_model_outputs(Columns.ACTION_DIST_INPUTS)
            np.testing.assert_array_equal(sa.get_actions(), logits.argmax(-1))


@pytest.mark.slow
def test_fast_sampler_episodes_mode_takes_each_sub_envs_first_episodes(fast_algo):
    runner = fast_algo.env_runner
    assert runner.num_envs == 8
    calls = []
    step = runner.env.step_packed

    def counting_step(actions):
        calls.append(1)
        return step(actions)

    runner.env.step_packed = counting_step
    try:
        episodes, envs = runner.sample_with_policy(None, np.array([2, 1, 1, 1, 1, 1, 1, 0]))
    finally:
        runner.env.step_packed = step
    assert len(episodes) == 8 and all(e.is_done and e.env_t_started == 0 for e in episodes)
    assert sorted(envs) == [0, 0, 1, 2, 3, 4, 5, 6]
    assert envs[:7] == [0, 1, 2, 3, 4, 5, 6] and envs[7] == 0  # round order
    # The rollout ran until the last quota was met, and no longer (env 0's second episode follows its first).
    ends = [len(episodes[0]) + len(episodes[7])] + [len(e) for e in episodes[1:7]]
    assert max(ends) == len(calls)
    for e in episodes:
        e.validate()


@pytest.mark.slow
def test_fast_sampler_plays_a_given_policy_and_stores_its_log_probs(fast_algo):
    """``sample_with_policy``: each sub-env's actions come from the policy given, not the module."""
    runner = fast_algo.env_runner
    module = runner.module["shared_policy"]
    seen = []

    def policy(batch):  # sub-envs 0-3 play the module's actor, 4-7 a flat policy over the valid actions
        seen.append(batch[OBS_KEY].shape[0])
        with torch.no_grad():
            logits = module.actor(batch[OBS_KEY])
        logits[logits.shape[0] // 2 :] = 0.0
        return torch.where(batch[ACTION_MASK_KEY] > 0.5, logits, torch.finfo(torch.float32).min)

    episodes, envs = runner.sample_with_policy(policy, np.ones(8, dtype=np.int64))
    assert set(seen) == {8 * 3} and sorted(envs) == list(range(8))
    for e, env in zip(episodes, envs, strict=True):
        for sa in e.agent_episodes.values():
            obs = sa.get_observations()
            mask = torch.as_tensor(np.asarray(obs[ACTION_MASK_KEY][:-1]))
            with torch.no_grad():
                logits = module.actor(torch.as_tensor(np.asarray(obs[OBS_KEY][:-1])))
            if env >= 4:
                logits = torch.zeros_like(logits)
            log_pi = torch.log_softmax(torch.where(mask > 0.5, logits, torch.finfo(torch.float32).min), -1)
            actions = torch.as_tensor(np.asarray(sa.get_actions())).long()
            expected = log_pi.gather(1, actions[:, None]).squeeze(1).numpy()
            np.testing.assert_allclose(sa.get_extra_model_outputs(Columns.ACTION_LOGP), expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("fast_sampling", [True, False])
def test_bulk_learner_batch_equals_rllibs_pipeline_column_by_column(ray_local, fast_sampling):
    """On the vectorised sampler's episodes and on RLlib's own (whose continued chunks carry a lookback)."""
    algo = (
        _mappo(ray_local, env_kwargs={"fast_sampling": fast_sampling})
        .training(bulk_learner_connector=False)
        .build_algo()
    )
    try:
        assert (algo.env_runner._fast_rollout() is not None) == fast_sampling
        learner = algo.learner_group._learner
        assert not learner.bulk_pipeline
        episodes = algo.env_runner.sample(num_timesteps=8 * 40) + algo.env_runner.sample(num_timesteps=8 * 40)
        module = learner.module
        reference = learner._learner_connector(
            rl_module=module, batch={}, episodes=copy.deepcopy(episodes), shared_data={}, metrics=None
        )
        bulk = {}
        eps = copy.deepcopy(episodes)
        bulk = TeamEpisodesToBatch()(rl_module=module, batch=bulk, episodes=eps, shared_data={})
        bulk = TeamGAE(gamma=0.99, lambda_=0.95)(rl_module=module, batch=bulk, episodes=eps)
    finally:
        algo.stop()
    ref, ours = reference["shared_policy"], bulk["shared_policy"]
    expected = {
        Columns.OBS,
        Columns.ACTIONS,
        Columns.REWARDS,
        Columns.TERMINATEDS,
        Columns.TRUNCATEDS,
        Columns.LOSS_MASK,
        Columns.ACTION_LOGP,
        Columns.ACTION_DIST_INPUTS,
        Postprocessing.ADVANTAGES,
        Postprocessing.VALUE_TARGETS,
    }
    assert expected <= set(ref) and expected <= set(ours)
    for col in expected:
        a, b = ref[col], ours[col]
        if isinstance(a, dict):
            for k in a:
                torch.testing.assert_close(b[k].float(), a[k].float(), msg=f"{col}/{k}")
        else:
            torch.testing.assert_close(b.double(), a.double(), rtol=1e-4, atol=1e-4, msg=col)


class _StepCounter(RLlibCallback):
    def on_episode_step(self, *, episode, **kwargs):
        pass


@pytest.mark.slow
def test_per_step_callbacks_get_rllibs_loop_and_a_warning_naming_them(ray_local, caplog):
    algo = _mappo(ray_local).callbacks([_StepCounter]).build_algo()
    try:
        with caplog.at_level(logging.WARNING, logger="amal_rllib.env_runner"):
            episodes = algo.env_runner.sample(num_timesteps=16)
        assert algo.env_runner._rollout is None
        assert "_StepCounter overrides on_episode_step" in caplog.text
        assert all(e.is_numpy for e in episodes)
    finally:
        algo.stop()

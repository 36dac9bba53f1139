"""Vectorised rollouts: all sub-envs stepped in lockstep, one policy forward per step, episodes built in bulk.

RLlib's ``MultiAgentEnvRunner`` does per step and per sub-env Python work: the
env-to-module and module-to-env connector pipelines, ``add_env_step`` on each
episode, ~14 ``MetricsLogger.log_value`` calls per env step (profile in
``docs/results/rl_profile_3m``). :class:`VectorRollout` keeps RLlib's contract
(it returns ``MultiAgentEpisode`` chunks, numpy-ized, that the learner
connector pipeline consumes unchanged, and it logs the same env-runner metrics)
but per step it does only three array operations:

1. one forward pass of the RLModule on every agent of every sub-env,
2. one action draw from the module's action distribution,
3. one vmapped env step (:meth:`SMAXVectorEnv.step_packed`, same-step auto-reset),

writing into per-step arrays. After the last step, :func:`episode_segments`
cuts each sub-env's timeline at its episode ends and :func:`build_episode`
turns each piece into a ``MultiAgentEpisode`` (numpy buffers, no per-step
appends). An episode still running at the end of a call is returned as a chunk
and continued by the next call under the same id, like RLlib's ``cut()``.

What it does not do, and when the runner uses RLlib's own loop instead (see
``TeamEnvRunner``): custom env-to-module / module-to-env connectors, stateful
(recurrent) modules, ``on_episode_step`` callbacks, and agents mapped to
different modules. ``on_episode_created``/``on_episode_start``/``on_episode_end``
are called once per episode, after the rollout.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.multi_agent_episode import MultiAgentEpisode
from ray.rllib.env.single_agent_episode import _REWARDS_BOX_SPACE, SingleAgentEpisode
from ray.rllib.env.utils.infinite_lookback_buffer import InfiniteLookbackBuffer
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

from .envs.spec import ACTION_MASK_KEY, ALIVE_KEY, BATTLE_WON_KEY, EPISODE_LIMIT_KEY, OBS_KEY, STATE_KEY

#: Row ``n_agents`` of a packed step output: the columns of the scalars.
REWARD_COL, TERMINATED_COL, TRUNCATED_COL, WON_COL, DEAD_ALLIES_COL, DEAD_ENEMIES_COL = range(6)
OBS_KEYS = (OBS_KEY, STATE_KEY, ACTION_MASK_KEY, ALIVE_KEY)


@dataclass(frozen=True)
class Segment:
    """One sub-env's steps ``start .. stop - 1`` of a rollout; ``ended``: the last step ended the episode."""

    env: int
    start: int
    stop: int
    ended: bool


def episode_segments(done: np.ndarray) -> list[Segment]:
    """Cuts each sub-env's timeline (``done`` ``[T, E]``) after every step that ended an episode.

    Ordered by the step at which a segment ends, then by sub-env (the order
    episodes finish in), so the first ``k`` ended segments are the first ``k``
    episodes to finish.
    """
    done = np.asarray(done, dtype=bool)
    steps, n_envs = done.shape
    segments = []
    for env in range(n_envs):
        start = 0
        for t in np.flatnonzero(done[:, env]):
            segments.append(Segment(env, start, int(t) + 1, True))
            start = int(t) + 1
        if start < steps:
            segments.append(Segment(env, start, steps, False))
    segments.sort(key=lambda s: (s.stop, s.env))
    return segments


def episode_quota(num_episodes: int, num_envs: int) -> np.ndarray:
    """Episodes each sub-env contributes to ``num_episodes`` (``[E]`` ints): dealt round by round,
    sub-env 0 first, so the counts differ by at most one."""
    if num_episodes < 0 or num_envs < 1:
        raise ValueError(f"need num_episodes >= 0 and num_envs >= 1, got {num_episodes=}, {num_envs=}")
    return np.array([(num_episodes - env + num_envs - 1) // num_envs for env in range(num_envs)], dtype=np.int64)


def quota_segments(segments: Sequence[Segment], quota: np.ndarray) -> list[Segment]:
    """Each sub-env's first ``quota[env]`` ended segments, in round order (every sub-env's first
    episode, then every second one, ...).

    Episodes mode keeps these rather than the first ``n`` to finish: "first to finish" favours
    short episodes (quick losses or wins), the same bias a fixed quota per sub-env avoids. Raises
    if a sub-env ended fewer episodes than its quota.
    """
    per_env: dict[int, list[Segment]] = {}
    for seg in sorted((s for s in segments if s.ended), key=lambda s: (s.env, s.start)):
        per_env.setdefault(seg.env, []).append(seg)
    picked = []
    for env, want in enumerate(np.asarray(quota)):
        have = per_env.get(env, [])
        if len(have) < want:
            raise ValueError(f"sub-env {env} ended {len(have)} episodes, its quota is {want}")
        picked += [(rank, env, seg) for rank, seg in enumerate(have[: int(want)])]
    return [seg for _, _, seg in sorted(picked, key=lambda item: (item[0], item[1]))]


def _buffer(data, space=None) -> InfiniteLookbackBuffer:
    """A finalized (numpy) buffer without lookback, as ``to_numpy()`` leaves one."""
    buffer = InfiniteLookbackBuffer(space=space)
    buffer.data = data
    buffer.finalized = not isinstance(data, list)
    buffer.lookback = 0
    return buffer


#: What ``InfiniteLookbackBuffer.__init__`` sets and ``SingleAgentEpisode``'s ``__slots__`` in Ray 2.60
#: (``pyproject.toml`` pins ``ray<2.61``); :class:`EpisodeParts` sets exactly these and checks them.
_BUFFER_ATTRS = frozenset({"data", "lookback", "finalized", "_space", "_space_struct"})
_AGENT_EPISODE_ATTRS = frozenset(
    {
        "id_", "agent_id", "module_id", "multi_agent_episode_id", "_observation_space", "observations", "infos",
        "_action_space", "actions", "rewards", "is_terminated", "is_truncated", "extra_model_outputs",
        "t_started", "t", "_custom_data", "_start_time", "_last_step_time", "_last_added_observation",
        "_last_added_infos",
    }
)  # fmt: skip


class _BufferMaker:
    """``_buffer(data, space)`` for one fixed ``space`` whose struct is computed once.

    RLlib's ``space`` setter runs ``get_base_struct_from_space`` for every buffer it makes (~40% of
    building a 3m iteration's ~1,000 episodes, profiled); a buffer here starts as a copy of one
    template's attributes instead.
    """

    def __init__(self, space=None) -> None:
        self._template = vars(_buffer([], space)).copy()
        if set(self._template) != _BUFFER_ATTRS:
            raise RuntimeError(
                f"InfiniteLookbackBuffer's attributes changed ({sorted(self._template)}, expected "
                f"{sorted(_BUFFER_ATTRS)}): update amal_rllib.rollout for this Ray version"
            )

    def __call__(self, data) -> InfiniteLookbackBuffer:
        buffer = InfiniteLookbackBuffer.__new__(InfiniteLookbackBuffer)
        state = buffer.__dict__
        state.update(self._template)
        state["data"] = data
        state["finalized"] = not isinstance(data, list)
        return buffer


class EpisodeParts:
    """Builds numpy-ized ``SingleAgentEpisode``s for fixed agents and spaces, fast.

    The same object ``SingleAgentEpisode(...)`` plus the two space setters would build (the same
    attributes and values, tested against RLlib's constructor), without re-deriving each space's
    struct for every buffer and without the constructor's ``validate()`` (the tests validate).
    """

    def __init__(self, agent_ids: Sequence[str], module_id: str, observation_space: Mapping, action_space: Mapping):
        self.module_id = module_id
        self._obs = {aid: _BufferMaker(observation_space[aid]) for aid in agent_ids}
        self._actions = {aid: _BufferMaker(action_space[aid]) for aid in agent_ids}
        self._rewards = _BufferMaker(_REWARDS_BOX_SPACE)
        self.plain = _BufferMaker(None)
        self._spaces = {aid: (observation_space[aid], action_space[aid]) for aid in agent_ids}
        slots = set(SingleAgentEpisode.__slots__)
        if slots != _AGENT_EPISODE_ATTRS:
            raise RuntimeError(
                f"SingleAgentEpisode's attributes changed ({sorted(slots)}, expected "
                f"{sorted(_AGENT_EPISODE_ATTRS)}): update amal_rllib.rollout for this Ray version"
            )

    def agent_episode(
        self,
        agent_id: str,
        *,
        episode_id: str,
        t_started: int,
        observations: Mapping[str, np.ndarray],
        infos: list,
        actions: np.ndarray,
        rewards: np.ndarray,
        extra_model_outputs: Mapping[str, np.ndarray],
        terminated: bool,
        truncated: bool,
    ) -> SingleAgentEpisode:
        obs_space, act_space = self._spaces[agent_id]
        sa = SingleAgentEpisode.__new__(SingleAgentEpisode)
        for name, value in dict(
            id_=uuid.uuid4().hex,
            agent_id=agent_id,
            module_id=self.module_id,
            multi_agent_episode_id=episode_id,
            _observation_space=obs_space,
            observations=self._obs[agent_id](observations),
            infos=self.plain(infos),
            _action_space=act_space,
            actions=self._actions[agent_id](actions),
            rewards=self._rewards(rewards),
            is_terminated=terminated,
            is_truncated=truncated,
            extra_model_outputs={k: self.plain(v) for k, v in extra_model_outputs.items()},
            t_started=t_started,
            t=t_started + len(rewards),
            _custom_data={},
            _start_time=None,
            _last_step_time=None,
            _last_added_observation=None,
            _last_added_infos=None,
        ).items():
            setattr(sa, name, value)  # __slots__: every one of them, as the constructor does
        return sa


def build_episode(
    *,
    episode_id: str,
    env_t_started: int,
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    extra_model_outputs: Mapping[str, np.ndarray],
    terminated: bool,
    truncated: bool,
    final_info: Mapping | None,
    agent_ids: Sequence[str],
    module_id: str,
    layout: Sequence[slice],
    observation_space: Mapping,
    action_space: Mapping,
    mapping_fn: Callable,
    parts: EpisodeParts | None = None,
) -> MultiAgentEpisode:
    """A numpy-ized ``MultiAgentEpisode`` chunk of ``L`` steps in which every agent acts at every step.

    ``observations`` ``[L + 1, N, W]`` packed rows (``layout`` gives the
    ``obs``/``state``/``action_mask``/``alive`` columns), ``actions`` ``[L, N]``,
    ``rewards`` ``[L]`` (the team reward, every agent's), each extra model
    output ``[L, N, ...]``. ``final_info`` goes into every agent's last info.
    The result holds what RLlib's runner would have built step by step.
    ``parts``: an :class:`EpisodeParts` for these agents and spaces, made once per rollout.
    """
    if parts is None:
        parts = EpisodeParts(agent_ids, module_id, observation_space, action_space)
    length = int(actions.shape[0])
    episode = MultiAgentEpisode(
        id_=episode_id,
        observation_space=dict(observation_space),
        action_space=dict(action_space),
        agent_module_ids=dict.fromkeys(agent_ids, module_id),
        agent_to_module_mapping_fn=mapping_fn,
        env_t_started=env_t_started,
        len_lookback_buffer=0,
    )
    team_rewards = np.asarray(rewards, dtype=np.float64)
    for j, aid in enumerate(agent_ids):
        rows = observations[:, j]
        infos = [{} for _ in range(length + 1)]
        if final_info is not None:
            infos[-1] = dict(final_info)
        episode.agent_episodes[aid] = parts.agent_episode(
            aid,
            episode_id=episode_id,
            t_started=env_t_started,
            observations={k: np.ascontiguousarray(rows[:, s]) for k, s in zip(OBS_KEYS, layout, strict=True)},
            infos=infos,
            actions=np.ascontiguousarray(actions[:, j]),
            rewards=team_rewards.copy(),
            extra_model_outputs={k: np.ascontiguousarray(v[:, j]) for k, v in extra_model_outputs.items()},
            terminated=terminated,
            truncated=truncated,
        )
        episode.env_t_to_agent_t[aid] = parts.plain(list(range(env_t_started, env_t_started + length + 1)))
        episode.agent_t_started[aid] = env_t_started
    episode.env_t = env_t_started + length
    episode.is_terminated = bool(terminated)
    episode.is_truncated = bool(truncated)
    # No ``validate()`` here (of the episode or its agents' episodes: ~35% of this function, ~1,000
    # calls per 3m iteration); the tests validate every bulk-built episode.
    return episode


@dataclass
class _Ongoing:
    """Per sub-env: the episode now running (continued across sample calls)."""

    episode_id: str
    env_t_started: int
    start_time: float
    # Chunks of this episode returned by earlier calls are in the runner's `_ongoing_episodes_for_metrics`.


class VectorRollout:
    """Samples a :class:`~amal_rllib.envs.smax_vector.SMAXVectorEnv` with one RLModule for every agent.

    ``sample`` returns ``(finished, chunks, stats)``: the finished episodes and the
    running chunks (timesteps mode) or exactly ``num_episodes`` finished ones, each
    sub-env's first (episodes mode), and a dict of counts for the runner's metrics.
    """

    def __init__(self, env, module_id: str, mapping_fn: Callable, seed: int | None = None) -> None:
        self.env = env
        self.module_id = module_id
        self.mapping_fn = mapping_fn
        self.agent_ids = list(env._ids)
        self.n_agents = len(self.agent_ids)
        self.layout = env.layout
        self.observation_space = dict(env.single_observation_spaces)
        self.action_space = dict(env.single_action_spaces)
        self._seed = seed
        self._parts = EpisodeParts(self.agent_ids, module_id, self.observation_space, self.action_space)
        self._obs: np.ndarray | None = None  # [E, N, W]: what the policy sees next
        self._ongoing: list[_Ongoing] = []

    @property
    def needs_reset(self) -> bool:
        return self._obs is None

    def drop_episodes(self) -> None:
        """Forget the running episodes: the next ``sample`` resets every sub-env."""
        self._obs = None

    def reset(self) -> None:
        self._obs = self.env.reset_packed(seed=self._seed)
        self._seed = None  # seeded once; later resets continue the env's generator
        now = time.perf_counter()
        self._ongoing = [_Ongoing(uuid.uuid4().hex, 0, now) for _ in range(self.env.num_envs)]

    @torch.no_grad()
    def _act(
        self, module, obs: np.ndarray, explore: bool, random_actions: bool, extra: dict[str, list], policy=None
    ):
        flat = torch.from_numpy(obs.reshape(-1, obs.shape[-1]))
        batch = {k: flat[:, s] for k, s in zip(OBS_KEYS, self.layout, strict=True)}
        if random_actions:
            logits = torch.where(batch[ACTION_MASK_KEY] > 0.5, 0.0, torch.finfo(torch.float32).min)
            dist = module.get_exploration_action_dist_cls().from_logits(logits)
            actions = dist.sample()
        else:
            if policy is not None:  # e.g. one CEM candidate per group of sub-envs (amal.rollouts)
                logits = policy(batch)
            else:
                out = (module.forward_exploration if explore else module.forward_inference)({Columns.OBS: batch})
                logits = out[Columns.ACTION_DIST_INPUTS]
            if explore:
                dist = module.get_exploration_action_dist_cls().from_logits(logits)
                actions = dist.sample()
            else:
                dist = module.get_inference_action_dist_cls().from_logits(logits)
                actions = dist.to_deterministic().sample()
        shape = obs.shape[:2]
        extra[Columns.ACTION_DIST_INPUTS].append(logits.numpy().reshape(*shape, -1))
        extra[Columns.ACTION_LOGP].append(dist.logp(actions).numpy().reshape(shape))
        return actions.numpy().reshape(shape)

    def sample(
        self,
        module,
        *,
        num_steps: int | None = None,
        num_episodes: int | None = None,
        explore: bool = True,
        random_actions: bool = False,
        weights_seq_no: int = 0,
        quota: Sequence[int] | None = None,
        policy: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    ) -> tuple[list[MultiAgentEpisode], list[MultiAgentEpisode], dict]:
        """Steps all sub-envs ``num_steps`` times, or until each has ended its share of ``num_episodes``.

        Episodes mode: sub-env ``e`` contributes its first ``quota[e]`` episodes
        (:func:`episode_quota` of ``num_episodes`` unless ``quota`` is given), in round order
        (:func:`quota_segments`). ``policy``: maps the flat observation batch (``{key: [E * N,
        ...]}``, sub-env major) to action-distribution inputs ``[E * N, A]`` in place of the
        module's forward pass (the module's action distribution class still draws the actions).
        Returns ``(finished, chunks, stats)``: finished episodes, running chunks (timesteps mode
        only; continued next call) and ``{"env_steps": ..., "episode_envs": [sub-env of each
        finished episode]}``.
        """
        if (num_steps is None) == (num_episodes is None and quota is None):
            raise ValueError("give exactly one of num_steps and num_episodes (or quota)")
        if num_steps is None:
            if quota is None:
                quota = episode_quota(num_episodes, self.env.num_envs)
            quota = np.asarray(quota, dtype=np.int64)
            if quota.shape != (self.env.num_envs,) or (quota < 0).any():
                raise ValueError(f"quota must hold {self.env.num_envs} counts >= 0 (one per sub-env), got {quota}")
            if num_episodes is not None and int(quota.sum()) != num_episodes:
                raise ValueError(f"quota {quota.tolist()} sums to {int(quota.sum())}, not num_episodes={num_episodes}")
        if num_steps is None or self.needs_reset:
            self.reset()
        obs_steps, next_rows, scalars, actions = [], [], [], []
        extra: dict[str, list] = {Columns.ACTION_DIST_INPUTS: [], Columns.ACTION_LOGP: []}
        n = self.n_agents
        obs = self._obs
        ended = np.zeros(self.env.num_envs, dtype=np.int64)
        t = 0
        while (t < num_steps) if num_steps is not None else bool((ended < quota).any()):
            a = self._act(module, obs, explore, random_actions, extra, policy)
            out = self.env.step_packed(a)
            obs_steps.append(obs)
            actions.append(a)
            next_rows.append(out[:, :n])
            scalars.append(out[:, n, :6])
            obs = out[:, n + 1 :]
            if num_steps is None:
                ended += (out[:, n, TERMINATED_COL] > 0.5) | (out[:, n, TRUNCATED_COL] > 0.5)
            t += 1
        self._obs = obs
        if t == 0:
            return [], [], {"env_steps": 0, "episode_envs": []}
        obs_arr = np.stack(obs_steps)  # [T, E, N, W]
        next_arr = np.stack(next_rows)  # [T, E, N, W]
        sc = np.stack(scalars)  # [T, E, 6]
        act = np.stack(actions)  # [T, E, N]
        emo = {k: np.stack(v) for k, v in extra.items()}
        emo[WEIGHTS_SEQ_NO] = np.full(act.shape, weights_seq_no, dtype=np.int64)
        done = (sc[..., TERMINATED_COL] > 0.5) | (sc[..., TRUNCATED_COL] > 0.5)

        finished_eps, chunks, episode_envs = [], [], []
        now = time.perf_counter()
        segments = episode_segments(done)
        if num_steps is None:
            segments = quota_segments(segments, quota)
        for seg in segments:
            e, a0, a1 = seg.env, seg.start, seg.stop
            ongoing = self._ongoing[e]
            last = sc[a1 - 1, e]
            terminated = seg.ended and bool(last[TERMINATED_COL] > 0.5)
            truncated = seg.ended and not terminated
            final_info = (
                {
                    BATTLE_WON_KEY: bool(last[WON_COL] > 0.5),
                    EPISODE_LIMIT_KEY: truncated,
                    "dead_allies": int(last[DEAD_ALLIES_COL]),
                    "dead_enemies": int(last[DEAD_ENEMIES_COL]),
                }
                if seg.ended
                else None
            )
            episode = build_episode(
                episode_id=ongoing.episode_id,
                env_t_started=ongoing.env_t_started,
                observations=np.concatenate([obs_arr[a0:a1, e], next_arr[a1 - 1, e][None]]),
                actions=act[a0:a1, e],
                rewards=sc[a0:a1, e, REWARD_COL],
                extra_model_outputs={k: v[a0:a1, e] for k, v in emo.items()},
                terminated=terminated,
                truncated=truncated,
                final_info=final_info,
                agent_ids=self.agent_ids,
                module_id=self.module_id,
                layout=self.layout,
                observation_space=self.observation_space,
                action_space=self.action_space,
                mapping_fn=self.mapping_fn,
                parts=self._parts,
            )
            episode._start_time = ongoing.start_time
            episode._last_step_time = now
            if seg.ended:
                finished_eps.append(episode)
                episode_envs.append(e)
                self._ongoing[e] = _Ongoing(uuid.uuid4().hex, 0, now)
            else:
                chunks.append(episode)
                self._ongoing[e] = _Ongoing(ongoing.episode_id, ongoing.env_t_started + (a1 - a0), now)
        if num_steps is None:
            self.drop_episodes()  # the unfinished episodes are dropped; the next call resets
        env_steps = t * self.env.num_envs
        return finished_eps, chunks, {"env_steps": env_steps, "episode_envs": episode_envs}

"""Auxiliary rollouts: actor parameters as flat vectors, the env-runner side of a
generation, transitions for the world model's fitness, and the auxiliary buffer."""

from __future__ import annotations

import math
import pickle
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from ray.rllib.core import COMPONENT_RL_MODULE
from ray.rllib.env.multi_agent_episode import MultiAgentEpisode

from ..core.losses import mask_logits
from ..core.mi import batched_actor_logits
from ..envs.spec import ACTION_MASK_KEY, ALIVE_KEY, OBS_KEY
from ..rollout import episode_quota
from .connectors import AUX_EPISODE_PREFIX

ActorLayout = Sequence[tuple[str, tuple[int, ...]]]


def actor_layout(actor) -> list[tuple[str, tuple[int, ...]]]:
    """``[(name, shape)]`` of the actor's parameters, in ``named_parameters`` order."""
    return [(name, tuple(p.shape)) for name, p in actor.named_parameters()]


def flatten_actor(actor) -> np.ndarray:
    """The actor's parameters as one float64 vector ``[P]`` (``phi``)."""
    return np.concatenate([p.detach().cpu().numpy().ravel() for p in actor.parameters()]).astype(np.float64)


def actor_state_from_flat(flat: np.ndarray, layout: ActorLayout, prefix: str = "actor.") -> dict[str, np.ndarray]:
    """The module state (``actor.<name>`` -> float32 array) of one flat parameter vector."""
    out, start = {}, 0
    for name, shape in layout:
        size = math.prod(shape)
        out[prefix + name] = np.asarray(flat[start : start + size], dtype=np.float32).reshape(shape)
        start += size
    if start != len(flat):
        raise ValueError(f"flat vector has {len(flat)} entries, the actor {start}")
    return out


def play_candidates(env_runner, assignments: Mapping[int, list], num_episodes: int, module_id: str):
    """Runs on an auxiliary env runner: for each of its candidates, load the weights and play whole episodes.

    ``assignments``: ``{worker_index: [(candidate_id, actor_state), ...]}``.
    ``sample(num_episodes=...)`` resets the env first and returns only finished
    episodes, so no episode ever mixes two candidates. Returns
    ``([(candidate_id, episodes), ...], env-runner metrics)``.
    """
    played = []
    for candidate_id, actor_state in assignments.get(env_runner.worker_index, ()):
        env_runner.set_state({COMPONENT_RL_MODULE: {module_id: actor_state}})
        played.append((candidate_id, env_runner.sample(num_episodes=num_episodes, explore=True)))
    return played, env_runner.get_metrics()


def candidate_blocks(num_envs: int, num_candidates: int, num_episodes: int) -> tuple[int, np.ndarray]:
    """How ``num_candidates`` candidates share ``num_envs`` sub-envs in one batched rollout.

    Candidate ``c`` plays on the block of sub-envs ``[c * k, (c + 1) * k)``, ``k = num_envs //
    num_candidates``, and takes :func:`~amal_rllib.rollout.episode_quota` of ``num_episodes`` from
    them (the first episode of each, then the second, ...). Sub-envs after the last block step
    along (their quota is 0). Returns ``(k, quota [num_envs])``.
    """
    if not 1 <= num_candidates <= num_envs:
        raise ValueError(f"{num_candidates} candidates need 1 to num_envs={num_envs} per batched rollout")
    block = num_envs // num_candidates
    quota = np.zeros(num_envs, dtype=np.int64)
    quota[: block * num_candidates] = np.tile(episode_quota(num_episodes, block), num_candidates)
    return block, quota


class CandidatePolicy:
    """Action-distribution inputs for a batched rollout in which candidate ``c`` plays sub-env block ``c``.

    ``states``: each candidate's actor state (``actor.<name>`` -> array, :func:`actor_state_from_flat`).
    One call of :func:`~amal_rllib.core.mi.batched_actor_logits` computes every candidate's logits on
    its own block's rows (the rows after the last block, whose episodes are not kept, get candidate
    0's), then the action mask is applied exactly as the module's forward pass does.
    """

    def __init__(self, actor, states: Sequence[Mapping[str, np.ndarray]], num_envs: int, prefix: str = "actor.") -> None:
        self.actor = actor
        self.num_envs = int(num_envs)
        self.num_candidates = len(states)
        self.block = self.num_envs // self.num_candidates
        device = next(actor.parameters()).device
        self.params = {
            name: torch.stack([torch.as_tensor(np.asarray(s[prefix + name]), device=device) for s in states])[:, None]
            for name, _ in actor.named_parameters()
        }  # {name: [C, 1, *shape]}

    @torch.no_grad()
    def __call__(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = batch[OBS_KEY]
        per_env = x.shape[0] // self.num_envs
        rows = self.num_candidates * self.block * per_env
        logits = batched_actor_logits(self.actor, self.params, x[:rows].reshape(self.num_candidates, -1, x.shape[1]))
        logits = logits.reshape(rows, -1)
        if rows < x.shape[0]:
            first = {name: p[:1] for name, p in self.params.items()}
            rest = batched_actor_logits(self.actor, first, x[rows:][None]).reshape(x.shape[0] - rows, -1)
            logits = torch.cat([logits, rest])
        return mask_logits(logits, batch[ACTION_MASK_KEY])


def play_candidates_batched(env_runner, assignments: Mapping[int, list], num_episodes: int, module_id: str):
    """:func:`play_candidates`, with all of a runner's candidates in one vectorised rollout.

    Candidate ``c`` plays sub-env block ``c`` (:func:`candidate_blocks`) through one batched actor
    forward per step (:class:`CandidatePolicy`), so ``C`` candidates cost one rollout of ``num_envs``
    sub-envs, not ``C`` rollouts. More candidates than sub-envs play in rounds. A runner without the
    vectorised sampler (RLlib's per-step loop) plays them one after another (:func:`play_candidates`).
    Returns ``([(candidate_id, episodes), ...], env-runner metrics)``, ``num_episodes`` whole episodes
    per candidate, every step of them played by that candidate.
    """
    items = list(assignments.get(env_runner.worker_index, ()))
    if not items or not env_runner.can_sample_with_policy():
        return play_candidates(env_runner, assignments, num_episodes, module_id)
    actor = env_runner.module[module_id].actor
    num_envs = env_runner.num_envs
    played = []
    for start in range(0, len(items), num_envs):
        group = items[start : start + num_envs]
        block, quota = candidate_blocks(num_envs, len(group), num_episodes)
        policy = CandidatePolicy(actor, [state for _, state in group], num_envs)
        episodes, envs = env_runner.sample_with_policy(policy, quota)
        by_candidate: list[list] = [[] for _ in group]
        for episode, env in zip(episodes, envs, strict=True):
            by_candidate[env // block].append(episode)
        played += [(candidate_id, eps) for (candidate_id, _), eps in zip(group, by_candidate, strict=True)]
    return played, env_runner.get_metrics()


def mark_auxiliary(episodes: Iterable[MultiAgentEpisode]) -> None:
    """Prefix the episode ids so the learner connector knows these rows are auxiliary."""
    for episode in episodes:
        if not episode.id_.startswith(AUX_EPISODE_PREFIX):
            episode.id_ = AUX_EPISODE_PREFIX + episode.id_
        for sa in episode.agent_episodes.values():
            sa.multi_agent_episode_id = episode.id_


def episode_transitions(episodes: Iterable[MultiAgentEpisode]) -> dict[str, np.ndarray]:
    """``obs`` ``[N, Do]``, ``actions`` ``[N]``, ``next_obs`` ``[N, Do]`` of every alive agent-step."""
    obs, actions, next_obs = [], [], []
    for episode in episodes:
        for sa in episode.agent_episodes.values():
            o = sa.get_observations()
            x, alive = np.asarray(o[OBS_KEY]), np.asarray(o[ALIVE_KEY]).reshape(-1)
            a = np.asarray(sa.get_actions()).reshape(-1)
            keep = alive[: len(a)] > 0.5
            obs.append(x[:-1][keep])
            next_obs.append(x[1:][keep])
            actions.append(a[keep])
    if not obs:
        return {"obs": np.zeros((0, 0), np.float32), "actions": np.zeros(0, np.int64), "next_obs": np.zeros((0, 0))}
    return {
        "obs": np.concatenate(obs),
        "actions": np.concatenate(actions).astype(np.int64),
        "next_obs": np.concatenate(next_obs),
    }


def env_steps(episodes: Iterable[MultiAgentEpisode]) -> int:
    return int(sum(episode.env_steps() for episode in episodes))


def learner_rows(episodes: Iterable[MultiAgentEpisode]) -> int:
    """The rows these episodes become in the learner's batch: agent steps plus one bootstrap row per agent chunk."""
    return int(sum(len(sa) + 1 for episode in episodes for sa in episode.agent_episodes.values()))


class AuxiliaryBuffer:
    """FIFO store of whole auxiliary episodes, bounded in env steps.

    Episodes are kept pickled and unpickled on every ``sample``: the learner
    connector pipeline extends the episodes it gets in place (lists inside them
    included), so nothing stored may be shared with what is handed out.
    (Pickling the episode object is ~30x faster to load than ``get_state``/``from_state``.)
    """

    def __init__(self, capacity_env_steps: int, seed: int | None = None) -> None:
        self.capacity = int(capacity_env_steps)
        self._episodes: deque[tuple[int, bytes]] = deque()
        self.num_env_steps = 0
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self._episodes)

    def add(self, episodes: Iterable[MultiAgentEpisode]) -> None:
        for episode in episodes:
            steps = episode.env_steps()
            self._episodes.append((steps, pickle.dumps(episode, protocol=pickle.HIGHEST_PROTOCOL)))
            self.num_env_steps += steps
        while self.num_env_steps > self.capacity and len(self._episodes) > 1:
            steps, _ = self._episodes.popleft()
            self.num_env_steps -= steps

    def sample(self, num_env_steps: int) -> list[MultiAgentEpisode]:
        """Whole episodes, drawn uniformly without replacement, until they hold ``num_env_steps``
        env steps or the buffer is exhausted (a young buffer gives fewer, never repeats)."""
        out: list[MultiAgentEpisode] = []
        if num_env_steps <= 0 or not self._episodes:
            return out
        total = 0
        for i in self._rng.permutation(len(self._episodes)):
            if total >= num_env_steps:
                break
            steps, blob = self._episodes[int(i)]
            episode = pickle.loads(blob)
            mark_auxiliary([episode])
            out.append(episode)
            total += steps
        return out

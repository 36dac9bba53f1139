"""Auxiliary rollouts: actor parameters as flat vectors, the env-runner side of a
generation, transitions for the world model's fitness, and the auxiliary buffer."""

from __future__ import annotations

import math
import pickle
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from ray.rllib.core import COMPONENT_RL_MODULE
from ray.rllib.env.multi_agent_episode import MultiAgentEpisode

from ..envs.spec import ALIVE_KEY, OBS_KEY
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

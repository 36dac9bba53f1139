"""A tiny cooperative multi-agent env with the adapters' observation contract.

Each step shows a target in {0..3}; an agent scores when it picks the target.
Team reward = fraction of agents that scored (random play ~0.25/step, optimal
1.0/step). Every agent sees the target (a pure learning check, not an
exploration puzzle). Action 4 is always masked out.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from ray.rllib.env.multi_agent_env import MultiAgentEnv

N_TARGETS = 4
N_ACTIONS = 5


class CoordinationEnv(MultiAgentEnv):
    def __init__(self, config: dict | None = None) -> None:
        super().__init__()
        config = config or {}
        self.n_agents = int(config.get("n_agents", 2))
        self.episode_limit = int(config.get("episode_limit", 10))
        self.agents = self.possible_agents = [f"agent_{i}" for i in range(self.n_agents)]
        obs_dim = N_TARGETS + self.n_agents
        space = gym.spaces.Dict(
            {
                "obs": gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
                "state": gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
                "action_mask": gym.spaces.Box(0.0, 1.0, (N_ACTIONS,), np.float32),
                "alive": gym.spaces.Box(0.0, 1.0, (1,), np.float32),
            }
        )
        self.observation_spaces = dict.fromkeys(self.agents, space)
        self.action_spaces = dict.fromkeys(self.agents, gym.spaces.Discrete(N_ACTIONS))
        self._rng = np.random.default_rng()
        self._t = 0
        self._target = 0

    def _obs(self) -> dict:
        out = {}
        mask = np.ones(N_ACTIONS, np.float32)
        mask[N_TARGETS] = 0.0
        for i, aid in enumerate(self.agents):
            vec = np.zeros(N_TARGETS + self.n_agents, np.float32)
            vec[self._target] = 1.0
            vec[N_TARGETS + i] = 1.0
            out[aid] = {"obs": vec, "state": vec.copy(), "action_mask": mask, "alive": np.ones(1, np.float32)}
        return out

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._t = 0
        self._target = int(self._rng.integers(N_TARGETS))
        return self._obs(), {}

    def step(self, action_dict):
        # RLlib's env checker samples unmasked random actions; those simply score 0.
        reward = float(np.mean([int(action_dict[a]) == self._target for a in self.agents]))
        self._t += 1
        self._target = int(self._rng.integers(N_TARGETS))
        done = self._t >= self.episode_limit
        rewards = dict.fromkeys(self.agents, reward)
        terminateds = {"__all__": False}
        truncateds = {"__all__": done, **dict.fromkeys(self.agents, done)}
        infos = {a: {"battle_won": True} for a in self.agents} if done else {}
        return self._obs(), rewards, terminateds, truncateds, infos

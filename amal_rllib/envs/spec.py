"""The observation contract shared by every multi-agent env in ``amal_rllib.envs``.

Algorithms read only what is defined here, never which backend runs.

Per agent (ids ``agent_0 .. agent_{n-1}``, all present at every step, dead ones
included) the observation is a ``gymnasium.spaces.Dict``:

- ``obs``: the local observation with the agent-id one-hot appended, ``(obs_dim,)``.
- ``state``: the global state with the agent-id one-hot appended, ``(state_dim,)``
  (MAPPO's agent-specific global state, read by the centralised critic).
- ``action_mask``: 1.0 for valid actions, ``(n_actions,)``.
- ``alive``: ``(1,)``, 1.0 while the agent's unit lives.

A dead agent sees zeros everywhere except its id one-hot (MAPPO's "death
masking"), ``alive == 0`` and only ``no_op_action`` valid; whatever action is
sent for it is replaced by the no-op. The reward is the team reward, the same
for every agent. ``terminateds`` is all-True when the battle is decided (won,
lost or drawn); ``truncateds`` is all-True (with ``terminateds`` all-False) at the
episode limit, so the critic bootstraps. On the last step of an episode every
agent's info holds ``battle_won`` and ``episode_limit_reached``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np

OBS_KEY = "obs"
STATE_KEY = "state"
ACTION_MASK_KEY = "action_mask"
ALIVE_KEY = "alive"

# Info keys on the last step of an episode.
BATTLE_WON_KEY = "battle_won"
EPISODE_LIMIT_KEY = "episode_limit_reached"

BACKENDS = ("smax", "smac")


def agent_ids(n_agents: int) -> list[str]:
    """``["agent_0", ..., "agent_{n-1}"]``."""
    return [f"agent_{i}" for i in range(n_agents)]


@dataclass(frozen=True)
class EnvSpec:
    """Static facts about one scenario, as an algorithm needs them.

    ``obs_dim`` and ``state_dim`` include the agent-id one-hot (``n_agents``
    entries); ``raw_obs_dim`` and ``raw_state_dim`` are the env's own sizes.
    ``no_op_action`` is the only valid action of a dead agent.
    """

    scenario: str
    n_agents: int
    n_actions: int
    obs_dim: int
    state_dim: int
    raw_obs_dim: int
    raw_state_dim: int
    episode_limit: int
    no_op_action: int
    backend: str

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.obs_dim != self.raw_obs_dim + self.n_agents or self.state_dim != self.raw_state_dim + self.n_agents:
            raise ValueError(f"obs_dim/state_dim must be the raw sizes plus n_agents ({self.n_agents}): {self}")
        if not 0 <= self.no_op_action < self.n_actions:
            raise ValueError(f"no_op_action {self.no_op_action} outside [0, {self.n_actions})")

    @property
    def agent_ids(self) -> list[str]:
        return agent_ids(self.n_agents)

    def observation_space(self) -> gym.spaces.Dict:
        """The per-agent observation space."""
        return gym.spaces.Dict(
            {
                OBS_KEY: gym.spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32),
                STATE_KEY: gym.spaces.Box(-np.inf, np.inf, (self.state_dim,), np.float32),
                ACTION_MASK_KEY: gym.spaces.Box(0.0, 1.0, (self.n_actions,), np.float32),
                ALIVE_KEY: gym.spaces.Box(0.0, 1.0, (1,), np.float32),
            }
        )

    def action_space(self) -> gym.spaces.Discrete:
        """The per-agent action space."""
        return gym.spaces.Discrete(self.n_actions)

    def to_dict(self) -> dict:
        return asdict(self)


def pack_layout(spec: EnvSpec) -> tuple[slice, slice, slice, slice]:
    """Column slices of the packed per-agent matrix ``[obs | state | action_mask | alive]``.

    Both adapters build one ``(n_agents, obs_dim + state_dim + n_actions + 1)``
    float32 matrix per step and hand out row slices of it.
    """
    o = spec.obs_dim
    s = o + spec.state_dim
    m = s + spec.n_actions
    return slice(0, o), slice(o, s), slice(s, m), slice(m, m + 1)


def split_packed(packed: np.ndarray, ids: list[str], layout: tuple[slice, slice, slice, slice]) -> dict:
    """Per-agent observation dicts from the packed ``(n_agents, width)`` matrix (row views)."""
    so, ss, sm, sa = layout
    return {
        aid: {OBS_KEY: row[so], STATE_KEY: row[ss], ACTION_MASK_KEY: row[sm], ALIVE_KEY: row[sa]}
        for aid, row in zip(ids, packed, strict=True)
    }

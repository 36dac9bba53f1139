"""A batch of SMAX battles stepped by one vmapped, jitted call (RLlib ``VectorMultiAgentEnv``).

RLlib's ``SyncVectorMultiAgentEnv`` steps its sub-envs one after another (one
jitted call and one device-to-host copy each). This env steps all ``num_envs``
battles with one call and one copy, with RLlib's "next_step" auto-reset: the
step after an episode ends returns that env's first observation of a new
episode, zero rewards and no done flags. Each sub-env's output is exactly what
:class:`~amal_rllib.envs.smax.SMAXMultiAgentEnv` would return for the same
episode key and actions (tested).

The rollout sampler (:mod:`amal_rllib.rollout`) bypasses the per-env dicts:
:meth:`SMAXVectorEnv.reset_packed` and :meth:`SMAXVectorEnv.step_packed` take
and return whole arrays, with a "same step" auto-reset (the step that ends an
episode also returns the first observation of the next one, as JaxMARL's own
``step`` does), so no env step is spent on a reset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from ray.rllib.env.vector.vector_multi_agent_env import VectorMultiAgentEnv

from .smax import SMAX_NO_OP_ACTION, SMAXMultiAgentEnv, unpack_step
from .spec import split_packed


class SMAXVectorEnv(VectorMultiAgentEnv):
    """``num_envs`` SMAX battles of one scenario; same arguments as ``SMAXMultiAgentEnv``."""

    def __init__(self, num_envs: int, scenario: str | Mapping[str, Any] = "3m", **kwargs: Any) -> None:
        super().__init__()
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = int(num_envs)
        # One ordinary env serves as the template (spaces, spec, jitted program);
        # RLlib reads spaces through `envs[i]`, so it is listed once per index.
        template = SMAXMultiAgentEnv(scenario, **kwargs)
        self._template = template
        self.envs = [template] * self.num_envs
        self.metadata = {"autoreset_mode": "next_step"}
        self.single_observation_spaces = template.observation_spaces
        self.single_action_spaces = template.action_spaces
        self.single_observation_space = gym.spaces.Dict(self.single_observation_spaces)
        self.single_action_space = gym.spaces.Dict(self.single_action_spaces)
        self._ids = list(template.possible_agents)
        self._layout = template._layout
        self._max_steps = np.int32(template.max_steps)
        self._n_actions = template.get_env_info().n_actions

        program = template._program
        jax = program.jax
        jnp = jax.numpy
        vreset = jax.vmap(program.reset)
        vstep = jax.vmap(program.step, in_axes=(0, 0, 0, None))

        def step_or_reset(keys, states, actions, max_steps, reset_mask, seeds):
            k1, s1, out = vstep(keys, states, actions, max_steps)
            k2, s2, first = vreset(seeds)
            first = jnp.concatenate([first, jnp.zeros_like(out[:, -1:])], axis=1)

            def pick(stepped, fresh):
                mask = reset_mask.reshape((-1,) + (1,) * (stepped.ndim - 1))
                return jnp.where(mask, fresh, stepped)

            return pick(k1, k2), jax.tree.map(pick, s1, s2), pick(out, first)

        n_agents = len(self._ids)

        def step_same_step_reset(keys, states, actions, max_steps, seeds):
            k1, s1, out = vstep(keys, states, actions, max_steps)
            done = (out[:, n_agents, 1] > 0.5) | (out[:, n_agents, 2] > 0.5)
            k2, s2, first = vreset(seeds)

            def pick(stepped, fresh):
                mask = done.reshape((-1,) + (1,) * (stepped.ndim - 1))
                return jnp.where(mask, fresh, stepped)

            # One array, one transfer: the step's rows, then the next observation (fresh where done).
            next_obs = pick(out[:, :n_agents], first)
            return pick(k1, k2), jax.tree.map(pick, s1, s2), jnp.concatenate([out, next_obs], axis=1)

        self._jax = jax
        self._vreset = jax.jit(vreset)
        self._vstep = jax.jit(step_or_reset)
        self._vstep_packed = jax.jit(step_same_step_reset)
        self._packed_rng = np.random.default_rng()
        self._rngs = [np.random.default_rng() for _ in range(self.num_envs)]
        self._keys = self._states = None
        self._autoreset = np.zeros(self.num_envs, dtype=bool)

    def _draw_seeds(self, which: np.ndarray) -> np.ndarray:
        seeds = np.zeros(self.num_envs, dtype=np.uint32)
        for i in np.flatnonzero(which):
            seeds[i] = np.uint32(self._rngs[i].integers(0, 2**32 - 1, dtype=np.uint64))
        return seeds

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None):
        if seed is not None:
            seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} envs")
            self._rngs = [np.random.default_rng(s) for s in seeds]
        episode_seeds = self._draw_seeds(np.ones(self.num_envs, dtype=bool))
        self._keys, self._states, packed = self._vreset(episode_seeds)
        packed = np.array(packed)
        self._autoreset[:] = False
        observations = [split_packed(packed[i], self._ids, self._layout) for i in range(self.num_envs)]
        return observations, [{} for _ in range(self.num_envs)]

    def step(self, actions: Sequence[Mapping[str, Any]]):
        if self._states is None:
            raise RuntimeError("SMAXVectorEnv.step() called before reset()")
        n = len(self._ids)
        action_array = np.full((self.num_envs, n), SMAX_NO_OP_ACTION, dtype=np.int32)
        for i, action_dict in enumerate(actions):
            for j, aid in enumerate(self._ids):
                if aid in action_dict:
                    action_array[i, j] = action_dict[aid]
        if action_array.min() < 0 or action_array.max() >= self._n_actions:
            raise ValueError(f"actions must lie in [0, {self._n_actions}), got {list(actions)}")
        resetting = self._autoreset.copy()
        self._keys, self._states, out = self._vstep(
            self._keys, self._states, action_array, self._max_steps, resetting, self._draw_seeds(resetting)
        )
        out = np.array(out)  # one device-to-host transfer for the whole batch
        observations, rewards, terminations, truncations, infos = [], [], [], [], []
        for i in range(self.num_envs):
            if resetting[i]:
                obs = split_packed(out[i, :n], self._ids, self._layout)
                rew = dict.fromkeys(self._ids, 0.0)
                term = {**dict.fromkeys(self._ids, False), "__all__": False}
                trunc = {**dict.fromkeys(self._ids, False), "__all__": False}
                info: dict = {}
            else:
                obs, rew, term, trunc, info = unpack_step(out[i], self._ids, self._layout)
            self._autoreset[i] = term["__all__"] or trunc["__all__"]
            observations.append(obs)
            rewards.append(rew)
            terminations.append(term)
            truncations.append(trunc)
            infos.append(info)
        return observations, _objects(rewards), _objects(terminations), _objects(truncations), _objects(infos)

    # Array API for the rollout sampler (same-step auto-reset, no per-env dicts).

    @property
    def n_agents(self) -> int:
        return len(self._ids)

    @property
    def layout(self) -> tuple[slice, slice, slice, slice]:
        """Column slices ``(obs, state, action_mask, alive)`` of a packed agent row."""
        return self._layout

    def reset_packed(self, seed: int | None = None) -> np.ndarray:
        """Resets every env; returns the first observations ``[num_envs, n_agents, width]``."""
        if seed is not None:
            self._packed_rng = np.random.default_rng(seed)
        seeds = self._packed_rng.integers(0, 2**32 - 1, size=self.num_envs, dtype=np.uint64).astype(np.uint32)
        self._keys, self._states, packed = self._vreset(seeds)
        self._autoreset[:] = False
        return np.array(packed)

    def step_packed(self, actions: np.ndarray) -> np.ndarray:
        """Steps every env with ``actions`` ``[num_envs, n_agents]`` (ints; dead agents' are ignored).

        Returns ``[num_envs, 2 * n_agents + 1, width]``: rows ``:n`` the observations after the
        step, row ``n`` the scalars (reward, terminated, truncated, won, dead allies, dead
        enemies), rows ``n + 1:`` the observations the policy sees next: the same as rows ``:n``,
        or, where the episode ended, the first observation of a new episode (already reset).
        """
        if self._states is None:
            raise RuntimeError("SMAXVectorEnv.step_packed() called before reset_packed()")
        actions = np.asarray(actions, dtype=np.int32)
        if actions.shape != (self.num_envs, self.n_agents):
            raise ValueError(f"actions must have shape {(self.num_envs, self.n_agents)}, got {actions.shape}")
        if actions.min() < 0 or actions.max() >= self._n_actions:
            raise ValueError(f"actions must lie in [0, {self._n_actions}), got min {actions.min()} max {actions.max()}")
        seeds = self._packed_rng.integers(0, 2**32 - 1, size=self.num_envs, dtype=np.uint64).astype(np.uint32)
        self._keys, self._states, out = self._vstep_packed(self._keys, self._states, actions, self._max_steps, seeds)
        return np.array(out)  # writable: torch wraps it without a copy

    def close_extras(self, **kwargs: Any) -> None:
        template = getattr(self, "_template", None)  # absent when __init__ rejected its input
        if template is not None:
            template.close()


def _objects(items: list) -> np.ndarray:
    """An object array of per-env dicts, as RLlib's ``SyncVectorMultiAgentEnv`` returns."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array

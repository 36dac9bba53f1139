"""SMAX, JaxMARL's re-implementation of SMAC, as an RLlib ``MultiAgentEnv`` (the embedded default).

Our team is JaxMARL's ``HeuristicEnemySMAX`` allies; the enemies follow its
built-in heuristic. The contract is in ``amal_rllib.envs.spec``.

SMAX facts the adapter relies on (jaxmarl 0.2.0, ``smax_env.py``):

- Ally actions: ``0..3`` move, ``4`` stop, ``5 + j`` attack enemy ``j``. A dead
  unit's only available action is stop, so the no-op is ``4``
  (``SMAX_NO_OP_ACTION``). An attack on an enemy out of range does nothing.
- Reward: enemy health fraction removed this step (summed over enemies, divided
  by their number) plus ``won_battle_bonus`` (1.0) on a win: at most 2.0 per
  episode. JaxMARL's infos are empty, so the outcome is read from the state: won
  = every enemy dead and some ally alive; all units dead at once is a draw
  (terminated, not won).
- The episode limit (``max_steps``, JaxMARL's default 100) is applied here, not
  by JaxMARL (which is built with an unreachable limit), so every limit shares
  one compiled program and a time-out is reported as truncated.
- JaxMARL's ``step`` auto-resets; the adapter calls the non-resetting
  ``step_env``, so the terminal observation is the real one and ``reset()``
  starts the next episode.

Speed: one jitted function does the step and builds every per-agent array
(obs and state with the id one-hot, masks, alive, reward, outcome); there is
one device-to-host transfer per step. The compiled functions are cached per
(scenario, env kwargs) in the process, so more envs of the same scenario cost
no compilation. Weak-typed leaves of JaxMARL's reset state (``step``, the
heuristic's ``last_attacked_enemy``) are made strong so the step is compiled
once, not twice. Building the first env of a scenario in a process costs
~10 s of imports (JaxMARL imports all its envs) and ~8 s of XLA compilation;
setting ``JAX_COMPILATION_CACHE_DIR`` lets later processes (e.g. RLlib env
runners) reuse the compiled code.

JAX runs on the CPU and does not preallocate GPU memory unless the caller set
``JAX_PLATFORMS`` / ``XLA_PYTHON_CLIENT_PREALLOCATE``.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from ray.rllib.env.multi_agent_env import MultiAgentEnv

from .spec import BATTLE_WON_KEY, EPISODE_LIMIT_KEY, EnvSpec, agent_ids, pack_layout, split_packed

logger = logging.getLogger(__name__)

SMAX_INSTALL_HINT = "pip install jaxmarl six"
SMAX_NO_OP_ACTION = 4
# JaxMARL's MAP_NAME_TO_SCENARIO in jaxmarl 0.2.0; the live dict (which may hold
# scenarios registered at runtime) is used when jaxmarl imports.
DEFAULT_SMAX_SCENARIOS = (
    "3m",
    "2s3z",
    "25m",
    "3s5z",
    "8m",
    "5m_vs_6m",
    "10m_vs_11m",
    "27m_vs_30m",
    "3s5z_vs_3s6z",
    "3s_vs_5z",
    "6h_vs_8z",
    "smacv2_5_units",
    "smacv2_10_units",
    "smacv2_20_units",
)
# JaxMARL's own time limit is set out of reach; the adapter's `max_steps` rules.
_UNREACHABLE_STEPS = 2**30


class SMAXUnavailableError(ImportError):
    """JaxMARL (or one of its imports, e.g. ``six`` for gymnax) is missing."""


#: JAX's persistent compilation cache: every env runner process (Tune trials start many) jit-compiles the
#: same SMAX programs; with the cache the second one loads them (~1-4 s less per process on 2 cores).
#: ``JAX_COMPILATION_CACHE_DIR`` set by the user wins; ``AMAL_JAX_CACHE=0`` turns it off.
DEFAULT_JAX_CACHE_DIR = "~/.cache/amal_rllib/jax"


def _enable_compilation_cache(jax) -> None:
    if os.environ.get("AMAL_JAX_CACHE", "1") == "0" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(DEFAULT_JAX_CACHE_DIR))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _import_smax():
    """Import JAX and JaxMARL's SMAX lazily, on the CPU unless the caller chose otherwise."""
    caller_chose_platform = "JAX_PLATFORMS" in os.environ
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # read when a GPU client is created
    try:
        import jax
        import jax.numpy as jnp

        # RLlib imports flax, hence jax, before us, and jax reads JAX_PLATFORMS only at import:
        # apply the CPU default through the config unless the caller chose a platform.
        if not caller_chose_platform and not jax.config.jax_platforms:
            jax.config.update("jax_platforms", "cpu")
        _enable_compilation_cache(jax)

        # jaxmarl prints about optional submodules on import; keep stdout clean.
        with contextlib.redirect_stdout(io.StringIO()) as chatter:
            from jaxmarl.environments.smax import SMAX, HeuristicEnemySMAX
            from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO
    except ImportError as err:
        raise SMAXUnavailableError(
            f"The SMAX backend needs JaxMARL and six, which failed to import ({err}). "
            f"Install them with `{SMAX_INSTALL_HINT}` (the project pins jaxmarl==0.2.0)."
        ) from err
    if chatter.getvalue().strip():
        logger.debug("jaxmarl import: %s", chatter.getvalue().strip())
    return jax, jnp, SMAX, HeuristicEnemySMAX, MAP_NAME_TO_SCENARIO


def smax_scenarios() -> tuple[str, ...]:
    """Scenario names JaxMARL knows (its live registry), or the built-in list if it is missing."""
    try:
        *_, scenarios = _import_smax()
    except SMAXUnavailableError:
        return DEFAULT_SMAX_SCENARIOS
    return tuple(scenarios)


def check_smax_scenario(scenario: str) -> None:
    known = smax_scenarios()
    if scenario not in known:
        raise ValueError(f"Unknown SMAX scenario {scenario!r}. Known SMAX scenarios: {', '.join(known)}")


class _SMAXProgram:
    """A JaxMARL env and its jitted reset/step for one (scenario, env kwargs); shared by envs."""

    def __init__(self, scenario: str, env_kwargs: Mapping[str, Any]) -> None:
        jax, jnp, SMAX, HeuristicEnemySMAX, scenarios = _import_smax()
        self.jax = jax
        self.default_max_steps = int(inspect.signature(SMAX.__init__).parameters["max_steps"].default)
        env = HeuristicEnemySMAX(scenario=scenarios[scenario], max_steps=_UNREACHABLE_STEPS, **env_kwargs)
        if env.action_type != "discrete":
            raise ValueError(f"Only discrete SMAX actions are supported, got action_type={env.action_type!r}")
        self.env = env
        n = env.num_agents  # allies only: HeuristicEnemySMAX controls the enemies
        self.n_agents = n
        self.n_enemies = env.num_enemies
        self.n_actions = int(env.num_ally_actions)
        self.raw_obs_dim = int(env.obs_size)
        self.raw_state_dim = int(env.state_size)
        allies = list(env.agents)
        f32 = jnp.float32
        eye = jnp.eye(n, dtype=f32)
        no_op_row = jnp.zeros((self.n_actions,), f32).at[SMAX_NO_OP_ACTION].set(1.0)
        packed_width = self.raw_obs_dim + self.raw_state_dim + 2 * n + self.n_actions + 1

        def strong(tree):
            # Reset builds `step` and the heuristic's `last_attacked_enemy` from Python ints
            # (weak types); the step returns strong ones, which would force a second compile.
            return jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), tree)

        def pack(obs, state):
            """(n, obs_dim + state_dim + n_actions + 1): [obs|id, state|id, mask, alive]."""
            alive = state.state.unit_alive[:n]
            alive_col = alive.astype(f32)[:, None]
            raw_obs = jnp.stack([obs[a] for a in allies]).astype(f32) * alive_col
            world = obs["world_state"].astype(f32)
            raw_state = jnp.broadcast_to(world, (n, world.shape[-1])) * alive_col
            avail = env.get_avail_actions(state)
            mask = jnp.stack([avail[a] for a in allies]).astype(f32)
            mask = jnp.where(alive[:, None], mask, no_op_row)
            return jnp.concatenate([raw_obs, eye, raw_state, eye, mask, alive_col], axis=1)

        def reset(seed):
            key, reset_key = jax.random.split(jax.random.PRNGKey(seed))
            obs, state = env.reset(reset_key)
            state = strong(state)
            return key, state, pack(obs, state)

        def step(key, state, actions, max_steps):
            alive_before = state.state.unit_alive[:n]
            actions = jnp.where(alive_before, actions, SMAX_NO_OP_ACTION)
            key, step_key = jax.random.split(key)
            obs, state, rewards, _, _ = env.step_env(step_key, state, {a: actions[i] for i, a in enumerate(allies)})
            state = strong(state)
            alive = state.state.unit_alive
            allies_dead = ~jnp.any(alive[:n])
            enemies_dead = ~jnp.any(alive[n:])
            decided = allies_dead | enemies_dead
            won = enemies_dead & ~allies_dead
            truncated = ~decided & (state.state.step >= max_steps)
            scalars = jnp.stack(
                [
                    rewards[allies[0]].astype(f32),  # the team reward: identical for every ally
                    decided.astype(f32),
                    truncated.astype(f32),
                    won.astype(f32),
                    jnp.sum(~alive[:n]).astype(f32),
                    jnp.sum(~alive[n:]).astype(f32),
                ]
            )
            # One array, so one device-to-host transfer: the scalars ride in an extra row.
            tail = jnp.zeros((1, packed_width), f32).at[0, : scalars.shape[0]].set(scalars)
            return key, state, jnp.concatenate([pack(obs, state), tail], axis=0)

        self.reset = jax.jit(reset)
        self.step = jax.jit(step)
        # Compile both now so that no env.step() call in a timed loop pays for it.
        key, state, _ = self.reset(np.uint32(0))
        out = self.step(key, state, np.full((n,), SMAX_NO_OP_ACTION, np.int32), np.int32(1))
        jax.block_until_ready(out)


_PROGRAMS: dict[tuple, _SMAXProgram] = {}
_PROGRAMS_LOCK = threading.Lock()


def _program(scenario: str, env_kwargs: Mapping[str, Any]) -> _SMAXProgram:
    try:
        cache_key: tuple | None = (scenario, tuple(sorted(env_kwargs.items())))
        hash(cache_key)
    except TypeError:  # unhashable kwargs (e.g. arrays of unit stats): no sharing
        cache_key = None
    with _PROGRAMS_LOCK:
        if cache_key is not None and cache_key in _PROGRAMS:
            return _PROGRAMS[cache_key]
        program = _SMAXProgram(scenario, env_kwargs)
        if cache_key is not None:
            _PROGRAMS[cache_key] = program
        return program


def unpack_step(out: np.ndarray, ids: list[str], layout: tuple) -> tuple[dict, dict, dict, dict, dict]:
    """RLlib's step dicts from one packed step output ``(n_agents + 1, width)``.

    Rows ``:n`` are the agents' ``[obs | state | mask | alive]``; row ``n`` holds
    the scalars (reward, decided, truncated, won, dead allies, dead enemies).
    """
    n = len(ids)
    reward, decided, truncated, won, dead_allies, dead_enemies = out[n, :6].tolist()
    terminated = decided > 0.5
    truncated = truncated > 0.5
    obs = split_packed(out[:n], ids, layout)
    rewards = dict.fromkeys(ids, reward)
    terminateds = dict.fromkeys(ids, terminated)
    terminateds["__all__"] = terminated
    truncateds = dict.fromkeys(ids, truncated)
    truncateds["__all__"] = truncated
    if terminated or truncated:
        info = {
            BATTLE_WON_KEY: won > 0.5,
            EPISODE_LIMIT_KEY: truncated,
            "dead_allies": int(dead_allies),
            "dead_enemies": int(dead_enemies),
        }
        infos = {aid: dict(info) for aid in ids}
    else:
        infos = {}
    return obs, rewards, terminateds, truncateds, infos


class SMAXMultiAgentEnv(MultiAgentEnv):
    """A JaxMARL SMAX scenario behind the ``amal_rllib.envs.spec`` contract.

    Args:
        scenario: a JaxMARL map name (``"3m"``, ``"2s3z"``, ...), or an RLlib
            env-config dict holding ``scenario`` and the other arguments.
        max_steps: episode limit (time-out -> truncated); JaxMARL's default (100) if None.
        seed: seeds the env's RNG; ``reset(seed=...)`` reseeds it. Each episode's
            JAX PRNG key is drawn from that RNG, so a seed fixes the episode.
        **env_kwargs: passed to ``HeuristicEnemySMAX`` (``enemy_shoots``,
            ``attack_mode``, ``won_battle_bonus``, ``see_enemy_actions``, ...).
    """

    def __init__(
        self,
        scenario: str | Mapping[str, Any] = "3m",
        *,
        max_steps: int | None = None,
        seed: int | None = None,
        **env_kwargs: Any,
    ) -> None:
        if isinstance(scenario, Mapping):  # RLlib passes the env config as one dict
            config = dict(scenario)
            config.pop("backend", None)
            scenario = config.pop("scenario", "3m")
            max_steps = config.pop("max_steps", max_steps)
            seed = config.pop("seed", seed)
            env_kwargs = {**config, **env_kwargs}
        super().__init__()
        check_smax_scenario(scenario)
        self.scenario = scenario
        self._program = _program(scenario, env_kwargs)
        self._jax = self._program.jax
        self.max_steps = int(max_steps) if max_steps is not None else self._program.default_max_steps
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        self._max_steps_arg = np.int32(self.max_steps)

        n = self._program.n_agents
        self._spec = EnvSpec(
            scenario=scenario,
            n_agents=n,
            n_actions=self._program.n_actions,
            obs_dim=self._program.raw_obs_dim + n,
            state_dim=self._program.raw_state_dim + n,
            raw_obs_dim=self._program.raw_obs_dim,
            raw_state_dim=self._program.raw_state_dim,
            episode_limit=self.max_steps,
            no_op_action=SMAX_NO_OP_ACTION,
            backend="smax",
        )
        self.n_agents = n
        self.n_enemies = self._program.n_enemies
        self._ids = agent_ids(n)
        self.agents = list(self._ids)
        self.possible_agents = list(self._ids)
        obs_space = self._spec.observation_space()
        act_space = self._spec.action_space()
        self.observation_spaces = dict.fromkeys(self._ids, obs_space)
        self.action_spaces = dict.fromkeys(self._ids, act_space)
        self._layout = pack_layout(self._spec)
        self._np_random, self._np_random_seed = seeding.np_random(seed)
        self._key = None
        self._state = None
        self._episode_over = True

    # --- RLlib API ---------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed, options=options)
        episode_seed = np.uint32(self.np_random.integers(0, 2**32 - 1, dtype=np.uint64))
        self._key, self._state, packed = self._program.reset(episode_seed)
        packed = np.array(packed)
        self._episode_over = False
        return split_packed(packed, self._ids, self._layout), {}

    def step(self, action_dict: Mapping[str, Any]):
        if self._episode_over:
            raise RuntimeError("SMAXMultiAgentEnv.step() called before reset() or after the episode ended")
        n = self.n_agents
        actions = np.fromiter((action_dict.get(aid, SMAX_NO_OP_ACTION) for aid in self._ids), np.int32, n)
        if actions.min() < 0 or actions.max() >= self._spec.n_actions:
            raise ValueError(f"actions must lie in [0, {self._spec.n_actions}), got {dict(action_dict)}")
        self._key, self._state, out = self._program.step(self._key, self._state, actions, self._max_steps_arg)
        out = np.array(out)  # the one device-to-host transfer (a writable copy)
        obs, rewards, terminateds, truncateds, infos = unpack_step(out, self._ids, self._layout)
        if terminateds["__all__"] or truncateds["__all__"]:
            self._episode_over = True
        return obs, rewards, terminateds, truncateds, infos

    # --- extras --------------------------------------------------------------
    def get_env_info(self) -> EnvSpec:
        return self._spec

    @property
    def jax_env(self):
        """The underlying JaxMARL ``HeuristicEnemySMAX`` (for rendering / animations)."""
        return self._program.env

    @property
    def jax_state(self):
        """The current JaxMARL state (``.state`` is the SMAX ``State``), or None before reset()."""
        return self._state

    def close(self) -> None:
        self._state = None
        self._key = None
        self._episode_over = True

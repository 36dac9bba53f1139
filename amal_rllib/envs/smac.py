"""Real SMAC (StarCraft II) as an RLlib ``MultiAgentEnv``, with the same contract as SMAX.

An adapter over ``smac.env.StarCraft2Env`` (the StarCraft Multi-Agent Challenge,
installed from git, plus StarCraft II and the SMAC maps found through
``SC2PATH``). Without them it raises ``StarCraftUnavailableError`` saying what to
install; it never falls back to something else. The contract is in
``amal_rllib.envs.spec``.

SMAC facts the adapter relies on (``smac/env/starcraft2/starcraft2.py``):

- Actions: ``0`` no-op (valid only, and always, for a dead unit: that is how a
  dead agent is recognised), ``1`` stop, ``2..5`` move N/S/E/W, ``6 + j`` attack
  (or, for Medivacs, heal) unit ``j``. ``SMAC_NO_OP_ACTION = 0``.
- ``StarCraft2Env.step`` asserts that every action is available. The adapter
  sends the no-op for dead agents and replaces an unavailable action of a living
  agent by stop (as in SMAX, where an out-of-range attack does nothing), with a
  warning, so a random action never crashes StarCraft II.
- A time-out is ``terminated=True`` with ``info["episode_limit"]``, which SMAC only
  sets with ``continuing_episode=True``; the adapter asks for that by default and
  reports time-outs as truncated. A connection failure that makes SMAC restart
  the game (``step`` returns ``0, True, {}``) is also reported as truncated.
- SC2's seed is fixed when the game launches (the first ``reset``);
  ``reset(seed=...)`` before the launch rebuilds the env with that seed, after it
  SC2 cannot be reseeded (a warning says so).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from ray.rllib.env.multi_agent_env import MultiAgentEnv

from .spec import BATTLE_WON_KEY, EPISODE_LIMIT_KEY, EnvSpec, agent_ids, pack_layout, split_packed

logger = logging.getLogger(__name__)

SMAC_NO_OP_ACTION = 0
SMAC_STOP_ACTION = 1
SMAC_GIT_SPEC = "smac @ git+https://github.com/oxwhirl/smac.git"
SC2_DOCKERFILE = "docker/Dockerfile.sc2"
DEFAULT_SC2PATH = "~/StarCraftII"

SMAC_INSTALL_STEPS = (
    "To run real SMAC:\n"
    f'  1. pip install "{SMAC_GIT_SPEC}"   (PyPI\'s `smac` is SMAC3, a hyperparameter optimiser, not this)\n'
    "  2. StarCraft II for Linux 4.10: wget https://blzdistsc2-a.akamaihd.net/Linux/SC2.4.10.zip && "
    "unzip -P iagreetotheeula SC2.4.10.zip -d ~   (creates ~/StarCraftII)\n"
    "  3. the SMAC maps: wget https://github.com/oxwhirl/smac/releases/download/v0.1-beta1/SMAC_Maps.zip && "
    "unzip SMAC_Maps.zip -d $SC2PATH/Maps/   (gives $SC2PATH/Maps/SMAC_Maps/*.SC2Map)\n"
    "  4. export SC2PATH=~/StarCraftII\n"
    f"The real-SMAC path is meant to run in the SC2 docker image ({SC2_DOCKERFILE}), which has all of this. "
    "Without StarCraft II use the embedded SMAX backend (backend='smax')."
)


class StarCraftUnavailableError(RuntimeError):
    """The SMAC package, StarCraft II or the SMAC maps are missing."""


@dataclass(frozen=True)
class SMACScenario:
    """A SMAC map's team sizes and episode limit (``smac.env.starcraft2.maps.smac_maps``)."""

    n_agents: int
    n_enemies: int
    episode_limit: int


SMAC_SCENARIOS: dict[str, SMACScenario] = {
    "3m": SMACScenario(3, 3, 60),
    "8m": SMACScenario(8, 8, 120),
    "25m": SMACScenario(25, 25, 150),
    "5m_vs_6m": SMACScenario(5, 6, 70),
    "8m_vs_9m": SMACScenario(8, 9, 120),
    "10m_vs_11m": SMACScenario(10, 11, 150),
    "27m_vs_30m": SMACScenario(27, 30, 180),
    "MMM": SMACScenario(10, 10, 150),
    "MMM2": SMACScenario(10, 12, 180),
    "2s3z": SMACScenario(5, 5, 120),
    "3s5z": SMACScenario(8, 8, 150),
    "3s5z_vs_3s6z": SMACScenario(8, 9, 170),
    "3s_vs_3z": SMACScenario(3, 3, 150),
    "3s_vs_4z": SMACScenario(3, 4, 200),
    "3s_vs_5z": SMACScenario(3, 5, 250),
    "1c3s5z": SMACScenario(9, 9, 180),
    "2m_vs_1z": SMACScenario(2, 1, 150),
    "corridor": SMACScenario(6, 24, 400),
    "6h_vs_8z": SMACScenario(6, 8, 150),
    "2s_vs_1sc": SMACScenario(2, 1, 300),
    "so_many_baneling": SMACScenario(7, 32, 100),
    "bane_vs_bane": SMACScenario(24, 24, 200),
    "2c_vs_64zg": SMACScenario(2, 64, 400),
}


def smac_scenarios() -> tuple[str, ...]:
    """Known SMAC map names: the built-in table plus the installed smac's registry, if any."""
    names = list(SMAC_SCENARIOS)
    try:
        maps = importlib.import_module("smac.env.starcraft2.maps.smac_maps")
        names += [name for name in maps.get_smac_map_registry() if name not in SMAC_SCENARIOS]
    except Exception:  # smac missing or broken: the install check reports that, not this
        pass
    return tuple(names)


def check_smac_scenario(scenario: str) -> None:
    known = smac_scenarios()
    if scenario not in known:
        raise ValueError(f"Unknown SMAC scenario {scenario!r}. Known SMAC scenarios: {', '.join(known)}")


def import_starcraft2env() -> type:
    """``smac.env.StarCraft2Env``, or ``StarCraftUnavailableError`` saying what to install."""
    try:
        importlib.import_module("smac")
    except ImportError as err:
        raise StarCraftUnavailableError(
            f"The StarCraft Multi-Agent Challenge package `smac` is not installed ({err}).\n{SMAC_INSTALL_STEPS}"
        ) from err
    try:
        module = importlib.import_module("smac.env")
    except ModuleNotFoundError as err:
        if err.name and (err.name == "smac" or err.name.startswith("smac.")):
            raise StarCraftUnavailableError(
                f"`import smac` works but `smac.env` does not ({err}): the installed `smac` is SMAC3 from PyPI "
                "(a hyperparameter optimiser), not the StarCraft Multi-Agent Challenge. "
                f'`pip uninstall smac` and `pip install "{SMAC_GIT_SPEC}"`.\n{SMAC_INSTALL_STEPS}'
            ) from err
        raise StarCraftUnavailableError(
            f"`smac.env` needs `{err.name}`, which is missing ({err}); reinstall SMAC with its dependencies "
            f'(pip install "{SMAC_GIT_SPEC}").\n{SMAC_INSTALL_STEPS}'
        ) from err
    except ImportError as err:
        raise StarCraftUnavailableError(f"`smac.env` failed to import ({err}).\n{SMAC_INSTALL_STEPS}") from err
    env_cls = getattr(module, "StarCraft2Env", None)
    if env_cls is None:
        raise StarCraftUnavailableError(
            f"`smac.env` has no StarCraft2Env: the installed `smac` is not the StarCraft Multi-Agent Challenge.\n"
            f"{SMAC_INSTALL_STEPS}"
        )
    return env_cls


def find_sc2_path(scenario: str | None = None) -> Path:
    """The StarCraft II folder (``$SC2PATH`` or ``~/StarCraftII``), checked to hold the SMAC maps."""
    configured = os.environ.get("SC2PATH")
    path = Path(configured or DEFAULT_SC2PATH).expanduser()
    if not path.is_dir():
        where = f"SC2PATH={configured!r}" if configured else f"SC2PATH is not set and {DEFAULT_SC2PATH} does not exist"
        raise StarCraftUnavailableError(
            f"StarCraft II not found ({where}; {path} is not a folder).\n{SMAC_INSTALL_STEPS}"
        )
    maps = path / "Maps" / "SMAC_Maps"
    if not maps.is_dir():
        raise StarCraftUnavailableError(
            f"StarCraft II is at {path} but the SMAC maps are not: {maps} is missing.\n{SMAC_INSTALL_STEPS}"
        )
    if scenario is not None and not (maps / f"{scenario}.SC2Map").is_file():
        raise StarCraftUnavailableError(
            f"The SMAC map {scenario}.SC2Map is not in {maps}; reinstall the SMAC maps.\n{SMAC_INSTALL_STEPS}"
        )
    return path


def check_smac_installation(scenario: str | None = None, *, check_import: bool = True) -> Path:
    """Raise ``StarCraftUnavailableError`` unless real SMAC can run; returns the SC2 folder."""
    if check_import:
        import_starcraft2env()
    return find_sc2_path(scenario)


class SMACMultiAgentEnv(MultiAgentEnv):
    """A SMAC map (StarCraft II) behind the ``amal_rllib.envs.spec`` contract.

    Args:
        scenario: a SMAC map name, or an RLlib env-config dict holding ``scenario``
            and the other arguments.
        env_cls: the ``StarCraft2Env`` class; ``smac.env.StarCraft2Env`` if None
            (tests inject a fake).
        check_install: check smac (when ``env_cls`` is None), SC2PATH and the maps
            before constructing anything.
        replay_dir, replay_prefix: where ``save_replay()`` writes (SMAC's defaults if None).
        seed: StarCraft II's game seed (and this env's RNG seed).
        **smac_kwargs: passed to ``StarCraft2Env`` (``difficulty``, ``reward_*``, ...).
    """

    def __init__(
        self,
        scenario: str | Mapping[str, Any] = "3m",
        *,
        env_cls: Callable[..., Any] | None = None,
        check_install: bool = True,
        replay_dir: str | os.PathLike | None = None,
        replay_prefix: str | None = None,
        seed: int | None = None,
        **smac_kwargs: Any,
    ) -> None:
        if isinstance(scenario, Mapping):  # RLlib passes the env config as one dict
            config = dict(scenario)
            config.pop("backend", None)
            scenario = config.pop("scenario", "3m")
            env_cls = config.pop("env_cls", env_cls)
            check_install = config.pop("check_install", check_install)
            replay_dir = config.pop("replay_dir", replay_dir)
            replay_prefix = config.pop("replay_prefix", replay_prefix)
            seed = config.pop("seed", seed)
            smac_kwargs = {**config, **smac_kwargs}
        super().__init__()
        check_smac_scenario(scenario)
        if check_install:
            check_smac_installation(scenario, check_import=env_cls is None)
        self._env_cls = env_cls if env_cls is not None else import_starcraft2env()
        self.scenario = scenario
        self.replay_dir = "" if replay_dir is None else os.fspath(replay_dir)
        self.replay_prefix = "" if replay_prefix is None else replay_prefix
        smac_kwargs.setdefault("continuing_episode", True)  # so SMAC flags time-outs
        self._smac_kwargs = smac_kwargs
        self._sc2_seed = seed
        self._env = self._make_env(seed)
        self._launched = False

        info = self._env.get_env_info()
        n = int(info["n_agents"])
        raw_obs_dim, raw_state_dim = int(info["obs_shape"]), int(info["state_shape"])
        self._spec = EnvSpec(
            scenario=scenario,
            n_agents=n,
            n_actions=int(info["n_actions"]),
            obs_dim=raw_obs_dim + n,
            state_dim=raw_state_dim + n,
            raw_obs_dim=raw_obs_dim,
            raw_state_dim=raw_state_dim,
            episode_limit=int(info["episode_limit"]),
            no_op_action=SMAC_NO_OP_ACTION,
            backend="smac",
        )
        self.n_agents = n
        self.episode_limit = self._spec.episode_limit
        self._ids = agent_ids(n)
        self.agents = list(self._ids)
        self.possible_agents = list(self._ids)
        self.observation_spaces = dict.fromkeys(self._ids, self._spec.observation_space())
        self.action_spaces = dict.fromkeys(self._ids, self._spec.action_space())
        self._layout = pack_layout(self._spec)
        self._eye = np.eye(n, dtype=np.float32)
        self._np_random, self._np_random_seed = seeding.np_random(seed)
        self._alive = np.ones(n, dtype=bool)
        self._mask = np.zeros((n, self._spec.n_actions), np.float32)
        self._t = 0
        self._episode_over = True
        self.replaced_actions = 0  # unavailable actions of living agents replaced by stop

    def _make_env(self, seed: int | None):
        return self._env_cls(
            map_name=self.scenario,
            seed=seed,
            replay_dir=self.replay_dir,
            replay_prefix=self.replay_prefix,
            **self._smac_kwargs,
        )

    def _observe(self) -> dict:
        spec = self._spec
        avail = np.asarray(self._env.get_avail_actions(), dtype=np.float32).reshape(spec.n_agents, spec.n_actions)
        alive = avail[:, SMAC_NO_OP_ACTION] == 0  # the no-op is available exactly when the unit is dead
        alive_col = alive.astype(np.float32)[:, None]
        obs = np.asarray(self._env.get_obs(), dtype=np.float32).reshape(spec.n_agents, spec.raw_obs_dim)
        state = np.asarray(self._env.get_state(), dtype=np.float32).reshape(spec.raw_state_dim)
        mask = avail.copy()
        mask[~alive] = 0.0
        mask[~alive, SMAC_NO_OP_ACTION] = 1.0
        packed = np.concatenate(
            [obs * alive_col, self._eye, np.broadcast_to(state, (spec.n_agents, spec.raw_state_dim)) * alive_col,
             self._eye, mask, alive_col],
            axis=1,
        )  # fmt: skip
        self._alive, self._mask = alive, mask
        return split_packed(packed, self._ids, self._layout)

    # --- RLlib API ---------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed, options=options)
        if seed is not None and seed != self._sc2_seed:
            if self._launched:
                logger.warning(
                    "reset(seed=%s) ignored for StarCraft II: its game seed (%s) is fixed once the game runs; "
                    "create a new env to change it",
                    seed,
                    self._sc2_seed,
                )
            else:
                self._env.close()
                self._sc2_seed = seed
                self._env = self._make_env(seed)
        self._env.reset()
        self._launched = True
        self._t = 0
        self._episode_over = False
        return self._observe(), {}

    def step(self, action_dict: Mapping[str, Any]):
        if self._episode_over:
            raise RuntimeError("SMACMultiAgentEnv.step() called before reset() or after the episode ended")
        actions = []
        for i, aid in enumerate(self._ids):
            action = int(action_dict.get(aid, SMAC_NO_OP_ACTION))
            if not 0 <= action < self._spec.n_actions:
                raise ValueError(f"action {action} of {aid} outside [0, {self._spec.n_actions})")
            if not self._alive[i]:
                action = SMAC_NO_OP_ACTION
            elif self._mask[i, action] == 0:
                if self.replaced_actions == 0:
                    logger.warning("unavailable action %d of living %s replaced by stop (warned once)", action, aid)
                self.replaced_actions += 1
                action = SMAC_STOP_ACTION
            actions.append(action)

        reward, done, info = self._env.step(actions)
        self._t += 1
        obs = self._observe()
        won = bool(info.get("battle_won", False))
        timed_out = bool(done) and not won and self._is_timeout(info)
        terminated, truncated = bool(done) and not timed_out, timed_out
        reward = float(reward)
        rewards = dict.fromkeys(self._ids, reward)
        terminateds = dict.fromkeys(self._ids, terminated)
        terminateds["__all__"] = terminated
        truncateds = dict.fromkeys(self._ids, truncated)
        truncateds["__all__"] = truncated
        if done:
            self._episode_over = True
            last = {
                BATTLE_WON_KEY: won,
                EPISODE_LIMIT_KEY: truncated,
                "dead_allies": int(np.sum(~self._alive)),
            }
            if "battle_won" not in info:
                last["sc2_restarted"] = True
            infos = {aid: dict(last) for aid in self._ids}
        else:
            infos = {}
        return obs, rewards, terminateds, truncateds, infos

    def _is_timeout(self, info: Mapping[str, Any]) -> bool:
        if info.get("episode_limit", False):
            return True
        if "battle_won" not in info:  # SMAC restarted SC2 after a connection error
            return True
        # With continuing_episode=False SMAC does not flag time-outs: a non-won end at the limit
        # with allies still alive can only be one.
        return self._t >= self.episode_limit and bool(self._alive.any())

    # --- extras --------------------------------------------------------------
    def get_env_info(self) -> EnvSpec:
        return self._spec

    def save_replay(self):
        """Save a StarCraft II replay of the games so far into ``replay_dir`` (SMAC's ``save_replay``)."""
        return self._env.save_replay()

    def get_stats(self) -> dict:
        return self._env.get_stats()

    @property
    def smac_env(self):
        """The underlying ``StarCraft2Env``."""
        return self._env

    def close(self) -> None:
        self._env.close()

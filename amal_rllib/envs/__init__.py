"""Multi-agent StarCraft envs for RLlib: SMAX (embedded, JAX) and real SMAC (StarCraft II).

Both adapters follow one contract (``amal_rllib.envs.spec``); algorithms never
need to know which one runs. JAX is imported only when an SMAX env is built.
"""

from .registry import (
    RLLIB_ENV_NAMES,
    SCENARIOS,
    env_creator,
    known_scenarios,
    make_env,
    register_envs,
)
from .smac import SMAC_NO_OP_ACTION, SMACMultiAgentEnv, StarCraftUnavailableError, check_smac_installation
from .smax import SMAX_NO_OP_ACTION, SMAXMultiAgentEnv, SMAXUnavailableError
from .spec import (
    ACTION_MASK_KEY,
    ALIVE_KEY,
    BATTLE_WON_KEY,
    EPISODE_LIMIT_KEY,
    OBS_KEY,
    STATE_KEY,
    EnvSpec,
)

__all__ = [
    "ACTION_MASK_KEY",
    "ALIVE_KEY",
    "BATTLE_WON_KEY",
    "EPISODE_LIMIT_KEY",
    "OBS_KEY",
    "RLLIB_ENV_NAMES",
    "SCENARIOS",
    "SMAC_NO_OP_ACTION",
    "SMAX_NO_OP_ACTION",
    "STATE_KEY",
    "EnvSpec",
    "SMACMultiAgentEnv",
    "SMAXMultiAgentEnv",
    "SMAXUnavailableError",
    "StarCraftUnavailableError",
    "check_smac_installation",
    "env_creator",
    "known_scenarios",
    "make_env",
    "register_envs",
]

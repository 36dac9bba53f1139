"""One entry point for every env: ``make_env(scenario, backend)`` and RLlib registration.

``SCENARIOS`` lists the built-in names per backend; ``known_scenarios(backend)``
also includes what the installed JaxMARL / smac registries add.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray.rllib.env.multi_agent_env import MultiAgentEnv

from .smac import SMAC_SCENARIOS, SMACMultiAgentEnv, check_smac_scenario, smac_scenarios
from .smax import DEFAULT_SMAX_SCENARIOS, SMAXMultiAgentEnv, check_smax_scenario, smax_scenarios
from .spec import BACKENDS

SCENARIOS: dict[str, tuple[str, ...]] = {
    "smax": DEFAULT_SMAX_SCENARIOS,
    "smac": tuple(SMAC_SCENARIOS),
}
DEFAULT_BACKEND = "smax"
DEFAULT_SCENARIO = "3m"
# RLlib env names: `config.environment("amal_smax", env_config={"scenario": "3m", ...})`.
RLLIB_ENV_NAMES = {"smax": "amal_smax", "smac": "amal_smac"}

_ENV_CLASSES = {"smax": SMAXMultiAgentEnv, "smac": SMACMultiAgentEnv}


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"Unknown env backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def known_scenarios(backend: str = DEFAULT_BACKEND) -> tuple[str, ...]:
    """Scenario names the backend accepts (built-in list plus the installed registry's)."""
    _check_backend(backend)
    return smax_scenarios() if backend == "smax" else smac_scenarios()


def make_env(scenario: str = DEFAULT_SCENARIO, backend: str = DEFAULT_BACKEND, **kwargs: Any) -> MultiAgentEnv:
    """Build the ``scenario`` env of ``backend`` ("smax", embedded, or "smac", StarCraft II).

    ``kwargs`` go to ``SMAXMultiAgentEnv`` (``max_steps``, ``seed``, JaxMARL
    options) or ``SMACMultiAgentEnv`` (``seed``, ``replay_dir``, ``replay_prefix``,
    StarCraft2Env options). An unknown scenario raises ``ValueError`` listing the
    backend's known ones.
    """
    _check_backend(backend)
    (check_smax_scenario if backend == "smax" else check_smac_scenario)(scenario)
    return _ENV_CLASSES[backend](scenario, **kwargs)


def scenario_n_agents(scenario: str = DEFAULT_SCENARIO, backend: str = DEFAULT_BACKEND) -> int:
    """The team size of a scenario, without starting StarCraft II (SMAX builds its cached JAX program)."""
    _check_backend(backend)
    (check_smax_scenario if backend == "smax" else check_smac_scenario)(scenario)
    if backend == "smac":
        return SMAC_SCENARIOS[scenario].n_agents
    from .smax import _program

    return int(_program(scenario, {}).n_agents)


#: ``env_config`` keys for the env runner, not the env.
RUNNER_ENV_KEYS = ("vectorize", "fast_sampling")


def env_creator(config: Mapping[str, Any] | None = None) -> MultiAgentEnv:
    """RLlib env creator: ``{"scenario": ..., "backend": ..., **env kwargs}`` (an EnvContext works).

    ``vectorize`` and ``fast_sampling`` are read by ``TeamEnvRunner`` (SMAX batched in one call,
    the vectorised sampler), not by the env.
    """
    kwargs = dict(config or {})
    for runner_key in RUNNER_ENV_KEYS:
        kwargs.pop(runner_key, None)
    scenario = kwargs.pop("scenario", DEFAULT_SCENARIO)
    backend = kwargs.pop("backend", DEFAULT_BACKEND)
    return make_env(scenario, backend, **kwargs)


def _backend_creator(backend: str):
    def create(config: Mapping[str, Any] | None = None) -> MultiAgentEnv:
        return env_creator({**dict(config or {}), "backend": backend})

    create.__name__ = f"create_{RLLIB_ENV_NAMES[backend]}"
    return create


def register_envs() -> dict[str, str]:
    """Register "amal_smax" and "amal_smac" with Tune/RLlib (safe to call again); returns backend -> name."""
    from ray.tune.registry import register_env

    for backend, name in RLLIB_ENV_NAMES.items():
        register_env(name, _backend_creator(backend))
    return dict(RLLIB_ENV_NAMES)

"""Ready-made configs for the embedded default (SMAX) and real SMAC."""

from __future__ import annotations

from typing import Any

from .amal import AMALConfig
from .amal.config import AMAL_KNOBS
from .mappo import MAPPOConfig


def mappo_config(
    scenario: str = "3m",
    backend: str = "smax",
    *,
    seed: int = 0,
    num_env_runners: int = 2,
    num_envs_per_env_runner: int = 16,
    train_batch_size: int = 4000,
    evaluation_interval: int | None = 5,
    evaluation_episodes: int = 16,
    num_gpus_per_learner: float = 0,
    env_kwargs: dict[str, Any] | None = None,
    config_cls: type[MAPPOConfig] = MAPPOConfig,
) -> MAPPOConfig:
    """MAPPO on ``scenario`` with a greedy evaluation every ``evaluation_interval`` iterations.

    ``train_batch_size`` counts env steps (one step of the whole team).
    ``num_gpus_per_learner > 0`` puts the learner on CUDA when Ray sees a GPU.
    """
    from .envs.registry import RLLIB_ENV_NAMES, register_envs

    register_envs()
    config = (
        config_cls()
        .environment(
            RLLIB_ENV_NAMES[backend], env_config={"scenario": scenario, "backend": backend, **(env_kwargs or {})}
        )
        .env_runners(
            num_env_runners=num_env_runners,
            num_envs_per_env_runner=num_envs_per_env_runner,
            num_cpus_per_env_runner=1,
        )
        .learners(num_learners=0, num_gpus_per_learner=num_gpus_per_learner)
        .training(train_batch_size_per_learner=train_batch_size, minibatch_size=train_batch_size)
        .debugging(seed=seed)
        .reporting(metrics_num_episodes_for_smoothing=100)
    )
    if evaluation_interval:
        config.evaluation(
            evaluation_interval=evaluation_interval,
            evaluation_duration=evaluation_episodes,
            evaluation_duration_unit="episodes",
            evaluation_num_env_runners=0,
            evaluation_config=config_cls.overrides(explore=False, num_envs_per_env_runner=1),
        )
    return config


def amal_config(
    scenario: str = "3m",
    backend: str = "smax",
    *,
    num_aux_env_runners: int = 1,
    config_cls: type[AMALConfig] = AMALConfig,
    **kwargs: Any,
) -> AMALConfig:
    """AMAL on ``scenario``: :func:`mappo_config`'s settings (same primary runners, batch,
    evaluation) plus AMAL's knobs (``lambda_info=...``, ``aux_ratio=...``, see ``AMALConfig``).

    The world model skips the agent-id one-hot (``obs_id_dims`` = the team size).
    """
    from .envs.registry import scenario_n_agents

    amal_knobs = {k: kwargs.pop(k) for k in list(kwargs) if k in AMAL_KNOBS}
    config = mappo_config(scenario, backend, config_cls=config_cls, **kwargs)
    config.training(
        obs_id_dims=scenario_n_agents(scenario, backend), num_aux_env_runners=num_aux_env_runners, **amal_knobs
    )
    if num_aux_env_runners == 0 and "aux_ratio" not in amal_knobs:
        config.training(aux_ratio=0.0)
    return config

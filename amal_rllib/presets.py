"""Ready-made configs for the embedded default (SMAX) and real SMAC."""

from __future__ import annotations

import math
from typing import Any

from .amal import AMALConfig
from .amal.config import AMAL_KNOBS
from .mappo import MAPPOConfig
from .mappo.config import DEFAULT_NUM_ENVS_PER_ENV_RUNNER, DEFAULT_NUM_MINIBATCHES, DEFAULT_TRAIN_BATCH_SIZE

#: Episodes the training win rate (and RLlib's episode metrics) average over.
TRAINING_WIN_RATE_EPISODES = 1000


def mappo_config(
    scenario: str = "3m",
    backend: str = "smax",
    *,
    seed: int = 0,
    num_env_runners: int = 0,
    num_envs_per_env_runner: int = DEFAULT_NUM_ENVS_PER_ENV_RUNNER,
    train_batch_size: int = DEFAULT_TRAIN_BATCH_SIZE,
    num_minibatches: int | None = DEFAULT_NUM_MINIBATCHES,
    evaluation_interval: int | None = 5,
    evaluation_episodes: int = 16,
    num_gpus_per_learner: float = 0,
    env_kwargs: dict[str, Any] | None = None,
    config_cls: type[MAPPOConfig] = MAPPOConfig,
) -> MAPPOConfig:
    """MAPPO on ``scenario`` with a greedy evaluation every ``evaluation_interval`` iterations.

    The defaults are JaxMARL's SMAX shape: one runner in the algorithm's own process
    (``num_env_runners`` 0) stepping 128 envs, 128 steps each per iteration.
    ``train_batch_size`` counts env steps (one step of the whole team). ``num_minibatches``
    splits each epoch into that many minibatches of agent rows (JaxMARL's ``NUM_MINIBATCHES``;
    RLlib's bootstrap rows make it ~5% more); None: minibatches of ``train_batch_size`` rows.
    ``num_gpus_per_learner > 0`` puts the learner on CUDA when Ray sees a GPU.
    """
    from .envs.registry import RLLIB_ENV_NAMES, register_envs, scenario_n_agents

    register_envs()
    minibatch_size = train_batch_size
    if num_minibatches is not None:
        if num_minibatches < 1:
            raise ValueError(f"num_minibatches must be >= 1, got {num_minibatches}")
        minibatch_size = math.ceil(train_batch_size * scenario_n_agents(scenario, backend) / num_minibatches)
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
        .training(train_batch_size_per_learner=train_batch_size, minibatch_size=minibatch_size)
        .debugging(seed=seed)
        # The training win rate over the last ~1,000 episodes: about one 16k-step iteration's worth on SMAX,
        # so it compares with JaxMARL's (the mean over the episodes that ended in an update).
        .reporting(metrics_num_episodes_for_smoothing=TRAINING_WIN_RATE_EPISODES)
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

"""``MAPPO``: RLlib's PPO training loop with MAPPO's config, module and learner."""

from __future__ import annotations

from ray.rllib.algorithms.ppo import PPO

from ..envs.registry import register_envs
from .config import MAPPOConfig
from .module import set_cpu_threads


class MAPPO(PPO):
    @classmethod
    def get_default_config(cls) -> MAPPOConfig:
        return MAPPOConfig(cls)

    def setup(self, config) -> None:
        set_cpu_threads()
        # The presets register the env names when they build a config; a checkpoint restored in a
        # fresh process (``MAPPO.from_checkpoint``, ``AMAL.from_checkpoint``) skips them.
        register_envs()
        super().setup(config)

"""``MAPPO``: RLlib's PPO training loop with MAPPO's config, module and learner."""

from __future__ import annotations

from ray.rllib.algorithms.ppo import PPO

from .config import MAPPOConfig
from .module import set_cpu_threads


class MAPPO(PPO):
    @classmethod
    def get_default_config(cls) -> MAPPOConfig:
        return MAPPOConfig(cls)

    def setup(self, config) -> None:
        set_cpu_threads()
        super().setup(config)

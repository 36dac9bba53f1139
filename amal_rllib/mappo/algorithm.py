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

    def restore_from_path(self, path, *args, **kwargs) -> None:
        """RLlib's restore, after waiting for every in-flight weight sync of the env runners.

        RLlib's own sync after a restore is an async ``set_state`` request, and its
        actor manager silently drops a request while the previous one of that tag is
        still in flight (``max_requests_in_flight_per_env_runner`` is 1). On a busy
        machine the runners were still working on the sync sent at build time, so
        the restored weights never reached them: a 1M-step MAPPO checkpoint's first
        iteration after the restore sampled with the initial weights (win rate 0.0,
        near-random episode lengths) and the first update on that data undid much
        of the policy. Waiting for the earlier request first lets RLlib's sync through.
        ``tests/test_mappo_training.py`` reproduces the drop.
        """
        if self.env_runner_group is not None:  # let the build-time sync finish, so RLlib's own one is not dropped
            self.env_runner_group.fetch_ready_async_reqs(tags="set_state", timeout_seconds=None)
        super().restore_from_path(path, *args, **kwargs)

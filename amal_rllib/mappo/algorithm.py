"""``MAPPO``: RLlib's PPO training loop with MAPPO's config, module and learner."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from ray.rllib.algorithms.ppo import PPO
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EVALUATION_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

from ..envs.registry import register_envs
from ..gc_freeze import freeze_long_lived, unfreeze
from ..metrics import (
    BATTLE_WON,
    ENV_STEPS_PRIMARY_LIFETIME,
    ENV_STEPS_TOTAL_LIFETIME,
    GREEDY_EVALUATIONS,
    GREEDY_WIN_RATE,
    GREEDY_WIN_RATE_MEAN,
)
from .config import MAPPOConfig
from .module import set_cpu_threads

#: Checkpoint component holding the greedy evaluations so far (their mean is a study metric).
GREEDY_STATE_KEY = "greedy_evaluations"

logger = logging.getLogger(__name__)


class MAPPO(PPO):
    @classmethod
    def get_default_config(cls) -> MAPPOConfig:
        return MAPPOConfig(cls)

    def setup(self, config) -> None:
        set_cpu_threads()
        # The presets register the env names when they build a config; a checkpoint restored in a
        # fresh process (``MAPPO.from_checkpoint``, ``AMAL.from_checkpoint``) skips them.
        register_envs()
        self._greedy_win_rates: list[float] = []
        self._evaluated_this_step = False
        self._gc_frozen = False
        super().setup(config)

    def cleanup(self) -> None:
        try:
            super().cleanup()
        finally:
            if self._gc_frozen:
                unfreeze()
                self._gc_frozen = False

    def _freeze_long_lived_objects(self) -> None:
        """``config.gc_freeze``: after the first iteration (modules built, the env compiled, RLlib's
        internals created), freeze this process's live objects and those of the remote env runners and
        learners (``amal_rllib.gc_freeze``). Evaluation and AMAL's auxiliary runners are left alone: they
        are off the iteration's critical path."""
        self._gc_frozen = True
        frozen = freeze_long_lived()
        if self.env_runner_group is not None and self.env_runner_group.num_remote_env_runners() > 0:
            self.env_runner_group.foreach_env_runner(freeze_long_lived, local_env_runner=False)
        if self.learner_group is not None and self.learner_group.is_remote:
            self.learner_group.foreach_learner(freeze_long_lived)
        logger.debug("gc_freeze: %d objects of the algorithm's process frozen after the first iteration", frozen)

    def training_step(self) -> None:
        super().training_step()
        self._log_env_step_totals()

    def _log_env_step_totals(self, aux_steps_lifetime: float = 0.0) -> None:
        """Primary and total env steps (total = primary + ``aux_steps_lifetime``; MAPPO has none):
        one stop key that means the same budget for MAPPO and AMAL."""
        primary = self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)
        self.metrics.log_value(ENV_STEPS_PRIMARY_LIFETIME, float(primary), window=1)
        self.metrics.log_value(ENV_STEPS_TOTAL_LIFETIME, float(primary + aux_steps_lifetime), window=1)

    def evaluate(self, *args, **kwargs):
        self._evaluated_this_step = True
        return super().evaluate(*args, **kwargs)

    def step(self) -> dict:
        """RLlib's step plus flat greedy-evaluation metrics.

        RLlib repeats the last evaluation's results in the iterations that did
        not evaluate; ``greedy_win_rate`` appears only in those that did, and
        ``greedy_win_rate_mean`` (the mean over every greedy evaluation so far,
        an area under the learning curve) in every result, NaN before the first.
        """
        self._evaluated_this_step = False
        result = super().step()
        if self.config.gc_freeze and not self._gc_frozen:
            self._freeze_long_lived_objects()
        if self._evaluated_this_step:
            won = result.get(EVALUATION_RESULTS, {}).get(ENV_RUNNER_RESULTS, {}).get(BATTLE_WON)
            if won is not None and np.isfinite(won):
                self._greedy_win_rates.append(float(won))
                result[GREEDY_WIN_RATE] = float(won)
        # NaN until the first evaluation: Tune's searchers want the key in every result.
        result[GREEDY_WIN_RATE_MEAN] = float(np.mean(self._greedy_win_rates)) if self._greedy_win_rates else np.nan
        result[GREEDY_EVALUATIONS] = len(self._greedy_win_rates)
        return result

    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict[str, Any]:
        state = super().get_state(components, not_components=not_components, **kwargs)
        if self._check_component(GREEDY_STATE_KEY, components, not_components):
            state[GREEDY_STATE_KEY] = list(self._greedy_win_rates)
        return state

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if GREEDY_STATE_KEY in state:
            self._greedy_win_rates = list(state[GREEDY_STATE_KEY])

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

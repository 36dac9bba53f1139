"""An env runner (primary or auxiliary) killed mid-trial is restarted and training goes on."""

from __future__ import annotations

import math
import time

import pytest
import ray

from amal_rllib.metrics import ENV_STEPS_AUX_LIFETIME, ENV_STEPS_TOTAL_LIFETIME
from amal_rllib.study.config import load_preset
from amal_rllib.study.runner import algorithm_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _actors(group):
    return dict(group._worker_manager._actors)


def test_killed_primary_and_auxiliary_env_runners_are_restarted_and_training_goes_on(ray_local):
    study = load_preset("smoke").replace(num_env_runners=1)
    config = algorithm_config(study, "3m", "amal", gpus=0)  # the study's own config: failed runners restarted
    config.evaluation(evaluation_interval=None)
    algo = config.build_algo()
    try:
        algo.train()
        algo.train()  # candidates of this iteration are out on the auxiliary runner now
        in_flight = list(algo._ledger.in_flight)
        generation_before = algo.cem.generation
        assert in_flight
        primary = _actors(algo.env_runner_group)
        aux = _actors(algo.aux_env_runner_group)
        assert len(primary) == 1 and len(aux) == 1
        for actor in [*primary.values(), *aux.values()]:
            ray.kill(actor, no_restart=False)
        aux_before = algo._aux_env_steps_lifetime
        # A restarted runner imports JAX and compiles SMAX again (~20-30 s on 2 cores); iterations in
        # between sample nothing and return early. Train until the restarted runners deliver again.
        deadline, sampled = time.monotonic() + 240, []
        while time.monotonic() < deadline and len(sampled) < 3:
            result = algo.train()
            if result["env_runners"].get("num_env_steps_sampled", 0) > 0:
                sampled.append(result)
        assert len(sampled) == 3, "the killed primary env runner was not restarted within 240 s"
        last = sampled[-1]
        assert math.isfinite(last["learners"]["shared_policy"]["policy_loss"])
        assert last["fault_tolerance"]["num_remote_worker_restarts"] >= 1
        assert algo.env_runner_group.num_healthy_remote_workers() == 1
        assert algo.aux_env_runner_group.num_healthy_remote_workers() == 1
        # The restarted auxiliary runner plays again: auxiliary steps grow after the kill.
        assert last[ENV_STEPS_AUX_LIFETIME] > aux_before
        assert last[ENV_STEPS_TOTAL_LIFETIME] > sampled[0][ENV_STEPS_TOTAL_LIFETIME]
        # The candidates that died with the auxiliary runner were queued again and played, not dropped.
        # (CEM refits only when every candidate of a generation has a fitness, so a later generation means
        # they were scored; within the same generation their fitness must be there.)
        assert algo.cem.generation > generation_before or all(
            math.isfinite(algo._ledger.fitness[c]) for c in in_flight
        )
    finally:
        algo.stop()

"""``AMALConfig``: MAPPO's config plus every knob of AMAL's three ideas (``amal.md``).

With ``lambda_info = 0``, ``aux_ratio = 0`` and ``num_aux_env_runners = 0`` AMAL
is MAPPO: same networks, same learner maths, same hyperparameters.

Defaults and why they differ from the prototype's where they do:
- ``lambda_info`` 0.1 (prototype: 0.5) scales the MI bonus *relative to the
  spread of the extrinsic reward* in the batch (``bonus = lambda_info * std(r) *
  I_hat / std(I_hat)``), so the knob means the same on every scenario. On SMAX
  3m (one seed each, equal total env steps, ``docs/results/amal_vs_mappo_3m``)
  the mean greedy win rate over the evaluations up to 400k steps was 0.54 at
  0.5, 0.66 at 0.1, 0.68 without the bonus and 0.64 for MAPPO: at 0.5 the
  bonus (its estimate is mostly noise early: mean ~0.01, std ~0.1 nats) drowns
  the advantage signal. The Tune study searches 0.05-2.
- ``num_aux_env_runners`` 1 (prototype: 32 auxiliary agents): a 2-core laptop
  runs one auxiliary runner beside two primary ones; cluster presets raise it.
  Every candidate of a generation is evaluated: ``ceil(cem_population_size /
  evolution_frequency)`` candidates per iteration, spread over the runners.
- ``mi_samples_M`` 1024 (seed suggestion: 50-100): each set of ``K`` draws covers
  ``M`` transitions. At M=64 drawing the noise alone (C x K x 10k actor
  parameters) cost more than the estimate on the 1-thread CPU learner
  (``benchmarks/mi_estimator.py``); 256 kept ~35 fresh sets per 9k-transition
  batch, and 1024 keeps ~44 per the ~45k-transition batches of issue 14's
  16k-step iterations (128-unit actor: ~27k parameters per draw).
- ``world_model_train_samples`` 512: the primary transitions per gradient step
  of the world model. It steps on every minibatch of every epoch, and AMAL
  takes as many minibatches as MAPPO (``algorithm.mixed_minibatches``): ~16
  steps per iteration at the preset sizes, so ~one pass over the iteration's
  ~9k alive primary agent-steps.
- ``aux_importance_clip`` 1.0: truncated importance weights as in V-trace.
- ``aux_advantage_norm`` "per_source": GAE's advantages are standardised
  within the primary rows and within the auxiliary rows separately
  ("joint": over the whole mixed batch, RLlib's default). The suspected
  mechanism (not measured directly): candidates play worse than the primary
  actor, so jointly standardised auxiliary advantages lean negative and push
  the policy away from the actions the candidates took, which are mostly the
  primary actor's own modes. What was measured: on SMAX 3m (seed 0,
  1M steps) the policy entropy then *rose* from 0.22 at 250k steps to 0.59 at
  750k while MAPPO's fell to 0.16, and the training win rate sank from 0.61 to
  ~0.5. Per source, each kind of row keeps only its relative ranking. That
  stopped the entropy rise (0.29 and 0.40 at 1M, seeds 0 and 1) but with
  ``aux_ratio`` 0.5 AMAL still trailed MAPPO after ~300k steps (next item).
- ``aux_ratio`` 0.2 (seed default: 0.5) and ``aux_buffer_capacity`` 4,000 env
  steps (prototype: 500,000 transitions). One auxiliary runner plays only ~180
  env steps per iteration (4% of the budget), while the batch asks for
  ``aux_ratio / (1 - aux_ratio)`` times the ~4,000 primary steps. At 0.5 and
  20,000 every auxiliary episode was drawn ~22 times over the ~110 iterations it
  stayed in the buffer, and half of every gradient came from candidates of
  policies up to 100 iterations old. At 0.2 and 4,000 an episode is drawn ~5
  times and is at most ~22 iterations (~4 generations) old. On SMAX 3m at 1M
  total steps the mean greedy win rate over the last 200k steps went from 0.60
  (seeds 0, 1; MAPPO 0.70 over seeds 0-2) to 0.70 (seeds 0-2), and greedy 0.8 was
  first reached after 292k/334k steps in 2 of 3 seeds (MAPPO: 502k/562k in 2 of
  3; ``docs/results/amal_vs_mappo_3m_study``). The learner also processes 1.25x
  MAPPO's rows instead of 2x.
- Issue 14 made MAPPO's batches 4x larger (16,384 env steps, JaxMARL's shape):
  ``aux_episodes_per_candidate`` 4 (was 1) and ``aux_buffer_capacity`` 16,000
  (was 4,000) scale the auxiliary side with them, so an auxiliary episode is
  still drawn ~5 times and the buffer still spans ~4 generations
  (~800 auxiliary env steps per iteration, ~5% of the budget).
- ``aux_rollout_overlap`` "learner": an iteration's candidates are sent to the
  auxiliary runners right before the learner update (drawn around the actor
  that just sampled) and collected after the next iteration's primary sampling,
  so they play while the learner works and leave the cores to the primary
  runners while those sample; their episodes enter the batch one iteration later
  than with "sampling" (sent at the start of the iteration, collected after its
  primary sampling, so they compete with the primary runners for the cores).
  On 2 cores "sampling" slowed primary sampling by ~0.3 s per iteration: an
  auxiliary runner steps one env at ~5 ms per step (RLlib's per-step overhead),
  ~150 steps per iteration. The learning studies in ``docs/results``
  (``amal_vs_mappo_3m_study``, ``amal_vs_mappo_3m_2M``) ran "sampling"; one
  600k-step seed of "learner" is reported beside them (``amal_vs_mappo_3m_2M``).
- The auxiliary buffer is not checkpointed (``aux_buffer_capacity`` env steps of
  episodes would dwarf the model); after a restore it refills from the next generations.
"""

from __future__ import annotations

import math
from typing import Any

from ray.rllib.algorithms.algorithm_config import NotProvided
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from ..mappo.config import MAPPOConfig

#: Knob -> (kind, lower, upper, lower inclusive, upper inclusive). Bounds are where the maths stays defined.
_NUMERIC_BOUNDS: dict[str, tuple[type, float, float, bool, bool]] = {
    "lambda_info": (float, 0.0, math.inf, True, False),
    "perturbation_std": (float, 0.0, 10.0, False, True),
    "mi_samples_M": (int, 1, math.inf, True, False),
    "mi_policies_K": (int, 1, math.inf, True, False),
    "world_model_lr": (float, 0.0, 1.0, False, True),
    "world_model_train_samples": (int, 1, math.inf, True, False),
    "num_aux_env_runners": (int, 0, math.inf, True, False),
    "aux_episodes_per_candidate": (int, 1, math.inf, True, False),
    "cem_population_size": (int, 2, math.inf, True, False),
    "cem_elite_fraction": (float, 0.0, 1.0, False, True),
    "cem_init_sigma": (float, 0.0, math.inf, False, False),
    "cem_beta_dist": (float, 0.0, math.inf, True, False),
    "cem_sigma_floor": (float, 0.0, math.inf, True, False),
    "evolution_frequency": (int, 1, math.inf, True, False),
    "aux_ratio": (float, 0.0, 1.0, True, False),
    "aux_buffer_capacity": (int, 1, math.inf, True, False),
    "aux_importance_clip": (float, 0.0, math.inf, False, False),
    "aux_collect_timeout_s": (float, 0.0, math.inf, False, False),
}

#: Every ``.training(...)`` keyword AMAL adds to MAPPO's.
AMAL_KNOBS = (
    *_NUMERIC_BOUNDS,
    "world_model_hidden",
    "obs_id_dims",
    "mi_temperature",
    "num_cpus_per_aux_env_runner",
    "aux_advantage_norm",
    "aux_rollout_overlap",
)
#: How advantages of a mixed batch are standardised (see the module docstring).
AUX_ADVANTAGE_NORMS = ("per_source", "joint")
#: What the auxiliary rollouts run beside (see the module docstring).
AUX_ROLLOUT_OVERLAPS = ("learner", "sampling")


class AMALConfig(MAPPOConfig):
    def __init__(self, algo_class: type | None = None) -> None:
        if algo_class is None:
            from .algorithm import AMAL

            algo_class = AMAL
        super().__init__(algo_class=algo_class)
        # Idea 2: MI bonus.
        self.lambda_info = 0.1
        self.perturbation_std = 0.05
        self.mi_samples_M = 1024
        self.mi_policies_K = 10
        #: Likelihood temperature of the action posterior in I_hat: None fits it on held-out rows of every
        #: batch (calibrated); a number fixes it (1.0: Proposition 1 as written, the estimator before issue 14).
        self.mi_temperature: float | None = None
        # Idea 1: world model, primary data only.
        self.world_model_hidden: tuple[int, ...] = (256, 256, 128)
        self.world_model_lr = 3e-4
        self.world_model_train_samples = 512
        #: Trailing entries of ``obs`` the world model does not predict (the agent-id one-hot).
        #: None: the scenario's agent count, read from ``env_config`` by the presets.
        self.obs_id_dims: int | None = None
        # Idea 3: CEM auxiliary agents in their own env runners.
        self.num_aux_env_runners = 1
        self.num_cpus_per_aux_env_runner = 1
        self.aux_episodes_per_candidate = 4
        #: How long to wait for the auxiliary runners after primary sampling; a runner still busy then is
        #: restarted and its candidates played again (a hung runner never blocks training).
        self.aux_collect_timeout_s = 300.0
        self.cem_population_size = 50
        self.cem_elite_fraction = 0.3
        self.cem_init_sigma = 0.15
        self.cem_beta_dist = 0.3
        self.cem_sigma_floor = 0.01
        self.evolution_frequency = 5
        self.aux_ratio = 0.2
        self.aux_buffer_capacity = 16_000
        self.aux_importance_clip = 1.0
        self.aux_advantage_norm = "per_source"
        self.aux_rollout_overlap = "learner"

    def training(self, **kwargs: Any) -> AMALConfig:
        amal = {k: kwargs.pop(k) for k in list(kwargs) if k in AMAL_KNOBS}
        super().training(**kwargs)
        for name, value in amal.items():
            if value is not NotProvided:
                setattr(self, name, tuple(value) if name == "world_model_hidden" else value)
        return self

    @property
    def _model_config_auto_includes(self) -> dict[str, Any]:
        return super()._model_config_auto_includes | {
            "world_model_hidden": tuple(self.world_model_hidden),
            "obs_id_dims": self.obs_id_dims or 0,
        }

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        from .module import AMALTorchRLModule

        return RLModuleSpec(module_class=AMALTorchRLModule)

    def get_default_learner_class(self):
        from .learner import AMALTorchLearner

        return AMALTorchLearner

    @property
    def candidates_per_iteration(self) -> int:
        """Candidates evaluated per training iteration, so a generation spans ``evolution_frequency`` iterations."""
        return math.ceil(self.cem_population_size / self.evolution_frequency)

    def mappo_errors(self) -> list[str]:
        return super().mappo_errors() + self.amal_errors()

    def amal_errors(self) -> list[str]:
        """Every out-of-range AMAL setting, as messages that say what is allowed."""
        errors = []
        for name, (kind, low, high, low_in, high_in) in _NUMERIC_BOUNDS.items():
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or (kind is int and not isinstance(value, int))
            ):
                errors.append(f"{name}={value!r}: must be {'an int' if kind is int else 'a number'}")
                continue
            ok_low = value >= low if low_in else value > low
            ok_high = value <= high if high_in else value < high
            if not (ok_low and ok_high):
                interval = f"{'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
                errors.append(f"{name}={value}: must be in {interval}")
        sizes = self.world_model_hidden
        if not sizes or not all(isinstance(s, int) and s > 0 for s in sizes):
            errors.append(
                f"world_model_hidden={sizes!r}: must be a non-empty sequence of positive ints, e.g. (256, 256, 128)"
            )
        if self.obs_id_dims is not None and (not isinstance(self.obs_id_dims, int) or self.obs_id_dims < 0):
            errors.append(f"obs_id_dims={self.obs_id_dims!r}: must be None or an int >= 0")
        if self.aux_advantage_norm not in AUX_ADVANTAGE_NORMS:
            errors.append(f"aux_advantage_norm={self.aux_advantage_norm!r}: must be one of {AUX_ADVANTAGE_NORMS}")
        if self.aux_rollout_overlap not in AUX_ROLLOUT_OVERLAPS:
            errors.append(f"aux_rollout_overlap={self.aux_rollout_overlap!r}: must be one of {AUX_ROLLOUT_OVERLAPS}")
        if self.mi_temperature is not None and (
            isinstance(self.mi_temperature, bool)
            or not isinstance(self.mi_temperature, (int, float))
            or not 0 <= self.mi_temperature < math.inf
        ):
            errors.append(
                f"mi_temperature={self.mi_temperature!r}: must be None (fitted per batch) or a number >= 0 "
                "(1.0: Proposition 1 as written)"
            )
        if self.count_steps_by != "env_steps":
            errors.append(
                f"count_steps_by={self.count_steps_by!r}: AMAL counts its budget (primary, auxiliary, total) in env "
                "steps, one step of the whole team; set count_steps_by='env_steps'"
            )
        if self.aux_ratio > 0 and self.num_aux_env_runners == 0:
            errors.append(
                f"aux_ratio={self.aux_ratio} needs auxiliary rollouts: set num_aux_env_runners >= 1 or aux_ratio=0"
            )
        if not errors and math.ceil(self.cem_elite_fraction * self.cem_population_size) < 2 < self.cem_population_size:
            errors.append(
                f"cem_elite_fraction={self.cem_elite_fraction} keeps fewer than 2 of {self.cem_population_size} "
                "candidates: the refitted sigma would be the floor; raise one of them"
            )
        return errors

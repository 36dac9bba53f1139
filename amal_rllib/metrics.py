"""Metric names (constants, not string literals scattered around) and a result summary."""

from __future__ import annotations

from typing import Any

import numpy as np

WIN_RATE = "win_rate"
#: The team's return per episode (one agent's: every agent gets the team reward). RLlib's own
#: ``episode_return_mean`` sums every agent's return (n_agents x this); the name keeps them apart.
TEAM_RETURN_MEAN = "team_return_mean"
EPISODE_LEN_MEAN = "episode_len_mean"
NUM_EPISODES = "num_episodes"
ENV_STEPS_SAMPLED = "env_steps_sampled"
ENV_STEPS_SAMPLED_LIFETIME = "env_steps_sampled_lifetime"
POLICY_LOSS = "policy_loss"
VF_LOSS = "vf_loss"
ENTROPY = "entropy"
CLIP_FRACTION = "clip_fraction"
VF_EXPLAINED_VAR = "vf_explained_var"
EVAL_WIN_RATE = "eval_win_rate"
EVAL_TEAM_RETURN_MEAN = "eval_team_return_mean"
LEARNER_DEVICE = "learner_device"
TIME_THIS_ITER_S = "time_this_iter_s"
ENV_STEPS_PER_S = "env_steps_per_s"

#: Flat study metrics every algorithm reports (``MAPPO.step``): the greedy evaluation's win rate in the
#: iterations that evaluated, and the mean of every greedy evaluation so far (an area under the curve).
GREEDY_WIN_RATE = "greedy_win_rate"
GREEDY_WIN_RATE_MEAN = "greedy_win_rate_mean"
GREEDY_EVALUATIONS = "greedy_evaluations"

#: Per-episode metric the env-runner callback logs (team return: one agent's, not summed).
TEAM_RETURN = "team_return"
BATTLE_WON = "battle_won"


def _get(result: dict, *path: str, default: Any = np.nan) -> Any:
    node: Any = result
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def summarize_result(result: dict, module_id: str = "shared_policy") -> dict[str, float]:
    """Flat, named metrics of one RLlib training result (new API stack layout)."""
    runners = result.get("env_runners", {})
    learner = _get(result, "learners", module_id, default={})
    evaluation = _get(result, "evaluation", "env_runners", default={})
    steps = float(_get(runners, "num_env_steps_sampled", default=np.nan))
    iter_s = float(result.get("time_this_iter_s", np.nan))
    return {
        WIN_RATE: float(_get(runners, BATTLE_WON)),
        TEAM_RETURN_MEAN: float(_get(runners, TEAM_RETURN)),
        EPISODE_LEN_MEAN: float(_get(runners, "episode_len_mean")),
        NUM_EPISODES: float(_get(runners, "num_episodes")),
        ENV_STEPS_SAMPLED: steps,
        ENV_STEPS_SAMPLED_LIFETIME: float(_get(runners, "num_env_steps_sampled_lifetime")),
        POLICY_LOSS: float(_get(learner, "policy_loss")),
        VF_LOSS: float(_get(learner, "vf_loss")),
        ENTROPY: float(_get(learner, "entropy")),
        CLIP_FRACTION: float(_get(learner, CLIP_FRACTION)),
        VF_EXPLAINED_VAR: float(_get(learner, "vf_explained_var")),
        EVAL_WIN_RATE: float(_get(evaluation, BATTLE_WON)),
        EVAL_TEAM_RETURN_MEAN: float(_get(evaluation, TEAM_RETURN)),
        TIME_THIS_ITER_S: iter_s,
        ENV_STEPS_PER_S: steps / iter_s if iter_s and iter_s > 0 else np.nan,
    }


# AMAL (amal.md, "Metrics every iteration"). MAPPO reports the primary and total counts too
# (total = primary there), so one stop key means the same budget for both algorithms.
ENV_STEPS_PRIMARY_LIFETIME = "env_steps_primary_lifetime"
ENV_STEPS_AUX = "env_steps_auxiliary"
ENV_STEPS_AUX_LIFETIME = "env_steps_auxiliary_lifetime"
ENV_STEPS_TOTAL_LIFETIME = "env_steps_total_lifetime"
WORLD_MODEL_LOSS = "world_model_loss"
WORLD_MODEL_SAMPLES = "world_model_samples"
MI_ESTIMATE_MEAN = "mi_estimate_mean"
MI_ESTIMATE_STD = "mi_estimate_std"
MI_ESTIMATE_POSITIVE_FRACTION = "mi_estimate_positive_fraction"
#: MI diagnostics (issue 14): the likelihood temperature used, the share of rows whose best-fitting
#: world-model head is the action taken, I_hat on those rows and on the others, the ceiling
#: E[log pi(a*) / pibar(a*)] (an estimate of KL(pi || pibar)), I_hat as Proposition 1 writes it
#: (temperature 1) and the share of death transitions (no bonus).
MI_TEMPERATURE = "mi_temperature"
MI_HIT_RATE = "mi_hit_rate"
MI_ESTIMATE_HIT_MEAN = "mi_estimate_hit_mean"
MI_ESTIMATE_MISS_MEAN = "mi_estimate_miss_mean"
MI_CEILING_MEAN = "mi_ceiling_mean"
MI_ESTIMATE_UNTEMPERED_MEAN = "mi_estimate_untempered_mean"
MI_DEATH_FRACTION = "mi_death_fraction"
MI_BONUS_MEAN = "mi_bonus_mean"
MI_BONUS_STD = "mi_bonus_std"
INTRINSIC_EXTRINSIC_RATIO = "intrinsic_extrinsic_ratio"
AUX_SAMPLE_FRACTION = "aux_sample_fraction"
AUX_IMPORTANCE_WEIGHT_MEAN = "aux_importance_weight_mean"
AUX_WIN_RATE = "aux_win_rate"
CEM_BEST_FITNESS = "cem_best_fitness"
CEM_MEAN_FITNESS = "cem_mean_fitness"
CEM_SIGMA_NORM = "cem_sigma_norm"
CEM_GENERATION = "cem_generation"
CEM_NOVELTY_MEAN = "cem_novelty_mean"
# AMAL's own timers (under ``timers``, beside RLlib's ``env_runner_sampling_timer`` and ``learner_update_timer``),
# this iteration's seconds (``window=1``, not RLlib's moving average).
AUX_LAUNCH_TIMER = "aux_launch_timer"  # CEM ask + phi snapshot + sending candidate weights
AUX_COLLECT_TIMER = "aux_collect_timer"  # waiting for the auxiliary runners after primary sampling, scoring, storing
AUX_BUFFER_SAMPLE_TIMER = "aux_buffer_sample_timer"  # drawing this batch's auxiliary episodes

#: Learner-side AMAL metrics (under ``learners/<module>``) and algorithm-side ones (top level).
AMAL_LEARNER_METRICS = (
    WORLD_MODEL_LOSS,
    WORLD_MODEL_SAMPLES,
    MI_ESTIMATE_MEAN,
    MI_ESTIMATE_STD,
    MI_ESTIMATE_POSITIVE_FRACTION,
    MI_BONUS_MEAN,
    MI_BONUS_STD,
    INTRINSIC_EXTRINSIC_RATIO,
    MI_TEMPERATURE,
    MI_HIT_RATE,
    MI_ESTIMATE_HIT_MEAN,
    MI_ESTIMATE_MISS_MEAN,
    MI_CEILING_MEAN,
    MI_ESTIMATE_UNTEMPERED_MEAN,
    MI_DEATH_FRACTION,
    AUX_SAMPLE_FRACTION,
    AUX_IMPORTANCE_WEIGHT_MEAN,
)
AMAL_ALGO_METRICS = (
    ENV_STEPS_AUX,
    ENV_STEPS_AUX_LIFETIME,
    ENV_STEPS_PRIMARY_LIFETIME,
    ENV_STEPS_TOTAL_LIFETIME,
    AUX_WIN_RATE,
    CEM_BEST_FITNESS,
    CEM_MEAN_FITNESS,
    CEM_SIGMA_NORM,
    CEM_GENERATION,
    CEM_NOVELTY_MEAN,
)


def summarize_amal_result(result: dict, module_id: str = "shared_policy") -> dict[str, float]:
    """``summarize_result`` plus AMAL's metrics (NaN where an iteration did not produce one)."""
    out = summarize_result(result, module_id)
    learner = _get(result, "learners", module_id, default={})
    for name in AMAL_LEARNER_METRICS:
        out[name] = float(_get(learner, name))
    for name in AMAL_ALGO_METRICS:
        out[name] = float(result.get(name, np.nan))
    out[LEARNER_DEVICE] = result.get(LEARNER_DEVICE, "cpu")
    return out

"""Metric names (constants, not string literals scattered around) and a result summary."""

from __future__ import annotations

from typing import Any

import numpy as np

WIN_RATE = "win_rate"
EPISODE_RETURN_MEAN = "episode_return_mean"
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
EVAL_RETURN_MEAN = "eval_episode_return_mean"
LEARNER_DEVICE = "learner_device"
TIME_THIS_ITER_S = "time_this_iter_s"
ENV_STEPS_PER_S = "env_steps_per_s"

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
        EPISODE_RETURN_MEAN: float(_get(runners, TEAM_RETURN)),
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
        EVAL_RETURN_MEAN: float(_get(evaluation, TEAM_RETURN)),
        TIME_THIS_ITER_S: iter_s,
        ENV_STEPS_PER_S: steps / iter_s if iter_s and iter_s > 0 else np.nan,
    }

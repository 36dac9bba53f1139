"""Env-runner callback: win rate and team return of finished episodes."""

from __future__ import annotations

from ray.rllib.callbacks.callbacks import RLlibCallback

from .envs.spec import BATTLE_WON_KEY
from .metrics import BATTLE_WON, TEAM_RETURN


class BattleMetricsCallback(RLlibCallback):
    """Logs ``battle_won`` (mean over finished episodes = win rate) and the team return.

    The adapters give every agent the same team reward, so one agent's return
    is the team's return (RLlib's own ``episode_return_mean`` sums all agents).
    """

    def on_episode_end(self, *, episode, env_runner=None, metrics_logger=None, **kwargs) -> None:
        if metrics_logger is None:
            return
        # Smooth over the same number of episodes as RLlib's own episode metrics.
        window = getattr(getattr(env_runner, "config", None), "metrics_num_episodes_for_smoothing", 100)
        agent_ids = sorted(episode.agent_episodes)
        first = episode.agent_episodes[agent_ids[0]]
        info = first.get_infos(-1) or {}
        metrics_logger.log_value(BATTLE_WON, float(bool(info.get(BATTLE_WON_KEY, False))), reduce="mean", window=window)
        metrics_logger.log_value(TEAM_RETURN, float(first.get_return()), reduce="mean", window=window)

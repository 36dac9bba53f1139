"""Env runner for the team envs: RLlib's ``MultiAgentEnvRunner`` minus a quadratic cost.

RLlib 2.60's ``MultiAgentEnvRunner._sample`` calls ``to_numpy()`` on *every*
episode finished so far in the sample call at *every* env step, so a sample
with E short episodes costs O(E^2) conversions (SMAX battles last ~20 steps:
>100 episodes per 2,000-step sample). With ``episodes_to_numpy=False`` that
loop is skipped; this runner converts each returned episode exactly once, so
the episodes still travel to the learner as compact numpy arrays.
"""

from __future__ import annotations

from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner


class TeamEnvRunner(MultiAgentEnvRunner):
    def sample(self, **kwargs):
        episodes = super().sample(**kwargs)
        for episode in episodes:
            if not episode.is_numpy:
                episode.to_numpy()
        return episodes

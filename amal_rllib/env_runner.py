"""Env runner for the team envs: RLlib's ``MultiAgentEnvRunner`` with a vectorised fast path.

1. For SMAX it replaces RLlib's ``SyncVectorMultiAgentEnv`` (one jitted call per
   sub-env) with :class:`~amal_rllib.envs.smax_vector.SMAXVectorEnv` (one vmapped
   call for all sub-envs). ``env_config["vectorize"] = False`` keeps RLlib's.
2. On that env, ``sample()`` runs :class:`~amal_rllib.rollout.VectorRollout`: one
   policy forward and one env call per step for all sub-envs, episodes built in
   bulk afterwards, metrics logged once per call (RLlib's loop spends ~80% of a
   MAPPO iteration in per-step Python bookkeeping; ``docs/results/rl_profile_3m``).
   The episodes, metrics and callbacks (``on_episode_created``/``start``/``end``,
   ``on_sample_end``) are RLlib's. ``env_config["fast_sampling"] = False`` keeps
   RLlib's per-step loop; so does any setting the fast path cannot honour
   (custom env-to-module or module-to-env connectors, a stateful module,
   ``on_episode_step`` callbacks, agents on different modules), with a warning
   naming it.
3. RLlib's per-episode metrics (``_log_episode_metrics``: episode length, return, duration, per-agent
   and per-module returns, min/max) go through ``MetricsLogger.log_dict``, a ``tree`` map over three
   nested dicts per finished episode (~1,000 per 3m iteration; a cProfile of two MAPPO iterations
   found 1.87 s in ``log_dict``, 0.6 s of it in the ``log_value`` calls it makes). This runner logs the
   same keys with the same reductions and windows by one ``log_value`` per number.
4. RLlib 2.60's ``MultiAgentEnvRunner._sample`` calls ``to_numpy()`` on *every*
   episode finished so far in the sample call at *every* env step (quadratic in
   the episodes per call). With ``episodes_to_numpy=False`` that loop is skipped;
   this runner converts each returned episode exactly once.
"""

from __future__ import annotations

import logging
import math
import time

from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.callbacks.utils import make_callback
from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner
from ray.rllib.utils.metrics import (
    EPISODE_AGENT_RETURN_MEAN,
    EPISODE_AGENT_STEPS,
    EPISODE_DURATION_SEC_MEAN,
    EPISODE_LEN_MAX,
    EPISODE_LEN_MEAN,
    EPISODE_LEN_MIN,
    EPISODE_MODULE_RETURN_MEAN,
    EPISODE_RETURN_MAX,
    EPISODE_RETURN_MEAN,
    EPISODE_RETURN_MIN,
    NUM_AGENT_STEPS_SAMPLED,
    NUM_AGENT_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_SAMPLED,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_EPISODES,
    NUM_EPISODES_LIFETIME,
    NUM_MODULE_STEPS_SAMPLED,
    NUM_MODULE_STEPS_SAMPLED_LIFETIME,
    SAMPLE_TIMER,
    TIME_BETWEEN_SAMPLING,
    WEIGHTS_SEQ_NO,
)

logger = logging.getLogger(__name__)


def vectorised_env(env_config) -> bool:
    """Whether a :class:`TeamEnvRunner` with this ``env_config`` steps SMAX as one vmapped env."""
    env_config = env_config or {}
    return env_config.get("backend") == "smax" and bool(env_config.get("vectorize", True))


def vectorised_sampling(env_config) -> bool:
    """Whether it also samples with :class:`~amal_rllib.rollout.VectorRollout` (unless something in the
    config blocks the fast path at run time: ``TeamEnvRunner._fast_path_blocker``)."""
    return vectorised_env(env_config) and bool((env_config or {}).get("fast_sampling", True))


class TeamEnvRunner(MultiAgentEnvRunner):
    def make_env(self) -> None:
        super().make_env()
        self._rollout = None
        self._fast_checked = False
        self._want_fast = False
        env_config = dict(self.config.env_config or {})
        if not vectorised_env(env_config):
            return
        fast = vectorised_sampling(env_config)
        for key in ("backend", "vectorize", "fast_sampling"):
            env_config.pop(key, None)
        from .envs.smax_vector import SMAXVectorEnv

        rllib_env = self.env
        self.env = SMAXVectorEnv(self.config.num_envs_per_env_runner, env_config)
        rllib_env.close()
        logger.debug("SMAX vectorised over %d envs in one jitted call", self.num_envs)
        self._want_fast = bool(fast)

    def _log_episode_metrics(self, length, ret, sec, agents=None, modules=None, agent_steps=None) -> None:
        """RLlib's episode metrics for one finished episode: same keys, reductions and windows as
        ``MultiAgentEnvRunner._log_episode_metrics``, without its ``log_dict`` tree maps (module docstring, 3)."""
        window = max(
            1, math.ceil(self.config.metrics_num_episodes_for_smoothing / (self.config.num_env_runners or 1))
        )
        means = {EPISODE_LEN_MEAN: length, EPISODE_RETURN_MEAN: ret, EPISODE_DURATION_SEC_MEAN: sec}
        if agents is not None:
            means |= {
                EPISODE_AGENT_RETURN_MEAN: agents,
                EPISODE_AGENT_STEPS: agent_steps,
                EPISODE_MODULE_RETURN_MEAN: modules,
            }
        log = self.metrics.log_value
        for reduce, values in (
            ("mean", means),
            ("min", {EPISODE_LEN_MIN: length, EPISODE_RETURN_MIN: ret}),
            ("max", {EPISODE_LEN_MAX: length, EPISODE_RETURN_MAX: ret}),
        ):
            for key, value in sorted(values.items()):  # log_dict's order: sorted keys, depth first
                if isinstance(value, dict):
                    for sub_key, sub_value in sorted(value.items()):
                        log((key, sub_key), sub_value, reduce=reduce, window=window)
                else:
                    log(key, value, reduce=reduce, window=window)

    # -- fast path ---------------------------------------------------------------------------------------------

    def _fast_path_blocker(self) -> str | None:
        """Why the vectorised sampler cannot run this config (None: it can)."""
        config = self.config
        if config._env_to_module_connector is not None or config._module_to_env_connector is not None:
            return "custom env-to-module / module-to-env connectors are configured"
        if getattr(config, "callbacks_on_episode_step", None):
            return "an on_episode_step callback function is configured"
        for callback in self._callbacks:
            if type(callback).on_episode_step is not RLlibCallback.on_episode_step:
                return f"callback {type(callback).__name__} overrides on_episode_step"
        if self.module is None:
            return "there is no RLModule"
        module_ids = {config.policy_mapping_fn(aid, None) for aid in self.env._ids}
        if len(module_ids) != 1:
            return f"agents map to several modules {sorted(module_ids)}"
        module_id = next(iter(module_ids))
        if module_id not in self.module:
            return f"module {module_id!r} is not in this runner's MultiRLModule"
        if self.module[module_id].is_stateful():
            return "the module is stateful (recurrent)"
        return None

    def _fast_rollout(self):
        if not self._fast_checked:
            self._fast_checked = True
            if self._want_fast:
                reason = self._fast_path_blocker()
                if reason is None:
                    from .rollout import VectorRollout

                    module_id = self.config.policy_mapping_fn(self.env._ids[0], None)
                    self._rollout = VectorRollout(self.env, module_id, self.config.policy_mapping_fn, seed=self._seed)
                else:
                    logger.warning("TeamEnvRunner: RLlib's per-step sampling loop (slower) because %s", reason)
        return self._rollout

    def sample(self, *, num_timesteps=None, num_episodes=None, explore=None, random_actions=False, force_reset=False):
        rollout = self._fast_rollout() if self.env is not None else None
        if rollout is None:
            episodes = super().sample(
                num_timesteps=num_timesteps,
                num_episodes=num_episodes,
                explore=explore,
                random_actions=random_actions,
                force_reset=force_reset,
            )
            for episode in episodes:
                if not episode.is_numpy:
                    episode.to_numpy()
            return episodes
        return self._sample_fast(rollout, num_timesteps, num_episodes, explore, random_actions, force_reset)[0]

    def can_sample_with_policy(self) -> bool:
        """Whether :meth:`sample_with_policy` can run here (the vectorised fast path is on)."""
        return self.env is not None and self._fast_rollout() is not None

    def sample_with_policy(self, policy, quota, *, explore: bool = True):
        """Whole episodes played with ``policy`` instead of the module's forward pass, ``quota[e]`` of them
        from sub-env ``e``; returns ``(episodes, sub_env_of_each_episode)``.

        ``policy`` maps the flat observation batch ``{key: [num_envs * n_agents, ...]}`` (sub-env major)
        to action-distribution inputs (None: the module's own forward pass, as :meth:`sample`); the
        module's action distribution draws the actions, so each
        stored ``action_logp`` is the log-prob under ``policy``. Metrics and callbacks are those of
        :meth:`sample`. Needs the vectorised fast path (:meth:`can_sample_with_policy`).
        """
        if not self.can_sample_with_policy():
            raise RuntimeError(
                "sample_with_policy needs the vectorised SMAX sampler (env_config backend='smax' with "
                "vectorize and fast_sampling on, and nothing that blocks the fast path; see the runner's warning)"
            )
        rollout = self._fast_rollout()
        return self._sample_fast(rollout, None, None, explore, False, True, policy=policy, quota=quota)

    def _sample_fast(
        self, rollout, num_timesteps, num_episodes, explore, random_actions, force_reset, policy=None, quota=None
    ):
        if num_timesteps is not None and num_episodes is not None:
            raise ValueError(f"give either num_timesteps or num_episodes, got {num_timesteps=}, {num_episodes=}")
        if self._time_after_sampling is not None:
            self.metrics.log_value(key=TIME_BETWEEN_SAMPLING, value=time.perf_counter() - self._time_after_sampling)
        self.metrics.log_value(key=WEIGHTS_SEQ_NO, value=self._weights_seq_no, window=1)
        with self.metrics.log_time(SAMPLE_TIMER):
            if explore is None:
                explore = self.config.explore
            if num_timesteps is None and num_episodes is None and quota is None:
                if self.config.batch_mode == "truncate_episodes":
                    num_timesteps = self.config.get_rollout_fragment_length(self.worker_index) * self.num_envs
                else:
                    num_episodes = self.num_envs
            if force_reset or num_timesteps is None or rollout.needs_reset:
                self._ongoing_episodes_for_metrics.clear()  # chunks of dropped episodes (RLlib does the same)
            if force_reset:
                rollout.drop_episodes()
            num_steps = None
            if num_timesteps is not None:
                per_step = self.num_envs * (rollout.n_agents if self.config.count_steps_by == "agent_steps" else 1)
                num_steps = math.ceil(num_timesteps / per_step)
            finished, chunks, stats = rollout.sample(
                self.module[rollout.module_id],
                num_steps=num_steps,
                num_episodes=num_episodes,
                explore=explore,
                random_actions=random_actions,
                weights_seq_no=self._weights_seq_no,
                quota=quota,
                policy=policy,
            )
            self._log_sampled(stats["env_steps"], len(finished), rollout)
            for episode in finished + chunks:
                if episode.env_t_started == 0:
                    self._episode_callback("on_episode_created", episode)
                    self._episode_callback("on_episode_start", episode)
            for episode in finished:
                self._episode_callback("on_episode_end", episode)
            self._done_episodes_for_metrics.extend(finished)
            for chunk in chunks:
                self._ongoing_episodes_for_metrics[chunk.id_].append(chunk)
            samples = finished + chunks
            make_callback(
                "on_sample_end",
                callbacks_objects=self._callbacks,
                callbacks_functions=self.config.callbacks_on_sample_end,
                kwargs=dict(env_runner=self, metrics_logger=self.metrics, samples=samples),
            )
        self._time_after_sampling = time.perf_counter()
        return samples, stats["episode_envs"]

    def _episode_callback(self, which: str, episode) -> None:
        kwargs = dict(
            episode=episode,
            env_runner=self,
            metrics_logger=self.metrics,
            env=self.env.unwrapped,
            rl_module=self.module,
            env_index=0,
        )
        if which == "on_episode_end":
            kwargs["prev_episode_chunks"] = self._ongoing_episodes_for_metrics[episode.id_]
        make_callback(
            which,
            callbacks_objects=self._callbacks,
            callbacks_functions=getattr(self.config, f"callbacks_{which}"),
            kwargs=kwargs,
        )

    def _log_sampled(self, env_steps: int, episodes: int, rollout) -> None:
        """RLlib's per-step sample counters, logged once per call with the totals."""
        m = self.metrics
        m.log_value(NUM_ENV_STEPS_SAMPLED, env_steps, reduce="sum")
        m.log_value(NUM_ENV_STEPS_SAMPLED_LIFETIME, env_steps, reduce="lifetime_sum", with_throughput=True)
        m.log_value(NUM_EPISODES, episodes, reduce="sum")
        m.log_value(NUM_EPISODES_LIFETIME, episodes, reduce="lifetime_sum")
        for aid in rollout.agent_ids:
            m.log_value((NUM_AGENT_STEPS_SAMPLED, str(aid)), env_steps, reduce="sum")
            m.log_value((NUM_AGENT_STEPS_SAMPLED_LIFETIME, str(aid)), env_steps, reduce="lifetime_sum")
        module_steps = env_steps * rollout.n_agents
        m.log_value((NUM_MODULE_STEPS_SAMPLED, rollout.module_id), module_steps, reduce="sum")
        m.log_value((NUM_MODULE_STEPS_SAMPLED_LIFETIME, rollout.module_id), module_steps, reduce="lifetime_sum")
        self._log_env_steps(metric=self._metrics_num_env_steps_sampled, num_steps=env_steps)

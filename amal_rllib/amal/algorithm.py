"""``AMAL``: MAPPO's training loop plus the auxiliary population.

``training_step`` only orchestrates:
1. sample primary episodes, exactly as PPO/MAPPO do;
2. collect the auxiliary episodes sent out earlier, score each candidate
   (world-model NLL on its own rollouts minus ``cem_beta_dist * ||params -
   phi||``), store them in the auxiliary buffer, and refit the CEM distribution
   when a generation is complete;
3. draw ``aux_ratio`` of the batch from the auxiliary buffer;
4. hand the next CEM candidates to the auxiliary env runners (async; on SMAX a
   runner plays all of its candidates in one vectorised rollout, each on its
   own sub-envs: ``aux_envs_per_runner``), so they play while the learner
   works (``aux_rollout_overlap="learner"``; with "sampling" this happens
   before step 1 and step 2 collects them in the same iteration). CEM searches the *offset* ``delta`` from the primary actor: a
   candidate plays with ``phi_t + delta``, ``phi_t`` the primary actor when it
   is launched, so the search distribution is centred on the current primary
   policy at every generation (``mu`` starts at ``phi``, as ``amal.md`` says,
   and stays in its frame). With a fixed frame the candidates stayed
   perturbations of the *initial* policy while half of every batch came from
   them (measured: the training win rate fell from 0.65 to 0.44 between 170k
   and 360k env steps);
5. update the learner on primary plus auxiliary episodes (MI bonus, importance
   weights and the isolated world model are in the learner's connector and loss);
6. sync the primary runners' weights; log env steps (primary, auxiliary, total).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any

import numpy as np
import ray
from ray.rllib.env.env_runner_group import EnvRunnerGroup
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.utils.metrics import (
    ALL_MODULES,
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_MODULE_STEPS_TRAINED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)
from ray.tune.execution.placement_groups import PlacementGroupFactory

from ..core.cem import CEMPopulation, GenerationLedger, distance_penalised_fitness
from ..env_runner import vectorised_sampling
from ..mappo.algorithm import MAPPO
from ..mappo.config import SHARED_POLICY
from ..metrics import (
    AUX_BUFFER_SAMPLE_TIMER,
    AUX_COLLECT_TIMER,
    AUX_LAUNCH_TIMER,
    AUX_WIN_RATE,
    BATTLE_WON,
    CEM_BEST_FITNESS,
    CEM_GENERATION,
    CEM_MEAN_FITNESS,
    CEM_NOVELTY_MEAN,
    CEM_SIGMA_NORM,
    ENV_STEPS_AUX,
    ENV_STEPS_AUX_LIFETIME,
    LEARNER_DEVICE,
)
from .config import AMALConfig
from .rollouts import (
    AuxiliaryBuffer,
    actor_layout,
    actor_state_from_flat,
    env_steps,
    episode_transitions,
    flatten_actor,
    learner_rows,
    mark_auxiliary,
    play_candidates_batched,
)

logger = logging.getLogger(__name__)

AUX_ENV_RUNNER_RESULTS = "aux_env_runners"
_AUX_TAG = "amal_aux"
STATE_KEY = "amal"


def cyclic_minibatch_count(rows: int, minibatch_size: int, num_epochs: int) -> int:
    """How many minibatches RLlib's ``MiniBatchCyclicIterator`` yields for ``num_epochs`` over ``rows`` rows."""
    covered, start, count = 0, 0, 0
    while covered < num_epochs:
        need = minibatch_size
        while start + need >= rows:
            need -= rows - start
            start, covered = 0, covered + 1
        start += need
        count += 1
    return count


def mixed_minibatches(
    minibatch_size: int | None, num_epochs: int, primary_rows: int, aux_rows: int
) -> tuple[int | None, int]:
    """``(minibatch_size, num_total_minibatches)`` for a mixed batch: as many gradient steps as MAPPO's.

    Auxiliary rows are *added* to the primary batch (``aux_ratio`` of the mixed
    batch), so MAPPO's minibatch size on the mixed batch would give AMAL more
    gradient steps per iteration than MAPPO (two for one at ``aux_ratio = 0.5``),
    a difference that is none of AMAL's ideas. Here the minibatch grows by
    ``(primary + aux) / primary`` (each holds ~``aux_ratio`` auxiliary rows) and
    the count is pinned to what MAPPO's iterator does on the primary rows alone.
    ``num_total_minibatches`` 0 means RLlib's own epoch count (no auxiliary rows,
    or one minibatch per epoch).
    """
    if minibatch_size is None or aux_rows <= 0 or primary_rows <= 0:
        return minibatch_size, 0
    scaled = math.ceil(minibatch_size * (primary_rows + aux_rows) / primary_rows)
    return scaled, cyclic_minibatch_count(primary_rows, minibatch_size, num_epochs)


def aux_envs_per_runner(config: AMALConfig) -> int:
    """Sub-envs of each auxiliary env runner: with the vectorised SMAX sampler, enough for all of an
    iteration's candidates on that runner to play their ``aux_episodes_per_candidate`` episodes at
    once (one sub-env per episode, :func:`~amal_rllib.amal.rollouts.play_candidates_batched`); else 1
    (RLlib's per-step loop plays the candidates one after another)."""
    if config.num_aux_env_runners < 1 or not vectorised_sampling(config.env_config):
        return 1
    per_runner = math.ceil(config.candidates_per_iteration / config.num_aux_env_runners)
    return per_runner * config.aux_episodes_per_candidate


def _actor_snapshot(learner, module_id: str) -> tuple[np.ndarray, list, str]:
    actor = learner.module[module_id].unwrapped().actor
    return flatten_actor(actor), actor_layout(actor), str(learner._device)


def _world_model_nll(learner, module_id: str, transitions: list[dict]) -> list[float]:
    return learner.world_model_nll(module_id, transitions)


@dataclasses.dataclass(frozen=True)
class AuxRollout:
    """One candidate's episodes as collected: its index in generation ``generation`` (1-based),
    its CEM offset ``delta`` and the actor parameters ``phi_t + delta`` it played with."""

    candidate: int
    generation: int
    offset: np.ndarray
    params: np.ndarray
    episodes: list


class AMAL(MAPPO):
    @classmethod
    def get_default_config(cls) -> AMALConfig:
        return AMALConfig(cls)

    @classmethod
    def _base_bundles(cls, config) -> list[dict]:
        # MAPPO's (PPO's) bundles: `cls.default_resource_request` would include the aux ones.
        return list(super().default_resource_request(config).bundles)

    @classmethod
    def default_resource_request(cls, config) -> PlacementGroupFactory:
        """MAPPO's bundles plus one per auxiliary env runner, so Tune reserves them too."""
        base = super().default_resource_request(config)
        cfg = config if isinstance(config, AMALConfig) else cls.get_default_config().update_from_dict(config)
        aux = [{"CPU": cfg.num_cpus_per_aux_env_runner} for _ in range(cfg.num_aux_env_runners)]
        return PlacementGroupFactory(bundles=list(base.bundles) + aux, strategy=base.strategy)

    # ------------------------------------------------------------------ setup
    def setup(self, config) -> None:
        super().setup(config)
        cfg: AMALConfig = self.config
        self._aux_buffer = AuxiliaryBuffer(cfg.aux_buffer_capacity, seed=cfg.seed)
        self._aux_env_steps_lifetime = 0
        self._ledger = GenerationLedger()  # the current CEM generation's candidates: queued, playing, scored
        self.last_aux_rollouts: list[AuxRollout] = []  # what the last collection brought back
        phi, self._actor_layout, self._learner_device = self._on_learner(
            functools.partial(_actor_snapshot, module_id=SHARED_POLICY)
        )
        self.aux_env_runner_group: EnvRunnerGroup | None = None
        self.cem: CEMPopulation | None = None
        if cfg.num_aux_env_runners > 0:
            aux_config = cfg.copy(copy_frozen=False)
            aux_config.env_runners(
                num_env_runners=cfg.num_aux_env_runners,
                num_envs_per_env_runner=aux_envs_per_runner(cfg),
                num_cpus_per_env_runner=cfg.num_cpus_per_aux_env_runner,
            )
            if cfg.seed is not None:
                aux_config.debugging(seed=cfg.seed + 100_003)  # other env seeds than the primary runners'
            aux_config.freeze()
            self.aux_env_runner_group = EnvRunnerGroup(
                env_creator=self.env_creator,
                config=aux_config,
                local_env_runner=False,
                logdir=self.logdir,
                tune_trial_id=self.trial_id,
                pg_offset=len(self._base_bundles(cfg)) - 1,
            )
            self.cem = CEMPopulation(
                np.zeros_like(phi),  # offsets from the primary actor: mu starts at phi
                init_sigma=cfg.cem_init_sigma,
                population_size=cfg.cem_population_size,
                elite_fraction=cfg.cem_elite_fraction,
                sigma_floor=cfg.cem_sigma_floor,
                seed=cfg.seed,
            )

    def cleanup(self) -> None:
        if getattr(self, "aux_env_runner_group", None) is not None:
            self.aux_env_runner_group.stop()
        super().cleanup()

    # --------------------------------------------------------------- training
    def training_step(self) -> None:
        """Sample primary, mix auxiliary, update, evolve, sync (see the module docstring)."""
        cfg: AMALConfig = self.config
        if self.aux_env_runner_group is not None:
            # RLlib restores (probes and re-syncs) only its own groups; a restarted auxiliary runner is
            # marked healthy again here (``restart_failed_env_runners``).
            self.restore_env_runners(self.aux_env_runner_group)
            if cfg.aux_rollout_overlap == "sampling":
                self._timed_launch()
        episodes = self._sample_primary()
        if not episodes:
            return
        aux_steps = self._timed_collect() if self._ledger.in_flight else 0  # evolve: score, store, refit CEM
        aux_episodes = self._draw_auxiliary(env_steps(episodes))
        if self.aux_env_runner_group is not None and cfg.aux_rollout_overlap == "learner":
            self._timed_launch()  # plays while the learner below works; collected next iteration
        learner_results = self._update(episodes, aux_episodes, aux_steps)
        self._sync_primary_weights(learner_results)
        self._log_env_steps(aux_steps)

    def _sample_primary(self) -> list:
        cfg: AMALConfig = self.config
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            episodes, env_runner_results = synchronous_parallel_sample(
                worker_set=self.env_runner_group,
                max_env_steps=cfg.total_train_batch_size,
                sample_timeout_s=cfg.sample_timeout_s,
                _uses_new_env_runners=True,
                _return_metrics=True,
            )
            if episodes:
                self.metrics.aggregate(env_runner_results, key=ENV_RUNNER_RESULTS)
        return episodes

    def _timed_collect(self) -> int:
        with self.metrics.log_time((TIMERS, AUX_COLLECT_TIMER), reduce="mean", window=1):
            return self._collect_aux_rollouts()

    def _draw_auxiliary(self, primary_steps: int) -> list:
        """``aux_ratio`` of the mixed batch from the auxiliary buffer (whole episodes)."""
        cfg: AMALConfig = self.config
        if cfg.aux_ratio <= 0 or not len(self._aux_buffer):
            return []
        wanted = round(primary_steps * cfg.aux_ratio / (1.0 - cfg.aux_ratio))
        with self.metrics.log_time((TIMERS, AUX_BUFFER_SAMPLE_TIMER), reduce="mean", window=1):
            return self._aux_buffer.sample(wanted)

    def _update(self, episodes: list, aux_episodes: list, aux_steps: int):
        cfg: AMALConfig = self.config
        minibatch_size, num_minibatches = mixed_minibatches(
            cfg.minibatch_size, cfg.num_epochs, learner_rows(episodes), learner_rows(aux_episodes)
        )
        primary = self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME))
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            learner_results = self.learner_group.update(
                episodes=list(episodes) + aux_episodes,
                timesteps={
                    # Schedules (lr, entropy) follow the budget key: total env steps, auxiliary ones included.
                    NUM_ENV_STEPS_SAMPLED_LIFETIME: primary + self._aux_env_steps_lifetime + aux_steps,
                    NUM_MODULE_STEPS_TRAINED_LIFETIME: self.metrics.peek(
                        (LEARNER_RESULTS, ALL_MODULES, NUM_MODULE_STEPS_TRAINED_LIFETIME), default=0
                    ),
                },
                num_epochs=cfg.num_epochs,
                minibatch_size=minibatch_size,
                num_total_minibatches=num_minibatches,
                shuffle_batch_per_epoch=cfg.shuffle_batch_per_epoch,
            )
            self.metrics.aggregate(learner_results, key=LEARNER_RESULTS)
        return learner_results

    def _sync_primary_weights(self, learner_results) -> None:
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            modules = set(learner_results[0].keys()) - {ALL_MODULES}
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group, policies=modules, inference_only=True
            )

    def _phi(self) -> np.ndarray:
        return self._on_learner(functools.partial(_actor_snapshot, module_id=SHARED_POLICY))[0]

    def _on_learner(self, func):
        """``func(learner)`` on the (first) learner, local or remote; all learners hold the same weights."""
        return next(iter(self.learner_group.foreach_learner(func))).get()

    def _timed_launch(self) -> None:
        if self._ledger.in_flight:  # still out (an iteration that sampled nothing): one request at a time
            return
        with self.metrics.log_time((TIMERS, AUX_LAUNCH_TIMER), reduce="mean", window=1):
            self._launch_aux_rollouts()

    def _launch_aux_rollouts(self) -> None:
        """Send this iteration's share of the current generation to the auxiliary runners (no waiting)."""
        cfg: AMALConfig = self.config
        ledger = self._ledger
        if ledger.needs_generation():
            if ledger.unscored():
                logger.warning(
                    "CEM generation %d dropped: %d of %d candidates returned no rollouts (auxiliary runner failure?)",
                    self.cem.generation + 1,
                    ledger.unscored(),
                    len(ledger.fitness),
                )
            ledger.new_generation(self.cem.ask())
        take = ledger.take(cfg.candidates_per_iteration)
        workers = self.aux_env_runner_group.healthy_worker_ids()
        if not workers:
            if not cfg.restart_failed_env_runners:
                raise RuntimeError(
                    "AMAL has no healthy auxiliary env runner left; set "
                    "config.fault_tolerance(restart_failed_env_runners=True) to have failed runners restarted"
                )
            logger.warning("no healthy auxiliary env runner (being restarted): candidates %s wait", take)
            ledger.give_back(take)
            return
        assignments: dict[int, list] = {w: [] for w in workers}
        phi = self._phi()
        params = phi[None, :] + ledger.offsets[take]
        for i, candidate in enumerate(take):
            state = actor_state_from_flat(params[i], self._actor_layout)
            assignments[workers[i % len(workers)]].append((candidate, state))
        sent = self.aux_env_runner_group.foreach_env_runner_async(
            functools.partial(
                play_candidates_batched,
                assignments=assignments,
                num_episodes=cfg.aux_episodes_per_candidate,
                module_id=SHARED_POLICY,
            ),
            tag=_AUX_TAG,
            remote_worker_ids=list(assignments),
        )
        if sent < len(assignments):  # RLlib drops a request while one of its tag is in flight on that runner
            raise RuntimeError(
                f"{len(assignments) - sent} of {len(assignments)} auxiliary runners refused their candidates: an "
                "earlier auxiliary request is still in flight (AMAL sends one at a time; this is a bug)"
            )
        ledger.launch(take, params)

    def _fetch_aux_replies(self) -> list:
        """The auxiliary runners' replies, waiting at most ``aux_collect_timeout_s``.

        A runner still busy after that is taken as hung: it is killed, so Ray restarts it
        (``restart_failed_env_runners``) and its candidates are played again elsewhere or later.
        Without the timeout one hung runner would block training forever.
        """
        cfg: AMALConfig = self.config
        group = self.aux_env_runner_group
        replies = group.fetch_ready_async_reqs(tags=_AUX_TAG, timeout_seconds=cfg.aux_collect_timeout_s)
        if group.num_in_flight_async_reqs(tag=_AUX_TAG) > 0:
            manager = group._worker_manager
            hung = sorted({actor_id for _, (tag, actor_id) in manager._in_flight_req_to_actor_id.items() if tag == _AUX_TAG})
            logger.warning(
                "auxiliary env runner(s) %s did not answer within aux_collect_timeout_s=%s s: restarting them; "
                "their CEM candidates are queued again",
                hung,
                cfg.aux_collect_timeout_s,
            )
            for actor_id in hung:
                ray.kill(manager._actors[actor_id], no_restart=False)  # Ray restarts it (max_restarts > 0)
                manager.set_actor_state(actor_id, healthy=False)  # drops its in-flight request
        return replies

    def _collect_aux_rollouts(self) -> int:
        """Wait for the auxiliary runners, score the candidates, fill the buffer; returns the aux env steps."""
        cfg: AMALConfig = self.config
        ledger = self._ledger
        replies = self._fetch_aux_replies()
        played = [item for _, (items, _) in replies for item in items]
        lost = ledger.collect({candidate for candidate, _ in played})
        if lost:
            # A runner died or hung with its candidates: they are played again, so the generation completes.
            logger.warning("auxiliary env runner failure: CEM candidates %s lost, queued again", lost)
        runner_metrics = [metrics for _, (_, metrics) in replies]
        if runner_metrics:
            self.metrics.aggregate(runner_metrics, key=AUX_ENV_RUNNER_RESULTS)
        self.last_aux_rollouts = [
            AuxRollout(c, self.cem.generation + 1, ledger.offsets[c].copy(), ledger.params[c].copy(), eps)
            for c, eps in played
        ]
        if not played:
            return 0
        for _, episodes in played:
            mark_auxiliary(episodes)
        transitions = [episode_transitions(episodes) for _, episodes in played]
        novelty = self._on_learner(
            functools.partial(_world_model_nll, module_id=SHARED_POLICY, transitions=transitions)
        )
        ids = np.array([candidate for candidate, _ in played])
        # ||params - phi_t|| = ||delta||: the distance to the primary actor the candidate was drawn around.
        fitness = distance_penalised_fitness(
            np.asarray(novelty), ledger.offsets[ids], np.zeros(ledger.offsets.shape[1]), cfg.cem_beta_dist
        )
        if not np.all(np.isfinite(fitness)):
            # A candidate without a single alive agent-step has no novelty to score: rank it last, and say so.
            logger.warning("CEM candidates %s had no scorable transitions; ranked last", ids[~np.isfinite(fitness)])
        ledger.score(ids, np.where(np.isfinite(fitness), fitness, -1e9), novelty)
        steps = 0
        for _, episodes in played:
            self._aux_buffer.add(episodes)
            steps += env_steps(episodes)
        if ledger.ready_to_tell():
            stats = self.cem.tell(ledger.offsets, ledger.fitness)
            ledger.mark_told()
            for name, value in (
                (CEM_BEST_FITNESS, stats.best_fitness),
                (CEM_MEAN_FITNESS, stats.mean_fitness),
                (CEM_SIGMA_NORM, stats.sigma_norm),
                (CEM_GENERATION, float(stats.generation)),
                (CEM_NOVELTY_MEAN, float(np.nanmean(ledger.novelty))),
            ):
                self.metrics.log_value(name, value, window=1)
            logger.debug("CEM generation %d: best fitness %.3f", stats.generation, stats.best_fitness)
        return steps

    def _log_env_steps(self, aux_steps: int) -> None:
        self._aux_env_steps_lifetime += aux_steps
        self.metrics.log_value(ENV_STEPS_AUX, float(aux_steps), window=1)
        self.metrics.log_value(ENV_STEPS_AUX_LIFETIME, float(self._aux_env_steps_lifetime), window=1)
        self._log_env_step_totals(self._aux_env_steps_lifetime)
        won = self.metrics.peek((AUX_ENV_RUNNER_RESULTS, BATTLE_WON), default=math.nan)  # nan: nothing collected yet
        if not math.isnan(won):
            self.metrics.log_value(AUX_WIN_RATE, float(won), window=1)

    def step(self) -> dict:
        result = super().step()
        result[LEARNER_DEVICE] = self._learner_device
        return result

    # ------------------------------------------------------------ checkpoints
    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict[str, Any]:
        state = super().get_state(components, not_components=not_components, **kwargs)
        if self._check_component(STATE_KEY, components, not_components):
            state[STATE_KEY] = {
                "aux_env_steps_lifetime": self._aux_env_steps_lifetime,
                "cem": self.cem.get_state() if self.cem is not None else None,
                # Candidates still playing when the checkpoint is taken are played again after a restore.
                **self._ledger.get_state(),
            }
        return state

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        amal = state.get(STATE_KEY)
        if not amal:
            return
        self._aux_env_steps_lifetime = int(amal["aux_env_steps_lifetime"])
        if self.cem is not None and amal["cem"] is not None:
            self.cem.set_state(amal["cem"])
        self._ledger.set_state(amal)

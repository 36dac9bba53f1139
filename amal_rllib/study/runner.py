"""The AMAL-vs-MAPPO study as Tune experiments: one per phase, in a fixed order, each resumable.

Layout of an experiment (``<storage_path>/<name>/``)::

    study.json                         the study config, command, code version, phase states, best configs
    search-<scenario>/                 Tune experiment: AMAL, Optuna TPE + ASHA, search seeds
    confirm-<scenario>-mappo/          Tune experiment: MAPPO on the confirm seeds
    confirm-<scenario>-amal_default/   AMAL at its defaults, confirm seeds
    confirm-<scenario>-amal_best/      AMAL at the search's best (lambda_info, perturbation_std), confirm seeds
    report/                            the report (``report.py``)

``--resume`` restores every phase that has Tune state (``Tuner.restore``,
errored and unfinished trials resumed from their last checkpoint) and runs the
phases not begun; a finished phase returns at once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import ENV_STEPS_TOTAL_LIFETIME, GREEDY_WIN_RATE_MEAN
from .config import SEARCHED_KNOBS, StudyConfig, from_mapping
from .trainables import TRAINABLES, trial_seed

logger = logging.getLogger(__name__)

MANIFEST = "study.json"
#: The search's score: mean greedy win rate over its evaluations (area under the greedy curve).
SEARCH_METRIC = GREEDY_WIN_RATE_MEAN
#: The one stop key (and ASHA's time axis) for both algorithms: total env steps, AMAL's auxiliary ones included.
STOP_KEY = ENV_STEPS_TOTAL_LIFETIME
VARIANTS = {"amal_search": "amal", "mappo": "mappo", "amal_default": "amal", "amal_best": "amal"}


class StudyStateError(RuntimeError):
    """The experiment folder does not hold what the command needs (e.g. ``--resume`` with nothing there)."""


class StudyInterruptedError(RuntimeError):
    """Tune stopped a phase before all its trials finished (Ctrl-C / SIGINT or SIGUSR1 to the driver).

    Tune's ``fit()`` returns normally then, with the unfinished trials' state saved; the phase must
    not count as done, and no later phase may start from it (a confirm phase would read the best
    configuration of an unfinished search)."""


@dataclasses.dataclass(frozen=True)
class Phase:
    kind: str  # "search" | "confirm"
    scenario: str
    variant: str  # one of VARIANTS

    @property
    def algo(self) -> str:
        return VARIANTS[self.variant]

    @property
    def dirname(self) -> str:
        return f"search-{self.scenario}" if self.kind == "search" else f"confirm-{self.scenario}-{self.variant}"


def phases(study: StudyConfig) -> list[Phase]:
    out = []
    for scenario in study.scenarios:
        out.append(Phase("search", scenario, "amal_search"))
        out += [Phase("confirm", scenario, v) for v in ("mappo", "amal_default", "amal_best")]
    return out


def learner_gpus(study: StudyConfig, cluster_gpus: float) -> float:
    if study.num_gpus_per_learner == "auto":
        return 1.0 if cluster_gpus >= 1 else 0.0
    return float(study.num_gpus_per_learner)


def algorithm_config(
    study: StudyConfig, scenario: str, algo: str, gpus: float, seed: int = 0, budget: int | None = None
):
    """The RLlib config of one trial (``amal_rllib.presets``), with failed env runners restarted.

    The learning rate anneals to 0 at the trial's ``budget`` (total env steps; JaxMARL's ``ANNEAL_LR``);
    default: the confirm budget ``study.env_steps``.
    """
    from ..presets import amal_config, mappo_config

    common = dict(
        seed=seed,
        num_env_runners=study.num_env_runners,
        num_envs_per_env_runner=study.num_envs_per_env_runner,
        train_batch_size=study.train_batch_size,
        num_minibatches=study.num_minibatches,
        evaluation_interval=study.evaluation_interval,
        evaluation_episodes=study.evaluation_episodes,
        num_gpus_per_learner=gpus,
    )
    if algo == "amal":
        config = amal_config(scenario, study.backend, num_aux_env_runners=study.num_aux_env_runners, **common)
    else:
        config = mappo_config(scenario, study.backend, **common)
    config.training(lr_anneal_env_steps=int(budget or study.env_steps))
    config.fault_tolerance(restart_failed_env_runners=True, delay_between_env_runner_restarts_s=1.0)
    return config


def param_space(study: StudyConfig, phase: Phase, gpus: float, best: dict[str, float] | None = None) -> dict:
    from ray import tune

    budget = study.search_env_steps if phase.kind == "search" else study.env_steps
    space = algorithm_config(study, phase.scenario, phase.algo, gpus, budget=budget).to_dict()
    if phase.kind == "search":
        for knob in SEARCHED_KNOBS:
            space[knob] = tune.loguniform(*study.search_bounds[knob])
        space["seed"] = 0  # + the Repeater's trial index: search seeds 0 .. search_seeds-1
    else:
        space["seed"] = tune.grid_search(list(study.confirm_seeds))
        if phase.variant == "amal_best":
            if not best:
                raise StudyStateError(f"{phase.dirname}: the search of {phase.scenario} has no best configuration")
            space.update(best)
    return space


def trial_name(trial, phase_dirname: str) -> str:
    """``confirm-3m-amal_best-seed1000`` (+ Tune's trial id): what the trial table and the dashboard show."""
    return f"{phase_dirname}-seed{trial_seed(trial.config)}_{trial.trial_id}"


def _reporter(phase: Phase, max_report_frequency: int):
    from ray.tune import CLIReporter

    columns = {
        "training_iteration": "iter",
        STOP_KEY: "total env steps",
        "env_runners/battle_won": "win rate (train)",
        "evaluation/env_runners/battle_won": "greedy win rate",
        GREEDY_WIN_RATE_MEAN: "greedy mean",
    }
    params = {k: k for k in SEARCHED_KNOBS} if phase.kind == "search" else {"seed": "seed"}
    return CLIReporter(
        metric_columns=columns,
        parameter_columns=params,
        max_report_frequency=max_report_frequency,
        sort_by_metric=False,
    )


def build_tuner(study: StudyConfig, phase: Phase, exp_root: Path, gpus: float, best: dict | None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter, Repeater
    from ray.tune.search.optuna import OptunaSearch

    budget = study.search_env_steps if phase.kind == "search" else study.env_steps
    # Tune's newer console output ignores ``progress_reporter``; the classic table shows the columns below.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tune_kwargs: dict[str, Any] = dict(
        trial_name_creator=functools.partial(trial_name, phase_dirname=phase.dirname),
        trial_dirname_creator=functools.partial(trial_name, phase_dirname=phase.dirname),
        max_concurrent_trials=study.max_concurrent_trials or None,
    )
    if phase.kind == "search":
        import optuna

        searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=0))
        if study.search_seeds > 1:
            searcher = Repeater(searcher, repeat=study.search_seeds, set_index=True)
        if study.max_concurrent_trials:
            searcher = ConcurrencyLimiter(searcher, max_concurrent=study.max_concurrent_trials)
        tune_kwargs |= dict(
            metric=SEARCH_METRIC,
            mode="max",
            search_alg=searcher,
            scheduler=ASHAScheduler(
                time_attr=STOP_KEY,
                max_t=budget,
                grace_period=min(study.asha_grace_env_steps, budget),
                reduction_factor=study.asha_reduction_factor,
            ),
            num_samples=expected_trials(study, phase),
        )
    run_config = tune.RunConfig(
        name=phase.dirname,
        storage_path=str(exp_root),
        stop={STOP_KEY: budget},
        checkpoint_config=tune.CheckpointConfig(
            checkpoint_frequency=study.checkpoint_frequency, checkpoint_at_end=True, num_to_keep=2
        ),
        failure_config=tune.FailureConfig(max_failures=3),
        progress_reporter=_reporter(phase, 30 if study.env_steps > 100_000 else 10),
        verbose=1,
    )
    return tune.Tuner(
        TRAINABLES[phase.algo],
        param_space=param_space(study, phase, gpus, best),
        tune_config=tune.TuneConfig(**tune_kwargs),
        run_config=run_config,
    )


def best_config(search_dir: Path, budget: int) -> dict[str, float]:
    """The (lambda_info, perturbation_std) with the highest final search score, averaged over its seeds.

    Trials ASHA stopped early are compared only when none ran the whole search budget.
    """
    from .report import load_trials

    trials = load_trials(search_dir)
    if not trials:
        raise StudyStateError(f"{search_dir}: the search has no trial results")
    full = [t for t in trials if t.total_env_steps >= budget] or trials
    scores: dict[tuple[float, ...], list[float]] = {}
    for t in full:
        if np.isfinite(t.final(SEARCH_METRIC)):
            scores.setdefault(tuple(t.config[k] for k in SEARCHED_KNOBS), []).append(t.final(SEARCH_METRIC))
    if not scores:
        raise StudyStateError(f"{search_dir}: no search trial reported {SEARCH_METRIC} (no greedy evaluation ran)")
    knobs = max(scores, key=lambda k: float(np.mean(scores[k])))
    return {k: float(v) for k, v in zip(SEARCHED_KNOBS, knobs, strict=True)}


def expected_trials(study: StudyConfig, phase: Phase) -> int:
    """How many trials a finished phase has: the search's samples x seeds, or one per confirm seed."""
    return study.num_samples * study.search_seeds if phase.kind == "search" else len(study.confirm_seeds)


def unfinished_trials(phase_dir: Path, expected: int) -> list[str]:
    """What Tune's saved experiment state holds as not finished: trial ids neither ``TERMINATED`` nor
    ``ERROR``, and ``"<n> not yet created"`` when fewer than ``expected`` trials exist (Tune creates
    them one by one, so a stop between two trials leaves the rest uncreated).

    After a Ctrl-C, ``fit()`` returns normally and its result grid shows every trial as
    ``TERMINATED`` (Tune's clean-up stops the live ones); the experiment state it wrote just
    before holds the truth (``PENDING``: to be continued by a restore).
    """
    from ray.tune import ExperimentAnalysis
    from ray.tune.experiment import Trial

    trials = ExperimentAnalysis(str(Path(phase_dir).resolve())).trials
    unfinished = sorted(t.trial_id for t in trials if t.status not in (Trial.TERMINATED, Trial.ERROR))
    if len(trials) < expected:
        unfinished.append(f"{expected - len(trials)} not yet created")
    return unfinished


# ---------------------------------------------------------------- manifest
def read_manifest(exp_root: Path) -> dict:
    path = exp_root / MANIFEST
    if not path.is_file():
        raise StudyStateError(
            f"--resume: no study to resume in {exp_root} ({MANIFEST} missing); run without --resume to start one"
        )
    return json.loads(path.read_text())


def write_manifest(exp_root: Path, manifest: dict) -> None:
    tmp = exp_root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, exp_root / MANIFEST)


def study_from_manifest(manifest: dict) -> StudyConfig:
    return from_mapping(manifest["study"], source=MANIFEST)


def run_study(study: StudyConfig, exp_root: Path, *, gpus: float, manifest: dict) -> dict:
    """Run (or resume) every phase in order; returns the updated manifest."""
    from ray import tune

    for phase in phases(study):
        state = manifest["phases"].setdefault(phase.dirname, {"status": "pending"})
        if state["status"] == "done":
            logger.info("%s: done already", phase.dirname)
            continue
        best = manifest["best"].get(phase.scenario)
        path = exp_root / phase.dirname
        if path.exists() and tune.Tuner.can_restore(str(path)):
            logger.info("%s: restoring the interrupted Tune experiment", phase.dirname)
            print(f"[study] resuming {phase.dirname} from {path}", flush=True)
            tuner = tune.Tuner.restore(
                str(path),
                TRAINABLES[phase.algo],
                resume_unfinished=True,
                resume_errored=True,
                param_space=param_space(study, phase, gpus, best),
            )
        else:
            if path.exists():  # begun but killed before Tune saved its state: keep it aside, start over
                aside = path.with_name(f"{path.name}.incomplete-{dt.datetime.now():%Y%m%d-%H%M%S}")
                shutil.move(str(path), str(aside))
                logger.warning("%s had no restorable Tune state; moved to %s", path, aside)
            print(f"[study] starting {phase.dirname}", flush=True)
            tuner = build_tuner(study, phase, exp_root, gpus, best)
        state["status"] = "running"
        write_manifest(exp_root, manifest)
        grid = tuner.fit()
        expected = expected_trials(study, phase)
        unfinished = unfinished_trials(path, expected)
        if unfinished:
            state["status"] = "interrupted"
            write_manifest(exp_root, manifest)
            raise StudyInterruptedError(
                f"{phase.dirname}: interrupted before all {expected} trials finished "
                f"(unfinished: {', '.join(unfinished)}); Tune saved their state: continue with --resume {exp_root}"
            )
        errors = [r.error for r in grid if r.error is not None]
        if errors:
            state["status"] = "errored"
            write_manifest(exp_root, manifest)
            raise RuntimeError(
                f"{phase.dirname}: {len(errors)} trial(s) failed after retries (first: {errors[0]!r}); "
                f"fix the cause and continue with --resume"
            )
        if phase.kind == "search":
            manifest["best"][phase.scenario] = best_config(path, study.search_env_steps)
            print(f"[study] best AMAL config on {phase.scenario}: {manifest['best'][phase.scenario]}", flush=True)
        state["status"] = "done"
        write_manifest(exp_root, manifest)
    return manifest

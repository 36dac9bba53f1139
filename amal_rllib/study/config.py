"""``StudyConfig``: the typed, validated settings of the AMAL-vs-MAPPO Tune study.

Presets (``presets/<name>.yaml``) and ``--config`` YAML files are loaded into
this frozen dataclass, never passed on as raw dicts; every field can be
overridden by a flag of ``tune_jobs/amal_vs_mappo.py``. ``validate()`` lists
every bad field in one message that names it and says what is allowed.

The protocol (``ops.md``, "The claim to test" in ``amal.md``):
1. *search*: AMAL over ``lambda_info`` and ``perturbation_std`` (log-uniform
   within ``search_bounds``) with Optuna's TPE and ASHA on ``search_env_steps``
   total env steps, on the search seeds ``0 .. search_seeds-1``;
2. *confirm*: the best configuration, AMAL at its defaults and MAPPO, each on
   ``seeds`` fresh seeds (``CONFIRM_SEED_OFFSET + i``, never seen by the search)
   to ``env_steps`` total env steps (AMAL's auxiliary steps counted).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from ..amal.config import _NUMERIC_BOUNDS
from ..envs.registry import known_scenarios
from ..envs.spec import BACKENDS
from ..mappo.config import DEFAULT_NUM_ENVS_PER_ENV_RUNNER, DEFAULT_NUM_MINIBATCHES, DEFAULT_TRAIN_BATCH_SIZE

PRESET_DIR = Path(__file__).parent / "presets"
PRESETS = ("smoke", "local", "cluster", "two_core_full")
#: Confirm seeds start here; search seeds are 0 .. search_seeds-1, so the two never meet.
CONFIRM_SEED_OFFSET = 1000
#: The knobs the search tunes, and the range each may take (``AMALConfig``'s own bounds).
SEARCHED_KNOBS = ("lambda_info", "perturbation_std")
#: Win rates whose first crossing (in total env steps) the report tables.
REPORT_TARGETS = (0.5, 0.8)


class StudyConfigError(ValueError):
    """A bad study setting; the message names the field (or flag) and says what is allowed."""


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    # What runs.
    scenarios: tuple[str, ...] = ("3m", "2s3z")
    backend: str = "smax"
    # Budgets, in total env steps (AMAL: primary + auxiliary).
    env_steps: int = 2_000_000
    search_env_steps: int = 500_000
    # Search.
    num_samples: int = 16
    search_seeds: int = 1
    search_bounds: dict[str, tuple[float, float]] = dataclasses.field(
        default_factory=lambda: {"lambda_info": (0.05, 2.0), "perturbation_std": (0.01, 0.3)}
    )
    asha_grace_env_steps: int = 100_000
    asha_reduction_factor: int = 3
    max_concurrent_trials: int = 0  # 0: as many as the cluster's resources allow
    # Confirm.
    seeds: int = 5
    # Per-trial algorithm settings (the presets in ``amal_rllib.presets``).
    num_env_runners: int = 0
    num_envs_per_env_runner: int = DEFAULT_NUM_ENVS_PER_ENV_RUNNER
    num_aux_env_runners: int = 1
    train_batch_size: int = DEFAULT_TRAIN_BATCH_SIZE
    num_minibatches: int = DEFAULT_NUM_MINIBATCHES
    evaluation_interval: int = 5
    evaluation_episodes: int = 32
    num_gpus_per_learner: float | str = "auto"  # "auto": 1 when the cluster has a GPU
    checkpoint_frequency: int = 10
    # Tune's experiment.
    storage_path: str = "~/ray_results"
    name: str | None = None  # default: amal_vs_mappo-<preset>-<timestamp>
    # Report.
    bootstrap_samples: int = 2000
    confidence: float = 0.95
    # Ray started by the job itself (ignored when it joins a running cluster).
    num_cpus: int | None = None

    @property
    def confirm_seeds(self) -> tuple[int, ...]:
        return tuple(CONFIRM_SEED_OFFSET + i for i in range(self.seeds))

    @property
    def search_seed_list(self) -> tuple[int, ...]:
        return tuple(range(self.search_seeds))

    def replace(self, **changes: Any) -> StudyConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["scenarios"] = list(self.scenarios)
        out["search_bounds"] = {k: list(v) for k, v in self.search_bounds.items()}
        return out

    # ------------------------------------------------------------- validation
    def errors(self) -> list[str]:
        errors: list[str] = []
        if self.backend not in BACKENDS:
            errors.append(f"backend={self.backend!r}: must be one of {', '.join(BACKENDS)}")
        elif not self.scenarios:
            errors.append("scenarios: give at least one scenario")
        else:
            known = known_scenarios(self.backend)
            for scenario in self.scenarios:
                if scenario not in known:
                    errors.append(f"scenarios: unknown {self.backend} scenario {scenario!r}; known: {', '.join(known)}")
        for name in (
            "env_steps",
            "search_env_steps",
            "num_samples",
            "search_seeds",
            "seeds",
            "train_batch_size",
            "num_minibatches",
            "evaluation_interval",
            "evaluation_episodes",
            "num_envs_per_env_runner",
            "checkpoint_frequency",
            "bootstrap_samples",
            "asha_grace_env_steps",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                errors.append(f"{name}={value!r}: must be a positive integer")
        for name in ("num_env_runners", "num_aux_env_runners", "max_concurrent_trials"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                errors.append(f"{name}={value!r}: must be an integer >= 0")
        if (
            isinstance(self.asha_reduction_factor, bool)
            or not isinstance(self.asha_reduction_factor, int)
            or self.asha_reduction_factor < 2
        ):
            errors.append(f"asha_reduction_factor={self.asha_reduction_factor!r}: must be an integer >= 2")
        if not (isinstance(self.confidence, float) and 0.0 < self.confidence < 1.0):
            errors.append(f"confidence={self.confidence!r}: must be in (0, 1), e.g. 0.95")
        if self.num_gpus_per_learner != "auto" and not (
            isinstance(self.num_gpus_per_learner, (int, float)) and self.num_gpus_per_learner >= 0
        ):
            errors.append(f"num_gpus_per_learner={self.num_gpus_per_learner!r}: must be 'auto' or a number >= 0")
        if self.num_cpus is not None and (not isinstance(self.num_cpus, int) or self.num_cpus < 1):
            errors.append(f"num_cpus={self.num_cpus!r}: must be a positive integer or null")
        errors += self._search_bound_errors()
        first_eval = 1.25 * self.evaluation_interval * self.train_batch_size  # ~primary steps + AMAL's aux ones
        if isinstance(self.asha_grace_env_steps, int) and self.asha_grace_env_steps < first_eval:
            errors.append(
                f"asha_grace_env_steps={self.asha_grace_env_steps}: must be >= {first_eval:.0f} (1.25 x "
                "evaluation_interval x train_batch_size), so ASHA's first rung compares greedy evaluations"
            )
        if isinstance(self.search_env_steps, int) and self.search_env_steps < first_eval:
            errors.append(
                f"search_env_steps={self.search_env_steps}: must be >= {first_eval:.0f}, so every search "
                "trial has a greedy evaluation to be scored by"
            )
        if self.name is not None and (not self.name or "/" in self.name):
            errors.append(f"name={self.name!r}: must be a non-empty folder name without '/'")
        return errors

    def _search_bound_errors(self) -> list[str]:
        errors = []
        if set(self.search_bounds) != set(SEARCHED_KNOBS):
            return [
                f"search_bounds: must give exactly {', '.join(SEARCHED_KNOBS)} (got {', '.join(self.search_bounds)})"
            ]
        for knob in SEARCHED_KNOBS:
            bounds = self.search_bounds[knob]
            if len(bounds) != 2 or not all(isinstance(b, (int, float)) for b in bounds):
                errors.append(f"search_bounds.{knob}={bounds!r}: must be [low, high]")
                continue
            low, high = float(bounds[0]), float(bounds[1])
            _, lower, upper, lower_inclusive, upper_inclusive = _NUMERIC_BOUNDS[knob]
            # log-uniform: both ends strictly positive; and inside AMALConfig's valid range.
            ok_low = low > 0 and (low >= lower if lower_inclusive else low > lower)
            ok_high = math.isfinite(high) and (high <= upper if upper_inclusive else high < upper)
            if not (ok_low and ok_high and low < high):
                interval = f"{'[' if lower_inclusive else '('}{lower}, {upper}{']' if upper_inclusive else ')'}"
                errors.append(
                    f"search_bounds.{knob}=[{low}, {high}]: need 0 < low < high inside AMALConfig's valid range "
                    f"{interval} (log-uniform search)"
                )
        return errors

    def validate(self) -> StudyConfig:
        errors = self.errors()
        if errors:
            raise StudyConfigError("Invalid study config:\n  - " + "\n  - ".join(errors))
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(StudyConfig)}


def from_mapping(data: dict[str, Any], *, base: StudyConfig | None = None, source: str = "config") -> StudyConfig:
    """A ``StudyConfig`` from a YAML-like mapping; an unknown field is an error naming it and the file."""
    if not isinstance(data, dict):
        raise StudyConfigError(f"{source}: expected a mapping of study fields, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise StudyConfigError(
            f"{source}: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(_FIELDS))}"
        )
    values = dict(data)
    if "scenarios" in values:
        scen = values["scenarios"]
        values["scenarios"] = (scen,) if isinstance(scen, str) else tuple(scen)
    if "search_bounds" in values:
        bounds = values["search_bounds"]
        if not isinstance(bounds, dict):
            raise StudyConfigError(f"{source}: search_bounds must map knob -> [low, high]")
        values["search_bounds"] = {k: tuple(v) for k, v in bounds.items()}
    for name in ("env_steps", "search_env_steps", "asha_grace_env_steps"):
        values[name] = parse_count(values[name]) if name in values else None
        if values[name] is None:
            del values[name]
    return (base or StudyConfig()).replace(**values)


def parse_count(value: Any) -> Any:
    """``2e6`` (PyYAML reads it as a string), ``2.0e6`` or ``2_000_000`` as an int; anything else unchanged
    (``validate()`` then names it)."""
    if isinstance(value, str):
        try:
            value = float(value.replace("_", ""))
        except ValueError:
            return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def load_yaml(path: str | Path, *, base: StudyConfig | None = None) -> StudyConfig:
    path = Path(path)
    if not path.is_file():
        raise StudyConfigError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise StudyConfigError(f"--config {path}: not valid YAML ({exc})") from exc
    return from_mapping(data, base=base, source=str(path))


def load_preset(name: str) -> StudyConfig:
    if name not in PRESETS:
        raise StudyConfigError(f"--preset {name!r}: unknown preset; choose one of {', '.join(PRESETS)}")
    return load_yaml(PRESET_DIR / f"{name}.yaml")

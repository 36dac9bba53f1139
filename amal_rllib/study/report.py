"""The study's report: a table per trial, the claim per scenario, plots and a Markdown summary.

The maths (curve on a grid, env steps to a target, the bootstrap of the claim)
is in small pure functions; ``write_report`` only reads Tune's trial folders
(``result.json``, ``params.json``) and writes files.

The claim (``amal.md``): *AMAL reaches MAPPO's performance with 20-40% fewer
env samples.* Method, per scenario, on the confirm seeds:
1. every seed's greedy win rate is put on one grid of total env steps (linear
   interpolation between evaluations; nothing before the first or after the last),
   and only the common horizon counts: the grid points where every seed of both
   algorithms has data (AMAL's auxiliary steps make its last evaluation land a
   few thousand steps before MAPPO's);
2. MAPPO's final win rate is its mean curve's value at the end of that horizon;
3. an algorithm's env steps to that target are the first grid point where the
   mean curve over its seeds reaches it (never: infinite);
4. saving = 1 - steps(AMAL-best) / steps(MAPPO); its interval is the
   percentile bootstrap over seeds (each algorithm's seeds resampled with
   replacement, target recomputed, ``bootstrap_samples`` draws);
5. the sentence says "fewer"/"more" only when the interval excludes 0, and
   "not separable with N seeds" otherwise (and always with one seed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import numpy as np

from ..metrics import (
    CEM_BEST_FITNESS,
    CEM_MEAN_FITNESS,
    ENV_STEPS_TOTAL_LIFETIME,
    GREEDY_WIN_RATE,
    GREEDY_WIN_RATE_MEAN,
    MI_BONUS_STD,
    MI_ESTIMATE_MEAN,
)
from ..metrics import _get as nested_get
from .config import REPORT_TARGETS, SEARCHED_KNOBS
from .trainables import trial_seed

VARIANT_LABELS = {
    "mappo": "MAPPO",
    "amal_default": "AMAL (defaults)",
    "amal_best": "AMAL (search's best)",
    "amal_search": "AMAL (search)",
}
VARIANT_COLORS = {"mappo": "tab:blue", "amal_default": "tab:green", "amal_best": "tab:orange"}


# ------------------------------------------------------------------ reading
@dataclasses.dataclass
class TrialRecord:
    phase: str  # the phase folder, e.g. confirm-3m-mappo
    kind: str
    scenario: str
    variant: str
    trial_id: str
    config: dict
    rows: list[dict]  # one per training iteration (the last one written wins: a resumed trial redoes some)
    redone_iterations: int

    @property
    def algorithm(self) -> str:
        return "mappo" if self.variant == "mappo" else "amal"

    @property
    def seed(self) -> int:
        return trial_seed(self.config)

    @property
    def total_env_steps(self) -> float:
        return float(self.rows[-1].get(ENV_STEPS_TOTAL_LIFETIME, math.nan)) if self.rows else math.nan

    def cut_short(self, confirm_budget: float) -> bool:
        """A confirm trial short of its budget of total env steps (a study stopped and not yet resumed, or a
        failed trial). Search trials never are (ASHA stops them early by design).

        Such trials stay in the per-trial table but not in the per-variant table, the claim or the mean
        curves: a seed cut at 300k would end the common horizon there and make MAPPO's win rate at 300k
        the target.
        """
        return self.kind == "confirm" and not self.total_env_steps >= confirm_budget

    def final(self, key: str) -> float:
        for row in reversed(self.rows):
            if key in row and row[key] is not None:
                return float(row[key])
        return math.nan

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(total env steps, value) of every iteration that reported ``key``."""
        pts = [(r[ENV_STEPS_TOTAL_LIFETIME], _get(r, key)) for r in self.rows if ENV_STEPS_TOTAL_LIFETIME in r]
        pts = [(x, y) for x, y in pts if y is not None and np.isfinite(y)]
        if not pts:
            return np.zeros(0), np.zeros(0)
        x, y = np.asarray(pts, dtype=float).T
        return x, y


def _get(row: dict, key: str) -> float | None:
    """A numeric result value by Tune's flattened ``a/b/c`` name (None when absent or not a number)."""
    node = nested_get(row, *key.split("/"), default=None)
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def _phase_parts(phase: str) -> tuple[str, str, str]:
    kind, _, rest = phase.partition("-")
    if kind == "search":
        return kind, rest, "amal_search"
    scenario, _, variant = rest.rpartition("-")
    return kind, scenario, variant


def load_trials(phase_dir: Path) -> list[TrialRecord]:
    """Every trial folder of one Tune experiment (phase), from Tune's own ``result.json`` / ``params.json``."""
    phase_dir = Path(phase_dir)
    kind, scenario, variant = _phase_parts(phase_dir.name)
    out = []
    for trial_dir in sorted(p for p in phase_dir.iterdir() if (p / "result.json").is_file()):
        config = json.loads((trial_dir / "params.json").read_text()) if (trial_dir / "params.json").is_file() else {}
        by_iter: dict[int, dict] = {}
        written = 0
        for line in (trial_dir / "result.json").read_text().splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a killed driver
                continue
            written += 1
            by_iter[int(row["training_iteration"])] = row
        rows = [by_iter[i] for i in sorted(by_iter)]
        trial_id = str(rows[-1].get("trial_id")) if rows else trial_dir.name
        out.append(TrialRecord(phase_dir.name, kind, scenario, variant, trial_id, config, rows, written - len(rows)))
    return out


def load_study(exp_root: Path) -> list[TrialRecord]:
    trials = []
    for phase_dir in sorted(Path(exp_root).iterdir()):
        if (
            phase_dir.is_dir()
            and phase_dir.name.startswith(("search-", "confirm-"))
            and ".incomplete-" not in phase_dir.name
        ):
            trials += load_trials(phase_dir)
    return trials


# --------------------------------------------------------------------- maths
def steps_to_reach(steps: np.ndarray, values: np.ndarray, target: float) -> float:
    """The first env-step count at which ``values`` >= ``target`` (NaN when never). Shapes: [T], [T]."""
    hit = np.flatnonzero(np.asarray(values) >= target)
    return float(steps[hit[0]]) if hit.size else math.nan


def curves_on_grid(curves: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray) -> np.ndarray:
    """[S, G]: each seed's (steps, value) curve linearly interpolated on ``grid``; NaN outside its range."""
    out = np.full((len(curves), len(grid)), np.nan)
    for i, (x, y) in enumerate(curves):
        if len(x) == 0:
            continue
        inside = (grid >= x[0]) & (grid <= x[-1])
        out[i, inside] = np.interp(grid[inside], x, y)
    return out


def mean_band(values: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds and a t-interval of the mean, per grid point. ``values``: [S, G] (NaN = no data)."""
    from scipy import stats

    n = np.sum(np.isfinite(values), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # grid points without data are NaN, on purpose
        mean = np.where(n > 0, np.nanmean(np.where(np.isfinite(values), values, np.nan), axis=0), np.nan)
        sd = np.nanstd(values, axis=0, ddof=1) if values.shape[0] > 1 else np.zeros(values.shape[1])
        half = np.where(n > 1, stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(n), 0.0)
    return mean, mean - half, mean + half


def claim_saving(amal: np.ndarray, mappo: np.ndarray, grid: np.ndarray) -> tuple[float, float, float, float]:
    """(saving, target, steps AMAL, steps MAPPO) for seeds-by-grid arrays [S_a, G], [S_m, G].

    Only the grid points where every seed of both algorithms has data count (the common
    horizon: evaluations fall every few iterations, and AMAL's auxiliary steps make its last
    evaluation land earlier than MAPPO's). target = MAPPO's mean win rate at the end of that
    horizon; steps = the first point where an algorithm's mean curve reaches it;
    saving = 1 - steps_a / steps_m (-inf when AMAL never reaches it).
    """
    common = np.isfinite(amal).all(axis=0) & np.isfinite(mappo).all(axis=0)
    if not common.any():
        return math.nan, math.nan, math.nan, math.nan
    grid, amal, mappo = grid[common], amal[:, common], mappo[:, common]
    mean_a, mean_m = amal.mean(axis=0), mappo.mean(axis=0)
    target = float(mean_m[-1])
    steps_a = steps_to_reach(grid, mean_a, target - 1e-12)
    steps_m = steps_to_reach(grid, mean_m, target - 1e-12)
    if math.isnan(steps_a):
        return -math.inf, target, math.inf, steps_m
    return 1.0 - steps_a / steps_m, target, steps_a, steps_m


@dataclasses.dataclass(frozen=True)
class Claim:
    scenario: str
    n_amal: int
    n_mappo: int
    saving: float  # point estimate (1 - steps_AMAL / steps_MAPPO)
    low: float
    high: float
    target: float
    steps_amal: float
    steps_mappo: float
    confidence: float

    @property
    def separable(self) -> bool:
        return min(self.n_amal, self.n_mappo) >= 2 and (self.low > 0 or self.high < 0)

    def sentence(self) -> str:
        head = self.scenario
        if min(self.n_amal, self.n_mappo) < 2:
            return (
                f"{head}: not separable with {min(self.n_amal, self.n_mappo)} seed(s) per algorithm "
                f"(a bootstrap over seeds needs at least 2); point estimate: {_pct(self.saving)}."
            )
        interval = f"{self.confidence:.0%} interval [{_pct(self.low, signed=True)}, {_pct(self.high, signed=True)}]"
        if not np.isfinite(self.steps_amal):
            spread = "nor in any bootstrap resample of the seeds" if self.high == -math.inf else f"saving {interval}"
            verdict = "AMAL is slower" if self.separable else "not separable"
            return (
                f"{head}: AMAL did not reach MAPPO's final greedy win rate ({self.target:.2f}) within its budget "
                f"(MAPPO: {_steps(self.steps_mappo)} env steps; means over {self.n_amal} AMAL and {self.n_mappo} "
                f"MAPPO seeds), {spread}: {verdict}."
            )
        if not self.separable:
            return (
                f"{head}: not separable with {self.n_amal} AMAL and {self.n_mappo} MAPPO seeds: AMAL's saving in "
                f"env steps to MAPPO's final greedy win rate {self.target:.2f} is {_pct(self.saving, signed=True)}, "
                f"{interval}."
            )
        word = "fewer" if self.saving > 0 else "more"
        return (
            f"{head}: AMAL reached MAPPO's final greedy win rate ({self.target:.2f}) with "
            f"{_pct(abs(self.saving))} {word} env steps ({_steps(self.steps_amal)} vs {_steps(self.steps_mappo)}), "
            f"{interval} (positive = fewer), over {self.n_amal} AMAL and {self.n_mappo} MAPPO seeds."
        )


def _pct(x: float, signed: bool = False) -> str:
    if not np.isfinite(x):
        return "never reached" if x < 0 else "n/a"
    return f"{x:+.0%}" if signed else f"{x:.0%}"


def _steps(x: float) -> str:
    return "never" if not np.isfinite(x) else f"{x / 1e3:,.0f}k"


def bootstrap_claim(
    scenario: str,
    amal: np.ndarray,
    mappo: np.ndarray,
    grid: np.ndarray,
    *,
    samples: int,
    confidence: float,
    seed: int = 0,
) -> Claim:
    """:func:`claim_saving` and its percentile-bootstrap interval over seeds (each side resampled)."""
    saving, target, steps_a, steps_m = claim_saving(amal, mappo, grid)
    if math.isnan(target):
        raise ValueError(f"{scenario}: AMAL's and MAPPO's greedy curves have no env-step range in common")
    rng = np.random.default_rng(seed)
    draws = np.empty(samples)
    for b in range(samples):
        ia = rng.integers(0, len(amal), len(amal))
        im = rng.integers(0, len(mappo), len(mappo))
        draws[b] = claim_saving(amal[ia], mappo[im], grid)[0]
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(draws, [alpha, 1.0 - alpha], method="inverted_cdf")
    return Claim(scenario, len(amal), len(mappo), saving, float(low), float(high), target, steps_a, steps_m, confidence)


# -------------------------------------------------------------------- tables
def trial_table(trials: list[TrialRecord], confirm_budget: float = 0.0):
    """One row per trial; ``finished``: not :meth:`TrialRecord.cut_short` at ``confirm_budget``."""
    import pandas as pd

    rows = []
    for t in trials:
        x, y = t.series(GREEDY_WIN_RATE)
        row = {
            "phase": t.kind,
            "algorithm": t.algorithm,
            "variant": t.variant,
            "scenario": t.scenario,
            "seed": t.seed,
            **{k: float(t.config.get(k, math.nan)) if t.algorithm == "amal" else math.nan for k in SEARCHED_KNOBS},
            "final_greedy_win_rate": float(y[-1]) if len(y) else math.nan,
            "best_greedy_win_rate": float(y.max()) if len(y) else math.nan,
            "greedy_win_rate_mean": t.final(GREEDY_WIN_RATE_MEAN),
            **{f"env_steps_to_{target}": steps_to_reach(x, y, target) for target in REPORT_TARGETS},
            "total_env_steps": t.total_env_steps,
            "finished": not t.cut_short(confirm_budget),
            "iterations": int(t.rows[-1]["training_iteration"]) if t.rows else 0,
            "wall_time_s": round(t.final("time_total_s"), 1),
            "redone_iterations": t.redone_iterations,
            "trial_id": t.trial_id,
        }
        rows.append(row)
    return pd.DataFrame(rows)


#: Per-iteration columns of ``curves.csv`` (result key -> column).
CURVE_COLUMNS = {
    "training_iteration": "iteration",
    ENV_STEPS_TOTAL_LIFETIME: "env_steps_total",
    GREEDY_WIN_RATE: "greedy_win_rate",
    "env_runners/battle_won": "train_win_rate",
    f"learners/shared_policy/{MI_ESTIMATE_MEAN}": "mi_estimate_mean",
    f"learners/shared_policy/{MI_BONUS_STD}": "mi_bonus_std",
    CEM_BEST_FITNESS: "cem_best_fitness",
    CEM_MEAN_FITNESS: "cem_mean_fitness",
    "time_total_s": "time_total_s",
}


def curve_table(trials: list[TrialRecord]):
    """One row per trial iteration (long format): the learning curves behind the plots."""
    import pandas as pd

    rows = [
        {
            "phase": t.kind,
            "variant": t.variant,
            "scenario": t.scenario,
            "seed": t.seed,
            "trial_id": t.trial_id,
            **{col: _get(r, key) for key, col in CURVE_COLUMNS.items()},
        }
        for t in trials
        for r in t.rows
    ]
    return pd.DataFrame(rows)


def confirm_arrays(trials: list[TrialRecord], scenario: str, variant: str, grid: np.ndarray) -> np.ndarray:
    picked = sorted(
        (t for t in trials if t.kind == "confirm" and t.scenario == scenario and t.variant == variant),
        key=lambda t: t.seed,
    )
    return curves_on_grid([t.series(GREEDY_WIN_RATE) for t in picked], grid)


def scenario_grid(trials: list[TrialRecord], scenario: str, points: int = 200) -> np.ndarray:
    ends = [t.total_env_steps for t in trials if t.kind == "confirm" and t.scenario == scenario and t.rows]
    return np.linspace(0.0, max(ends) if ends else 1.0, points)


# --------------------------------------------------------------------- plots
def _plot_win_rates(trials, scenarios, claims, out: Path, confidence: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scenarios), figsize=(6.5 * len(scenarios), 4.6), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        grid = scenario_grid(trials, scenario)
        for variant in ("mappo", "amal_default", "amal_best"):
            values = confirm_arrays(trials, scenario, variant, grid)
            if not len(values):
                continue
            mean, low, high = mean_band(values, confidence)
            # Mean and band only where every seed has data (trials end a few hundred steps apart).
            full = np.isfinite(values).all(axis=0)
            mean, low, high = (np.where(full, a, np.nan) for a in (mean, low, high))
            color = VARIANT_COLORS[variant]
            for row in values:
                ax.plot(grid, row, color=color, alpha=0.25, lw=0.8)
            ax.plot(grid, mean, color=color, lw=2, label=f"{VARIANT_LABELS[variant]}, mean of {len(values)} seed(s)")
            if len(values) > 1:
                ax.fill_between(grid, low, high, color=color, alpha=0.2, lw=0)
        claim = claims.get(scenario)
        if claim is not None:
            ax.axhline(claim.target, color="gray", ls="--", lw=1, label=f"MAPPO's final ({claim.target:.2f})")
        ax.set(
            title=f"{scenario}: greedy win rate ({confidence:.0%} band over seeds)",
            xlabel="total env steps (AMAL: primary + auxiliary)",
            ylabel="greedy win rate",
            ylim=(-0.02, 1.02),
        )
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = out / "win_rate.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_amal_internals(trials, scenarios, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(scenarios), figsize=(6.5 * len(scenarios), 8), squeeze=False)
    for col, scenario in enumerate(scenarios):
        for t in trials:
            if t.kind != "confirm" or t.scenario != scenario or t.algorithm != "amal":
                continue
            color = VARIANT_COLORS[t.variant]
            x, y = t.series(f"learners/shared_policy/{MI_ESTIMATE_MEAN}")
            axes[0, col].plot(x, y, color=color, alpha=0.7, lw=1, label=f"{VARIANT_LABELS[t.variant]} s{t.seed}")
            x, y = t.series(f"learners/shared_policy/{MI_BONUS_STD}")
            axes[0, col].plot(x, y, color=color, alpha=0.7, lw=1, ls=":")
            x, y = t.series(CEM_BEST_FITNESS)
            axes[1, col].plot(x, y, color=color, alpha=0.7, lw=1, marker="o", ms=2)
            x, y = t.series(CEM_MEAN_FITNESS)
            axes[1, col].plot(x, y, color=color, alpha=0.7, lw=1, ls="--")
        axes[0, col].axhline(0.0, color="gray", lw=0.8)
        axes[0, col].set(
            title=f"{scenario}: MI estimate mean (solid) and bonus std (dotted), nats", xlabel="total env steps"
        )
        axes[1, col].set(title=f"{scenario}: CEM fitness, best (solid) and mean (dashed)", xlabel="total env steps")
        handles, _labels = axes[0, col].get_legend_handles_labels()
        if handles:
            axes[0, col].legend(fontsize=7)
    fig.tight_layout()
    path = out / "amal_internals.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_search(trials, scenarios, best: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scenarios), figsize=(5.5 * len(scenarios), 4.6), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        search = [t for t in trials if t.kind == "search" and t.scenario == scenario]
        if search:
            lam = [t.config["lambda_info"] for t in search]
            std = [t.config["perturbation_std"] for t in search]
            score = [t.final(GREEDY_WIN_RATE_MEAN) for t in search]
            size = [20 + 80 * t.total_env_steps / max(s.total_env_steps for s in search) for t in search]
            sc = ax.scatter(lam, std, c=score, s=size, cmap="viridis", edgecolors="k", linewidths=0.5)
            fig.colorbar(sc, ax=ax, label="search score: mean greedy win rate")
        if scenario in best:
            ax.scatter(
                [best[scenario]["lambda_info"]],
                [best[scenario]["perturbation_std"]],
                marker="*",
                s=250,
                facecolors="none",
                edgecolors="red",
                label="best",
            )
            ax.legend(fontsize=8)
        from matplotlib.ticker import NullFormatter

        ax.set(
            xscale="log",
            yscale="log",
            xlabel="lambda_info",
            ylabel="perturbation_std",
            title=f"{scenario}: search trials (size = env steps run; ASHA stops small ones)",
        )
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    path = out / "search.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------- writing
def _markdown_table(df) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if isinstance(v, float):
                cells.append("" if math.isnan(v) else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(exp_root: Path, manifest: dict) -> Path:
    """Write ``<exp_root>/report/``: trials.parquet/.csv, claims.csv, three PNGs, summary.md; returns summary.md."""
    import pandas as pd

    from .config import from_mapping

    study = from_mapping(manifest["study"], source="study.json")
    out = Path(exp_root) / "report"
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_study(exp_root)
    unfinished = [t for t in loaded if t.cut_short(study.env_steps)]
    table = trial_table(loaded, study.env_steps)
    if not table.empty:
        table = table.sort_values(["scenario", "phase", "variant", "seed"], ascending=[True, False, True, True])
    table.to_parquet(out / "trials.parquet", index=False)
    table.to_csv(out / "trials.csv", index=False)

    curve_table(loaded).to_csv(out / "curves.csv", index=False)
    trials = [t for t in loaded if not t.cut_short(study.env_steps)]  # for the claim, per-variant table, plots

    scenarios = list(study.scenarios)
    claims: dict[str, Claim] = {}
    for scenario in scenarios:
        grid = scenario_grid(trials, scenario)
        amal = confirm_arrays(trials, scenario, "amal_best", grid)
        mappo = confirm_arrays(trials, scenario, "mappo", grid)
        if len(amal) and len(mappo):
            claims[scenario] = bootstrap_claim(
                scenario, amal, mappo, grid, samples=study.bootstrap_samples, confidence=study.confidence
            )
    claim_rows = [dataclasses.asdict(c) | {"separable": c.separable, "sentence": c.sentence()} for c in claims.values()]
    pd.DataFrame(claim_rows).to_csv(out / "claims.csv", index=False)

    plots = [
        _plot_win_rates(trials, scenarios, claims, out, study.confidence),
        _plot_amal_internals(trials, scenarios, out),
        _plot_search(trials, scenarios, manifest.get("best", {}), out),
    ]
    summary_cols = [
        "phase",
        "variant",
        "scenario",
        "seed",
        *SEARCHED_KNOBS,
        "final_greedy_win_rate",
        "best_greedy_win_rate",
        *(f"env_steps_to_{t}" for t in REPORT_TARGETS),
        "total_env_steps",
        "finished",
        "wall_time_s",
    ]
    confirm = table[(table["phase"] == "confirm") & table["finished"]] if not table.empty else table
    by_variant = (
        confirm.groupby(["scenario", "variant"])
        .agg(
            seeds=("seed", "count"),
            final_greedy_mean=("final_greedy_win_rate", "mean"),
            final_greedy_std=("final_greedy_win_rate", "std"),
            best_greedy_mean=("best_greedy_win_rate", "mean"),
            **{f"reached_{t}": (f"env_steps_to_{t}", lambda s: int(s.notna().sum())) for t in REPORT_TARGETS},
            **{f"median_steps_to_{t}": (f"env_steps_to_{t}", "median") for t in REPORT_TARGETS},
        )
        .reset_index()
        if not confirm.empty
        else confirm
    )
    lines = [
        f"# AMAL vs MAPPO: {manifest.get('name', Path(exp_root).name)}",
        "",
        f"- Command: `{manifest.get('command', '?')}`",
        f"- Code version: {manifest.get('code_version', '?')}",
        f"- Preset: {manifest.get('preset', '?')}; backend {study.backend}; scenarios {', '.join(scenarios)}",
        f"- Budgets (total env steps, AMAL's auxiliary steps counted): confirm {study.env_steps:,}, "
        f"search {study.search_env_steps:,}; confirm seeds {list(study.confirm_seeds)}, "
        f"search seeds {list(study.search_seed_list)}",
        f"- Search: Optuna TPE + ASHA over lambda_info {list(study.search_bounds['lambda_info'])} and "
        f"perturbation_std {list(study.search_bounds['perturbation_std'])} (log-uniform), {study.num_samples} "
        f"configurations; best: {manifest.get('best', {})}",
        f"- Greedy evaluation: {study.evaluation_episodes} episodes every {study.evaluation_interval} iterations",
        "",
        "## The claim (AMAL reaches MAPPO's performance with 20-40% fewer env steps)",
        "",
        *(f"- {c.sentence()}" for c in claims.values()),
        *([] if claims else ["- No confirm results to compare."]),
        "",
        "Method: the module docstring of `amal_rllib/study/report.py` (mean greedy curves over seeds on one grid "
        "of total env steps; MAPPO's final win rate as target; percentile bootstrap over seeds, "
        f"{study.bootstrap_samples} draws).",
        "",
        *(
            [
                f"Left out of the claim, the per-variant table and the mean curves: {len(unfinished)} confirm "
                f"trial(s) short of the {study.env_steps:,}-step budget (stopped before the end, to be "
                "continued with `--resume`, or failed): "
                + ", ".join(f"{t.scenario} {t.variant} seed {t.seed} at {t.total_env_steps:,.0f}" for t in unfinished)
                + ".",
                "",
            ]
            if unfinished
            else []
        ),
        "## Confirm phase, per variant (finished trials)",
        "",
        _markdown_table(by_variant) if len(by_variant) else "(none)",
        "",
        "## Every trial",
        "",
        _markdown_table(table[summary_cols]) if not table.empty else "(none)",
        "",
        "## Plots",
        "",
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
        "Files: `trials.parquet` / `trials.csv` (one row per trial), `curves.csv` (one row per trial iteration), "
        "`claims.csv`; Tune's own `result.json`, "
        "`progress.csv` and TensorBoard files are in each trial folder (`tensorboard --logdir "
        f"{Path(exp_root)}`).",
    ]
    summary = out / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    return summary

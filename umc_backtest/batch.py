"""Batch year backtests as Ray tasks: one task per (data range, strategy, parameters).

Each task gets a frozen :class:`~umc_backtest.runner.RunSpec` (paths and settings, no data),
reads its own shard, writes its own result folder atomically and returns a small dict. Task
names say what they are (``backtest BTC-USDT 2024 sma(20,50)``) so the dashboard reads like the
batch. A bad shard fails its own task with its error; the others finish and the summary lists
every failure with its reason. A worker process that dies mid-task is a system failure that Ray
retries (``max_retries``); since a run's folder appears only when complete and a rerun of a
complete run reuses it, a retried run is counted once.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .engine.metrics import METRIC_NAMES
from .engine.strategies import StrategyError, make_strategy
from .runner import RunSpec, run_one

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("name", "data", "strategy", "params", "status", "error", "coverage", "wall_s", "out_dir",
                   "task_name")
#: Metrics shown in the report's table (all of METRIC_NAMES go into the Parquet/CSV).
REPORT_METRICS = ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "num_trades", "win_rate",
                  "profit_factor", "fees_paid", "exposure_time")
#: The UMC agent's own metrics (``umc_`` + the agent's metric name); empty for other strategies.
UMC_COLUMNS = tuple(f"umc_{m}" for m in ("lambda_mean", "lambda_min", "lambda_max", "info_gain_mean",
                                         "coherence_mean", "leakage", "empowerment_mean", "free_energy_first",
                                         "free_energy_last", "contraction_share", "regimes_seen", "updates"))
UMC_REPORT = ("umc_lambda_mean", "umc_info_gain_mean", "umc_coherence_mean", "umc_leakage", "umc_empowerment_mean",
              "umc_regimes_seen", "umc_free_energy_first", "umc_free_energy_last")


def expand_grid(strategy: str, grid: dict[str, Sequence[Any]]) -> tuple[list[tuple[tuple[str, Any], ...]], list[str]]:
    """Every valid parameter combination of ``grid`` (cartesian product), and the invalid ones with why.

    A grid may hold combinations a strategy rejects (``sma`` with fast >= slow): those are left
    out and reported, as a grid search would; a single invalid combination is an error elsewhere.
    """
    names = sorted(grid)
    valid, dropped = [], []
    for values in itertools.product(*(grid[n] for n in names)):
        params = tuple(zip(names, values, strict=True))
        try:
            make_strategy(strategy, dict(params))
        except StrategyError as exc:
            dropped.append(f"{dict(params)}: {exc}")
            continue
        valid.append(params)
    return valid, dropped


@dataclass
class BatchOutcome:
    rows: list[dict[str, Any]]
    summary_dir: Path
    tasks_s: float = math.nan  # first submission to last result
    summary_s: float = math.nan  # the summary table, plot and report on the driver

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "failed"]


def _task_body(spec: RunSpec, overwrite: bool, plot: bool) -> dict[str, Any]:
    import pyarrow as pa
    import ray

    # Use the CPUs Ray reserved for this task, not the machine's (Ray sets OMP_NUM_THREADS the same way);
    # otherwise Arrow's thread pool makes one task use every core and tasks compete.
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    pa.set_cpu_count(max(1, int(cpus)))
    out = run_one(spec, overwrite=overwrite, plot=plot)
    out["task_name"] = ray.get_runtime_context().get_task_name()  # what the dashboard lists
    return out


def _error_reason(exc: BaseException) -> str:
    import ray

    cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None else exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}" if text else type(cause).__name__


def run_batch(
    specs: Sequence[RunSpec],
    summary_dir: str | os.PathLike,
    overwrite: bool = False,
    plot: bool = True,
    max_retries: int = 3,
    progress: bool = True,
    num_cpus_per_task: float = 1.0,
) -> BatchOutcome:
    """Run ``specs`` as Ray tasks on the connected Ray; write the summary table and report."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("run_batch needs a connected Ray (ray.init() or amal_rllib.study.ray_session.connect())")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"the batch holds the same run twice: {dup}")
    remote = ray.remote(num_cpus=num_cpus_per_task, max_retries=max_retries, retry_exceptions=False)(_task_body)
    t0 = time.perf_counter()
    pending = {remote.options(name=s.name).remote(s, overwrite, plot): s for s in specs}
    rows: dict[str, dict[str, Any]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(specs), desc="backtests", unit="run")
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            spec = pending.pop(ref)
            try:
                out = ray.get(ref)
                rows[spec.name] = _row(spec, out["status"], out, None)
            except (ray.exceptions.RayError, Exception) as exc:  # every task failure is recorded, none lost
                reason = _error_reason(exc)
                logger.error("%s failed: %s", spec.name, reason)
                rows[spec.name] = _row(spec, "failed", None, reason)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(failed=sum(r["status"] == "failed" for r in rows.values()))
    if bar is not None:
        bar.close()
    ordered = [rows[s.name] for s in specs]
    summary_dir = Path(summary_dir)
    t1 = time.perf_counter()
    write_summary(ordered, summary_dir, wall_s=t1 - t0)
    return BatchOutcome(ordered, summary_dir, tasks_s=t1 - t0, summary_s=time.perf_counter() - t1)


def run_serial(specs: Iterable[RunSpec], overwrite: bool = False, plot: bool = True) -> list[dict[str, Any]]:
    """The same runs in this process, one after the other (reference for tests and benchmarks)."""
    return [_row(s, "ok", run_one(s, overwrite=overwrite, plot=plot), None) for s in specs]


def _row(spec: RunSpec, status: str, out: dict | None, error: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": spec.name,
        "data": spec.data.label,
        "strategy": spec.strategy_label,
        "params": json.dumps(dict(spec.params), sort_keys=True),
        "status": status,
        "error": error or "",
        "coverage": out.get("coverage") if out else math.nan,
        "wall_s": out.get("wall_s") if out else math.nan,
        "out_dir": str(spec.out_dir),
        "task_name": (out or {}).get("task_name", ""),
    }
    metrics = (out or {}).get("metrics") or {}
    for m in (*METRIC_NAMES, *UMC_COLUMNS):
        value = metrics.get(m)
        row[m] = float(value) if isinstance(value, (int, float)) else (math.inf if value == "inf" else math.nan)
    return row


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_summary(rows: list[dict[str, Any]], summary_dir: Path, wall_s: float | None = None) -> Path:
    """``summary.parquet``/``summary.csv`` (one row per run), ``comparison.png`` and ``report.md``, atomically."""
    summary_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = summary_dir.parent / f".{summary_dir.name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        table = pd.DataFrame(rows, columns=[*SUMMARY_COLUMNS, *METRIC_NAMES, *UMC_COLUMNS])
        table.to_parquet(tmp / "summary.parquet", index=False)
        table.to_csv(tmp / "summary.csv", index=False)
        ok = table[table["status"] != "failed"]
        if len(ok):
            comparison_plot(ok, tmp / "comparison.png")
        (tmp / "report.md").write_text(report_markdown(table, wall_s))
        old = None
        if summary_dir.exists():
            old = summary_dir.parent / f".{summary_dir.name}.{uuid.uuid4().hex}.old"
            os.replace(summary_dir, old)
        os.replace(tmp, summary_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return summary_dir


def _fmt(value: Any, metric: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return ""
    if metric in ("total_return", "cagr", "max_drawdown", "win_rate", "exposure_time", "coverage"):
        return f"{100 * value:.1f}%"
    if metric.startswith("umc_"):
        return f"{value:.3g}"
    if metric == "num_trades":
        return f"{int(value):,}"
    if metric == "fees_paid":
        return f"{value:,.0f}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_table(table: pd.DataFrame, metrics: Sequence[str] = REPORT_METRICS) -> str:
    head = ["data", "strategy", "status", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [r["data"], r["strategy"], r["status"], *(_fmt(r[m], m) for m in metrics)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def report_markdown(table: pd.DataFrame, wall_s: float | None) -> str:
    failed = table[table["status"] == "failed"]
    ok = table[table["status"] != "failed"]
    parts = [
        "# Batch backtests",
        "",
        f"{len(table)} runs: {len(ok)} finished ({int((table['status'] == 'reused').sum())} reused from an earlier "
        f"run), {len(failed)} failed" + (f"; {wall_s:.1f} s wall time." if wall_s is not None else "."),
        "",
        "Costs and risk as in each run's `metrics.json` (`engine`); Sharpe and Sortino annualised for a 24/7 "
        "market (525,600 one-minute bars a year), risk-free rate 0.",
        "",
        markdown_table(table),
        "",
    ]
    partial = ok[ok["coverage"] < 1.0]
    if len(partial):
        parts += ["Runs on part of their range (--allow-partial): "
                  + ", ".join(f"{r['name']} ({100 * r['coverage']:.1f}%)" for _, r in partial.iterrows()), ""]
    umc = ok[ok["strategy"].str.startswith("umc")]
    if len(umc):
        parts += ["## UMC agent", "", "Agent metrics (lambda, info gain in nats, coherence = share of bars inside the "
                  "model's 90% predictive interval, leakage = KL in nats, empowerment in nats over 5 bars, free energy "
                  "per sample at the first and last tenth of the updates):", "",
                  markdown_table(umc, UMC_REPORT), "", "### Theory check (the prototype's predictions, as measured)", ""]
        from .agent.theory import theory_check

        head = "| data | strategy | " + " | ".join(c[0] for c in _theory_names()) + " |"
        parts += [head, "|" + "---|" * (2 + len(_theory_names()))]
        for _, r in umc.iterrows():
            checks = theory_check(r.to_dict())
            parts.append(f"| {r['data']} | {r['strategy']} | "
                         + " | ".join(f"{c['measured']} {c['result']}" for c in checks) + " |")
        parts.append("")
    if len(failed):
        parts += ["## Failures", ""] + [f"- `{r['name']}`: {r['error']}" for _, r in failed.iterrows()] + [""]
    if len(ok):
        parts += ["## Comparison", "", "![comparison](comparison.png)", ""]
    parts += ["Files: `summary.parquet` / `summary.csv` (one row per run, every metric); each run's folder "
              "(`out_dir`) holds `metrics.json`, `equity.parquet`, `orders.parquet`, `trades.parquet`, `plot.png`."]
    return "\n".join(parts) + "\n"


def _theory_names():
    from .agent.theory import CHECKS

    return CHECKS


def comparison_plot(table: pd.DataFrame, path: Path) -> None:
    """Per data range: each run's equity curve (from its folder) and a bar chart of Sharpe and return."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(table.groupby("data", sort=False))
    fig, axes = plt.subplots(len(groups), 2, figsize=(13, 3.6 * len(groups)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 1]})
    for (data, rows), (ax_eq, ax_bar) in zip(groups, axes, strict=True):
        for _, r in rows.iterrows():
            eq = pq.read_table(Path(r["out_dir"]) / "equity.parquet", columns=["timestamp", "equity"])
            stride = max(1, eq.num_rows // 3000)
            ts = eq.column("timestamp").to_numpy()[::stride]
            ax_eq.plot(ts, eq.column("equity").to_numpy()[::stride], lw=0.8, label=r["strategy"])
        ax_eq.set_title(data)
        ax_eq.set_ylabel("equity (USDT)")
        ax_eq.legend(fontsize=7, loc="upper left")
        y = np.arange(len(rows))
        ax_bar.barh(y, 100 * rows["total_return"].to_numpy(), color="tab:blue", alpha=0.7, label="total return %")
        labels = [f"{n} (Sharpe {s:.2f})" for n, s in zip(rows["strategy"], rows["sharpe"], strict=True)]
        ax_bar.set_yticks(y, labels, fontsize=7)
        ax_bar.axvline(0, color="k", lw=0.5)
        ax_bar.set_xlabel("total return %")
    fig.subplots_adjust(left=0.06, right=0.98, top=0.95, bottom=0.08, hspace=0.45, wspace=0.35)
    fig.savefig(path, dpi=90)
    plt.close(fig)

"""Write one run's outputs atomically: a folder appears whole or not at all.

Files: ``metrics.json`` (metrics, run description, data coverage, timings), ``equity.parquet``
(per bar: timestamp, close, target, cap, cash, units, equity, exposure, drawdown),
``orders.parquet``, ``trades.parquet`` and ``plot.png`` (equity with drawdown, position,
return histogram). Everything goes into a hidden temporary folder beside the destination,
which is then renamed into place; with ``overwrite`` the old folder is moved aside first and
deleted only after the new one is in place.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .backtest import BacktestResult
from .metrics import drawdown

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PLOT_POINTS = 4_000  # the plot shows at most this many points per line (a year of minutes is 525,600)


class OutputError(OSError):
    """The output folder cannot be written; names the path and what to do."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    return value


def result_frames(result: BacktestResult) -> dict[str, pd.DataFrame]:
    ts = pd.to_datetime(result.timestamps, unit="ms", utc=True)
    sim = result.sim
    equity = pd.DataFrame(
        {
            "timestamp": ts,
            "close": result.close,
            "target": result.target,
            "cap": result.cap,
            "cash": sim.cash,
            "units": sim.units,
            "equity": sim.equity,
            "exposure": result.exposure,
            "drawdown": drawdown(sim.equity),
        }
    )
    orders = pd.DataFrame(
        {
            "timestamp": ts[sim.order_bar] if sim.order_bar.size else pd.DatetimeIndex([], tz="UTC"),
            "bar": sim.order_bar,
            "units": sim.order_units,
            "price": sim.order_price,
            "fee": sim.order_fee,
            "kind": np.where(sim.order_kind == 1, "stop", "signal"),
        }
    )
    tr = result.trades
    trades = pd.DataFrame(
        {
            "entry_time": ts[tr.entry_bar] if tr.entry_bar.size else pd.DatetimeIndex([], tz="UTC"),
            "exit_time": ts[tr.exit_bar] if tr.exit_bar.size else pd.DatetimeIndex([], tz="UTC"),
            "entry_price": tr.entry_price,
            "exit_price": tr.exit_price,
            "size": tr.size,
            "pnl": tr.pnl,
            "return": tr.return_,
            "fees": tr.fees,
        }
    )
    return {"equity": equity, "orders": orders, "trades": trades}


def metrics_document(result: BacktestResult, run: dict[str, Any]) -> dict[str, Any]:
    extra = {k: v for k, v in result.extra.items() if k != "series"}  # per-bar series go to agent.parquet
    return _jsonable(
        {
            "run": run,
            "strategy": result.strategy,
            "engine": result.config.to_dict(),
            "metrics": result.metrics,
            "open_position_at_end": bool(result.trades.open_position),
            "first_bar": pd.Timestamp(int(result.timestamps[0]), unit="ms", tz="UTC").isoformat(),
            "last_bar": pd.Timestamp(int(result.timestamps[-1]), unit="ms", tz="UTC").isoformat(),
            "extra": extra,
            "timings": result.timings,
        }
    )


def plot_result(result: BacktestResult, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = result.close.size
    stride = max(1, n // PLOT_POINTS)
    ts = pd.to_datetime(result.timestamps[::stride], unit="ms", utc=True)
    eq = result.sim.equity
    series = result.extra.get("series") or {}
    agent = "lambda" in series
    rows = [3, 1.2, 1.2, 1.6] + ([1.2, 1.2, 1.2] if agent else [])
    fig, axes = plt.subplots(len(rows), 1, figsize=(11, 10 + (4 if agent else 0)), gridspec_kw={"height_ratios": rows})
    fig.subplots_adjust(left=0.08, right=0.98, top=0.96, bottom=0.06, hspace=0.32)  # tight_layout costs ~0.4 s
    axes[0].plot(ts, eq[::stride], lw=0.9, label="equity")
    axes[0].plot(ts, result.config.initial_cash * result.close[::stride] / result.close[0], lw=0.7, alpha=0.6,
                 label="asset (buy & hold, no costs)")
    axes[0].set_ylabel("USDT")
    axes[0].legend(loc="upper left")
    axes[0].set_title(title)
    dd = drawdown(np.concatenate(([result.config.initial_cash], eq)))[1:]
    # the deepest point inside each plotted stride, so a short crash is not skipped
    pad = (-len(dd)) % stride
    dd_blocks = np.concatenate((dd, np.zeros(pad))).reshape(-1, stride).max(axis=1)[: ts.size]
    axes[1].fill_between(ts, -100 * dd_blocks, 0, color="tab:red", alpha=0.5)
    axes[1].set_ylabel("drawdown %")
    axes[2].plot(ts, result.exposure[::stride], lw=0.8, color="tab:green")
    axes[2].set_ylabel("exposure")
    axes[2].set_ylim(-0.05, 1.05)
    r = np.diff(eq) / eq[:-1]
    r = r[r != 0]
    axes[3].hist(r * 100, bins=100, color="tab:blue", alpha=0.8)
    axes[3].set_yscale("log")
    axes[3].set_xlabel("bar return of equity % (bars with a position)")
    if agent:
        axes[4].plot(ts, series["lambda"][::stride], lw=0.8, color="tab:purple")
        axes[4].set_ylabel("lambda")
        names = result.extra.get("regime_names") or []
        axes[5].scatter(ts, series["regime"][::stride], s=1, c=series["regime"][::stride], cmap="tab10")
        axes[5].set_yticks(range(len(names)), names, fontsize=6)
        axes[5].set_ylabel("regime")
        echo = result.extra.get("echo")
        if echo and echo["bars"]:
            t0 = result.timestamps[0]
            bar_ms = (result.timestamps[-1] - t0) / max(1, n - 1)
            when = pd.to_datetime(t0 + np.asarray(echo["bars"]) * bar_ms, unit="ms", utc=True)
            axes[6].plot(when, echo["elite_mean"], lw=0.8, label="elite mean PnL")
            axes[6].plot(when, echo["fitness_mean"], lw=0.8, label="population mean PnL")
            axes[6].legend(fontsize=7, loc="upper left")
        axes[6].set_ylabel("echo fitness")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_result(result: BacktestResult, out_dir: str | os.PathLike, run: dict[str, Any], overwrite: bool = False,
                 plot: bool = True) -> Path:
    """Write the run's files into ``out_dir`` atomically; returns ``out_dir``.

    Refuses an existing ``out_dir`` unless ``overwrite`` (then the old one is replaced only once
    the new one is complete).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a result; pass --overwrite to replace it")
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {parent}: {exc.strerror or exc}; choose a writable --out") from exc
    tmp = parent / f".{out_dir.name}.{uuid.uuid4().hex}.tmp"
    try:
        try:
            tmp.mkdir()
        except OSError as exc:
            raise OutputError(f"cannot write in {parent}: {exc.strerror or exc}; choose a writable --out") from exc
        for name, frame in result_frames(result).items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        series = result.extra.get("series")
        if series:
            agent_frame = pd.DataFrame({"timestamp": pd.to_datetime(result.timestamps, unit="ms", utc=True), **series})
            agent_frame.to_parquet(tmp / "agent.parquet", index=False)
        if plot:
            plot_result(result, tmp / "plot.png", f"{run.get('name', result.strategy['label'])}")
        doc = metrics_document(result, run)
        (tmp / METRICS_FILE).write_text(json.dumps(doc, indent=2, allow_nan=False))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if out_dir.exists():
            old = parent / f".{out_dir.name}.{uuid.uuid4().hex}.old"
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        if isinstance(exc, (OutputError, FileExistsError)):
            raise
        raise OutputError(f"writing {out_dir} failed: {exc.strerror or exc}; nothing was replaced") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote %s", out_dir)
    return out_dir


def read_metrics(out_dir: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(out_dir) / METRICS_FILE).read_text())

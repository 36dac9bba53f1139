"""One backtest run from the store to its result folder: the unit a CLI call or a Ray task does.

A :class:`RunSpec` is a frozen description (paths and settings, no data): where the candles
are, which range, which strategy with which parameters, the engine settings and the output
folder. :func:`run_one` reads its own data, validates it, runs the engine, writes the outputs
atomically and returns a small dict (nautilus' ``BacktestNode`` pattern: tasks take paths and
configs, not DataFrames).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .data.schema import symbol_to_path
from .data.store import CandleStore, year_bounds_ms
from .engine.backtest import prepare_market_data, run_backtest
from .engine.config import EngineConfig
from .engine.features import WARMUP_BARS
from .engine.outputs import METRICS_FILE, read_metrics, write_result
from .engine.strategies import make_strategy

logger = logging.getLogger(__name__)


def _stamp(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%d")


@dataclass(frozen=True)
class DataRange:
    """Candles of one (exchange, symbol, timeframe) over a year or ``[start, end)``."""

    exchange: str
    symbol: str
    timeframe: str = "1m"
    year: int | None = None
    start: str | None = None
    end: str | None = None
    allow_partial: bool = False
    eval_start: str | None = None  # the evaluated window starts here; the bars before are history (warm-up, fits)

    def __post_init__(self) -> None:
        symbol_to_path(self.symbol)
        if (self.year is None) == (self.start is None or self.end is None):
            raise ValueError(
                f"data range {self.exchange} {self.symbol}: give either a year or both start and end "
                f"(got year={self.year}, start={self.start}, end={self.end})"
            )
        if self.year is None:
            try:
                lo, hi = pd.Timestamp(self.start), pd.Timestamp(self.end)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"bad date in range {self.start!r} .. {self.end!r}: {exc}; use YYYY-MM-DD") from exc
            if lo >= hi:
                raise ValueError(f"range start {self.start} is not before end {self.end}")
        if self.eval_start is not None:
            lo, hi = (pd.Timestamp(b) for b in self.bounds)
            try:
                ev = pd.Timestamp(self.eval_start)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"bad eval start {self.eval_start!r}: {exc}; use YYYY-MM-DD") from exc
            if not lo < ev < hi:
                raise ValueError(f"eval start {self.eval_start} must lie inside the range {lo.date()} .. {hi.date()}")

    @property
    def bounds(self) -> tuple[str, str]:
        if self.year is not None:
            lo, hi = year_bounds_ms(self.year)
            return _stamp(lo), _stamp(hi)
        return str(self.start), str(self.end)

    @property
    def period(self) -> str:
        period = str(self.year) if self.year is not None else f"{self.bounds[0]}..{self.bounds[1]}"
        return period if self.eval_start is None else f"{period} eval from {self.eval_start}"

    @property
    def label(self) -> str:
        return f"{self.exchange} {symbol_to_path(self.symbol)} {self.timeframe} {self.period}"


@dataclass(frozen=True)
class RunSpec:
    """One run: data, strategy and parameters, engine settings, where the outputs go."""

    root: str
    data: DataRange
    strategy: str
    params: tuple[tuple[str, Any], ...] = ()
    engine: EngineConfig = field(default_factory=EngineConfig)
    out_root: str = "results/backtests"
    out: str | None = None  # an explicit result folder instead of the one derived under out_root

    @property
    def strategy_label(self) -> str:
        return make_strategy(self.strategy, dict(self.params)).label

    @property
    def name(self) -> str:
        """What the dashboard and the logs call it, e.g. ``backtest BTC-USDT 2024 sma(20,50)``."""
        d = self.data
        src = "" if d.exchange == "binance" else f" {d.exchange}"
        return f"backtest {symbol_to_path(d.symbol)}{src} {d.period} {self.strategy_label}"

    @property
    def out_dir(self) -> Path:
        if self.out is not None:
            return Path(self.out)
        d = self.data
        period = str(d.year) if d.year is not None else f"{d.bounds[0]}_{d.bounds[1]}"
        if d.eval_start is not None:
            period += f"_eval_{d.eval_start}"
        slug = re.sub(r"[^A-Za-z0-9_.,=-]+", "_", self.strategy_label).strip("_")
        return Path(self.out_root) / d.exchange / symbol_to_path(d.symbol) / d.timeframe / period / slug


def run_one(spec: RunSpec, overwrite: bool = False, plot: bool = True) -> dict[str, Any]:
    """Run ``spec`` (or reuse its stored result unless ``overwrite``); returns a small summary dict."""
    t0 = time.perf_counter()
    out = spec.out_dir
    if (out / METRICS_FILE).is_file() and not overwrite:
        doc = read_metrics(out)
        extra = (doc.get("extra") or {}).get("metrics", {})
        metrics = {**doc["metrics"], **{f"umc_{k}": v for k, v in extra.items()}}
        return {"name": spec.name, "status": "reused", "out_dir": str(out), "metrics": metrics,
                "coverage": doc["run"].get("coverage"), "wall_s": time.perf_counter() - t0}
    strategy = make_strategy(spec.strategy, dict(spec.params))
    store = CandleStore(spec.root)
    d = spec.data
    start, end = d.bounds
    candles = store.load(d.exchange, d.symbol, d.timeframe, start, end, allow_partial=d.allow_partial)
    coverage = store.coverage(d.exchange, d.symbol, d.timeframe, start, end)
    t1 = time.perf_counter()
    window = WARMUP_BARS
    if d.eval_start is not None:
        first = int(candles["timestamp"].searchsorted(pd.Timestamp(d.eval_start, tz="UTC"), side="left"))
        window = max(WARMUP_BARS, first)
    data = prepare_market_data(candles, d.timeframe, label=d.label, warmup=window)
    result = run_backtest(data, strategy, spec.engine)
    sources = sorted({s for k in store.list_shards(d.exchange, d.symbol, d.timeframe)
                      for s in store.read_metadata(k)["sources"]})
    run = {
        "name": spec.name,
        "data": d.label,
        "root": str(spec.root),
        "exchange": d.exchange,
        "symbol": d.symbol,
        "timeframe": d.timeframe,
        "start": start,
        "end": end,
        "coverage": coverage.fraction,
        "missing": [[a.isoformat(), b.isoformat()] for a, b in coverage.missing],
        "sources": sources,
        "rows_loaded": len(candles),
        "warmup_bars": data.start,
        "eval_start": d.eval_start,
    }
    result.timings["load_s"] = t1 - t0
    write_result(result, out, run, overwrite=True, plot=plot)
    if coverage.fraction < 1.0:
        logger.warning("%s ran on %.1f%% of its range (--allow-partial)", spec.name, 100 * coverage.fraction)
    metrics = {**result.metrics, **{f"umc_{k}": v for k, v in result.extra.get("metrics", {}).items()}}
    return {"name": spec.name, "status": "ok", "out_dir": str(out), "metrics": metrics,
            "coverage": coverage.fraction, "wall_s": time.perf_counter() - t0}

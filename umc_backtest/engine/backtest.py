"""One backtest: prepare -> simulate -> construct records -> analyse.

:func:`prepare_market_data` turns validated candles into arrays and causal features;
:func:`run_backtest` gets the strategy's targets (all at once for a signal strategy, bar by bar
for an agent), runs the accounting kernel and computes the statistics. Nothing here reads or
writes files: engines receive arrays (``runner.py`` does the I/O).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .config import EngineConfig, bars_per_day, periods_per_year
from .features import WARMUP_BARS
from .kernel import Simulation, Trades, risk_caps, round_trips, simulate
from .metrics import compute_metrics
from .strategies import AgentContext, AgentStrategy, MarketData, SignalStrategy, Strategy, describe

logger = logging.getLogger(__name__)


class BacktestError(ValueError):
    """The data cannot be backtested as asked (too short, wrong columns); says what to do."""


def prepare_market_data(candles: pd.DataFrame, timeframe: str, label: str = "", warmup: int = WARMUP_BARS) -> MarketData:
    """Arrays and causal features of validated candles; the window starts after ``warmup`` bars."""
    n = len(candles)
    if n <= warmup + 1:
        raise BacktestError(
            f"{label or 'candles'}: {n} bars, but the features need {warmup} warm-up bars and the backtest at "
            f"least 2 more; widen the range"
        )
    ts = candles["timestamp"]
    stamps = pd.DatetimeIndex(ts).as_unit("ms").asi8 if not pd.api.types.is_integer_dtype(ts.dtype) else ts.to_numpy()
    cols = {c: candles[c].to_numpy(dtype=np.float64) for c in ("open", "high", "low", "close", "volume")}
    return MarketData(
        timestamps=np.asarray(stamps, dtype=np.int64),
        start=warmup,
        timeframe=timeframe,
        label=label,
        **cols,
    )


@dataclass
class BacktestResult:
    """Everything one run produced, over the ``n`` bars of the window."""

    strategy: dict[str, Any]
    config: EngineConfig
    timestamps: np.ndarray  # (n,) int64 ms
    close: np.ndarray
    target: np.ndarray  # what the strategy asked for after each close
    cap: np.ndarray  # what the risk limits allowed
    sim: Simulation
    exposure: np.ndarray  # position value / equity at each close
    trades: Trades
    metrics: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)  # agent diagnostics
    timings: dict[str, float] = field(default_factory=dict)


def strategy_targets(strategy: Strategy, data: MarketData, config: EngineConfig) -> tuple[np.ndarray, dict]:
    """(n,) targets over the window, and the agent's diagnostics (empty for signal strategies)."""
    if isinstance(strategy, SignalStrategy):
        full = np.asarray(strategy.targets(data), dtype=np.float64)
        if full.shape != data.close.shape:
            raise BacktestError(f"{strategy.label}: targets() returned shape {full.shape}, expected {data.close.shape}")
        return full[data.start :], {}
    if isinstance(strategy, AgentStrategy):
        return _step_agent(strategy, data, config)
    raise BacktestError(f"{type(strategy).__name__} is neither a SignalStrategy nor an AgentStrategy")


def _step_agent(agent: AgentStrategy, data: MarketData, config: EngineConfig) -> tuple[np.ndarray, dict]:
    """Feed the agent one bar at a time; it only ever holds read-only views of bars it has been shown."""
    features = data.features  # read-only
    s = data.start
    agent.begin(
        AgentContext(
            feature_names=data.feature_names, timeframe=data.timeframe, config=config,
            history_features=features[:s], history_close=data.close[:s].copy(), bars=data.bars,
        )
    )
    close = data.close
    out = np.empty(data.bars)
    step = agent.step
    for i, t in enumerate(range(s, close.size)):
        out[i] = step(features[t], float(close[t]))
    return out, agent.finish() or {}


def run_backtest(data: MarketData, strategy: Strategy, config: EngineConfig | None = None) -> BacktestResult:
    """Backtest ``strategy`` over ``data``'s window with ``config``'s costs, sizing and risk limits."""
    config = config or EngineConfig()
    t0 = time.perf_counter()
    target, extra = strategy_targets(strategy, data, config)
    t1 = time.perf_counter()
    cap_full = risk_caps(data.close, bars_per_day(data.timeframe), config.max_position, config.risk)
    s = data.start
    sim = simulate(data.open[s:], data.close[s:], target, cap_full[s:], config, passive=strategy.passive)
    trades = round_trips(sim)
    t2 = time.perf_counter()
    close = data.close[s:]
    exposure = sim.units * close / sim.equity
    metrics = compute_metrics(
        sim.equity,
        trades.pnl,
        periods_per_year(data.timeframe),
        initial_equity=config.initial_cash,
        fees_paid=float(sim.order_fee.sum()),
        traded_notional=float(np.abs(sim.order_units * sim.order_price).sum()),
        exposure=exposure,
    )
    metrics["risk_stop_fired"] = float(sim.stop_bar >= 0)
    t3 = time.perf_counter()
    return BacktestResult(
        strategy=describe(strategy),
        config=config,
        timestamps=data.timestamps[s:],
        close=close,
        target=target,
        cap=cap_full[s:],
        sim=sim,
        exposure=exposure,
        trades=trades,
        metrics=metrics,
        extra=extra,
        timings={"strategy_s": t1 - t0, "simulate_s": t2 - t1, "metrics_s": t3 - t2},
    )

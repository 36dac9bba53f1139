"""Performance statistics: a pure function of the equity curve and the closed trades.

Like backtesting.py's ``_stats.compute_stats``: no engine state, settings passed explicitly.
Annualisation is for a 24/7 market: ``periods_per_year`` bars a year (525,600 for 1m bars,
8,760 for 1h, 365 for 1d; :func:`umc_backtest.engine.config.periods_per_year`). The risk-free
rate is 0.
"""

from __future__ import annotations

import math

import numpy as np

#: Metric names, in report order. One place for them: reports, tables and tests use these.
METRIC_NAMES: tuple[str, ...] = (
    "total_return",
    "cagr",
    "annual_volatility",
    "sharpe",
    "sortino",
    "calmar",
    "max_drawdown",
    "max_drawdown_duration_bars",
    "max_drawdown_duration_days",
    "num_trades",
    "win_rate",
    "profit_factor",
    "turnover",
    "fees_paid",
    "exposure_time",
    "mean_exposure",
    "final_equity",
    "bars",
)


def drawdown(equity: np.ndarray) -> np.ndarray:
    """Fractional drawdown from the running peak at each bar, in [0, 1). (n,) -> (n,)."""
    peak = np.maximum.accumulate(equity)
    return 1.0 - equity / peak


def max_drawdown_duration(equity: np.ndarray, peak: np.ndarray | None = None) -> int:
    """Longest number of bars from a peak until equity first regains it (or the end)."""
    if equity.size == 0:
        return 0
    peak = np.maximum.accumulate(equity) if peak is None else peak
    at_peak = np.flatnonzero(equity >= peak)  # bars that set or equal a running high
    ends = np.append(at_peak[1:], equity.size)
    # a drawdown starts after each high and lasts until the next high
    return int(np.max(ends - at_peak - 1)) if at_peak.size else int(equity.size)


def compute_metrics(
    equity: np.ndarray,
    trade_pnl: np.ndarray,
    periods_per_year: float,
    initial_equity: float | None = None,
    fees_paid: float = 0.0,
    traded_notional: float = 0.0,
    exposure: np.ndarray | None = None,
) -> dict[str, float]:
    """The statistics of one run.

    ``equity``: (n,) equity marked at each bar's close. ``initial_equity``: the capital before the
    first bar (default ``equity[0]``); bar returns start from it. ``trade_pnl``: (k,) net PnL of
    closed trades. ``exposure``: (n,) position value / equity at each close.

    - ``total_return`` = E_end / E_0 - 1; ``cagr`` = (E_end / E_0) ** (periods_per_year / n) - 1
    - ``annual_volatility`` = std(r) * sqrt(ppy) (sample std of bar returns ``r``)
    - ``sharpe`` = mean(r) / std(r) * sqrt(ppy); ``sortino`` = mean(r) / sqrt(mean(min(r, 0)^2)) * sqrt(ppy)
    - ``calmar`` = cagr / max_drawdown; ``max_drawdown`` as a positive fraction
    - ``win_rate`` = share of closed trades with pnl > 0; ``profit_factor`` = gross wins / gross losses
    - ``turnover`` = traded notional / mean equity; ``exposure_time`` = share of bars holding a position;
      ``mean_exposure`` = mean position value / equity
    Undefined ratios (no trades, zero volatility, no drawdown) are NaN, never a made-up number.
    """
    equity = np.asarray(equity, dtype=np.float64)
    n = equity.size
    if n == 0:
        raise ValueError("compute_metrics needs at least one bar of equity")
    e0 = float(initial_equity if initial_equity is not None else equity[0])
    prev = np.concatenate(([e0], equity[:-1]))
    r = equity / prev - 1.0
    total = float(equity[-1] / e0 - 1.0)
    growth = equity[-1] / e0
    cagr = float(growth ** (periods_per_year / n) - 1.0) if growth > 0 else -1.0
    sd = float(np.std(r, ddof=1)) if n > 1 else math.nan
    mean = float(np.mean(r))
    ann = math.sqrt(periods_per_year)
    neg = np.minimum(r, 0.0)
    downside = float(np.sqrt(np.dot(neg, neg) / n))
    with_start = np.concatenate(([e0], equity))
    peak = np.maximum.accumulate(with_start)
    mdd = float((1.0 - with_start / peak).max())
    dd_bars = max_drawdown_duration(with_start, peak)
    trade_pnl = np.asarray(trade_pnl, dtype=np.float64)
    wins = trade_pnl[trade_pnl > 0].sum()
    losses = -trade_pnl[trade_pnl < 0].sum()
    if exposure is None:
        exposure = np.zeros(n)
    return {
        "total_return": total,
        "cagr": cagr,
        "annual_volatility": sd * ann if sd == sd else math.nan,
        "sharpe": mean / sd * ann if sd and sd == sd else math.nan,
        "sortino": mean / downside * ann if downside > 0 else math.nan,
        "calmar": cagr / mdd if mdd > 0 else math.nan,
        "max_drawdown": mdd,
        "max_drawdown_duration_bars": float(dd_bars),
        "max_drawdown_duration_days": dd_bars * 365.0 / periods_per_year,
        "num_trades": float(trade_pnl.size),
        "win_rate": float((trade_pnl > 0).mean()) if trade_pnl.size else math.nan,
        "profit_factor": float(wins / losses) if losses > 0 else (math.inf if wins > 0 else math.nan),
        "turnover": float(traded_notional / np.mean(equity)),
        "fees_paid": float(fees_paid),
        "exposure_time": float(np.count_nonzero(np.abs(exposure) > 1e-12) / n),
        "mean_exposure": float(np.mean(exposure)),
        "final_equity": float(equity[-1]),
        "bars": float(n),
    }

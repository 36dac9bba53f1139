"""The accounting kernel: target exposures in; fills, cash, position, equity, fees and orders out.

vectorbt's layering: prepare (risk caps, pure NumPy) -> simulate (one compiled pass over the
bars, Numba) -> construct records (orders -> round-trip trades, NumPy) -> analyse
(``metrics.py``). The simulation is sequential by nature (a fill's size depends on the equity
the previous fills left), so it is the one part compiled with Numba: a Python loop over a year
of minute bars costs ~1 s, the compiled pass ~2 ms (``benchmarks/backtest_speed.py``).

Timing, for every bar ``t`` of the window:

1. an order decided at the close of ``t-1`` fills at ``open[t]``: buys at
   ``open * (1 + slippage)``, sells at ``open * (1 - slippage)``, paying ``fee * notional``
   (the taker fee; the maker fee and no slippage for strategies that post passively);
2. the book is marked at ``close[t]``: ``equity = cash + units * close``;
3. at the close of ``t`` the drawdown stop is checked and the strategy's target for ``t`` is
   turned into an order for ``t+1``.

Sizing: an order for exposure ``e`` holds ``e * equity_at_open / (fill_price * (1 + fee))``
units, i.e. it spends the fraction ``e`` of equity *fees included* (backtesting.py's
convention), so ``e = 1`` never overdraws cash. Long-only: units never go below 0 and a buy
never spends more cash than there is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from .config import EngineConfig, RiskLimits

#: ``kind`` of an order record.
ORDER_SIGNAL = 0  # the strategy's target changed, or the risk caps moved it past the threshold
ORDER_STOP = 1  # the max-drawdown stop closed the position


def _rolling_sums(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trailing sums of ``x``, ``x**2`` and the count over ``window`` values ending at each index."""
    c1 = np.concatenate(([0.0], np.cumsum(x)))
    c2 = np.concatenate(([0.0], np.cumsum(x * x)))
    idx = np.arange(1, x.size + 1)
    lo = np.maximum(idx - window, 0)
    return c1[idx] - c1[lo], c2[idx] - c2[lo], (idx - lo).astype(np.float64)


def risk_caps(close: np.ndarray, bars_per_day: float, max_position: float, limits: RiskLimits) -> np.ndarray:
    """Largest exposure the risk limits allow at each bar's close, from closes up to that bar only.

    ``close``: (n,) closes of the *whole* series (so the estimates can use the bars before the
    evaluated window). Returns (n,) caps in ``[0, max_position]``; 0 where the history is
    shorter than ``limits.min_history_days``. Kelly: ``kelly_fraction * max(mu / sigma^2, 0)``
    of the bar log returns; VaR: ``daily_var / (z * sigma_bar * sqrt(bars_per_day))``.
    """
    n = close.size
    cap = np.full(n, float(max_position))
    if not limits.uses_history or n == 0:
        return cap
    r = np.zeros(n)
    r[1:] = np.diff(np.log(close))  # r[t] is known at the close of t
    min_bars = max(2, math.ceil(limits.min_history_days * bars_per_day))
    have = np.arange(n) >= min_bars  # r[1..t] holds t returns
    if limits.daily_var is not None:
        w = max(2, round(limits.var_window_days * bars_per_day))
        s1, s2, cnt = _rolling_sums(r, w)
        var = np.maximum(s2 / cnt - (s1 / cnt) ** 2, 0.0) * cnt / np.maximum(cnt - 1.0, 1.0)
        sigma_day = np.sqrt(var * bars_per_day)
        z = _normal_quantile(limits.var_confidence)
        with np.errstate(divide="ignore"):
            cap = np.minimum(cap, np.where(sigma_day > 0, limits.daily_var / (z * sigma_day), max_position))
    if limits.kelly_fraction is not None:
        w = max(2, round(limits.kelly_window_days * bars_per_day))
        s1, s2, cnt = _rolling_sums(r, w)
        mu = s1 / cnt
        var = np.maximum(s2 / cnt - mu**2, 0.0) * cnt / np.maximum(cnt - 1.0, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            kelly = np.where(var > 0, mu / var, 0.0)
        cap = np.minimum(cap, limits.kelly_fraction * np.maximum(kelly, 0.0))
    return np.where(have, np.clip(cap, 0.0, max_position), 0.0)


def _normal_quantile(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


@numba.njit(cache=True, nogil=True)
def _simulate_nb(open_, close, target, cap, initial_cash, fee, slippage, max_drawdown, rebalance_threshold):  # pragma: no cover - compiled
    n = close.shape[0]
    cash = np.empty(n)
    units = np.empty(n)
    equity = np.empty(n)
    o_bar = np.empty(n, np.int64)
    o_units = np.empty(n)
    o_price = np.empty(n)
    o_fee = np.empty(n)
    o_kind = np.empty(n, np.int64)
    n_orders = 0
    c = initial_cash
    u = 0.0
    peak = initial_cash
    stopped = False
    stop_bar = -1
    pending = False
    pending_exposure = 0.0
    pending_kind = 0
    last_target = 0.0
    last_effective = 0.0
    for t in range(n):
        if pending:
            pending = False
            px = open_[t]
            eq = c + u * px
            if pending_exposure <= 0.0 or eq <= 0.0:
                delta = -u
            else:
                buy_px = px * (1.0 + slippage)
                want = pending_exposure * eq / (buy_px * (1.0 + fee))
                delta = want - u
            if delta > 0.0:
                price = px * (1.0 + slippage)
                afford = c / (price * (1.0 + fee))
                if delta > afford:
                    delta = afford
            elif delta < 0.0:
                price = px * (1.0 - slippage)
                if -delta > u:
                    delta = -u
            else:
                price = px
            if delta != 0.0:
                paid = abs(delta) * price * fee
                c -= delta * price + paid
                u += delta
                if u < 1e-12 * (1.0 + abs(delta)):
                    u = 0.0
                o_bar[n_orders] = t
                o_units[n_orders] = delta
                o_price[n_orders] = price
                o_fee[n_orders] = paid
                o_kind[n_orders] = pending_kind
                n_orders += 1
        cash[t] = c
        units[t] = u
        equity[t] = c + u * close[t]
        if equity[t] > peak:
            peak = equity[t]
        if stopped:
            continue
        if max_drawdown > 0.0 and equity[t] <= peak * (1.0 - max_drawdown):
            stopped = True
            stop_bar = t
            if u > 0.0:
                pending = True
                pending_exposure = 0.0
                pending_kind = 1
            continue
        tg = target[t]
        if tg != tg:  # NaN: no opinion, keep the last target
            tg = last_target
        effective = tg if tg < cap[t] else cap[t]
        if effective < 0.0:
            effective = 0.0
        if effective != last_effective and (tg != last_target or abs(effective - last_effective) >= rebalance_threshold):
            pending = True
            pending_exposure = effective
            pending_kind = 0
            last_effective = effective
        last_target = tg
    return (
        cash, units, equity, o_bar[:n_orders], o_units[:n_orders], o_price[:n_orders], o_fee[:n_orders],
        o_kind[:n_orders], stop_bar,
    )


@dataclass(frozen=True)
class Simulation:
    """The kernel's output over the ``n`` bars of the window.

    ``cash``, ``units``, ``equity``: (n,) after the bar's fills, marked at its close.
    Orders (k,): ``order_bar`` (fill bar), ``order_units`` (signed), ``order_price`` (fill
    price, slippage included), ``order_fee``, ``order_kind`` (``ORDER_SIGNAL``/``ORDER_STOP``).
    ``stop_bar``: the bar whose close fired the drawdown stop, or -1.
    """

    cash: np.ndarray
    units: np.ndarray
    equity: np.ndarray
    order_bar: np.ndarray
    order_units: np.ndarray
    order_price: np.ndarray
    order_fee: np.ndarray
    order_kind: np.ndarray
    stop_bar: int


def simulate(
    open_: np.ndarray,
    close: np.ndarray,
    target: np.ndarray,
    cap: np.ndarray,
    config: EngineConfig,
    passive: bool = False,
) -> Simulation:
    """Run the accounting over one window. All arrays (n,) float64, aligned bar by bar.

    ``target[t]``: the exposure (fraction of equity in the asset) the strategy wants after the
    close of ``t`` (NaN: unchanged); it is clipped to ``[0, min(cap[t], max_position)]``.
    ``passive``: the strategy posts maker orders (maker fee, no slippage).
    """
    arrays = [np.ascontiguousarray(a, dtype=np.float64) for a in (open_, close, target, cap)]
    n = arrays[1].size
    if any(a.size != n for a in arrays):
        raise ValueError(f"open, close, target and cap must have the same length, got {[a.size for a in arrays]}")
    fee = config.fee_maker if passive else config.fee_taker
    slippage = 0.0 if passive else config.slippage
    capped = np.minimum(arrays[3], config.max_position)
    out = _simulate_nb(
        arrays[0], arrays[1], arrays[2], capped, float(config.initial_cash), float(fee), float(slippage),
        float(config.risk.max_drawdown or 0.0), float(config.rebalance_threshold),
    )
    return Simulation(*out[:8], stop_bar=int(out[8]))


@dataclass(frozen=True)
class Trades:
    """Round trips from flat to flat (k,). A position still open at the end is not a closed trade.

    ``pnl``: net cash flow of the round trip's orders, fees included; ``return_``: ``pnl`` over
    the cash the buys cost (fees included).
    """

    entry_bar: np.ndarray
    exit_bar: np.ndarray
    entry_price: np.ndarray  # units-weighted mean buy price
    exit_price: np.ndarray  # units-weighted mean sell price
    size: np.ndarray  # units bought over the round trip
    pnl: np.ndarray
    return_: np.ndarray
    fees: np.ndarray
    open_position: bool


def round_trips(sim: Simulation) -> Trades:
    """Group the orders into flat-to-flat round trips (vectorised over orders)."""
    k = sim.order_units.size
    if k == 0:
        empty = np.empty(0)
        return Trades(np.empty(0, np.int64), np.empty(0, np.int64), empty, empty, empty, empty, empty, empty, False)
    after = np.cumsum(sim.order_units)
    after[np.abs(after) < 1e-12] = 0.0
    flat_after = after <= 0.0
    # order i belongs to trip number (number of flats strictly before i)
    trip = np.concatenate(([0], np.cumsum(flat_after)[:-1]))
    closed_trips = int(flat_after.sum())
    open_position = not bool(flat_after[-1])
    sel = trip < closed_trips
    trip, units, price, fee, bar = trip[sel], sim.order_units[sel], sim.order_price[sel], sim.order_fee[sel], sim.order_bar[sel]
    flow = -units * price - fee
    buy = np.where(units > 0, units, 0.0)
    sell = np.where(units < 0, -units, 0.0)
    count = closed_trips
    pnl = np.bincount(trip, flow, count)
    fees = np.bincount(trip, fee, count)
    bought = np.bincount(trip, buy, count)
    sold = np.bincount(trip, sell, count)
    cost = np.bincount(trip, buy * price + np.where(units > 0, fee, 0.0), count)
    entry_price = np.bincount(trip, buy * price, count) / np.where(bought > 0, bought, 1.0)
    exit_price = np.bincount(trip, sell * price, count) / np.where(sold > 0, sold, 1.0)
    first = np.searchsorted(trip, np.arange(count), side="left")
    last = np.searchsorted(trip, np.arange(count), side="right") - 1
    return Trades(
        entry_bar=bar[first], exit_bar=bar[last], entry_price=entry_price, exit_price=exit_price, size=bought,
        pnl=pnl, return_=pnl / np.where(cost > 0, cost, 1.0), fees=fees, open_position=open_position,
    )

"""Causal features computed once per shard: each value at bar ``t`` uses candles up to ``t`` only.

Vectorised over the whole series (cumulative sums for rolling windows, a first-order IIR filter
for EMAs). The first ``WARMUP_BARS`` bars, where the longest window (SMA 50) is not yet full,
are dropped by the engine, never zero-padded: a backtest window starts at bar ``WARMUP_BARS``.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

#: Feature columns, in the order of the matrix :func:`compute_features` returns.
FEATURE_NAMES: tuple[str, ...] = (
    "return",
    "log_return",
    "volatility_20",
    "sma_20",
    "sma_50",
    "ema_12",
    "ema_26",
    "macd",
    "macd_signal",
    "rsi_14",
    "bb_upper",
    "bb_lower",
    "volume_ma_20",
    "volume_ratio",
)
#: Bars before every feature is defined from a full window (SMA 50 needs 50 closes).
WARMUP_BARS = 50


def rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values; NaN for the first ``window - 1``. (n,) -> (n,)."""
    out = np.full(x.shape, np.nan)
    if x.size >= window:
        c = np.concatenate(([0.0], np.cumsum(x, dtype=np.float64)))
        out[window - 1 :] = (c[window:] - c[:-window]) / window
    return out


def rolling_std(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing population standard deviation over ``window`` values (NaN before it is full).

    Computed on values centred by the first one (known at bar 0: centring by the overall mean
    would leak the future into every bar) so the cumulative sums lose little precision.
    """
    centred = x - x[0] if x.size else x
    m1 = rolling_mean(centred, window)
    m2 = rolling_mean(centred * centred, window)
    return np.sqrt(np.maximum(m2 - m1 * m1, 0.0))


def ema(x: np.ndarray, span: int | None = None, alpha: float | None = None) -> np.ndarray:
    """Exponential moving average ``y[t] = a x[t] + (1 - a) y[t-1]``, ``y[0] = x[0]``.

    ``a = 2 / (span + 1)`` or ``alpha`` (pandas' ``ewm(adjust=False)``). (n,) -> (n,).
    """
    a = alpha if alpha is not None else 2.0 / (span + 1.0)
    if x.size == 0:
        return x.astype(np.float64)
    y, _ = lfilter([a], [1.0, -(1.0 - a)], x, zi=[(1.0 - a) * x[0]])
    return y


def rsi(close: np.ndarray, period: int = 14) -> np.ndarray:
    """Wilder's RSI in [0, 100] (smoothing ``alpha = 1 / period``); NaN at bar 0."""
    diff = np.diff(close, prepend=close[:1])
    gain = ema(np.maximum(diff, 0.0)[1:], alpha=1.0 / period)
    loss = ema(np.maximum(-diff, 0.0)[1:], alpha=1.0 / period)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(loss > 0, 100.0 - 100.0 / (1.0 + gain / loss), np.where(gain > 0, 100.0, 50.0))
    return np.concatenate(([np.nan], value))


def compute_features(close: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """The feature matrix (n, len(FEATURE_NAMES)) of a candle series, causal by construction.

    ``close``, ``volume``: (n,) float64. Row ``t`` depends on rows ``<= t`` only; rows before
    ``WARMUP_BARS`` hold NaN or not-yet-settled values and are dropped by the engine.
    """
    close = np.asarray(close, dtype=np.float64)
    volume = np.asarray(volume, dtype=np.float64)
    n = close.size
    ret = np.full(n, np.nan)
    log_ret = np.full(n, np.nan)
    if n > 1:
        ret[1:] = close[1:] / close[:-1] - 1.0
        log_ret[1:] = np.diff(np.log(close))
    vol = np.full(n, np.nan)
    if n > 1:
        vol[1:] = rolling_std(log_ret[1:], 20)
    sma20 = rolling_mean(close, 20)
    std20 = rolling_std(close, 20)
    ema12, ema26 = ema(close, 12), ema(close, 26)
    macd = ema12 - ema26
    vol_ma = rolling_mean(volume, 20)
    with np.errstate(divide="ignore", invalid="ignore"):
        vol_ratio = np.where(vol_ma > 0, volume / vol_ma, 0.0)  # 0: nothing traded over the window
    columns = {
        "return": ret,
        "log_return": log_ret,
        "volatility_20": vol,
        "sma_20": sma20,
        "sma_50": rolling_mean(close, 50),
        "ema_12": ema12,
        "ema_26": ema26,
        "macd": macd,
        "macd_signal": ema(macd, 9),
        "rsi_14": rsi(close, 14),
        "bb_upper": sma20 + 2.0 * std20,
        "bb_lower": sma20 - 2.0 * std20,
        "volume_ma_20": vol_ma,
        "volume_ratio": vol_ratio,
    }
    return np.column_stack([columns[name] for name in FEATURE_NAMES])

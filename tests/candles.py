"""Hand-made candle frames for tests (small, exact, no randomness unless seeded)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def make_candles(start: str = "2024-01-01", periods: int = 100, freq: str = "1min", seed: int = 0) -> pd.DataFrame:
    """Consistent OHLCV candles: open = previous close, high/low bracket both."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range(start, periods=periods, freq=freq, tz="UTC").as_unit("ms")
    close = 40_000.0 * np.exp(np.cumsum(rng.normal(0.0, 7e-4, periods)))
    open_ = np.r_[40_000.0, close[:-1]]
    excursion = np.abs(rng.normal(0.0, 3e-4, (2, periods)))
    return pd.DataFrame(
        {
            "timestamp": ts,
            "open": open_,
            "high": np.maximum(open_, close) * (1 + excursion[0]),
            "low": np.minimum(open_, close) * (1 - excursion[1]),
            "close": close,
            "volume": rng.lognormal(0.0, 1.0, periods),
        }
    )

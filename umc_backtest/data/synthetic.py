"""Seeded synthetic BTC-like candles: the offline default data set and a test fixture.

The log price follows a regime-switching stochastic-volatility random walk::

    r_t   = mu[s_t] - sigma_t**2 / 2 + sigma_t * z_t            (log return of bar t)
    sigma_t = sigma_bar * m[s_t] * exp(h_t - s_h**2)            (E[sigma_t**2] = sigma_bar**2)
    h_t   = phi * h_{t-1} + s_h * sqrt(1 - phi**2) * eps_t      (log-volatility AR(1), stationary std s_h)
    z_t   ~ Student-t(nu) scaled to unit variance               (heavy tails)

``s_t`` is a semi-Markov regime chain (bull / bear / sideways / crash by
default): each visit lasts a geometric number of bars with the regime's mean
duration, the next regime is drawn from the transition matrix. The regime vol
multipliers ``m`` are rescaled so the long-run annualised volatility is
``annual_volatility`` whatever the regimes. Volume is lognormal with its log
rising with ``log1p(|r_t| / sigma_bar)``, so volume and absolute returns are
correlated; trades are Poisson in volume / average trade size.

OHLC: ``open`` is the previous ``close``; ``high``/``low`` extend beyond
``max``/``min(open, close)`` by a positive intra-bar excursion (exponential,
scaled by the bar's volatility), so the candles always pass
:func:`~umc_backtest.data.validate.validate_candles`.

Everything is vectorised: the AR(1) is one :func:`scipy.signal.lfilter`, the
regime path one :func:`numpy.repeat` of sampled durations (the only Python loop
runs over regime *visits*, a few hundred a year). A year of 1-minute bars takes
a fraction of a second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from .schema import MINUTE_MS, ShardKey, timeframe_to_ms
from .store import CandleStore, ShardInfo, WriteMode, year_bounds_ms

#: One-minute bars in a 365-day year: the base the annualised figures refer to.
MINUTES_PER_YEAR = 525_600


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic market.

    Defaults are BTC-like, roughly matched to Binance BTCUSDT 1m in H1 2024
    (annualised vol ~0.55, 1m excess kurtosis ~50, |return| autocorrelation
    ~0.3 at short lags, median volume ~16 BTC, ~0.02 BTC per trade).

    Annualised figures refer to ``MINUTES_PER_YEAR`` one-minute bars; other
    timeframes are scaled from them (volatility by sqrt(time), persistence by
    ``phi ** minutes``, volume linearly).
    """

    #: Open of the first candle.
    initial_price: float = 40_000.0
    #: Long-run annualised volatility of log returns.
    annual_volatility: float = 0.5
    #: Degrees of freedom of the Student-t shocks (> 2; smaller = heavier tails).
    student_t_df: float = 4.0
    #: Per-minute persistence of the log-volatility AR(1), in [0, 1).
    logvol_persistence: float = 0.999
    #: Stationary standard deviation of the log-volatility (0 = no stochastic volatility).
    logvol_std: float = 0.7
    #: Regime names, one per state of the chain.
    regime_names: tuple[str, ...] = ("bull", "bear", "sideways", "crash")
    #: Annualised drift of log prices in each regime.
    regime_drift: tuple[float, ...] = (0.8, -0.6, 0.0, -6.0)
    #: Relative volatility of each regime (rescaled so the long run matches annual_volatility).
    regime_vol_multiplier: tuple[float, ...] = (1.0, 1.2, 0.6, 3.0)
    #: Mean duration of one visit to each regime, in hours.
    regime_mean_duration_hours: tuple[float, ...] = (72.0, 48.0, 36.0, 4.0)
    #: Row i: probabilities of the next regime after leaving regime i (zero diagonal, rows sum to 1).
    regime_transition: tuple[tuple[float, ...], ...] = (
        (0.0, 0.3, 0.6, 0.1),
        (0.3, 0.0, 0.5, 0.2),
        (0.5, 0.4, 0.0, 0.1),
        (0.2, 0.4, 0.4, 0.0),
    )
    #: Median volume of a one-minute bar (base asset) at average absolute return.
    volume_median: float = 15.0
    #: Standard deviation of the log-volume noise.
    volume_log_std: float = 0.6
    #: Slope of log-volume on log1p(|return| / base bar volatility).
    volume_return_beta: float = 1.0
    #: Average trade size (base asset): trades ~ Poisson(volume / average_trade_size).
    average_trade_size: float = 0.02
    #: Mean intra-bar excursion of high/low beyond the body, in units of the bar's volatility.
    wick_scale: float = 0.2
    #: Price tick the prices are rounded to (0 = no rounding).
    price_tick: float = 0.01

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"SyntheticConfig.{name} must be a positive finite number, got {value!r}")

        def non_negative(name: str) -> None:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"SyntheticConfig.{name} must be a finite number >= 0, got {value!r}")

        for name in ("initial_price", "annual_volatility", "volume_median", "average_trade_size"):
            positive(name)
        for name in ("logvol_std", "volume_log_std", "volume_return_beta", "wick_scale", "price_tick"):
            non_negative(name)
        if not (isinstance(self.student_t_df, (int, float)) and self.student_t_df > 2):
            raise ValueError(
                f"SyntheticConfig.student_t_df must be > 2 (finite variance), got {self.student_t_df!r}; "
                "use 3-5 for BTC-like heavy tails"
            )
        if not (isinstance(self.logvol_persistence, (int, float)) and 0 <= self.logvol_persistence < 1):
            raise ValueError(
                f"SyntheticConfig.logvol_persistence must be in [0, 1) (a stationary AR(1)), "
                f"got {self.logvol_persistence!r}"
            )
        if self.price_tick and self.price_tick >= self.initial_price:
            raise ValueError(
                f"SyntheticConfig.price_tick {self.price_tick} must be far below initial_price {self.initial_price}"
            )

        k = len(self.regime_names)
        if k == 0:
            raise ValueError("SyntheticConfig.regime_names must name at least one regime")
        if len(set(self.regime_names)) != k:
            raise ValueError(f"SyntheticConfig.regime_names must be unique, got {self.regime_names!r}")
        for name in ("regime_drift", "regime_vol_multiplier", "regime_mean_duration_hours"):
            values = getattr(self, name)
            if len(values) != k:
                raise ValueError(
                    f"SyntheticConfig.{name} has {len(values)} values but there are {k} regimes "
                    f"{self.regime_names!r}"
                )
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise ValueError(f"SyntheticConfig.{name} must hold finite numbers, got {values!r}")
        if any(v <= 0 for v in self.regime_vol_multiplier):
            raise ValueError(f"SyntheticConfig.regime_vol_multiplier must be positive, got {self.regime_vol_multiplier!r}")
        if any(v <= 0 for v in self.regime_mean_duration_hours):
            raise ValueError(
                f"SyntheticConfig.regime_mean_duration_hours must be positive, got {self.regime_mean_duration_hours!r}"
            )
        matrix = np.asarray(self.regime_transition, dtype=float) if self.regime_transition else np.zeros((0, 0))
        if matrix.shape != (k, k):
            raise ValueError(
                f"SyntheticConfig.regime_transition must be a {k}x{k} matrix (one row per regime), "
                f"got shape {matrix.shape}"
            )
        if k > 1:
            if not np.all(np.isfinite(matrix)) or (matrix < 0).any():
                raise ValueError("SyntheticConfig.regime_transition must hold probabilities >= 0")
            if not np.allclose(matrix.sum(axis=1), 1.0, atol=1e-9):
                raise ValueError(
                    f"SyntheticConfig.regime_transition rows must sum to 1, got row sums {matrix.sum(axis=1).tolist()}"
                )
            if np.any(np.diag(matrix) != 0):
                raise ValueError(
                    "SyntheticConfig.regime_transition must have a zero diagonal (how long a regime lasts is "
                    "set by regime_mean_duration_hours)"
                )
            if _stationary(matrix) is None:
                raise ValueError("SyntheticConfig.regime_transition must be irreducible (every regime reachable)")

    def regime_time_shares(self) -> np.ndarray:
        """Long-run share of time spent in each regime (shape [K], sums to 1)."""
        k = len(self.regime_names)
        if k == 1:
            return np.ones(1)
        visits = _stationary(np.asarray(self.regime_transition, dtype=float))
        time = visits * np.asarray(self.regime_mean_duration_hours, dtype=float)
        return time / time.sum()


def _stationary(matrix: np.ndarray) -> np.ndarray | None:
    """Stationary distribution of an irreducible transition matrix, else None."""
    k = matrix.shape[0]
    reach = (matrix > 0).astype(int) + np.eye(k, dtype=int)
    closure = np.linalg.matrix_power(reach, k) > 0
    if not closure.all():
        return None
    a = np.vstack([matrix.T - np.eye(k), np.ones(k)])
    b = np.r_[np.zeros(k), 1.0]
    pi = np.linalg.lstsq(a, b, rcond=None)[0]
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


@dataclass(frozen=True)
class SyntheticPath:
    """Generated candles plus the hidden state that made them (for tests and diagnostics)."""

    candles: pd.DataFrame
    #: Regime index of every bar (shape [N], int8; names in ``regime_names``).
    regimes: np.ndarray
    regime_names: tuple[str, ...]
    #: Volatility of each bar's log return (shape [N]).
    bar_volatility: np.ndarray
    #: Number of visits (episodes) to each regime that overlap the span.
    regime_visits: dict[str, int] = field(default_factory=dict)

    def regime_bars(self) -> dict[str, int]:
        counts = np.bincount(self.regimes, minlength=len(self.regime_names))
        return {name: int(c) for name, c in zip(self.regime_names, counts, strict=True)}


def _grid(start: str | pd.Timestamp, periods: int | None, end: str | pd.Timestamp | None, tf_ms: int) -> np.ndarray:
    """Open times (int64 ms) from ``start`` for ``periods`` bars or up to ``end`` (exclusive)."""
    if (periods is None) == (end is None):
        raise ValueError("give exactly one of periods and end")
    start_ts = pd.Timestamp(start)
    start_ts = start_ts.tz_localize("UTC") if start_ts.tzinfo is None else start_ts.tz_convert("UTC")
    start_ms = int(start_ts.value // 1_000_000)
    if start_ts.value % 1_000_000 or start_ms % tf_ms:
        raise ValueError(f"start {start_ts.isoformat()} is not on the {tf_ms} ms candle grid")
    if end is not None:
        end_ts = pd.Timestamp(end)
        end_ts = end_ts.tz_localize("UTC") if end_ts.tzinfo is None else end_ts.tz_convert("UTC")
        end_ms = int(end_ts.value // 1_000_000)
        periods = max(0, -(-(end_ms - start_ms) // tf_ms))
    if not isinstance(periods, (int, np.integer)) or periods <= 0:
        raise ValueError(f"need at least one candle: periods={periods!r} (from start {start_ts.isoformat()}, end {end!r})")
    return start_ms + np.arange(int(periods), dtype=np.int64) * tf_ms


def _regime_path(
    rng: np.random.Generator, config: SyntheticConfig, n: int, bar_minutes: float
) -> tuple[np.ndarray, np.ndarray]:
    """Regime index per bar (int8, shape [n]) and the visits' regimes (shape [V])."""
    k = len(config.regime_names)
    if k == 1:
        return np.zeros(n, dtype=np.int8), np.zeros(1, dtype=np.int8)
    matrix = np.asarray(config.regime_transition, dtype=float)
    cumulative = np.cumsum(matrix, axis=1)
    mean_bars = np.maximum(np.asarray(config.regime_mean_duration_hours) * 60.0 / bar_minutes, 1.0)
    # Start in the long-run time distribution; the first visit is a fresh geometric duration
    # (geometric durations are memoryless, so this is the stationary chain observed from `start`).
    state = int(rng.choice(k, p=config.regime_time_shares()))
    states: list[int] = []
    durations: list[np.ndarray] = []
    total = 0
    batch = max(16, int(2 * n / mean_bars.min() / k) + 1)
    while total < n:
        # Walk the embedded chain one batch of visits at a time (a loop over visits, not bars).
        uniforms = rng.random(batch)
        chunk = np.empty(batch, dtype=np.int64)
        for i, u in enumerate(uniforms):
            chunk[i] = state
            state = int(np.searchsorted(cumulative[state], u, side="right"))
            state = min(state, k - 1)
        lengths = rng.geometric(1.0 / mean_bars[chunk])
        states.extend(chunk.tolist())
        durations.append(lengths)
        total += int(lengths.sum())
    lengths = np.concatenate(durations)
    visits = np.asarray(states, dtype=np.int8)
    ends = np.cumsum(lengths)
    used = int(np.searchsorted(ends, n, side="left")) + 1
    return np.repeat(visits[:used], lengths[:used])[:n], visits[:used]


def generate_path(
    start: str | pd.Timestamp,
    periods: int | None = None,
    end: str | pd.Timestamp | None = None,
    timeframe: str = "1m",
    seed: int | Sequence[int] = 0,
    config: SyntheticConfig | None = None,
) -> SyntheticPath:
    """Like :func:`generate_candles`, also returning the regimes and bar volatilities."""
    config = config or SyntheticConfig()
    tf_ms = timeframe_to_ms(timeframe)
    ts = _grid(start, periods, end, tf_ms)
    n = ts.size
    rng = np.random.default_rng(seed)
    bar_minutes = tf_ms / MINUTE_MS
    bars_per_year = MINUTES_PER_YEAR / bar_minutes

    regimes, visits = _regime_path(rng, config, n, bar_minutes)

    # Regime vol multipliers rescaled so the long-run variance is the configured one.
    multipliers = np.asarray(config.regime_vol_multiplier, dtype=float)
    multipliers = multipliers / math.sqrt(float(np.sum(config.regime_time_shares() * multipliers**2)))
    sigma_bar = config.annual_volatility / math.sqrt(bars_per_year)

    # Log-volatility AR(1), started in its stationary distribution.
    s_h = config.logvol_std
    phi = config.logvol_persistence**bar_minutes
    if s_h > 0:
        innovations = rng.standard_normal(n)
        h0 = rng.standard_normal() * s_h
        log_vol, _ = lfilter([s_h * math.sqrt(1.0 - phi**2)], [1.0, -phi], innovations, zi=[phi * h0])
    else:
        log_vol = np.zeros(n)
    sigma = sigma_bar * multipliers[regimes] * np.exp(log_vol - s_h**2)

    nu = config.student_t_df
    shocks = rng.standard_t(nu, n) * math.sqrt((nu - 2.0) / nu)
    drift = np.asarray(config.regime_drift, dtype=float)[regimes] / bars_per_year
    returns = drift - 0.5 * sigma**2 + sigma * shocks

    log_close = math.log(config.initial_price) + np.cumsum(returns)
    close = np.exp(log_close)
    open_ = np.empty(n)
    open_[0] = config.initial_price
    open_[1:] = close[:-1]
    wicks = rng.exponential(config.wick_scale, (2, n)) * sigma if config.wick_scale > 0 else np.zeros((2, n))
    high = np.maximum(open_, close) * np.exp(wicks[0])
    low = np.minimum(open_, close) * np.exp(-wicks[1])
    if config.price_tick > 0:
        tick = config.price_tick
        close = np.maximum(np.round(close / tick) * tick, tick)
        open_ = np.r_[np.round(config.initial_price / tick) * tick, close[:-1]]
        # Rounding is monotone, so rounded high/low still bracket the rounded open and close.
        high = np.maximum(np.round(high / tick) * tick, np.maximum(open_, close))
        low = np.maximum(np.minimum(np.round(low / tick) * tick, np.minimum(open_, close)), tick)
        low = np.minimum(low, np.minimum(open_, close))

    excursion = np.log1p(np.abs(returns) / sigma_bar)
    typical = float(np.log1p(math.sqrt(2.0 / math.pi)))  # log1p(E|N(0,1)|): |r| of an average bar
    log_volume = (
        math.log(config.volume_median * bar_minutes)
        + config.volume_return_beta * (excursion - typical)
        + config.volume_log_std * rng.standard_normal(n)
    )
    volume = np.exp(log_volume)
    trades = rng.poisson(volume / config.average_trade_size).astype(np.int64)
    trades = np.maximum(trades, 1)
    quote_volume = volume * (open_ + high + low + close) / 4.0

    candles = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(ts, unit="ms", utc=True).as_unit("ms"),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
            "quote_volume": quote_volume,
            "trades": trades,
        }
    )
    visit_counts = np.bincount(visits, minlength=len(config.regime_names))
    return SyntheticPath(
        candles=candles,
        regimes=regimes,
        regime_names=tuple(config.regime_names),
        bar_volatility=sigma,
        regime_visits={name: int(c) for name, c in zip(config.regime_names, visit_counts, strict=True)},
    )


def generate_candles(
    start: str | pd.Timestamp,
    periods: int | None = None,
    end: str | pd.Timestamp | None = None,
    timeframe: str = "1m",
    seed: int | Sequence[int] = 0,
    config: SyntheticConfig | None = None,
) -> pd.DataFrame:
    """Seeded synthetic candles from ``start`` (on the timeframe grid, UTC when naive).

    Give either ``periods`` (number of candles) or ``end`` (exclusive). The
    same ``(start, periods/end, timeframe, seed, config)`` always gives the same
    candles. Columns: ``timestamp`` (UTC, ms), ``open``, ``high``, ``low``,
    ``close``, ``volume``, ``quote_volume`` (float64), ``trades`` (int64).
    """
    return generate_path(start, periods, end, timeframe, seed, config).candles


def write_synthetic_year(
    store: CandleStore,
    year: int,
    *,
    symbol: str = "BTC/USDT",
    exchange: str = "synthetic",
    timeframe: str = "1m",
    seed: int = 0,
    config: SyntheticConfig | None = None,
    mode: WriteMode = "error",
) -> ShardInfo:
    """Generate one UTC year of synthetic candles and store it as a shard marked synthetic.

    The generator is seeded with ``(seed, year)``, so years written with the
    same seed are different paths; each starts at ``config.initial_price``
    (pass ``dataclasses.replace(config, initial_price=...)`` to chain years).
    ``exchange`` defaults to ``"synthetic"`` so synthetic prices never sit next
    to real ones.
    """
    config = config or SyntheticConfig()
    key = ShardKey(exchange, symbol, timeframe, int(year))
    lo, hi = year_bounds_ms(int(year))
    path = generate_path(
        pd.Timestamp(lo, unit="ms", tz="UTC"), end=pd.Timestamp(hi, unit="ms", tz="UTC"), timeframe=timeframe,
        seed=(int(seed), int(year)), config=config,
    )
    extra = {
        "generator": f"{__name__}.generate_candles",
        "seed": int(seed),
        "rng_seed": [int(seed), int(year)],
        "config": asdict(config),
        "regime_bars": path.regime_bars(),
        "regime_visits": path.regime_visits,
    }
    return store.write_shard(key, path.candles, source="synthetic", mode=mode, extra_metadata=extra)

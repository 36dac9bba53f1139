"""Seeded synthetic candles: determinism, validity, stylised facts, config checks, store shard."""

import dataclasses
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from umc_backtest.data import CandleStore, ShardExistsError, ShardKey, validate_candles
from umc_backtest.data.synthetic import (
    SyntheticConfig,
    generate_candles,
    generate_path,
    write_synthetic_year,
)

MONTH = 30 * 1440
COLUMNS = ["timestamp", "open", "high", "low", "close", "volume", "quote_volume", "trades"]


def log_returns(df: pd.DataFrame) -> np.ndarray:
    return np.diff(np.log(df["close"].to_numpy()))


def acf(x: np.ndarray, lag: int) -> float:
    x = x - x.mean()
    return float(np.dot(x[:-lag], x[lag:]) / len(x) / x.var())


@pytest.fixture(scope="module")
def month():
    return generate_path("2024-03-01", periods=MONTH, seed=7)


def test_deterministic_by_seed():
    a = generate_candles("2024-01-01", periods=5000, seed=1)
    b = generate_candles("2024-01-01", periods=5000, seed=1)
    c = generate_candles("2024-01-01", periods=5000, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["close"].to_numpy(), c["close"].to_numpy())


def test_columns_dtypes_grid_and_validity(month):
    df = month.candles
    assert list(df.columns) == COLUMNS
    assert str(df["timestamp"].dtype) == "datetime64[ms, UTC]"
    assert all(df[c].dtype == np.float64 for c in COLUMNS[1:7]) and df["trades"].dtype == np.int64
    assert len(df) == MONTH
    assert df["timestamp"].iloc[0] == pd.Timestamp("2024-03-01T00:00Z")
    assert (df["timestamp"].diff().dropna() == pd.Timedelta(minutes=1)).all()
    validate_candles(df, "1m", "synthetic month")
    assert df["open"].iloc[0] == 40_000.0
    np.testing.assert_array_equal(df["open"].to_numpy()[1:], df["close"].to_numpy()[:-1])
    body_hi = np.maximum(df["open"], df["close"])
    body_lo = np.minimum(df["open"], df["close"])
    assert (df["high"] >= body_hi).all() and (df["low"] <= body_lo).all() and (df["low"] > 0).all()
    assert (df["high"] > body_hi).mean() > 0.9  # wicks: most bars extend beyond their body
    assert (df["volume"] > 0).all() and (df["trades"] >= 1).all()
    # Prices sit on the 0.01 tick.
    cents = df["close"].to_numpy() * 100
    np.testing.assert_allclose(cents, np.round(cents), atol=1e-6)


def test_end_instead_of_periods_and_other_timeframes():
    df = generate_candles("2024-01-01", end="2024-01-02", timeframe="5m", seed=0)
    assert len(df) == 288 and df["timestamp"].iloc[-1] == pd.Timestamp("2024-01-01T23:55Z")
    validate_candles(df, "5m", "synthetic 5m")
    hourly = generate_candles("2024-01-01", periods=24 * 365, timeframe="1h", seed=0)
    validate_candles(hourly, "1h", "synthetic 1h")
    vol = log_returns(hourly).std() * np.sqrt(24 * 365)
    assert 0.2 < vol < 1.5


def test_argument_errors():
    with pytest.raises(ValueError, match="exactly one of periods and end"):
        generate_candles("2024-01-01")
    with pytest.raises(ValueError, match="exactly one of periods and end"):
        generate_candles("2024-01-01", periods=10, end="2024-01-02")
    with pytest.raises(ValueError, match="grid"):
        generate_candles("2024-01-01 00:00:30", periods=10)
    with pytest.raises(ValueError, match="at least one candle"):
        generate_candles("2024-01-01", periods=0)
    with pytest.raises(ValueError, match="unsupported timeframe"):
        generate_candles("2024-01-01", periods=10, timeframe="1M")


def test_heavy_tails(month):
    r = log_returns(month.candles)
    assert stats.kurtosis(r) > 3  # excess kurtosis; a Gaussian has 0


def test_volatility_clustering_without_return_autocorrelation(month):
    r = log_returns(month.candles)
    abs_acf = [acf(np.abs(r), lag) for lag in range(1, 11)]
    assert min(abs_acf) > 0.1, abs_acf
    assert abs(acf(r, 1)) < 0.03


def test_volume_correlates_with_absolute_return(month):
    df = month.candles
    r = np.abs(log_returns(df))
    assert np.corrcoef(df["volume"].to_numpy()[1:], r)[0, 1] > 0.3
    assert np.corrcoef(np.log(df["volume"]), np.log(df["trades"]))[0, 1] > 0.9


def test_realised_volatility_in_band():
    for seed in range(3):
        r = log_returns(generate_candles("2024-01-01", periods=MONTH, seed=seed))
        assert 0.2 < r.std() * np.sqrt(525_600) < 1.5


def test_full_year_fast_with_several_regimes():
    generate_candles("2024-01-01", periods=1000, seed=0)  # warm up imports
    start = time.perf_counter()
    path = generate_path("2023-01-01", end="2024-01-01", seed=11)
    elapsed = time.perf_counter() - start
    assert len(path.candles) == 525_600
    assert elapsed < 3.0, f"a synthetic year took {elapsed:.2f} s"
    bars = path.regime_bars()
    assert sum(bars.values()) == 525_600
    assert sum(1 for n in bars.values() if n > 0) >= 3
    assert path.regime_visits["crash"] >= 1
    assert 0.2 < log_returns(path.candles).std() * np.sqrt(525_600) < 1.5
    # Crash bars are more volatile than sideways bars.
    regime = {name: i for i, name in enumerate(path.regime_names)}
    assert path.bar_volatility[path.regimes == regime["crash"]].mean() > path.bar_volatility[
        path.regimes == regime["sideways"]
    ].mean()


def test_single_regime_and_no_stochastic_vol_config():
    config = SyntheticConfig(
        regime_names=("flat",), regime_drift=(0.0,), regime_vol_multiplier=(1.0,), regime_mean_duration_hours=(1.0,),
        regime_transition=((1.0,),), logvol_std=0.0, student_t_df=1000.0, wick_scale=0.0, price_tick=0.0,
    )
    df = generate_candles("2024-01-01", periods=MONTH, seed=3, config=config)
    validate_candles(df, "1m", "flat")
    r = log_returns(df)
    assert abs(r.std() * np.sqrt(525_600) - 0.5) < 0.02  # pure Gaussian-like walk at the configured vol
    assert abs(stats.kurtosis(r)) < 0.3
    assert (df["high"] == np.maximum(df["open"], df["close"])).all()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"initial_price": 0.0}, "initial_price must be a positive"),
        ({"annual_volatility": -0.1}, "annual_volatility must be a positive"),
        ({"annual_volatility": float("nan")}, "annual_volatility must be a positive"),
        ({"student_t_df": 2.0}, "student_t_df must be > 2"),
        ({"logvol_persistence": 1.0}, r"logvol_persistence must be in \[0, 1\)"),
        ({"logvol_std": -1.0}, "logvol_std must be a finite number >= 0"),
        ({"regime_drift": (0.1, 0.2)}, "regime_drift has 2 values but there are 4 regimes"),
        ({"regime_vol_multiplier": (1.0, 1.0, 0.0, 2.0)}, "regime_vol_multiplier must be positive"),
        ({"regime_mean_duration_hours": (1.0, 1.0, -1.0, 1.0)}, "regime_mean_duration_hours must be positive"),
        ({"regime_names": ("a", "a", "b", "c")}, "must be unique"),
        ({"regime_transition": ((0.0, 1.0), (1.0, 0.0))}, "must be a 4x4 matrix"),
        ({"regime_transition": ((0.0, 0.5, 0.5, 0.5),) * 4}, "rows must sum to 1"),
        (
            {"regime_transition": ((0.1, 0.3, 0.5, 0.1), (0.3, 0.0, 0.5, 0.2), (0.5, 0.4, 0.0, 0.1),
                                   (0.2, 0.4, 0.4, 0.0))},
            "zero diagonal",
        ),
        (
            {"regime_transition": ((0.0, 1.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0),
                                   (0.0, 0.0, 1.0, 0.0))},
            "irreducible",
        ),
        ({"price_tick": 50_000.0}, "price_tick"),
        ({"volume_median": 0}, "volume_median must be a positive"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SyntheticConfig(), **changes)


def test_config_is_frozen_and_regime_shares_sum_to_one():
    config = SyntheticConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.annual_volatility = 1.0
    shares = config.regime_time_shares()
    assert shares.shape == (4,) and abs(shares.sum() - 1) < 1e-12 and (shares > 0).all()


def test_write_synthetic_year_marks_shard_synthetic(tmp_path):
    store = CandleStore(tmp_path)
    config = SyntheticConfig(annual_volatility=0.6)
    info = write_synthetic_year(store, 2023, seed=5, config=config)
    key = ShardKey("synthetic", "BTC/USDT", "1m", 2023)
    assert info.key == key
    meta = store.read_metadata(key)
    assert meta["synthetic"] is True and meta["sources"] == ["synthetic"]
    assert meta["rows"] == 525_600 and meta["gaps"]["gap_count"] == 0
    assert meta["first_timestamp"] == "2023-01-01T00:00:00+00:00"
    assert meta["last_timestamp"] == "2023-12-31T23:59:00+00:00"
    extra = meta["extra"]
    assert extra["seed"] == 5 and extra["config"]["annual_volatility"] == 0.6
    assert extra["config"]["regime_names"] == ["bull", "bear", "sideways", "crash"]
    assert sum(extra["regime_bars"].values()) == 525_600
    assert sum(1 for n in extra["regime_bars"].values() if n > 0) >= 2
    df = store.read_shard(key)
    assert len(df) == 525_600 and list(df.columns) == COLUMNS

    before = store.shard_path(key).read_bytes()
    with pytest.raises(ShardExistsError):
        write_synthetic_year(store, 2023, seed=6)
    assert store.shard_path(key).read_bytes() == before


def test_write_modes_pass_through(tmp_path):
    store = CandleStore(tmp_path)
    info = write_synthetic_year(store, 2023, seed=5, timeframe="1h")
    df = store.read_shard(info.key)
    write_synthetic_year(store, 2023, seed=5, timeframe="1h", mode="merge")  # same seed: identical candles
    pd.testing.assert_frame_equal(store.read_shard(info.key), df)
    write_synthetic_year(store, 2023, seed=6, timeframe="1h", mode="overwrite")
    assert not np.array_equal(store.read_shard(info.key)["close"].to_numpy(), df["close"].to_numpy())


def test_years_with_same_seed_differ_and_leap_year_is_full(tmp_path):
    store = CandleStore(tmp_path)
    a = write_synthetic_year(store, 2024, seed=0, timeframe="1h")
    b = write_synthetic_year(store, 2025, seed=0, timeframe="1h")
    assert a.metadata["rows"] == 366 * 24 and b.metadata["rows"] == 365 * 24
    ra = log_returns(store.read_shard(a.key))[:1000]
    rb = log_returns(store.read_shard(b.key))[:1000]
    assert not np.allclose(ra, rb)
    with pytest.raises(ShardExistsError, match="synthetic and real prices never mix"):
        store.write_shard(a.key, store.read_shard(a.key).iloc[:10], source="ccxt", mode="merge")

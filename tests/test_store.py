"""Candle store: layout, metadata, overwrite policy, merge, atomicity, reads across years."""

import os

import pandas as pd
import pyarrow.dataset as ds
import pytest
from candles import make_candles

from umc_backtest.data import (
    CandleStore,
    CandleValidationError,
    MarketDataError,
    ShardExistsError,
    ShardKey,
    ShardNotFoundError,
)
from umc_backtest.data import store as store_module
from umc_backtest.data.store import merge_intervals, subtract_intervals

KEY = ShardKey("binance", "BTC/USDT", "1m", 2024)


def test_layout_is_hive_partitioned_and_round_trips(tmp_path):
    store = CandleStore(tmp_path)
    df = make_candles(periods=500)
    info = store.write_shard(KEY, df, "ccxt")
    assert info.path == tmp_path / "exchange=binance/symbol=BTC-USDT/timeframe=1m/year=2024/candles.parquet"
    back = store.read_shard(KEY)
    pd.testing.assert_frame_equal(back, df)
    assert str(back["timestamp"].dtype) == "datetime64[ms, UTC]"
    assert store.list_shards() == [KEY]
    # The whole root reads as one hive-partitioned dataset.
    table = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 500
    assert set(table.column("symbol").to_pylist()) == {"BTC-USDT"}


def test_metadata_records_source_rows_coverage_and_gaps(tmp_path):
    store = CandleStore(tmp_path)
    df = make_candles(periods=100).drop(index=[40, 41]).reset_index(drop=True)
    store.write_shard(KEY, df, "binance-vision", extra_metadata={"files": ["a.zip"]})
    meta = store.read_metadata(KEY)
    assert meta["source"] == "binance-vision"
    assert meta["synthetic"] is False
    assert meta["rows"] == 98
    assert meta["gaps"]["missing_candles"] == 2
    assert meta["coverage"] == [[1704067200000, 1704067200000 + 100 * 60_000]]
    assert meta["extra"] == {"files": ["a.zip"]}
    assert meta["created_at"].endswith("+00:00")


def test_existing_shard_is_never_silently_overwritten(tmp_path):
    store = CandleStore(tmp_path)
    store.write_shard(KEY, make_candles(periods=50), "ccxt")
    before = store.shard_path(KEY).read_bytes()
    with pytest.raises(ShardExistsError, match="--overwrite"):
        store.write_shard(KEY, make_candles(periods=60, seed=1), "ccxt")
    assert store.shard_path(KEY).read_bytes() == before
    store.write_shard(KEY, make_candles(periods=60, seed=1), "ccxt", mode="overwrite")
    assert len(store.read_shard(KEY)) == 60


def test_merge_adds_new_candles_and_deduplicates(tmp_path):
    store = CandleStore(tmp_path)
    df = make_candles(periods=300)
    store.write_shard(KEY, df.iloc[:200], "ccxt")
    info = store.write_shard(KEY, df.iloc[150:], "ccxt", mode="merge")
    pd.testing.assert_frame_equal(store.read_shard(KEY), df)
    assert info.metadata["coverage"] == [[1704067200000, 1704067200000 + 300 * 60_000]]


def test_merge_refuses_conflicting_candle(tmp_path):
    store = CandleStore(tmp_path)
    df = make_candles(periods=100)
    store.write_shard(KEY, df, "ccxt")
    before = store.shard_path(KEY).read_bytes()
    changed = df.iloc[90:].copy()
    changed.loc[95, "volume"] += 1.0
    with pytest.raises(CandleValidationError, match="differs") as info:
        store.write_shard(KEY, changed, "ccxt", mode="merge")
    assert "2024-01-01T01:35:00" in str(info.value)
    assert store.shard_path(KEY).read_bytes() == before


def test_merge_refuses_to_mix_synthetic_and_real(tmp_path):
    store = CandleStore(tmp_path)
    store.write_shard(KEY, make_candles(periods=10), "synthetic")
    with pytest.raises(ShardExistsError, match="never mix"):
        store.write_shard(KEY, make_candles(start="2024-02-01", periods=10), "ccxt", mode="merge")


def test_candles_outside_the_shard_year_are_rejected(tmp_path):
    store = CandleStore(tmp_path)
    df = make_candles(start="2024-12-31 23:50", periods=20)
    with pytest.raises(CandleValidationError, match="outside year 2024") as info:
        store.write_shard(KEY, df, "ccxt")
    assert info.value.row == 10
    assert not store.exists(KEY)


def test_bad_candles_are_not_written_and_old_shard_stays(tmp_path):
    store = CandleStore(tmp_path)
    store.write_shard(KEY, make_candles(periods=10), "ccxt")
    before = store.shard_path(KEY).read_bytes()
    bad = make_candles(periods=20)
    bad.loc[3, "volume"] = -1
    with pytest.raises(CandleValidationError, match="negative volume"):
        store.write_shard(KEY, bad, "ccxt", mode="overwrite")
    assert store.shard_path(KEY).read_bytes() == before


def test_crash_before_rename_leaves_old_shard_readable_and_unchanged(tmp_path, monkeypatch):
    store = CandleStore(tmp_path)
    old = make_candles(periods=100)
    store.write_shard(KEY, old, "ccxt")
    before = store.shard_path(KEY).read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(store_module.os, "replace", crash)
    with pytest.raises(MarketDataError, match=r"simulated crash.*unchanged"):
        store.write_shard(KEY, make_candles(periods=200, seed=3), "ccxt", mode="overwrite")
    monkeypatch.undo()
    assert store.shard_path(KEY).read_bytes() == before
    pd.testing.assert_frame_equal(store.read_shard(KEY), old)
    # No temp file is left behind to be mistaken for data.
    # (the lock file beside it holds no data)
    assert sorted(os.listdir(store.shard_path(KEY).parent)) == [".candles.parquet.lock", "candles.parquet"]


def test_corrupt_file_gives_clear_error(tmp_path):
    store = CandleStore(tmp_path)
    store.write_shard(KEY, make_candles(periods=10), "ccxt")
    path = store.shard_path(KEY)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(MarketDataError, match="not a readable Parquet file"):
        store.read_shard(KEY)


def test_shard_edited_outside_the_store_is_detected_on_read(tmp_path):
    import pyarrow.parquet as pq

    store = CandleStore(tmp_path)
    store.write_shard(KEY, make_candles(periods=10), "ccxt")
    path = store.shard_path(KEY)
    table = pq.read_table(path)
    # Reorder rows, keep the metadata: validation on read must catch it.
    pq.write_table(table.take([1, 0, *range(2, 10)]), path)
    with pytest.raises(CandleValidationError, match="not increasing") as info:
        store.read_shard(KEY)
    assert info.value.row == 1
    assert str(path) in str(info.value)


def test_file_without_store_metadata_is_rejected(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = CandleStore(tmp_path)
    path = store.shard_path(KEY)
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(make_candles(periods=5), preserve_index=False), path)
    with pytest.raises(MarketDataError, match="no 'umc_backtest' metadata"):
        store.read_shard(KEY)


def test_load_spans_years_and_slices(tmp_path):
    store = CandleStore(tmp_path)
    df = make_candles(start="2023-12-31 23:00", periods=180)
    store.write_shard(ShardKey("binance", "BTC/USDT", "1m", 2023), df.iloc[:60], "ccxt")
    store.write_shard(KEY, df.iloc[60:], "ccxt")
    out = store.load("binance", "BTC/USDT", "1m", "2023-12-31 23:30", "2024-01-01 00:30")
    pd.testing.assert_frame_equal(out, df.iloc[30:90].reset_index(drop=True))
    pd.testing.assert_frame_equal(store.load("binance", "BTC/USDT", "1m"), df)


def test_load_missing_year_names_it(tmp_path):
    store = CandleStore(tmp_path)
    store.write_shard(KEY, make_candles(periods=10), "ccxt")
    with pytest.raises(ShardNotFoundError, match=r"year\(s\) \[2023\]"):
        store.load("binance", "BTC/USDT", "1m", "2023-06-01", "2024-01-02")
    with pytest.raises(ShardNotFoundError, match="umc-data"):
        store.load("binance", "ETH/USDT", "1m")


def test_fill_gaps_keeps_stored_candles(tmp_path):
    store = CandleStore(tmp_path)
    df = make_candles(periods=30).drop(index=[10, 11]).reset_index(drop=True)
    store.write_shard(KEY, df, "ccxt")
    info = store.fill_gaps(KEY)
    assert info.metadata["filled_rows"] == 2
    assert info.metadata["gaps"]["missing_candles"] == 0
    assert info.metadata["sources"] == ["ccxt"]
    back = store.read_shard(KEY)
    real = back[~back["filled"]].drop(columns="filled").reset_index(drop=True)
    pd.testing.assert_frame_equal(real, df)


def test_interval_helpers():
    assert merge_intervals([(5, 10), (0, 5), (20, 30), (25, 26)]) == [(0, 10), (20, 30)]
    assert subtract_intervals((0, 100), [(10, 20), (50, 120)]) == [(0, 10), (20, 50)]
    assert subtract_intervals((0, 100), [(0, 100)]) == []
    assert subtract_intervals((0, 100), []) == [(0, 100)]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("binance", "BTCUSDT", "1m", 2024), "BASE/QUOTE"),
        (("binance", "BTC/USDT", "1x", 2024), "unsupported timeframe"),
        (("bin/ance", "BTC/USDT", "1m", 2024), "plain name"),
        (("binance", "BTC/USDT", "1m", 1900), "out of range"),
    ],
)
def test_bad_shard_keys(args, match):
    with pytest.raises(ValueError, match=match):
        ShardKey(*args)


def test_merge_with_integer_millisecond_timestamps(tmp_path):
    store = CandleStore(tmp_path)
    df = make_candles(periods=100)
    as_ms = df.assign(timestamp=df["timestamp"].astype("int64"))
    store.write_shard(KEY, as_ms.iloc[:60], "ccxt")
    store.write_shard(KEY, as_ms.iloc[40:], "ccxt", mode="merge")
    pd.testing.assert_frame_equal(store.read_shard(KEY), df)


def test_add_coverage_keeps_candles_and_created_at(tmp_path):
    store = CandleStore(tmp_path)
    info = store.write_shard(KEY, make_candles(periods=10), "ccxt")
    start = info.metadata["coverage"][0][0]
    later = store.add_coverage(KEY, [(start + 3_600_000, start + 7_200_000)])
    assert later.metadata["coverage"] == [[start, start + 600_000], [start + 3_600_000, start + 7_200_000]]
    assert later.metadata["created_at"] == info.metadata["created_at"]
    pd.testing.assert_frame_equal(store.read_shard(KEY), make_candles(periods=10))


def test_coverage_is_clipped_to_the_shard_year(tmp_path):
    store = CandleStore(tmp_path)
    info = store.write_shard(KEY, make_candles(periods=10), "ccxt", coverage=[(0, 2_000_000_000_000)])
    assert info.metadata["coverage"] == [[1704067200000, 1735689600000]]


def test_weekly_candles_open_on_mondays():
    from umc_backtest.data import validate_candles

    monday = make_candles(start="2024-01-01", periods=5, freq="7D")  # 2024-01-01 was a Monday
    validate_candles(monday, "1w", "weekly")
    with pytest.raises(CandleValidationError, match="1w grid"):
        validate_candles(make_candles(start="2024-01-04", periods=5, freq="7D"), "1w", "weekly")

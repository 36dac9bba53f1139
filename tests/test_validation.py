"""One test per validation error: each names the source, the first bad row and the field."""

import numpy as np
import pandas as pd
import pytest
from candles import make_candles
from hypothesis import given, settings
from hypothesis import strategies as st

from umc_backtest.data import CandleValidationError, fill_gaps, gap_report, validate_candles
from umc_backtest.data.validate import timestamps_ms


def check_error(df, match, row=None, field=None, timeframe="1m"):
    with pytest.raises(CandleValidationError, match=match) as info:
        validate_candles(df, timeframe, "shard X")
    err = info.value
    assert err.source == "shard X"
    assert "in shard X" in str(err)
    assert err.row == row
    assert err.field == field
    return err


def test_valid_candles_pass():
    validate_candles(make_candles(), "1m", "ok")


def test_empty_shard():
    check_error(make_candles().iloc[:0], "empty")


def test_missing_column():
    check_error(make_candles().drop(columns=["volume"]), "missing column", field="volume")


def test_unexpected_column():
    df = make_candles()
    df["vwap"] = 1.0
    check_error(df, "unexpected column", field="vwap")


def test_text_column_is_rejected():
    df = make_candles()
    df["close"] = df["close"].astype(str)
    check_error(df, "dtype", field="close")


def test_duplicate_timestamp():
    df = make_candles()
    df.loc[7, "timestamp"] = df.loc[6, "timestamp"]
    df.loc[7, ["open", "high", "low", "close"]] = df.loc[6, ["open", "high", "low", "close"]].to_numpy()
    err = check_error(df, "duplicate timestamp", row=7, field="timestamp")
    assert "2024-01-01T00:06:00" in str(err)


def test_unsorted_timestamps():
    df = make_candles()
    df = pd.concat([df.iloc[:10], df.iloc[[11, 10]], df.iloc[12:]], ignore_index=True)
    check_error(df, "not increasing", row=11, field="timestamp")


def test_timestamp_off_grid():
    df = make_candles()
    df.loc[3, "timestamp"] += pd.Timedelta(seconds=30)
    check_error(df, "not on the 1m grid", row=3, field="timestamp")


def test_timestamp_off_hour_grid():
    df = make_candles(periods=10, freq="1h")
    df.loc[2, "timestamp"] += pd.Timedelta(minutes=1)
    check_error(df, "1h grid", row=2, field="timestamp", timeframe="1h")


@pytest.mark.parametrize("col", ["open", "high", "low", "close", "volume"])
def test_nan(col):
    df = make_candles()
    df.loc[5, col] = np.nan
    check_error(df, "NaN or infinite", row=5, field=col)


def test_inf():
    df = make_candles()
    df.loc[9, "high"] = np.inf
    check_error(df, "NaN or infinite", row=9, field="high")


def test_low_above_open_close():
    df = make_candles()
    df.loc[4, "low"] = max(df.loc[4, "open"], df.loc[4, "close"]) + 1
    check_error(df, r"low > min\(open, close\)", row=4, field="low")


def test_high_below_open_close():
    df = make_candles()
    df.loc[8, "high"] = min(df.loc[8, "open"], df.loc[8, "close"]) - 1
    check_error(df, r"high < max\(open, close\)", row=8, field="high")


def test_negative_volume():
    df = make_candles()
    df.loc[12, "volume"] = -0.5
    check_error(df, "negative volume", row=12, field="volume")


def test_first_offending_row_is_reported():
    df = make_candles()
    df.loc[[20, 30], "volume"] = -1.0
    check_error(df, "negative volume", row=20, field="volume")


def test_gap_report_counts_missing_candles():
    df = make_candles(periods=100)
    kept = df.drop(index=[10, 11, 12, 50]).reset_index(drop=True)
    report = gap_report(timestamps_ms(kept), "1m")
    assert report.rows == 96
    assert report.missing_candles == 4
    assert report.gap_count == 2
    assert report.longest_gap_candles == 3
    assert report.longest_gap_start == "2024-01-01T00:10:00+00:00"
    assert [g.missing_candles for g in report.first_gaps] == [3, 1]
    assert report.expected_rows == 100


def test_gap_report_no_gaps():
    report = gap_report(timestamps_ms(make_candles()), "1m")
    assert report.missing_candles == 0 and report.gap_count == 0 and report.longest_gap_start is None


def test_fill_gaps_flags_filled_rows_and_keeps_real_ones():
    df = make_candles(periods=20)
    kept = df.drop(index=[5, 6]).reset_index(drop=True)
    filled = fill_gaps(kept, "1m")
    validate_candles(filled, "1m", "filled")
    assert len(filled) == 20
    assert filled["filled"].tolist() == [i in (5, 6) for i in range(20)]
    real = filled[~filled["filled"]].drop(columns="filled").reset_index(drop=True)
    pd.testing.assert_frame_equal(real, kept)
    # A filled candle is flat at the previous close with zero volume.
    row = filled.iloc[5]
    assert row["open"] == row["high"] == row["low"] == row["close"] == kept.loc[4, "close"]
    assert row["volume"] == 0.0


@settings(max_examples=50, deadline=None)
@given(st.sets(st.integers(min_value=1, max_value=198), max_size=60))
def test_gap_report_matches_dropped_rows(dropped):
    """Property: missing candles equal the rows dropped from inside the span."""
    ts = np.arange(200, dtype=np.int64) * 60_000
    kept = np.delete(ts, sorted(dropped))
    report = gap_report(kept, "1m")
    assert report.missing_candles == len(dropped)
    assert report.rows + report.missing_candles == 200

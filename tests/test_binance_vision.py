"""Binance Vision kline import: parsing, unit/header detection, corrupted files, idempotent merges.

The fixtures are real Binance Vision data: 2024-01-01 and 2024-01-02 of BTCUSDT 1m
(cut from BTCUSDT-1m-2024-01.zip into daily archives). Variants are built in tmp_path.
"""

import hashlib
import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from umc_backtest.data import CandleStore, CandleValidationError, ShardExistsError, ShardKey
from umc_backtest.data.binance_vision import (
    import_klines,
    parse_kline_filename,
    read_kline_file,
    split_symbol,
)

FIXTURES = Path(__file__).parent / "fixtures" / "binance_vision"
DAY1 = FIXTURES / "BTCUSDT-1m-2024-01-01.zip"
DAY2 = FIXTURES / "BTCUSDT-1m-2024-01-02.zip"
KEY = ShardKey("binance", "BTC/USDT", "1m", 2024)
T0 = 1704067200000  # 2024-01-01T00:00:00Z in ms
DAY_MS = 86_400_000
HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    "taker_buy_volume,taker_buy_quote_volume,ignore"
)


def csv_lines(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return archive.read(archive.namelist()[0]).decode().splitlines()


def write_zip(path: Path, lines: list[str]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(path.with_suffix(".csv").name, "\n".join(lines) + "\n")
    return path


def edit_field(line: str, column: int, value: str) -> str:
    fields = line.split(",")
    fields[column] = value
    return ",".join(fields)


def to_microseconds(line: str) -> str:
    fields = line.split(",")
    fields[0] = str(int(fields[0]) * 1000)
    fields[6] = str(int(fields[6]) * 1000 + 999)  # close = open + 60 s - 1 µs
    return ",".join(fields)


# ---------------------------------------------------------------------- file names and symbols
def test_parse_kline_filename_monthly_daily_and_csv():
    assert parse_kline_filename("BTCUSDT-1m-2024-01.zip") == ("BTCUSDT", "1m", "2024-01")
    assert parse_kline_filename("BTCUSDT-1m-2024-01.csv") == ("BTCUSDT", "1m", "2024-01")
    assert parse_kline_filename("/data/x/ETHBTC-1h-2024-01-15.zip") == ("ETHBTC", "1h", "2024-01-15")
    name = parse_kline_filename(Path("BTCFDUSD-15m-2025-03-01.csv"))
    assert (name.raw_symbol, name.interval, name.period) == ("BTCFDUSD", "15m", "2025-03-01")


@pytest.mark.parametrize(
    "bad", ["BTCUSDT-1m-2024.zip", "BTCUSDT_1m_2024-01.zip", "BTCUSDT-1m-2024-01.parquet", "BTCUSDT-1m-2024-13.zip",
            "BTCUSDT-1m-2024-02-30.zip", "klines.csv"],
)
def test_parse_kline_filename_rejects_other_names(bad):
    with pytest.raises(ValueError, match=r"kline file name|not a valid"):
        parse_kline_filename(bad)


@pytest.mark.parametrize(
    ("raw", "symbol"),
    [("BTCUSDT", "BTC/USDT"), ("ETHBTC", "ETH/BTC"), ("BTCFDUSD", "BTC/FDUSD"), ("SOLUSDC", "SOL/USDC"),
     ("BNBETH", "BNB/ETH"), ("BTCTRY", "BTC/TRY"), ("BTCEUR", "BTC/EUR"), ("USDCUSDT", "USDC/USDT"),
     ("BTCTUSD", "BTC/TUSD"), ("ETHBUSD", "ETH/BUSD"), ("btcusdt", "BTC/USDT")],
)
def test_split_symbol_by_known_quote_assets(raw, symbol):
    assert split_symbol(raw) == symbol


@pytest.mark.parametrize("raw", ["FOOBAR", "USDT", "XYZ"])
def test_split_symbol_asks_for_explicit_symbol(raw):
    with pytest.raises(ValueError, match="--symbol"):
        split_symbol(raw)


# ---------------------------------------------------------------------- reading
def test_read_real_fixture_exact_values():
    df = read_kline_file(DAY1)
    assert list(df.columns) == ["timestamp", "open", "high", "low", "close", "volume", "quote_volume", "trades"]
    assert str(df["timestamp"].dtype) == "datetime64[ms, UTC]"
    assert df["trades"].dtype == np.int64 and df["open"].dtype == np.float64
    assert len(df) == 1440
    assert df["timestamp"].iloc[0] == pd.Timestamp("2024-01-01T00:00:00Z")
    assert df["timestamp"].iloc[-1] == pd.Timestamp("2024-01-01T23:59:00Z")
    # First line of the file: 1704067200000,42283.58,42298.62,42261.02,42298.61,35.92724,1704067259999,
    #                         1519031.6945192,1327,23.18766,980394.7103456,0
    first = df.iloc[0]
    assert (first["open"], first["high"], first["low"], first["close"]) == (42283.58, 42298.62, 42261.02, 42298.61)
    assert first["volume"] == 35.92724
    assert first["quote_volume"] == 1519031.6945192
    assert first["trades"] == 1327


def test_read_plain_csv_equals_zip(tmp_path):
    csv = tmp_path / "BTCUSDT-1m-2024-01-01.csv"
    csv.write_text("\n".join(csv_lines(DAY1)) + "\n")
    pd.testing.assert_frame_equal(read_kline_file(csv), read_kline_file(DAY1))


def test_read_month_is_fast(tmp_path):
    import time

    lines = csv_lines(DAY1) + csv_lines(DAY2)
    # A month's worth of rows (44,640) from the 2 real days, shifted day by day.
    rows = []
    for day in range(31):
        for line in lines[:1440]:
            f = line.split(",")
            f[0] = str(int(f[0]) + day * DAY_MS)
            f[6] = str(int(f[6]) + day * DAY_MS)
            rows.append(",".join(f))
    path = write_zip(tmp_path / "BTCUSDT-1m-2024-01.zip", rows)
    read_kline_file(path)
    start = time.perf_counter()
    df = read_kline_file(path)
    elapsed = time.perf_counter() - start
    assert len(df) == 44_640
    assert elapsed < 0.5, f"reading a month took {elapsed:.3f} s"


def test_microsecond_file_gives_same_candles(tmp_path):
    micro = write_zip(tmp_path / "BTCUSDT-1m-2024-01-01.zip", [to_microseconds(line) for line in csv_lines(DAY1)])
    pd.testing.assert_frame_equal(read_kline_file(micro), read_kline_file(DAY1))


def test_header_row_is_detected_and_skipped(tmp_path):
    with_header = write_zip(tmp_path / "BTCUSDT-1m-2024-01-01.zip", [HEADER, *csv_lines(DAY1)])
    pd.testing.assert_frame_equal(read_kline_file(with_header), read_kline_file(DAY1))


def test_mixed_time_units_are_an_error(tmp_path):
    lines = csv_lines(DAY1)
    lines[5] = to_microseconds(lines[5])
    path = write_zip(tmp_path / "BTCUSDT-1m-2024-01-01.zip", lines)
    with pytest.raises(CandleValidationError, match="microseconds") as err:
        read_kline_file(path)
    assert err.value.row == 6 and err.value.field == "open_time"


def test_timeframe_must_agree_with_the_file_name():
    with pytest.raises(CandleValidationError, match="file name says interval '1m'"):
        read_kline_file(DAY1, timeframe="5m")


def test_wrong_interval_in_name_is_reported_on_close_time(tmp_path):
    renamed = tmp_path / "BTCUSDT-5m-2024-01-01.zip"
    renamed.write_bytes(DAY1.read_bytes())
    with pytest.raises(CandleValidationError, match="may be wrong: this row spans 1m") as err:
        read_kline_file(renamed)
    assert err.value.field == "close_time" and err.value.row == 1


def test_unknown_name_needs_timeframe(tmp_path):
    odd = tmp_path / "my_klines.zip"
    odd.write_bytes(DAY1.read_bytes())
    with pytest.raises(CandleValidationError, match="--timeframe"):
        read_kline_file(odd)
    assert len(read_kline_file(odd, timeframe="1m")) == 1440


def test_zip_with_two_csvs_or_garbage_is_rejected(tmp_path):
    two = tmp_path / "BTCUSDT-1m-2024-01-01.zip"
    with zipfile.ZipFile(two, "w") as archive:
        archive.writestr("a.csv", "1\n")
        archive.writestr("b.csv", "2\n")
    with pytest.raises(CandleValidationError, match="exactly one CSV"):
        read_kline_file(two)
    truncated = tmp_path / "BTCUSDT-1m-2024-01-02.zip"
    truncated.write_bytes(DAY2.read_bytes()[:1000])
    with pytest.raises(CandleValidationError, match="ZIP"):
        read_kline_file(truncated)


def test_checksum_file_is_verified_when_present(tmp_path):
    path = tmp_path / DAY1.name
    path.write_bytes(DAY1.read_bytes())
    checksum = tmp_path / (DAY1.name + ".CHECKSUM")
    checksum.write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {DAY1.name}\n")
    assert len(read_kline_file(path)) == 1440
    checksum.write_text(f"{'0' * 64}  {DAY1.name}\n")
    with pytest.raises(CandleValidationError, match="SHA-256"):
        read_kline_file(path)


# ---------------------------------------------------------------------- corrupted files
def _bad_close_time(lines):
    lines[9] = edit_field(lines[9], 6, str(int(lines[9].split(",")[6]) - 1000))
    return lines, 10, "close_time", "close_time"


def _non_numeric(lines):
    lines[99] = edit_field(lines[99], 2, "12a.5")
    return lines, 100, "high", "not a number"


def _wrong_column_count(lines):
    lines[41] = ",".join(lines[41].split(",")[:11])
    return lines, 42, None, "expected 12 comma-separated columns, found 11"


def _duplicate_row(lines):
    lines.insert(500, lines[499])
    return lines, 501, "timestamp", "duplicate timestamp"


def _unsorted_rows(lines):
    lines[700], lines[701] = lines[701], lines[700]
    return lines, 702, "timestamp", "not increasing"


def _ohlc_broken(lines):
    fields = lines[1234].split(",")
    fields[3] = str(float(fields[4]) + 100.0)  # low above close
    lines[1234] = ",".join(fields)
    return lines, 1235, "low", "OHLC inconsistent"


def _empty_value(lines):
    lines[3] = edit_field(lines[3], 5, "")
    return lines, 4, "volume", "not a number"


def _nan_price(lines):
    lines[20] = edit_field(lines[20], 4, "nan")
    return lines, 21, "close", "NaN"


def _fractional_trades(lines):
    lines[7] = edit_field(lines[7], 8, "12.5")
    return lines, 8, "trades", "not an integer"


CORRUPTIONS = [_bad_close_time, _non_numeric, _wrong_column_count, _duplicate_row, _unsorted_rows, _ohlc_broken,
               _empty_value, _nan_price, _fractional_trades]


@pytest.fixture
def store_with_day1(tmp_path):
    store = CandleStore(tmp_path / "store")
    import_klines(store, DAY1)
    return store


@pytest.mark.parametrize("header", [False, True], ids=["no-header", "header"])
@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_corrupted_file_names_file_row_and_field_and_leaves_store_unchanged(
    tmp_path, store_with_day1, corrupt, header
):
    lines, line_number, field, message = corrupt(csv_lines(DAY2))
    if header:
        lines.insert(0, HEADER)
        line_number += 1
    bad = write_zip(tmp_path / DAY2.name, lines)
    shard = store_with_day1.shard_path(KEY)
    before = shard.read_bytes()

    with pytest.raises(CandleValidationError) as err:
        import_klines(store_with_day1, bad)
    text = str(err.value)
    assert str(bad) in text, text
    assert message in text, text
    assert err.value.row == line_number, text
    assert f"row {line_number}" in text and f"CSV line {line_number}: " in text, text
    assert err.value.field == field, text
    assert shard.read_bytes() == before
    # Mode "overwrite" must not touch the stored shard either.
    with pytest.raises(CandleValidationError):
        import_klines(store_with_day1, bad, mode="overwrite")
    assert shard.read_bytes() == before


def test_bad_file_among_good_ones_writes_nothing(tmp_path):
    lines, *_ = _ohlc_broken(csv_lines(DAY2))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / DAY1.name).write_bytes(DAY1.read_bytes())
    write_zip(folder / DAY2.name, lines)
    store = CandleStore(tmp_path / "store")
    with pytest.raises(CandleValidationError, match=DAY2.name):
        import_klines(store, folder)
    assert store.list_shards() == []


# ---------------------------------------------------------------------- importing
def test_import_real_slice(tmp_path):
    store = CandleStore(tmp_path)
    infos = import_klines(store, [DAY1, DAY2])
    assert [info.key for info in infos] == [KEY]
    meta = infos[0].metadata
    assert meta["rows"] == 2880 and meta["sources"] == ["binance-vision"] and meta["synthetic"] is False
    assert meta["first_timestamp"] == "2024-01-01T00:00:00+00:00"
    assert meta["last_timestamp"] == "2024-01-02T23:59:00+00:00"
    assert meta["gaps"]["gap_count"] == 0
    assert meta["coverage"] == [[T0, T0 + 2 * DAY_MS]]
    assert meta["extra"]["binance_vision_files"] == [DAY1.name, DAY2.name]

    df = store.read_shard(KEY)
    assert len(df) == 2880
    assert df["timestamp"].iloc[0] == pd.Timestamp("2024-01-01T00:00:00Z")
    assert df["timestamp"].iloc[-1] == pd.Timestamp("2024-01-02T23:59:00Z")
    last_day1 = df.iloc[1439]  # 1704153540000,44156.1,44179.55,...
    assert last_day1["timestamp"] == pd.Timestamp(1704153540000, unit="ms", tz="UTC")
    assert last_day1["open"] == 44156.10 and last_day1["high"] == 44179.55
    first_day2 = df.iloc[1440]
    assert first_day2["open"] == 44179.55 and first_day2["high"] == 44183.89
    # quote_volume and trades are carried through exactly.
    raw = [line.split(",") for line in csv_lines(DAY1) + csv_lines(DAY2)]
    np.testing.assert_array_equal(df["quote_volume"].to_numpy(), np.array([float(f[7]) for f in raw]))
    np.testing.assert_array_equal(df["trades"].to_numpy(), np.array([int(f[8]) for f in raw], dtype=np.int64))
    np.testing.assert_array_equal(df["close"].to_numpy(), np.array([float(f[4]) for f in raw]))
    assert df["trades"].dtype == np.int64


def test_import_folder_recursively_and_log(tmp_path, caplog):
    folder = tmp_path / "spot" / "daily" / "klines" / "BTCUSDT" / "1m"
    folder.mkdir(parents=True)
    for day in (DAY1, DAY2):
        (folder / day.name).write_bytes(day.read_bytes())
    (folder / "README.csv").write_text("not klines\n")
    store = CandleStore(tmp_path / "store")
    with caplog.at_level(logging.INFO, logger="umc_backtest.data.binance_vision"):
        infos = import_klines(store, tmp_path / "spot")
    assert infos[0].metadata["rows"] == 2880
    assert "README.csv" in caplog.text and "imported 2880 candles" in caplog.text


def test_microsecond_import_gives_identical_shard(tmp_path):
    ms_store = CandleStore(tmp_path / "ms")
    us_store = CandleStore(tmp_path / "us")
    micro = tmp_path / "micro"
    micro.mkdir()
    for day in (DAY1, DAY2):
        write_zip(micro / day.name, [to_microseconds(line) for line in csv_lines(day)])
    ms_info = import_klines(ms_store, [DAY1, DAY2])[0]
    us_info = import_klines(us_store, micro)[0]
    pd.testing.assert_frame_equal(ms_store.read_shard(KEY), us_store.read_shard(KEY))
    drop = {"created_at", "updated_at"}  # wall-clock stamps of two separate imports
    assert {k: v for k, v in ms_info.metadata.items() if k not in drop} == {
        k: v for k, v in us_info.metadata.items() if k not in drop
    }


def test_reimport_is_idempotent_and_new_days_merge(tmp_path):
    store = CandleStore(tmp_path)
    import_klines(store, DAY1)
    first = store.read_shard(KEY)
    again = import_klines(store, DAY1)[0]
    pd.testing.assert_frame_equal(store.read_shard(KEY), first)
    assert again.metadata["rows"] == 1440 and again.metadata["coverage"] == [[T0, T0 + DAY_MS]]

    merged = import_klines(store, DAY2)[0]
    assert merged.metadata["rows"] == 2880
    assert merged.metadata["coverage"] == [[T0, T0 + 2 * DAY_MS]]
    assert merged.metadata["extra"]["binance_vision_files"] == [DAY1.name, DAY2.name]
    both = CandleStore(tmp_path / "both")
    import_klines(both, [DAY1, DAY2])
    pd.testing.assert_frame_equal(store.read_shard(KEY), both.read_shard(KEY))

    import_klines(store, [DAY1, DAY2])
    assert store.read_metadata(KEY)["rows"] == 2880


def test_error_and_overwrite_modes_pass_through(tmp_path):
    store = CandleStore(tmp_path)
    import_klines(store, [DAY1, DAY2])
    with pytest.raises(ShardExistsError, match="overwrite"):
        import_klines(store, DAY1, mode="error")
    info = import_klines(store, DAY1, mode="overwrite")[0]
    assert info.metadata["rows"] == 1440
    assert info.metadata["extra"]["binance_vision_files"] == [DAY1.name]


def test_overlapping_files_that_agree_are_deduplicated(tmp_path):
    month = write_zip(tmp_path / "BTCUSDT-1m-2024-01.zip", csv_lines(DAY1) + csv_lines(DAY2))
    store = CandleStore(tmp_path / "store")
    info = import_klines(store, [month, DAY1])[0]
    assert info.metadata["rows"] == 2880
    # The monthly file covers the whole month, even where it has no candles.
    assert info.metadata["coverage"] == [[T0, T0 + 31 * DAY_MS]]


def test_overlapping_files_that_disagree_are_an_error(tmp_path):
    lines = csv_lines(DAY1)
    lines[10] = edit_field(lines[10], 5, "999.0")
    other = write_zip(tmp_path / "BTCUSDT-1m-2024-01.zip", lines)
    with pytest.raises(CandleValidationError, match="differs"):
        import_klines(CandleStore(tmp_path / "store"), [other, DAY1])


def test_import_splits_by_utc_year(tmp_path):
    # Move day 1 to 2023-12-31 and day 2 to 2024-01-01 (shift back one day).
    folder = tmp_path / "in"
    folder.mkdir()
    for day, name in ((DAY1, "BTCUSDT-1m-2023-12-31.zip"), (DAY2, "BTCUSDT-1m-2024-01-01.zip")):
        shifted = []
        for line in csv_lines(day):
            f = line.split(",")
            f[0], f[6] = str(int(f[0]) - DAY_MS), str(int(f[6]) - DAY_MS)
            shifted.append(",".join(f))
        write_zip(folder / name, shifted)
    store = CandleStore(tmp_path / "store")
    infos = import_klines(store, folder)
    assert [i.key.year for i in infos] == [2023, 2024]
    assert [i.metadata["rows"] for i in infos] == [1440, 1440]
    assert infos[0].metadata["coverage"] == [[T0 - DAY_MS, T0]]
    assert infos[1].metadata["coverage"] == [[T0, T0 + DAY_MS]]
    assert infos[0].metadata["extra"]["binance_vision_files"] == ["BTCUSDT-1m-2023-12-31.zip"]


def test_symbol_inference_and_explicit_symbol(tmp_path):
    odd = tmp_path / "FOOBAR-1m-2024-01-01.zip"
    odd.write_bytes(DAY1.read_bytes())
    store = CandleStore(tmp_path / "store")
    with pytest.raises(ValueError, match="--symbol"):
        import_klines(store, odd)
    info = import_klines(store, odd, symbol="FOO/BAR")[0]
    assert info.key == ShardKey("binance", "FOO/BAR", "1m", 2024)
    with pytest.raises(ValueError, match="does not match"):
        import_klines(store, DAY1, symbol="ETH/USDT")
    info = import_klines(store, DAY1, exchange="binance-spot")[0]
    assert info.key == ShardKey("binance-spot", "BTC/USDT", "1m", 2024)


def test_files_must_agree_on_symbol_and_interval(tmp_path):
    eth = tmp_path / "ETHUSDT-1m-2024-01-02.zip"
    eth.write_bytes(DAY2.read_bytes())
    five = tmp_path / "BTCUSDT-5m-2024-01-02.zip"
    five.write_bytes(DAY2.read_bytes())
    store = CandleStore(tmp_path / "store")
    with pytest.raises(ValueError, match="several symbols"):
        import_klines(store, [DAY1, eth])
    with pytest.raises(ValueError, match="several intervals"):
        import_klines(store, [DAY1, five])
    with pytest.raises(FileNotFoundError):
        import_klines(store, tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no Binance kline files"):
        import_klines(store, empty)


def test_file_whose_candles_are_outside_its_named_period(tmp_path):
    wrong = tmp_path / "BTCUSDT-1m-2024-01-05.zip"
    wrong.write_bytes(DAY1.read_bytes())
    with pytest.raises(CandleValidationError, match="outside the period 2024-01-05") as err:
        read_kline_file(wrong)
    assert err.value.row == 1


def test_csv_bytes_with_crlf_and_bom(tmp_path):
    data = ("\ufeff" + HEADER + "\r\n" + "\r\n".join(csv_lines(DAY1)) + "\r\n").encode()
    path = tmp_path / "BTCUSDT-1m-2024-01-01.csv"
    path.write_bytes(data)
    pd.testing.assert_frame_equal(read_kline_file(path), read_kline_file(DAY1))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("BTCUSDT-1m-2024-01-01.csv", data)
    zipped = tmp_path / "BTCUSDT-1m-2024-01-01.zip"
    zipped.write_bytes(buf.getvalue())
    pd.testing.assert_frame_equal(read_kline_file(zipped), read_kline_file(DAY1))

"""The four ways the store lost data (issue 12), each with a test that failed before the fix.

1. two concurrent writers of one shard: the last rename won and a month was lost;
2. single-bit flips inside a shard passed ``validate``/``load`` with changed prices;
3. ``fill-gaps`` added a ``filled`` column even with nothing to fill, after which an import
   failed and suggested ``--overwrite``, which replaced the whole year with one month;
4. ``load()`` of a range the store never fetched returned 0 rows (or a part) silently, and
   ``start > end`` raised an ``IndexError``.
Plus the file-system errors of ``umc-data``: one line naming the path, never a traceback.
"""

import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from candles import make_candles

from umc_backtest.data import CandleStore, MarketDataError, ShardKey
from umc_backtest.data import cli as data_cli
from umc_backtest.data.errors import CoverageError

FIXTURES = Path(__file__).parent / "fixtures" / "binance_vision"
KEY = ShardKey("binance", "BTC/USDT", "1m", 2024)


# ------------------------------------------------------------- 1. concurrent writers
def _slow_import(root: str, path: str, delay: float) -> None:
    """``umc-data import`` in a child process whose write is slowed, widening the read-merge-write window."""
    from umc_backtest.data import store as store_module

    original = store_module.CandleStore._atomic_write

    def slow(path_, df, metadata):
        time.sleep(delay)
        original(path_, df, metadata)

    store_module.CandleStore._atomic_write = staticmethod(slow)
    sys.exit(data_cli.main(["import", "--root", root, path]))


def test_two_concurrent_imports_into_one_shard_lose_nothing(tmp_path):
    root = tmp_path / "store"
    day1, day2 = FIXTURES / "BTCUSDT-1m-2024-01-01.zip", FIXTURES / "BTCUSDT-1m-2024-01-02.zip"
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_slow_import, args=(str(root), str(day1), 1.0)),
        ctx.Process(target=_slow_import, args=(str(root), str(day2), 1.0)),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    df = CandleStore(root).read_shard(KEY)
    days = sorted(set(df["timestamp"].dt.day))
    assert days == [1, 2], f"an import was lost: stored days {days}"
    assert len(df) == 2 * 1440
    files = CandleStore(root).read_metadata(KEY)["extra"]["binance_vision_files"]
    assert files == ["BTCUSDT-1m-2024-01-01.zip", "BTCUSDT-1m-2024-01-02.zip"]


# ------------------------------------------------------------- 2. silent corruption
def test_single_bit_flips_never_pass_as_valid_data(tmp_path):
    store = CandleStore(tmp_path)
    original = make_candles(periods=3000, seed=3)
    store.write_shard(KEY, original, "ccxt")
    path = store.shard_path(KEY)
    clean = path.read_bytes()
    rng = np.random.default_rng(0)
    silent = []
    caught = 0
    # every flip lands in the data pages (after the 4-byte magic, before the footer)
    footer_len = int.from_bytes(clean[-8:-4], "little")
    data_end = len(clean) - 8 - footer_len
    for pos in rng.integers(4, data_end, 150):
        bit = int(rng.integers(0, 8))
        flipped = bytearray(clean)
        flipped[pos] ^= 1 << bit
        path.write_bytes(bytes(flipped))
        try:
            back = store.read_shard(KEY)
        except MarketDataError as exc:
            assert str(path) in str(exc)
            caught += 1
            continue
        if not back.equals(original):
            silent.append(int(pos))
    path.write_bytes(clean)
    assert not silent, f"{len(silent)} of 150 bit flips loaded as changed candles without an error (at {silent[:5]})"
    assert caught > 0


def test_corruption_error_says_which_shard_and_what_to_do(tmp_path):
    store = CandleStore(tmp_path)
    store.write_shard(KEY, make_candles(periods=3000, seed=3), "ccxt")
    path = store.shard_path(KEY)
    data = bytearray(path.read_bytes())
    data[200] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(MarketDataError) as info:
        store.read_shard(KEY)
    assert str(path) in str(info.value)
    assert "corrupt" in str(info.value) and "re-import" in str(info.value)
    # `umc-data validate` reports it and exits 1
    assert data_cli.main(["validate", "--root", str(tmp_path)]) == 1


# ------------------------------------------------------------- 3. fill-gaps, then import
def test_fill_gaps_with_nothing_to_fill_changes_nothing(tmp_path):
    store = CandleStore(tmp_path)
    store.write_shard(KEY, make_candles(periods=100), "ccxt")
    path = store.shard_path(KEY)
    before = path.read_bytes()
    info = store.fill_gaps(KEY)
    assert info.metadata["filled_rows"] == 0
    assert path.read_bytes() == before
    assert "filled" not in store.read_shard(KEY).columns


def test_import_after_fill_gaps_merges_and_keeps_every_stored_candle(tmp_path):
    root = tmp_path / "store"
    day1 = FIXTURES / "BTCUSDT-1m-2024-01-01.zip"
    day2 = FIXTURES / "BTCUSDT-1m-2024-01-02.zip"
    assert data_cli.main(["import", "--root", str(root), str(day1)]) == 0
    assert data_cli.main(["fill-gaps", "--root", str(root), "--exchange", "binance", "--symbol", "BTC/USDT",
                          "--timeframe", "1m", "--year", "2024"]) == 0
    assert data_cli.main(["import", "--root", str(root), str(day2)]) == 0
    df = CandleStore(root).read_shard(KEY)
    assert len(df) == 2 * 1440
    assert sorted(set(df["timestamp"].dt.day)) == [1, 2]


def test_real_candles_replace_filled_ones_on_merge(tmp_path):
    store = CandleStore(tmp_path)
    full = make_candles(periods=60)
    store.write_shard(KEY, full.drop(index=[20, 21]).reset_index(drop=True), "ccxt")
    assert store.fill_gaps(KEY).metadata["filled_rows"] == 2
    info = store.write_shard(KEY, full.iloc[15:30].reset_index(drop=True), "ccxt", mode="merge")
    assert info.metadata["filled_rows"] == 0
    back = store.read_shard(KEY)
    pd.testing.assert_frame_equal(back.drop(columns="filled"), full)


def test_no_message_suggests_dropping_candles_without_saying_so(tmp_path):
    store = CandleStore(tmp_path)
    store.write_shard(KEY, make_candles(periods=100), "ccxt")
    with pytest.raises(MarketDataError) as info:
        store.write_shard(KEY, make_candles(periods=10, seed=5), "ccxt")
    text = str(info.value)
    assert "--overwrite" in text and "100 stored candles" in text and "drop" in text
    with pytest.raises(MarketDataError) as info:
        store.write_shard(KEY, make_candles(periods=100, seed=5), "ccxt", mode="merge")  # conflicting prices
    text = str(info.value)
    assert "--overwrite" not in text or ("100 stored candles" in text and "drop" in text)


# ------------------------------------------------------------- 4. silent partial reads
def test_load_of_a_range_never_fetched_is_an_error(tmp_path):
    store = CandleStore(tmp_path)
    store.write_shard(KEY, make_candles(start="2024-01-01", periods=1440), "ccxt")
    with pytest.raises(CoverageError) as info:
        store.load("binance", "BTC/USDT", "1m", "2024-03-01", "2024-03-02")
    assert "2024-03-01" in str(info.value) and "--allow-partial" in str(info.value)
    with pytest.raises(CoverageError, match=r"50\.0% of the range"):
        store.load("binance", "BTC/USDT", "1m", "2024-01-01 12:00", "2024-01-02 12:00")


def test_load_allow_partial_returns_the_covered_part_and_says_how_much(tmp_path):
    store = CandleStore(tmp_path)
    store.write_shard(KEY, make_candles(start="2024-01-01", periods=1440), "ccxt")
    df = store.load("binance", "BTC/USDT", "1m", "2024-01-01 12:00", "2024-01-02 12:00", allow_partial=True)
    assert len(df) == 720
    report = store.coverage("binance", "BTC/USDT", "1m", "2024-01-01 12:00", "2024-01-02 12:00")
    assert report.fraction == pytest.approx(0.5)
    assert report.missing == [(pd.Timestamp("2024-01-02", tz="UTC"), pd.Timestamp("2024-01-02 12:00", tz="UTC"))]


def test_load_with_start_after_end_is_a_clear_error(tmp_path):
    store = CandleStore(tmp_path)
    store.write_shard(KEY, make_candles(periods=100), "ccxt")
    with pytest.raises(ValueError, match=r"start .* is after end"):
        store.load("binance", "BTC/USDT", "1m", "2024-01-02", "2024-01-01")


# ------------------------------------------------------------- file-system errors of the CLI
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "umc_backtest.data.cli", *args], capture_output=True, text=True,
                          timeout=120)


def _one_line_error(result, path_text):
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("umc-data")]
    assert len(lines) == 1, result.stderr
    assert path_text in lines[0]
    return lines[0]


def test_cli_missing_path_and_empty_folder(tmp_path):
    _one_line_error(_cli("import", "--root", str(tmp_path / "s"), str(tmp_path / "nope.zip")), "nope.zip")
    (tmp_path / "empty").mkdir()
    _one_line_error(_cli("import", "--root", str(tmp_path / "s"), str(tmp_path / "empty")), "empty")
    _one_line_error(_cli("inspect", "--root", str(tmp_path / "empty")), "empty")


def test_cli_root_that_is_a_file(tmp_path):
    root = tmp_path / "file"
    root.write_text("x")
    _one_line_error(_cli("synth", "--root", str(root), "--year", "2024"), str(root))


def test_cli_read_only_root(tmp_path):
    # /proc is read-only for everyone, root included (chmod does not stop root)
    root = "/proc/self/umc_store"
    _one_line_error(_cli("import", "--root", root, str(FIXTURES / "BTCUSDT-1m-2024-01-01.zip")), root)


def test_cli_disk_full_names_the_path_and_keeps_the_old_shard(tmp_path, monkeypatch, capsys):
    import errno

    import pyarrow.parquet as pq

    root = tmp_path / "store"
    assert data_cli.main(["import", "--root", str(root), str(FIXTURES / "BTCUSDT-1m-2024-01-01.zip")]) == 0
    path = CandleStore(root).shard_path(KEY)
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    assert data_cli.main(["import", "--root", str(root), str(FIXTURES / "BTCUSDT-1m-2024-01-02.zip")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and str(path.parent) in err[0]
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_download_with_end_not_after_start_is_an_error(tmp_path):
    result = _cli("download", "--root", str(tmp_path), "--start", "2024-02-01", "--end", "2024-01-01")
    line = _one_line_error(result, "2024-01-01")
    assert "--end" in line

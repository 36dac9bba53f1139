"""The umc-data CLI, run as a real subprocess (installed entry point)."""

import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from umc_backtest.data import CandleStore, ShardKey

pytestmark = pytest.mark.e2e


def umc_data(*args, cwd=None):
    exe = shutil.which("umc-data")
    cmd = [exe] if exe else [sys.executable, "-m", "umc_backtest.data.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_lists_every_command():
    out = umc_data("--help")
    assert out.returncode == 0
    for command in ("download", "import", "synth", "inspect", "validate", "fill-gaps"):
        assert command in out.stdout


def test_bad_usage_exits_2():
    assert umc_data("synth", "--year", "not-a-year").returncode == 2
    assert umc_data().returncode == 2


@pytest.mark.slow
def test_synth_inspect_validate_full_year(tmp_path):
    out = umc_data("synth", "--root", tmp_path, "--year", "2023", "--seed", "3")
    assert out.returncode == 0, out.stderr
    assert "525600 synthetic rows" in out.stdout
    key = ShardKey("synthetic", "BTC/USDT", "1m", 2023)
    meta = CandleStore(tmp_path).read_metadata(key)
    assert meta["synthetic"] is True and meta["rows"] == 525_600

    out = umc_data("inspect", "--root", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "synthetic BTC/USDT 1m 2023" in out.stdout and "0 missing candles" in out.stdout

    out = umc_data("validate", "--root", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "OK   synthetic BTC/USDT 1m 2023: 525600 rows" in out.stdout

    # Refuses to replace the shard unless asked.
    before = CandleStore(tmp_path).shard_path(key).read_bytes()
    out = umc_data("synth", "--root", tmp_path, "--year", "2023", "--seed", "4")
    assert out.returncode == 1
    assert "--overwrite" in out.stderr
    assert CandleStore(tmp_path).shard_path(key).read_bytes() == before


def test_validate_reports_corrupt_shard_and_exits_1(tmp_path):
    from candles import make_candles

    store = CandleStore(tmp_path)
    key = ShardKey("binance", "BTC/USDT", "1m", 2024)
    store.write_shard(key, make_candles(periods=50), "ccxt")
    path = store.shard_path(key)
    table = pq.read_table(path)
    # Same metadata, one row duplicated: a shard damaged outside the store.
    pq.write_table(table.take([0, 1, 1, *range(3, 50)]), path)
    out = umc_data("validate", "--root", tmp_path)
    assert out.returncode == 1
    assert "FAIL binance BTC/USDT 1m 2024" in out.stdout
    assert "row 2" in out.stdout and "duplicate timestamp" in out.stdout


def test_validate_fail_on_gaps(tmp_path):
    from candles import make_candles

    store = CandleStore(tmp_path)
    store.write_shard(
        ShardKey("binance", "BTC/USDT", "1m", 2024), make_candles(periods=50).drop(index=[20]), "ccxt"
    )
    assert umc_data("validate", "--root", tmp_path).returncode == 0
    out = umc_data("validate", "--root", tmp_path, "--fail-on-gaps")
    assert out.returncode == 1 and "1 missing candles in 1 gaps" in out.stdout


def test_inspect_empty_root_says_what_to_do(tmp_path):
    out = umc_data("inspect", "--root", tmp_path)
    assert out.returncode == 1
    assert "no shards match" in out.stderr and "synth" in out.stderr


def test_import_of_missing_path_fails_clearly(tmp_path):
    out = umc_data("import", tmp_path / "nope", "--root", tmp_path)
    assert out.returncode == 1
    assert "nope" in out.stderr

"""Batch backtests as real Ray tasks: failures stay in their task, results equal serial runs, a killed
worker is retried and counted once, reruns reuse stored results; the CLIs' bad-input errors."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from candles import make_candles

from umc_backtest import cli as backtest_cli
from umc_backtest.batch import run_batch, run_serial
from umc_backtest.data import CandleStore, ShardKey
from umc_backtest.engine.config import EngineConfig
from umc_backtest.runner import DataRange, RunSpec

pytestmark = [pytest.mark.ray]

DIE_ONCE = '''
import os, signal
from dataclasses import dataclass
from pathlib import Path
import numpy as np
from umc_backtest.engine.strategies import SignalStrategy

@dataclass(frozen=True)
class DieOnce(SignalStrategy):
    """Kills its own worker process the first time it runs, then behaves like buy and hold."""
    name = "die_once"
    marker_dir: str = ""
    def targets(self, data):
        d = Path(self.marker_dir)
        attempts = len(list(d.glob("attempt-*")))
        (d / f"attempt-{attempts}-{os.getpid()}").write_text("")
        if attempts == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return np.ones(data.close.size)
'''


def _store(tmp_path, years=(2021, 2022, 2023), periods=3_000):
    root = tmp_path / "store"
    store = CandleStore(root)
    for i, year in enumerate(years):
        store.write_shard(ShardKey("binance", "BTC/USDT", "1m", year), make_candles(f"{year}-03-01", periods, seed=i),
                          "ccxt")
    return root, store


def _specs(root, out, years, strategies, engine=None):
    engine = engine or EngineConfig()
    specs = []
    for year in years:
        data = DataRange("binance", "BTC/USDT", "1m", start=f"{year}-03-01", end=f"{year}-03-03")
        for name, params in strategies:
            specs.append(RunSpec(root=str(root), data=data, strategy=name, params=tuple(sorted(params.items())),
                                 engine=engine, out_root=str(out)))
    return specs


def test_corrupt_shard_fails_its_own_task_and_the_rest_equal_serial_runs(ray_local, tmp_path):
    root, store = _store(tmp_path)
    path = store.shard_path(ShardKey("binance", "BTC/USDT", "1m", 2022))
    data = bytearray(path.read_bytes())
    data[300] ^= 0x04
    path.write_bytes(bytes(data))
    strategies = [("buy_and_hold", {}), ("sma", {"fast": 10, "slow": 40})]
    specs = _specs(root, tmp_path / "ray", [2021, 2022, 2023], strategies)
    outcome = run_batch(specs, tmp_path / "ray" / "summary", progress=False, plot=False)
    status = {r["name"]: r["status"] for r in outcome.rows}
    failed = [r for r in outcome.rows if r["status"] == "failed"]
    assert len(failed) == 2 and all("2022" in r["name"] for r in failed)
    assert all(str(path) in r["error"] and "corrupt" in r["error"] for r in failed)
    assert sum(s == "ok" for s in status.values()) == 4
    table = pd.read_parquet(outcome.summary_dir / "summary.parquet")
    assert len(table) == 6 and set(table["status"]) == {"ok", "failed"}
    report = (outcome.summary_dir / "report.md").read_text()
    assert "## Failures" in report and "2022" in report
    # the same runs done serially in this process give the same numbers
    ok_specs = [s for s in _specs(root, tmp_path / "serial", [2021, 2023], strategies)]
    serial = {r["name"]: r for r in run_serial(ok_specs, plot=False)}
    for row in outcome.rows:
        if row["status"] == "ok":
            for metric in ("total_return", "sharpe", "num_trades", "fees_paid", "final_equity"):
                assert row[metric] == pytest.approx(serial[row["name"]][metric], rel=1e-12, nan_ok=True)


def test_killed_worker_is_retried_and_the_run_counted_once(ray_local, tmp_path):
    root, _ = _store(tmp_path, years=(2021,))
    strategy_file = tmp_path / "die_once.py"
    strategy_file.write_text(DIE_ONCE)
    markers = tmp_path / "markers"
    markers.mkdir()
    specs = _specs(root, tmp_path / "out", [2021], [(f"{strategy_file}:DieOnce", {"marker_dir": str(markers)}),
                                                      ("buy_and_hold", {})])
    outcome = run_batch(specs, tmp_path / "out" / "summary", progress=False, plot=False)
    attempts = sorted(markers.iterdir())
    assert len(attempts) == 2, "the task ran once, was killed, and ran once more"
    assert attempts[0].name.split("-")[2] != attempts[1].name.split("-")[2], "the retry ran in a new worker process"
    assert [r["status"] for r in outcome.rows] == ["ok", "ok"]
    table = pd.read_parquet(outcome.summary_dir / "summary.parquet")
    assert len(table) == 2 and table["name"].is_unique
    die_dir = Path(outcome.rows[0]["out_dir"])
    assert json.loads((die_dir / "metrics.json").read_text())["strategy"]["strategy"] == "die_once"
    assert not [p for p in die_dir.parent.iterdir() if p.name.startswith(".")], "no half-written folder left"
    # the killed run's result equals buy and hold's (it is buy and hold once it survives)
    assert outcome.rows[0]["final_equity"] == pytest.approx(outcome.rows[1]["final_equity"], rel=1e-12)


def test_rerun_reuses_stored_results_unless_overwrite(ray_local, tmp_path):
    root, _ = _store(tmp_path, years=(2021,))
    specs = _specs(root, tmp_path / "out", [2021], [("buy_and_hold", {})])
    first = run_batch(specs, tmp_path / "out" / "summary", progress=False, plot=False)
    metrics_file = Path(first.rows[0]["out_dir"]) / "metrics.json"
    stamp = metrics_file.stat().st_mtime_ns
    again = run_batch(specs, tmp_path / "out" / "summary", progress=False, plot=False)
    assert again.rows[0]["status"] == "reused" and metrics_file.stat().st_mtime_ns == stamp
    assert again.rows[0]["final_equity"] == first.rows[0]["final_equity"]
    forced = run_batch(specs, tmp_path / "out" / "summary", progress=False, plot=False, overwrite=True)
    assert forced.rows[0]["status"] == "ok" and metrics_file.stat().st_mtime_ns != stamp


def test_task_names_say_what_they_are(ray_local, tmp_path):
    root, _ = _store(tmp_path, years=(2021,))
    specs = _specs(root, tmp_path / "out", [2021], [("sma", {"fast": 20, "slow": 50})])
    outcome = run_batch(specs, tmp_path / "out" / "summary", progress=False, plot=False)
    # the name Ray gave the task that ran (what the dashboard's task table shows)
    assert outcome.rows[0]["task_name"] == "backtest BTC-USDT 2021-03-01..2021-03-03 sma(20,50)"


# --------------------------------------------------------------------- CLI bad inputs
def _run(capsys, *args):
    code = backtest_cli.main(["run", *map(str, args)])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.fixture
def one_day_store(tmp_path):
    root = tmp_path / "store"
    CandleStore(root).write_shard(ShardKey("binance", "BTC/USDT", "1m", 2024), make_candles("2024-01-01", 1440), "ccxt")
    return root


@pytest.mark.parametrize(("extra", "match"), [
    (["--year", "2023"], "no shard for binance BTC/USDT 1m year(s) [2023]"),
    (["--start", "2024-01-01", "--end", "2024-01-01"], "is not before end"),
    (["--start", "2024-01-01", "--end", "2024-02-01"], "3.2% of the range is stored"),
    (["--start", "2024-13-01", "--end", "2024-02-01"], "bad date in range '2024-13-01'"),
    (["--start", "2024-01-01", "--end", "2024-01-02", "--strategy", "magic"], "unknown strategy 'magic'"),
    (["--start", "2024-01-01", "--end", "2024-01-02", "--fast", "50", "--slow", "20"], "fast=50 must be smaller than slow=20"),
    (["--start", "2024-01-01", "--end", "2024-01-02", "--fee-taker", "2"], "fee_taker=2.0 is outside"),
    (["--year", "2024"], "--allow-partial"),
])
def test_run_bad_inputs_get_one_line_errors(capsys, one_day_store, tmp_path, extra, match):
    code, err = _run(capsys, "--root", one_day_store, "--out", tmp_path / "res", *extra)
    assert code == 1
    assert len(err.splitlines()) == 1 and err.startswith("umc-backtest run: error:")
    assert match in err
    assert not (tmp_path / "res").exists()


def test_run_missing_shard_and_corrupt_parquet(capsys, tmp_path, one_day_store):
    code, err = _run(capsys, "--root", tmp_path / "empty", "--year", "2024", "--out", tmp_path / "r")
    assert code == 1 and "no shards for binance BTC/USDT 1m" in err
    path = CandleStore(one_day_store).shard_path(ShardKey("binance", "BTC/USDT", "1m", 2024))
    path.write_bytes(path.read_bytes()[:-40] + b"\0" * 40)
    code, err = _run(capsys, "--root", one_day_store, "--start", "2024-01-01", "--end", "2024-01-02", "--out", tmp_path / "r")
    assert code == 1 and str(path) in err and "corrupt" in err


def test_run_unwritable_output_folder(capsys, one_day_store):
    code, err = _run(capsys, "--root", one_day_store, "--start", "2024-01-01", "--end", "2024-01-02",
                     "--out", "/proc/self/umc_result")
    assert code == 1 and "/proc/self" in err and "--out" in err and len(err.splitlines()) == 1


def test_run_writes_every_output_and_refuses_to_replace_without_overwrite(capsys, one_day_store, tmp_path):
    out = tmp_path / "res"
    code = backtest_cli.main(["run", "--root", str(one_day_store), "--start", "2024-01-01", "--end", "2024-01-02",
                              "--strategy", "sma", "--fast", "10", "--slow", "30", "--out", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["equity.parquet", "metrics.json", "orders.parquet", "plot.png",
                                                     "trades.parquet"]
    doc = json.loads((out / "metrics.json").read_text())
    eq = pd.read_parquet(out / "equity.parquet")
    assert doc["metrics"]["final_equity"] == pytest.approx(eq["equity"].iloc[-1])
    np.testing.assert_allclose(eq["equity"], eq["cash"] + eq["units"] * eq["close"])
    assert doc["run"]["coverage"] == 1.0 and doc["strategy"]["label"] == "sma(10,30)"
    before = (out / "metrics.json").read_bytes()
    code, err = _run(capsys, "--root", one_day_store, "--start", "2024-01-01", "--end", "2024-01-02", "--out", out)
    assert code == 1 and "--overwrite" in err and (out / "metrics.json").read_bytes() == before


def test_allow_partial_runs_and_reports_coverage(capsys, one_day_store, tmp_path):
    out = tmp_path / "res"
    code = backtest_cli.main(["run", "--root", str(one_day_store), "--start", "2024-01-01", "--end", "2024-01-03",
                              "--allow-partial", "--no-plot", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["run"]["coverage"] == pytest.approx(0.5)
    assert doc["run"]["missing"] == [["2024-01-02T00:00:00+00:00", "2024-01-03T00:00:00+00:00"]]


def test_batch_cli_bad_inputs(capsys, one_day_store, tmp_path):
    from umc_backtest.batch_cli import main

    def batch(*args):
        code = main(["--root", str(one_day_store), "--out", str(tmp_path / "b"), *args])
        return code, capsys.readouterr().err.strip()

    assert batch("--preset", "nope")[1].endswith("presets: ['demo', 'smoke', 'umc']")
    code, err = batch("--dataset", "binance:2024-01-01", "--strategy", "buy_and_hold")
    assert code == 1 and "expected EXCHANGE:YEAR or EXCHANGE:START:END" in err
    code, err = batch("--dataset", "binance:2024-01-01:2024-13-01", "--strategy", "buy_and_hold")
    assert code == 1 and "bad date in range" in err
    code, err = batch("--dataset", "binance:2024", "--strategy", "sma:fast=50;slow=20")
    assert code == 1 and "fast=50 must be smaller than slow=20" in err
    code, err = batch("--dataset", "binance:2024", "--grid", "sma:fast=")
    assert code == 1 and "--grid" in err
    code, err = main(["--root", str(one_day_store), "--out", "/proc/self/batch", "--dataset", "binance:2024"]), \
        capsys.readouterr().err
    assert code == 1 and "/proc/self/batch" in err and "--out" in err

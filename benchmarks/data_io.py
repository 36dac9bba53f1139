"""Data-I/O benchmark: a year of 1-minute candles as a Parquet shard vs CSV.

    python benchmarks/data_io.py [--year 2023] [--repeat 5] [--vision-dir DIR]

Prints one table: shard size, write time, read time (raw Parquet and the
store's validated read), against a CSV baseline of the same frame measured in
the same process (ratio = CSV time / Parquet time). With ``--vision-dir`` it
also times importing real Binance Vision monthly dumps. Goal: a validated read
of a year shard in <= 0.1 s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from umc_backtest.data import CandleStore, ShardKey
from umc_backtest.data.synthetic import generate_candles


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median wall time of ``repeat`` calls (after one warm-up call) and the last result."""
    result = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--year", type=int, default=2023)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--vision-dir", type=Path, help="folder of Binance Vision kline ZIPs to time an import")
    args = parser.parse_args()

    t0 = time.perf_counter()
    candles = generate_candles(f"{args.year}-01-01", end=f"{args.year + 1}-01-01", seed=0)
    generate_s = time.perf_counter() - t0
    rows = len(candles)
    key = ShardKey("synthetic", "BTC/USDT", "1m", args.year)

    with tempfile.TemporaryDirectory() as tmp:
        store = CandleStore(tmp)
        write_s, _ = timed(lambda: store.write_shard(key, candles, "synthetic", mode="overwrite"), args.repeat)
        path = store.shard_path(key)
        raw_s, _ = timed(lambda: pq.read_table(path).to_pandas(), args.repeat)
        read_s, back = timed(lambda: store.read_shard(key), args.repeat)
        assert len(back) == rows
        csv_path = Path(tmp) / "year.csv"
        csv_write_s, _ = timed(lambda: candles.to_csv(csv_path, index=False), 1)
        csv_read_s, _ = timed(
            lambda: pd.read_csv(csv_path, parse_dates=["timestamp"], engine="pyarrow"), args.repeat
        )
        shard_mb = path.stat().st_size / 1e6
        csv_mb = csv_path.stat().st_size / 1e6

        print(f"data I/O: one year of 1m candles ({rows:,} rows), median of {args.repeat}")
        print(f"{'measure':<34}{'parquet shard':>14}{'csv baseline':>14}{'ratio':>8}")
        print(f"{'size (MB)':<34}{shard_mb:>14.2f}{csv_mb:>14.2f}{csv_mb / shard_mb:>8.1f}")
        print(f"{'write (s)':<34}{write_s:>14.3f}{csv_write_s:>14.3f}{csv_write_s / write_s:>8.1f}")
        print(f"{'read, raw (s)':<34}{raw_s:>14.3f}{csv_read_s:>14.3f}{csv_read_s / raw_s:>8.1f}")
        print(f"{'read, validated store API (s)':<34}{read_s:>14.3f}{csv_read_s:>14.3f}{csv_read_s / read_s:>8.1f}")
        print(f"{'synthetic year generation (s)':<34}{generate_s:>14.3f}")
        goal = "met" if read_s <= 0.1 else "NOT met"
        print(f"goal: validated read of a year shard <= 0.1 s: {goal} ({read_s:.3f} s)")

    if args.vision_dir is not None:
        from umc_backtest.data.binance_vision import import_klines

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            infos = import_klines(CandleStore(tmp), [args.vision_dir])
            import_s = time.perf_counter() - t0
            for shard in infos:
                meta = shard.metadata
                print(
                    f"import {args.vision_dir}: {shard.key} {meta['rows']:,} rows, "
                    f"{meta['gaps']['missing_candles']} missing candles, {import_s:.2f} s"
                )


if __name__ == "__main__":
    main()

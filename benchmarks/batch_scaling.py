"""Batch scaling: N year backtests as Ray tasks on a local Ray with 1 worker CPU vs 2, in one process.

    python benchmarks/batch_scaling.py [--runs 8] [--repeats 2] [--year 2023] [--no-plots]

Makes one synthetic year shard in a temporary store, then runs the same batch (an SMA grid over
that year, each run reading the shard, backtesting, writing its outputs) on a fresh local Ray with
``num_cpus=1`` and with ``num_cpus=2``, alternating, ``--repeats`` times; every run is forced
(``overwrite``), so both configurations do the same work. Reports median wall times (Ray start-up
excluded) and the speed-up. Goal (issue 12): >= 1.8x on 2 workers.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from umc_backtest.batch import run_batch
from umc_backtest.data import CandleStore
from umc_backtest.data.synthetic import write_synthetic_year
from umc_backtest.engine.config import EngineConfig
from umc_backtest.runner import DataRange, RunSpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--year", type=int, default=2023)
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args()

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        write_synthetic_year(CandleStore(root), args.year, seed=args.year)
        data = DataRange("synthetic", "BTC/USDT", "1m", year=args.year)
        grid = [(f, s) for s in (50, 100, 200, 400, 800) for f in (5, 10, 20, 40) if f < s][: args.runs]
        specs = [RunSpec(root=str(root), data=data, strategy="sma", params=(("fast", f), ("slow", s)),
                         engine=EngineConfig(), out_root=str(Path(tmp) / "out")) for f, s in grid]
        print(f"{len(specs)} backtests of a synthetic year ({args.year}, 525,600 one-minute bars) per batch; "
              f"plots {'off' if args.no_plots else 'on'}")
        times: dict[int, list[float]] = {1: [], 2: []}
        for rep in range(args.repeats):
            for cpus in (1, 2) if rep % 2 == 0 else (2, 1):
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
                ray.get([ray.remote(lambda: None).remote() for _ in range(cpus)])  # workers up before timing
                t0 = time.perf_counter()
                outcome = run_batch(specs, Path(tmp) / "summary", overwrite=True, plot=not args.no_plots,
                                    progress=False)
                times[cpus].append(time.perf_counter() - t0)
                ray.shutdown()
                assert not outcome.failures, outcome.failures
                print(f"  repeat {rep + 1}: {cpus} worker(s): {times[cpus][-1]:.2f} s")
        t1, t2 = statistics.median(times[1]), statistics.median(times[2])
        print()
        print("| workers | batch wall time (median) | runs/s | speed-up |")
        print("|---|---|---|---|")
        print(f"| 1 | {t1:.2f} s | {len(specs) / t1:.2f} | 1.00x |")
        print(f"| 2 | {t2:.2f} s | {len(specs) / t2:.2f} | {t1 / t2:.2f}x |")
        print(f"goal >= 1.8x: {'met' if t1 / t2 >= 1.8 else 'NOT met'} ({t1 / t2:.2f}x)")


if __name__ == "__main__":
    main()

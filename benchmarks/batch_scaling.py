"""Batch scaling: N year backtests as Ray tasks on a local Ray with 1 worker CPU vs 2, in one process.

    python benchmarks/batch_scaling.py [--runs 16] [--repeats 2] [--year 2023] [--no-plots]

Makes one synthetic year shard in a temporary store, then runs the same batch (an SMA grid over
that year, each run reading the shard, backtesting, writing its outputs) on a fresh local Ray with
``num_cpus=1`` and with ``num_cpus=2``, alternating, ``--repeats`` times; every run is forced
(``overwrite``), so both configurations do the same work. Reports median wall times (Ray start-up
excluded; workers warmed, i.e. their imports done, unless ``--cold``) and the speed-up. Goal
(issue 12): >= 1.8x on 2 workers.
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


def _warm_body() -> None:
    import time

    import matplotlib.pyplot  # noqa: F401
    import numpy as np

    from umc_backtest.engine import kernel
    from umc_backtest.engine.config import EngineConfig

    x = np.ones(3)
    kernel.simulate(x, x, x, x, EngineConfig())
    time.sleep(0.2)  # keep this worker busy so the next warm-up task lands on another one


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--year", type=int, default=2023)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--cold", action="store_true", help="do not warm the workers' imports before timing")
    args = p.parse_args()

    import ray

    global _warm
    _warm = ray.remote(num_cpus=1)(_warm_body)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        write_synthetic_year(CandleStore(root), args.year, seed=args.year)
        data = DataRange("synthetic", "BTC/USDT", "1m", year=args.year)
        grid = [(f, s) for s in (50, 100, 200, 400, 800, 1600) for f in (5, 10, 20, 40) if f < s][: args.runs]
        specs = [RunSpec(root=str(root), data=data, strategy="sma", params=(("fast", f), ("slow", s)),
                         engine=EngineConfig(), out_root=str(Path(tmp) / "out")) for f, s in grid]
        print(f"{len(specs)} backtests of a synthetic year ({args.year}, 525,600 one-minute bars) per batch; "
              f"plots {'off' if args.no_plots else 'on'}")
        times: dict[int, list[float]] = {1: [], 2: []}
        tasks: dict[int, list[float]] = {1: [], 2: []}
        for rep in range(args.repeats):
            for cpus in (1, 2) if rep % 2 == 0 else (2, 1):
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
                # workers up and their imports done before timing (a cluster that ran a batch before has warm
                # workers); --cold times the first batch of fresh workers instead
                if not args.cold:
                    ray.get([_warm.remote() for _ in range(4 * cpus)])
                t0 = time.perf_counter()
                outcome = run_batch(specs, Path(tmp) / "summary", overwrite=True, plot=not args.no_plots,
                                    progress=False)
                times[cpus].append(time.perf_counter() - t0)
                tasks[cpus].append(outcome.tasks_s)
                ray.shutdown()
                assert not outcome.failures, outcome.failures
                print(f"  repeat {rep + 1}: {cpus} worker(s): tasks {outcome.tasks_s:.2f} s + summary on the driver "
                      f"{outcome.summary_s:.2f} s")
        k1, k2 = statistics.median(tasks[1]), statistics.median(tasks[2])
        t1, t2 = statistics.median(times[1]), statistics.median(times[2])
        print()
        print("| workers | backtest tasks (median) | runs/s | speed-up | whole batch incl. summary report | speed-up |")
        print("|---|---|---|---|---|---|")
        print(f"| 1 | {k1:.2f} s | {len(specs) / k1:.2f} | 1.00x | {t1:.2f} s | 1.00x |")
        print(f"| 2 | {k2:.2f} s | {len(specs) / k2:.2f} | {k1 / k2:.2f}x | {t2:.2f} s | {t1 / t2:.2f}x |")
        print(f"goal >= 1.8x on the backtest tasks: {'met' if k1 / k2 >= 1.8 else 'NOT met'} ({k1 / k2:.2f}x); "
              f"the summary report is written once, on the driver, and does not scale with workers")


if __name__ == "__main__":
    main()

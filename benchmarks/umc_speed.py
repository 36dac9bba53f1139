"""UMC agent speed: the full agent with online learning over a synthetic year of 1-minute bars, one core.

    python benchmarks/umc_speed.py [--reference-bars 100000] [--year 2023]

Runs the agent (per-bar decision fused in one Numba call, MarketGI learning every ``update_every``
bars on replay minibatches, Echo population, macrostates, diagnostics) through the engine over
525,600 bars, after a month of history for its scaling and macrostate fit; then the same agent with
its per-bar decision in plain NumPy (``fused=False``, the reference loop) on the first
``--reference-bars`` bars of the same window, in the same process. torch uses one thread.
Goal (issue 13): the year in <= 120 s on one core.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from umc_backtest.data.synthetic import generate_candles
from umc_backtest.engine.backtest import prepare_market_data, run_backtest
from umc_backtest.engine.config import EngineConfig
from umc_backtest.engine.strategies import make_strategy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--year", type=int, default=2023)
    p.add_argument("--reference-bars", type=int, default=100_000)
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    df = generate_candles(f"{args.year - 1}-12-01", end=f"{args.year + 1}-01-01", seed=args.year)
    history = 31 * 1440
    data = prepare_market_data(df, "1m", warmup=history)
    print(f"synthetic {args.year}: {data.bars:,} bars evaluated after {history:,} bars of history; one torch thread")
    # compile and warm once on a small slice (Numba caches to disk; this keeps compilation out of the timing)
    run_backtest(prepare_market_data(df.iloc[: history + 2000], "1m", warmup=history), make_strategy("umc"), EngineConfig())

    t0 = time.perf_counter()
    res = run_backtest(data, make_strategy("umc", {"fused": True}), EngineConfig())
    t_year = time.perf_counter() - t0
    m = res.extra["metrics"]
    ref_df = df.iloc[: history + args.reference_bars]
    ref_data = prepare_market_data(ref_df, "1m", warmup=history)
    t0 = time.perf_counter()
    ref = run_backtest(ref_data, make_strategy("umc", {"fused": False}), EngineConfig())
    t_ref = time.perf_counter() - t0
    fused_rate = data.bars / t_year
    ref_rate = ref_data.bars / t_ref
    print()
    print("| agent loop | bars | time | bars/s | a year (525,600 bars) |")
    print("|---|---|---|---|---|")
    print(f"| fused (Numba per-bar decision) | {data.bars:,} | {t_year:.1f} s | {fused_rate:,.0f} | {t_year:.1f} s measured |")
    print(f"| reference (NumPy per-bar decision) | {ref_data.bars:,} | {t_ref:.1f} s | {ref_rate:,.0f} | "
          f"{525_600 / ref_rate:.0f} s extrapolated |")
    print(f"speed-up {fused_rate / ref_rate:.2f}x; goal <= 120 s for the year: "
          f"{'met' if t_year <= 120 else 'NOT met'} ({t_year:.1f} s)")
    print(f"learning: {int(m['updates']):,} MarketGI updates (batch 32, every 32 bars); free energy "
          f"{m['free_energy_first']:.2f} -> {m['free_energy_last']:.2f}; lambda mean {m['lambda_mean']:.3f}; "
          f"leakage {m['leakage']}; regimes seen {int(m['regimes_seen'])}")
    print(f"the reference run on its slice: {ref.metrics['num_trades']:.0f} closed trades (same agent, same seed)")


if __name__ == "__main__":
    main()

"""Backtest-engine speed: the SMA crossover over a full year of 1-minute bars, ours vs backtesting.py
and vectorbt, in one process, on the same candles, with a check that all three make the same trades.

    python benchmarks/backtest_speed.py [--fast 20 --slow 50] [--repeat 7] [--bt-repeat 1] [--no-vectorbt]

Needs ``backtesting`` (a test dependency) and ``vectorbt`` (``pip install -e ".[benchmark]"``).
Each library computes its own signals, runs its accounting and computes its statistics:
- ours: ``run_backtest`` (SMA signal, Numba kernel, round trips, metrics), risk limits off;
- backtesting.py: ``FractionalBacktest(...).run()`` of the same rule (long while SMA fast > slow);
- vectorbt: rolling means + ``Portfolio.from_signals`` (entries/exits shifted one bar, filled at the
  next open) + ``.stats()``.
Times are medians after a warm-up call (Numba compiles once). Goal (issue 12): <= 50 ms for the
year, >= 100x faster than backtesting.py, faster than vectorbt.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import pandas as pd
from data_io import timed  # benchmarks/ is on sys.path when run as a script

from umc_backtest.data.synthetic import generate_candles
from umc_backtest.engine.backtest import prepare_market_data, run_backtest
from umc_backtest.engine.config import EngineConfig, RiskLimits
from umc_backtest.engine.features import WARMUP_BARS
from umc_backtest.engine.strategies import SMACrossover


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--year", type=int, default=2023)
    p.add_argument("--fast", type=int, default=20)
    p.add_argument("--slow", type=int, default=50)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--bt-repeat", type=int, default=1, help="backtesting.py repeats (it is slow)")
    p.add_argument("--no-vectorbt", action="store_true")
    args = p.parse_args()

    df = generate_candles(f"{args.year}-01-01", end=f"{args.year + 1}-01-01", seed=args.year)
    n = len(df)
    fee, exposure = 0.001, 0.5
    print(f"{n:,} one-minute bars (synthetic {args.year}), SMA({args.fast},{args.slow}), fee {fee}, "
          f"{exposure:.0%} of equity per entry, no slippage (backtesting.py slips entries only), risk limits off")
    data = prepare_market_data(df, "1m")
    config = EngineConfig(fee_taker=fee, slippage=0.0, risk=RiskLimits.off())
    strategy = SMACrossover(args.fast, args.slow, exposure=exposure)
    t_ours, ours = timed(lambda: run_backtest(data, strategy, config), args.repeat)
    ts = pd.DatetimeIndex(df["timestamp"]).tz_localize(None)
    our_entries = ts[WARMUP_BARS + ours.trades.entry_bar]
    our_exits = ts[WARMUP_BARS + ours.trades.exit_bar]
    rows = [("ours (NumPy + Numba)", t_ours, len(our_entries), ours.metrics["final_equity"], "-")]

    # backtesting.py
    from backtesting import Strategy
    from backtesting.lib import FractionalBacktest

    fast_w, slow_w = args.fast, args.slow

    class Sma(Strategy):
        def init(self):
            close = pd.Series(self.data.Close)
            self.f = self.I(lambda: close.rolling(fast_w).mean().to_numpy())
            self.s = self.I(lambda: close.rolling(slow_w).mean().to_numpy())

        def next(self):
            if len(self.data) - 1 < WARMUP_BARS:
                return
            if self.f[-1] > self.s[-1]:
                if not self.position:
                    self.buy(size=exposure)
            elif self.position:
                self.position.close()

    bt_data = df.set_index(ts)[["open", "high", "low", "close", "volume"]]
    bt_data.columns = ["Open", "High", "Low", "Close", "Volume"]

    def run_bt():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bt = FractionalBacktest(bt_data, Sma, cash=10_000.0, commission=fee, finalize_trades=False)
            return bt.run()

    t0 = time.perf_counter()
    stats = run_bt()
    bt_times = [time.perf_counter() - t0]
    for _ in range(args.bt_repeat - 1):
        t0 = time.perf_counter()
        stats = run_bt()
        bt_times.append(time.perf_counter() - t0)
    t_bt = statistics.median(bt_times)
    tr = stats["_trades"]
    same_bt = (len(tr) == len(our_entries) and np.array_equal(tr["EntryTime"].to_numpy(), our_entries.to_numpy())
               and np.array_equal(tr["ExitTime"].to_numpy(), our_exits.to_numpy()))
    rows.append(("backtesting.py 0.6 (FractionalBacktest)", t_bt, len(tr), float(stats["Equity Final [$]"]),
                 "same trades" if same_bt else "TRADES DIFFER"))

    if not args.no_vectorbt:
        import vectorbt as vbt

        close_s = df.set_index(ts)["close"]
        open_s = df.set_index(ts)["open"]

        def run_vbt():
            fast_ma = close_s.rolling(fast_w).mean()
            slow_ma = close_s.rolling(slow_w).mean()
            long = (fast_ma > slow_ma).to_numpy().copy()
            long[:WARMUP_BARS] = False
            prev = np.r_[False, long[:-1]]
            entries = pd.Series(np.r_[False, (long & ~prev)[:-1]], index=ts)  # decided at t, filled at t+1's open
            exits = pd.Series(np.r_[False, (~long & prev)[:-1]], index=ts)
            pf = vbt.Portfolio.from_signals(close_s, entries, exits, price=open_s, size=exposure, size_type="percent",
                                            fees=fee, init_cash=10_000.0, freq="1min")
            return pf, pf.stats(silence_warnings=True)

        t_vbt, (pf, _) = timed(run_vbt, max(3, args.repeat // 2))
        rec = pf.trades.records_readable
        closed = rec[rec["Status"] == "Closed"]
        same_vbt = (len(closed) == len(our_entries)
                    and np.array_equal(pd.DatetimeIndex(closed["Entry Timestamp"]).to_numpy(), our_entries.to_numpy())
                    and np.array_equal(pd.DatetimeIndex(closed["Exit Timestamp"]).to_numpy(), our_exits.to_numpy()))
        rows.append((f"vectorbt {vbt.__version__} (from_signals)", t_vbt, len(closed), float(pf.final_value()),
                     "same trades" if same_vbt else "TRADES DIFFER"))

    print()
    print("| engine | time for the year | ours faster by | closed trades | final equity | trades vs ours |")
    print("|---|---|---|---|---|---|")
    for name, t, k, eq, same in rows:
        print(f"| {name} | {1000 * t:,.1f} ms | {t / t_ours:,.1f}x | {k:,} | {eq:,.2f} | {same} |")
    print()
    print(f"goal: <= 50 ms for the year -> {1000 * t_ours:.1f} ms ({'met' if t_ours <= 0.05 else 'NOT met'}); "
          f">= 100x backtesting.py -> {t_bt / t_ours:,.0f}x ({'met' if t_bt / t_ours >= 100 else 'NOT met'})"
          + ("" if args.no_vectorbt else
             f"; faster than vectorbt -> {t_vbt / t_ours:.1f}x ({'met' if t_vbt > t_ours else 'NOT met'})"))
    print(f"ours, split: strategy {1000 * ours.timings['strategy_s']:.1f} ms, kernel + trades "
          f"{1000 * ours.timings['simulate_s']:.1f} ms, stats {1000 * ours.timings['metrics_s']:.1f} ms")


if __name__ == "__main__":
    main()

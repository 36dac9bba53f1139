"""``umc-backtest``: one backtest from the store (``run``), or a batch of them as Ray tasks (``batch``).

Follows ``umc-data``'s conventions: ``--root`` is the store, exit 0 on success, 1 on bad data or
a failed run (one line naming the file, field or flag), 2 on bad usage.

    umc-backtest run --root market_data --exchange binance --symbol BTC/USDT --year 2024 \\
        --strategy sma --fast 20 --slow 50 --out results/sma_2024
    umc-backtest batch --preset demo         # = python tune_jobs/batch_backtests.py --preset demo
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .data.cli import DEFAULT_ROOT, describe_os_error
from .data.errors import MarketDataError
from .engine.backtest import BacktestError
from .engine.config import ConfigError, EngineConfig, RiskLimits
from .engine.strategies import StrategyError

logger = logging.getLogger(__name__)


def parse_value(text: str) -> Any:
    """A flag's text as int, float or bool when it reads as one, else the text."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_params(items: list[str], flag: str = "--param") -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.strip()] = parse_value(value.strip())
    return out


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    d = EngineConfig()
    g = p.add_argument_group("engine (defaults: umc.md)")
    g.add_argument("--capital", type=float, default=d.initial_cash, help="initial cash in quote currency (%(default)s)")
    g.add_argument("--fee-taker", type=float, default=d.fee_taker, help="taker fee rate (%(default)s)")
    g.add_argument("--fee-maker", type=float, default=d.fee_maker, help="maker fee rate (%(default)s)")
    g.add_argument("--slippage", type=float, default=d.slippage, help="slippage rate on market orders (%(default)s)")
    g.add_argument("--position-size", type=float, default=d.position_size, help="agents' exposure step (%(default)s)")
    g.add_argument("--max-position", type=float, default=d.max_position, help="max exposure (%(default)s)")
    g.add_argument("--max-drawdown", type=float, default=d.risk.max_drawdown, help="drawdown stop (%(default)s)")
    g.add_argument("--kelly-fraction", type=float, default=d.risk.kelly_fraction, help="Kelly cap (%(default)s)")
    g.add_argument("--daily-var", type=float, default=d.risk.daily_var, help="daily VaR limit (%(default)s)")
    g.add_argument("--no-risk-limits", action="store_true", help="switch off the drawdown stop, Kelly cap and VaR limit")


def engine_from_args(args: argparse.Namespace) -> EngineConfig:
    risk = RiskLimits.off() if args.no_risk_limits else RiskLimits(
        max_drawdown=args.max_drawdown, kelly_fraction=args.kelly_fraction, daily_var=args.daily_var)
    return EngineConfig(
        initial_cash=args.capital, fee_taker=args.fee_taker, fee_maker=args.fee_maker, slippage=args.slippage,
        position_size=args.position_size, max_position=args.max_position, risk=risk,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="umc-backtest", description="Backtests on the candle store.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("run", help="one backtest, in this process")
    p.add_argument("--root", default=DEFAULT_ROOT, help="store root folder (default: %(default)s)")
    p.add_argument("--exchange", default="binance", help="exchange the shard is stored under (default: %(default)s)")
    p.add_argument("--symbol", default="BTC/USDT", help="market symbol (default: %(default)s)")
    p.add_argument("--timeframe", default="1m", help="candle timeframe (default: %(default)s)")
    p.add_argument("--year", type=int, help="backtest this UTC year")
    p.add_argument("--start", help="first bar (UTC date), with --end instead of --year")
    p.add_argument("--end", help="end (exclusive, UTC date)")
    p.add_argument("--eval-start", help="evaluate from this date; the bars before it are history (warm-up, the "
                   "agent's scaling and macrostate fit)")
    p.add_argument("--allow-partial", action="store_true",
                   help="run on the stored part of a range the store did not fully fetch (reports the coverage)")
    p.add_argument("--strategy", default="sma", help="buy_and_hold, sma, umc or path/to/file.py:Class (default: %(default)s)")
    p.add_argument("--fast", type=int, help="sma: fast window in bars")
    p.add_argument("--slow", type=int, help="sma: slow window in bars")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="any strategy parameter")
    p.add_argument("--out", required=True, help="result folder (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing result folder")
    p.add_argument("--no-plot", action="store_true", help="skip plot.png")
    add_engine_flags(p)
    sub.add_parser("batch", help="batch backtests as Ray tasks (see tune_jobs/batch_backtests.py --help)",
                   add_help=False)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import DataRange, RunSpec, run_one

    if args.year is None and (args.start is None or args.end is None):
        raise ValueError("give --year, or --start and --end")
    if args.year is not None and (args.start or args.end):
        raise ValueError("give either --year or --start/--end, not both")
    params = parse_params(args.param)
    for name in ("fast", "slow"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    data = DataRange(args.exchange, args.symbol, args.timeframe, year=args.year, start=args.start, end=args.end,
                     allow_partial=args.allow_partial, eval_start=args.eval_start)
    spec = RunSpec(root=args.root, data=data, strategy=args.strategy, params=tuple(sorted(params.items())),
                   engine=engine_from_args(args), out=args.out)
    if Path(args.out).exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already holds a result; pass --overwrite to replace it")
    out = run_one(spec, overwrite=True, plot=not args.no_plot)
    m = out["metrics"]
    print(f"{spec.name}: total return {100 * m['total_return']:.2f}%, Sharpe {m['sharpe']:.2f}, "
          f"max drawdown {100 * m['max_drawdown']:.1f}%, {int(m['num_trades'])} closed trades, "
          f"fees {m['fees_paid']:.2f}, coverage {100 * out['coverage']:.1f}%")
    print(json.dumps({k: m[k] for k in m}, indent=None, default=str))
    print(out["out_dir"])
    return 0


def run_cli(command: str, func, args) -> int:
    try:
        return func(args)
    except (MarketDataError, BacktestError, StrategyError, ConfigError, ValueError) as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # includes FileExistsError for an existing --out
        print(f"{command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "batch":
        from .batch_cli import main as batch_main

        return batch_main(argv[1:], prog="umc-backtest batch")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return run_cli(f"umc-backtest {args.command}", cmd_run, args)



if __name__ == "__main__":
    sys.exit(main())

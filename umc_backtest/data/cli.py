"""``umc-data``: download, import, generate, inspect and validate candle shards.

Exit codes: 0 success, 1 invalid data or failed download, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .errors import MarketDataError
from .schema import ShardKey
from .store import CandleStore

DEFAULT_ROOT = "market_data"


def _add_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=DEFAULT_ROOT, help="store root folder (default: %(default)s)")


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exchange", help="only this exchange (e.g. binance, synthetic)")
    p.add_argument("--symbol", help="only this symbol (e.g. BTC/USDT)")
    p.add_argument("--timeframe", help="only this timeframe (e.g. 1m)")
    p.add_argument("--year", type=int, help="only this year")


def _write_mode(args: argparse.Namespace, default: str) -> str:
    if getattr(args, "overwrite", False) and getattr(args, "merge", False):
        raise SystemExit("choose one of --overwrite and --merge")
    if getattr(args, "overwrite", False):
        return "overwrite"
    if getattr(args, "merge", False):
        return "merge"
    return default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="umc-data",
        description="Market data for UMC backtests: validated Parquet year shards "
        "(<root>/exchange=…/symbol=…/timeframe=…/year=…/candles.parquet).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("download", help="download OHLCV candles with ccxt (resumable)")
    _add_root(p)
    p.add_argument("--exchange", default="binance", help="ccxt exchange id (default: %(default)s)")
    p.add_argument("--symbol", default="BTC/USDT", help="market symbol (default: %(default)s)")
    p.add_argument("--timeframe", default="1m", help="candle timeframe (default: %(default)s)")
    p.add_argument("--start", required=True, help="first candle, UTC date or timestamp (inclusive)")
    p.add_argument("--end", required=True, help="end, UTC date or timestamp (exclusive)")
    p.add_argument("--max-retries", type=int, default=6, help="retries per request on network/rate-limit errors")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    p = sub.add_parser("import", help="import Binance Vision kline dumps (ZIP/CSV files or folders)")
    _add_root(p)
    p.add_argument("paths", nargs="+", type=Path, help="kline files or folders holding them")
    p.add_argument("--exchange", default="binance", help="exchange name to store under (default: %(default)s)")
    p.add_argument("--symbol", help="BASE/QUOTE symbol (default: inferred from the file names)")
    p.add_argument("--timeframe", help="interval (default: from the file names)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true", help="replace existing shards")
    g.add_argument("--no-merge", action="store_true", help="fail if a shard exists (default: merge new candles)")

    p = sub.add_parser("synth", help="write a seeded synthetic year shard (marked synthetic)")
    _add_root(p)
    p.add_argument("--year", type=int, default=2024, help="year to generate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--symbol", default="BTC/USDT", help="symbol to store under (default: %(default)s)")
    p.add_argument("--exchange", default="synthetic", help="exchange name to store under (default: %(default)s)")
    p.add_argument("--timeframe", default="1m", help="candle timeframe (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard")

    p = sub.add_parser("inspect", help="list shards with their metadata and gap reports")
    _add_root(p)
    _add_filters(p)
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")

    p = sub.add_parser("validate", help="re-validate shards fully (order, duplicates, OHLC, NaN, gaps)")
    _add_root(p)
    _add_filters(p)
    p.add_argument("--fail-on-gaps", action="store_true", help="exit 1 when a shard has missing candles")

    p = sub.add_parser("fill-gaps", help="explicitly fill missing candles (flat, zero volume, flagged filled=True)")
    _add_root(p)
    p.add_argument("--exchange", required=True)
    p.add_argument("--symbol", required=True)
    p.add_argument("--timeframe", required=True)
    p.add_argument("--year", type=int, required=True)
    return parser


def _selected(store: CandleStore, args: argparse.Namespace) -> list[ShardKey]:
    keys = store.list_shards(args.exchange, args.symbol, args.timeframe, args.year)
    if not keys:
        raise MarketDataError(
            f"no shards match under {store.root} (exchange={args.exchange}, symbol={args.symbol}, "
            f"timeframe={args.timeframe}, year={args.year}); create them with download, import or synth"
        )
    return keys


def _format_gaps(gaps: dict) -> str:
    text = f"{gaps['missing_candles']} missing candles in {gaps['gap_count']} gaps"
    if gaps["gap_count"]:
        text += f", longest {gaps['longest_gap_candles']} from {gaps['longest_gap_start']}"
    return text


def cmd_download(args: argparse.Namespace) -> int:
    from .ccxt_download import download_ohlcv, to_utc_ms

    if to_utc_ms(args.end) <= to_utc_ms(args.start):
        raise ValueError(f"--end {args.end} is not after --start {args.start}: nothing to download; give --end > --start")

    summary = download_ohlcv(
        CandleStore(args.root), args.symbol, args.timeframe, args.start, args.end, exchange=args.exchange,
        max_retries=args.max_retries, progress=not args.no_progress,
    )
    print(summary)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .binance_vision import import_klines

    mode = "overwrite" if args.overwrite else ("error" if args.no_merge else "merge")
    t0 = time.perf_counter()
    infos = import_klines(
        CandleStore(args.root), args.paths, symbol=args.symbol, exchange=args.exchange,
        timeframe=args.timeframe, mode=mode,
    )
    for info in infos:
        print(f"{info.key}: {info.metadata['rows']} rows, {_format_gaps(info.metadata['gaps'])} -> {info.path}")
    print(f"imported in {time.perf_counter() - t0:.2f} s")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .synthetic import write_synthetic_year

    t0 = time.perf_counter()
    info = write_synthetic_year(
        CandleStore(args.root), args.year, symbol=args.symbol, exchange=args.exchange,
        timeframe=args.timeframe, seed=args.seed, mode="overwrite" if args.overwrite else "error",
    )
    meta = info.metadata
    print(
        f"{info.key}: {meta['rows']} synthetic rows (seed {args.seed}) from {meta['first_timestamp']} "
        f"to {meta['last_timestamp']} in {time.perf_counter() - t0:.2f} s -> {info.path}"
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    store = CandleStore(args.root)
    keys = _selected(store, args)
    metas = {str(k): store.read_metadata(k) for k in keys}
    if args.json:
        print(json.dumps(metas, indent=2))
        return 0
    header = f"{'shard':<34} {'source':<16} {'rows':>8} {'MB':>7}  {'first':<25} {'last':<25} gaps"
    print(header)
    print("-" * len(header))
    for key in keys:
        meta = metas[str(key)]
        size = store.shard_path(key).stat().st_size / 1e6
        print(
            f"{key!s:<34} {meta['source']:<16} {meta['rows']:>8} {size:>7.2f}  {meta['first_timestamp']:<25} "
            f"{meta['last_timestamp']:<25} {_format_gaps(meta['gaps'])}"
        )
        for gap in meta["gaps"]["first_gaps"]:
            print(f"{'':<36}gap {gap['start']} .. {gap['end']} ({gap['missing_candles']} candles)")
        if meta.get("filled_rows"):
            print(f"{'':<36}{meta['filled_rows']} rows are filled (filled=True), not real candles")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    store = CandleStore(args.root)
    failed = 0
    with_gaps = 0
    for key in _selected(store, args):
        try:
            report = store.validate_shard(key)
        except MarketDataError as exc:
            failed += 1
            print(f"FAIL {key}: {exc}")
            continue
        with_gaps += report.missing_candles > 0
        print(f"OK   {key}: {report.rows} rows, {_format_gaps(report.to_dict())}")
    print(f"{failed} invalid shard(s), {with_gaps} with gaps")
    return 1 if failed or (args.fail_on_gaps and with_gaps) else 0


def cmd_fill_gaps(args: argparse.Namespace) -> int:
    info = CandleStore(args.root).fill_gaps(ShardKey(args.exchange, args.symbol, args.timeframe, args.year))
    print(f"{info.key}: {info.metadata['filled_rows']} rows filled and flagged (filled=True)")
    return 0


COMMANDS = {
    "download": cmd_download,
    "import": cmd_import,
    "synth": cmd_synth,
    "inspect": cmd_inspect,
    "validate": cmd_validate,
    "fill-gaps": cmd_fill_gaps,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (MarketDataError, ValueError) as exc:
        print(f"umc-data {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"umc-data {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1


def describe_os_error(exc: OSError) -> str:
    """One line naming the path and the reason, e.g. ``/x/y: Read-only file system``."""
    if exc.filename is None:
        return str(exc)
    extra = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    return f"{exc.filename}{extra}: {exc.strerror or exc}"


if __name__ == "__main__":
    sys.exit(main())

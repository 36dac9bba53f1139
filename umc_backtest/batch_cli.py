"""The batch-backtest job: ``python tune_jobs/batch_backtests.py`` (or ``umc-backtest batch``).

Joins a running Ray cluster when there is one (``RAY_ADDRESS``, or a head node started with
``ray start --head`` on this machine), else starts a local Ray with its dashboard on
127.0.0.1 (the same rule and code as the AMAL study); prints the dashboard address and how to
log in, runs one Ray task per (data range, strategy, parameters), prints the summary table and
the report's path last.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .cli import add_engine_flags, engine_from_args, parse_value, run_cli
from .data.cli import DEFAULT_ROOT
from .data.schema import ShardKey
from .data.store import CandleStore
from .engine.strategies import make_strategy
from .runner import DataRange, RunSpec

logger = logging.getLogger(__name__)
PRESET_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class BatchConfig:
    """What a batch runs. ``datasets``: ``EXCHANGE:YEAR`` or ``EXCHANGE:START:END`` (empty: every stored
    year of ``symbol``/``timeframe``); ``strategies``: ``NAME`` or ``NAME:k=v;k=v``; ``grids``:
    ``NAME:k=v1,v2;k2=w1,w2`` (cartesian product, combinations the strategy rejects left out)."""

    root: str = DEFAULT_ROOT
    out: str = "results/batch"
    symbol: str = "BTC/USDT"
    timeframe: str = "1m"
    datasets: tuple[str, ...] = ()
    strategies: tuple[str, ...] = ("buy_and_hold",)
    grids: tuple[str, ...] = ()
    synth_missing: bool = False
    allow_partial: bool = False

    @classmethod
    def from_yaml(cls, path: Path) -> BatchConfig:
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of BatchConfig fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {unknown}; fields: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def parse_dataset(text: str, symbol: str, timeframe: str, allow_partial: bool) -> DataRange:
    """``EXCHANGE:YEAR`` or ``EXCHANGE:START:END``, optionally ``@EVAL_START`` (the bars before it are history)."""
    text, _, eval_start = text.partition("@")
    if eval_start:
        base = parse_dataset(text, symbol, timeframe, allow_partial)
        try:
            return dataclasses.replace(base, eval_start=eval_start)
        except ValueError as exc:
            raise ValueError(f"--dataset {text}@{eval_start}: {exc}") from exc
    parts = text.split(":")
    usage = f"--dataset {text!r}: expected EXCHANGE:YEAR or EXCHANGE:START:END (e.g. binance:2024)"
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError(usage)
    try:
        if len(parts) == 2:
            return DataRange(parts[0], symbol, timeframe, year=int(parts[1]), allow_partial=allow_partial)
        if len(parts) == 3:
            return DataRange(parts[0], symbol, timeframe, start=parts[1], end=parts[2], allow_partial=allow_partial)
    except ValueError as exc:
        raise ValueError(f"--dataset {text!r}: {exc}") from exc
    raise ValueError(usage)


def parse_strategy(text: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = text.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--strategy {text!r}: expected NAME:key=value;key=value")
        params[key.strip()] = parse_value(value.strip())
    return name, params


def parse_grid(text: str) -> tuple[str, dict[str, list[Any]]]:
    name, _, rest = text.partition(":")
    grid: dict[str, list[Any]] = {}
    for item in filter(None, rest.split(";")):
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"--grid {text!r}: expected NAME:key=v1,v2;key2=w1,w2")
        grid[key.strip()] = [parse_value(v.strip()) for v in values.split(",")]
    if not grid:
        raise ValueError(f"--grid {text!r}: no parameters; expected NAME:key=v1,v2;key2=w1,w2")
    return name, grid


def build_specs(cfg: BatchConfig, engine, out_root: Path) -> tuple[list[RunSpec], list[str]]:
    """Every run of the batch (datasets x strategies), and the grid combinations left out with why."""
    from .batch import expand_grid

    store = CandleStore(cfg.root)
    if cfg.datasets:
        ranges = [parse_dataset(d, cfg.symbol, cfg.timeframe, cfg.allow_partial) for d in cfg.datasets]
    else:
        keys = store.list_shards(symbol=cfg.symbol, timeframe=cfg.timeframe)
        if not keys:
            raise ValueError(f"no {cfg.symbol} {cfg.timeframe} shards under {cfg.root}; give --dataset or create "
                             "shards with umc-data download / import / synth")
        ranges = [DataRange(k.exchange, k.symbol, k.timeframe, year=k.year, allow_partial=cfg.allow_partial)
                  for k in keys]
    strategies: list[tuple[str, tuple]] = []
    for text in cfg.strategies:
        name, params = parse_strategy(text)
        make_strategy(name, params)  # an invalid explicit strategy is an error, not a dropped run
        strategies.append((name, tuple(sorted(params.items()))))
    dropped: list[str] = []
    for text in cfg.grids:
        name, grid = parse_grid(text)
        valid, bad = expand_grid(name, grid)
        strategies += [(name, p) for p in valid]
        dropped += [f"{name} {b}" for b in bad]
    if not strategies:
        raise ValueError("no strategy to run: give --strategy or --grid")
    specs = [RunSpec(root=cfg.root, data=r, strategy=n, params=p, engine=engine, out_root=str(out_root))
             for r in ranges for n, p in strategies]
    return specs, dropped


def make_missing_synthetic(cfg: BatchConfig, specs: list[RunSpec]) -> list[str]:
    """Write the synthetic year shards the batch names but the store lacks (``synth_missing``)."""
    from .data.synthetic import write_synthetic_year

    store = CandleStore(cfg.root)
    made = []
    for r in sorted({s.data for s in specs if s.data.exchange == "synthetic" and s.data.year is not None},
                    key=lambda d: d.year):
        if not store.exists(ShardKey("synthetic", r.symbol, r.timeframe, r.year)):
            write_synthetic_year(store, r.year, symbol=r.symbol, exchange="synthetic", timeframe=r.timeframe,
                                 seed=r.year)
            made.append(f"synthetic {r.symbol} {r.timeframe} {r.year} (seed {r.year})")
    return made


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", help=f"a preset from {PRESET_DIR} ({', '.join(sorted(x.stem for x in PRESET_DIR.glob('*.yaml')))})")
    p.add_argument("--config", type=Path, help="a YAML file of BatchConfig fields (over the preset)")
    p.add_argument("--root", help=f"store root (default: {DEFAULT_ROOT})")
    p.add_argument("--out", help="output folder: runs/ and summary/ (default: results/batch)")
    p.add_argument("--symbol", help="symbol (default: BTC/USDT)")
    p.add_argument("--timeframe", help="timeframe (default: 1m)")
    p.add_argument("--dataset", action="append", help="EXCHANGE:YEAR or EXCHANGE:START:END, repeatable "
                   "(default: every stored year)")
    p.add_argument("--strategy", action="append", help="NAME or NAME:key=value;key=value, repeatable")
    p.add_argument("--grid", action="append", help="NAME:key=v1,v2;key2=w1,w2 (cartesian product), repeatable")
    p.add_argument("--synth-missing", action="store_true", default=None,
                   help="generate the synthetic year shards the batch names but the store lacks")
    p.add_argument("--allow-partial", action="store_true", default=None,
                   help="run ranges the store only partly fetched on their stored part (coverage reported)")
    p.add_argument("--overwrite", action="store_true", help="rerun runs whose results exist (default: reuse them)")
    p.add_argument("--no-plots", action="store_true", help="skip each run's plot.png")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray this starts (default: all)")
    p.add_argument("--dashboard-port", type=int, default=8265, help="local dashboard port (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_engine_flags(p)
    return p


def config_from_args(args: argparse.Namespace) -> BatchConfig:
    cfg = BatchConfig()
    if args.preset:
        path = PRESET_DIR / f"{args.preset}.yaml"
        if not path.is_file():
            raise ValueError(f"--preset {args.preset!r} unknown; presets: {sorted(x.stem for x in PRESET_DIR.glob('*.yaml'))}")
        cfg = BatchConfig.from_yaml(path)
    if args.config:
        over = BatchConfig.from_yaml(args.config)
        changed = {f.name: getattr(over, f.name) for f in dataclasses.fields(BatchConfig)
                   if getattr(over, f.name) != getattr(BatchConfig(), f.name)}
        cfg = dataclasses.replace(cfg, **changed)
    flags = {"root": args.root, "out": args.out, "symbol": args.symbol, "timeframe": args.timeframe,
             "datasets": tuple(args.dataset) if args.dataset else None,
             "strategies": tuple(args.strategy) if args.strategy else None,
             "grids": tuple(args.grid) if args.grid else None,
             "synth_missing": args.synth_missing, "allow_partial": args.allow_partial}
    if args.strategy and not args.grid:
        flags["grids"] = ()  # explicit strategies replace the preset's grid unless a grid is given too
    return dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})


def cmd_batch(args: argparse.Namespace) -> int:
    from amal_rllib.study.ray_session import connect

    from .batch import markdown_table, run_batch

    cfg = config_from_args(args)
    engine = engine_from_args(args)
    out = Path(cfg.out)
    specs, dropped = build_specs(cfg, engine, out / "runs")
    for d in dropped:
        print(f"grid: left out {d}")
    if cfg.synth_missing:
        for made in make_missing_synthetic(cfg, specs):
            print(f"generated {made}")
    probe = out / ".write_probe"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write the batch output: {exc.strerror}; choose a writable --out",
                      str(out)) from exc
    session = connect(num_cpus=args.num_cpus, dashboard_port=args.dashboard_port)
    print(session.describe(), flush=True)
    print(f"{len(specs)} backtests as Ray tasks (named like {specs[0].name!r}) on {session.cpus:g} CPUs", flush=True)
    outcome = run_batch(specs, out / "summary", overwrite=args.overwrite, plot=not args.no_plots,
                        progress=not args.no_progress)
    import pandas as pd

    table = pd.read_parquet(outcome.summary_dir / "summary.parquet")
    print(markdown_table(table))
    for row in outcome.failures:
        print(f"FAILED {row['name']}: {row['error']}")
    print(f"{len(outcome.rows) - len(outcome.failures)} of {len(outcome.rows)} runs finished; "
          f"{len(outcome.failures)} failed")
    print(f"report: {outcome.summary_dir / 'report.md'}")
    return 1 if outcome.failures else 0


def main(argv: list[str] | None = None, prog: str = "batch_backtests.py") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_cli(prog, cmd_batch, args)



if __name__ == "__main__":
    sys.exit(main())

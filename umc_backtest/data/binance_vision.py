"""Import Binance Vision kline files (https://data.binance.vision) into the candle store.

Binance publishes klines as monthly and daily ZIP archives, each holding one
headerless CSV with 12 columns::

    open_time, open, high, low, close, volume, close_time, quote_asset_volume,
    number_of_trades, taker_buy_base_volume, taker_buy_quote_volume, ignore

named ``<SYMBOL>-<interval>-<YYYY-MM>.zip`` (monthly) or
``<SYMBOL>-<interval>-<YYYY-MM-DD>.zip`` (daily). Some files carry a header
row; files from 2025 on give times in microseconds instead of milliseconds.
Both are detected per file.

Nothing is repaired: a file with a wrong close time, text in a number column,
a wrong column count, duplicate or unsorted rows or inconsistent OHLC raises
:class:`CandleValidationError` naming the file, the row and the field. In
those errors ``row`` is the **1-based line number in the CSV** (a header line
counts as line 1), so ``sed -n <row>p`` on the extracted CSV shows the line.
Every file is read and checked before any shard is written, so a bad file
leaves the store untouched.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from .errors import CandleValidationError
from .schema import MINUTE_MS, ShardKey, timeframe_to_ms
from .store import CandleStore, Interval, ShardInfo, WriteMode, merge_intervals, year_bounds_ms
from .validate import validate_candles

logger = logging.getLogger(__name__)

SOURCE = "binance-vision"

#: The 12 columns of a Binance kline CSV, in file order.
KLINE_COLUMNS: tuple[str, ...] = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "trades",
    "taker_buy_base_volume",
    "taker_buy_quote_volume",
    "ignore",
)
_INT_COLUMNS = ("open_time", "close_time", "trades")
_FLOAT_COLUMNS = ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_base_volume",
                  "taker_buy_quote_volume")
_KEEP = ("open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "trades")

#: Quote assets used to split a Binance symbol (``BTCUSDT -> BTC/USDT``); longest match wins.
KNOWN_QUOTES: tuple[str, ...] = (
    "FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDP", "AEUR", "EURI", "BIDR", "IDRT", "BVND", "BKRW",
    "DAI", "PAX", "UST", "VAI", "BTC", "ETH", "BNB", "XRP", "TRX", "DOGE", "DOT",
    "EUR", "GBP", "TRY", "BRL", "AUD", "RUB", "UAH", "NGN", "ZAR", "JPY", "PLN", "RON", "ARS", "MXN",
    "COP", "CZK", "IDR",
)

_NAME_RE = re.compile(
    r"^(?P<symbol>[A-Za-z0-9]+)-(?P<interval>\d+[smhdwM]|1mo)-(?P<period>\d{4}-\d{2}(?:-\d{2})?)\.(?:zip|csv)$"
)
_INT_RE = re.compile(r"^\s*[+-]?\d+\s*$")
_FLOAT_RE = re.compile(r"^\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*$")
#: Open times at or above this are microseconds (1e14 ms is the year 5138; 1e14 µs is 1973).
_MICROSECOND_THRESHOLD = 10**14
_MS_PER_UNIT = {"ms": 1, "us": 1_000}


class KlineFileName(NamedTuple):
    """Parts of a Binance Vision kline file name, e.g. ``("BTCUSDT", "1m", "2024-01")``."""

    raw_symbol: str
    interval: str
    period: str


def parse_kline_filename(name: str | os.PathLike) -> KlineFileName:
    """Split ``BTCUSDT-1m-2024-01.zip`` (monthly) or ``BTCUSDT-1m-2024-01-15.csv`` (daily).

    Returns ``(raw_symbol, interval, period)``; ``period`` is ``YYYY-MM`` or
    ``YYYY-MM-DD``. Directories in ``name`` are ignored. Raises ``ValueError``
    when the name does not follow the Binance Vision pattern.
    """
    base = Path(name).name
    match = _NAME_RE.match(base)
    if match is None:
        raise ValueError(
            f"{base!r} is not a Binance Vision kline file name like 'BTCUSDT-1m-2024-01.zip' "
            "(monthly) or 'BTCUSDT-1m-2024-01-15.zip' (daily)"
        )
    period = match.group("period")
    try:
        _period_bounds_ms(period)
    except ValueError as exc:
        raise ValueError(f"{base!r}: {period!r} is not a valid month or day") from exc
    return KlineFileName(match.group("symbol").upper(), match.group("interval"), period)


def _period_bounds_ms(period: str) -> Interval:
    """``[start, end)`` in epoch ms of a ``YYYY-MM`` month or ``YYYY-MM-DD`` day (UTC)."""
    parts = [int(p) for p in period.split("-")]
    start = pd.Timestamp(year=parts[0], month=parts[1], day=parts[2] if len(parts) == 3 else 1, tz="UTC")
    end = start + (pd.DateOffset(days=1) if len(parts) == 3 else pd.DateOffset(months=1))
    return int(start.value // 1_000_000), int(end.value // 1_000_000)


def split_symbol(raw_symbol: str) -> str:
    """``"BTCUSDT" -> "BTC/USDT"`` by the known quote assets (longest suffix wins).

    Raises ``ValueError`` asking for an explicit symbol when no known quote
    asset ends ``raw_symbol``.
    """
    raw = raw_symbol.upper()
    for quote in sorted(KNOWN_QUOTES, key=len, reverse=True):
        if raw.endswith(quote) and len(raw) > len(quote):
            return f"{raw[: -len(quote)]}/{quote}"
    raise ValueError(
        f"cannot tell the base and quote asset of {raw_symbol!r} (no known quote asset at its end); "
        "pass the symbol explicitly, e.g. symbol='ABC/XYZ' (--symbol ABC/XYZ)"
    )


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class KlineFile:
    """One kline file, read and checked: candles in store columns plus where they came from."""

    path: Path
    name: KlineFileName | None
    timeframe: str
    time_unit: str  # "ms" or "us"
    header: bool
    candles: pd.DataFrame

    @property
    def coverage(self) -> Interval:
        """The span the file is authoritative for: its month/day, else first to last candle."""
        if self.name is not None:
            return _period_bounds_ms(self.name.period)
        ts = self.candles["timestamp"].to_numpy(dtype="datetime64[ms]").astype(np.int64)
        return int(ts[0]), int(ts[-1]) + timeframe_to_ms(self.timeframe)


def read_kline_file(path: str | os.PathLike, timeframe: str | None = None) -> pd.DataFrame:
    """Candles of one Binance kline ZIP or CSV, in store columns, fully validated.

    Columns: ``timestamp`` (UTC, ms), ``open``, ``high``, ``low``, ``close``,
    ``volume``, ``quote_volume`` (float64), ``trades`` (int64). ``timeframe``
    defaults to the interval in the file name (required when the name does not
    follow the Binance pattern; must agree with it when both are given).
    """
    return _read_kline_file(Path(path), timeframe).candles


def _read_kline_file(path: Path, timeframe: str | None) -> KlineFile:
    label = str(path)
    try:
        name: KlineFileName | None = parse_kline_filename(path)
    except ValueError:
        name = None
    if name is not None and timeframe is not None and name.interval != timeframe:
        raise CandleValidationError(
            label, f"the file name says interval {name.interval!r} but timeframe {timeframe!r} was given",
            hint="Drop the explicit timeframe or rename the file",
        )
    interval = timeframe or (name.interval if name else None)
    if interval is None:
        raise CandleValidationError(
            label, "cannot tell the candle interval: the name is not like 'BTCUSDT-1m-2024-01.zip'",
            hint="Pass the timeframe explicitly (--timeframe 1m)",
        )
    try:
        tf_ms = timeframe_to_ms(interval)
    except ValueError as exc:
        raise CandleValidationError(label, str(exc), hint="The store supports m, h, d and w intervals") from exc

    data, label = _read_bytes(path)
    header = _has_header(data)
    table = _parse_csv(data, label, header)
    if table.num_rows == 0:
        raise CandleValidationError(label, "no candles (the CSV is empty)", hint="Re-download the file")
    first_line = 2 if header else 1

    open_time = table.column("open_time").to_numpy()
    close_time = table.column("close_time").to_numpy()
    unit = _time_unit(open_time, label, first_line)
    factor = _MS_PER_UNIT[unit]
    expected_close = open_time + (tf_ms * factor - 1)
    bad = close_time != expected_close
    if bad.any():
        i = int(np.argmax(bad))
        duration = int(close_time[i] - open_time[i] + 1)
        seen = _duration_name(duration // factor) if duration % factor == 0 else None
        hint = (
            f"The interval {interval!r} {'in the file name' if timeframe is None else 'given'} may be wrong"
            + (f": this row spans {seen}" if seen else "")
            + "; otherwise the file is corrupt - re-download it"
        )
        raise _line_error(
            label, first_line + i,
            f"close_time {int(close_time[i])} is not open_time {int(open_time[i])} + {interval} - 1 {unit} "
            f"(= {int(expected_close[i])})",
            field="close_time", timestamp=_stamp(int(open_time[i]) // factor), hint=hint,
        )
    if unit == "us":
        sub_ms = open_time % 1_000 != 0
        if sub_ms.any():
            i = int(np.argmax(sub_ms))
            raise _line_error(
                label, first_line + i, f"open_time {int(open_time[i])} µs is not a whole millisecond",
                field="open_time", hint="The file is corrupt; re-download it",
            )
    ts_ms = open_time // factor if factor != 1 else open_time

    candles = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(ts_ms, unit="ms", utc=True).as_unit("ms"),
            "open": table.column("open").to_numpy(),
            "high": table.column("high").to_numpy(),
            "low": table.column("low").to_numpy(),
            "close": table.column("close").to_numpy(),
            "volume": table.column("volume").to_numpy(),
            "quote_volume": table.column("quote_volume").to_numpy(),
            "trades": table.column("trades").to_numpy(),
        }
    )
    try:
        validate_candles(candles, interval, label)
    except CandleValidationError as exc:
        if exc.row is None:
            raise
        raise _relabel(exc, label, exc.row + first_line) from None
    if name is not None:
        lo, hi = _period_bounds_ms(name.period)
        outside = (ts_ms < lo) | (ts_ms >= hi)
        if outside.any():
            i = int(np.argmax(outside))
            raise _line_error(
                label, first_line + i, f"candle is outside the period {name.period} named by the file",
                field="open_time", timestamp=_stamp(int(ts_ms[i])),
                hint="The file name does not match its content; re-download or rename it",
            )
    logger.debug("read %d %s candles from %s (%s, header=%s)", len(candles), interval, label, unit, header)
    return KlineFile(path, name, interval, unit, header, candles)


def _read_bytes(path: Path) -> tuple[bytes, str]:
    """Raw CSV bytes of a kline ZIP (its single CSV) or CSV; and the label for errors."""
    label = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"no kline file at {path}")
    _verify_checksum(path)
    if path.suffix.lower() != ".zip":
        return path.read_bytes(), label
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir() and m.filename.lower().endswith(".csv")]
            if len(members) != 1:
                raise CandleValidationError(
                    label, f"expected exactly one CSV in the ZIP, found {[m.filename for m in members]}",
                    hint="Binance Vision archives hold a single CSV; re-download the file",
                )
            return archive.read(members[0]), f"{label}[{members[0].filename}]"
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise CandleValidationError(
            label, f"not a readable ZIP archive ({exc})", hint="The download is probably truncated; re-download it"
        ) from exc


def _verify_checksum(path: Path) -> None:
    """Check ``<file>.CHECKSUM`` (``sha256  name``) when Binance's checksum file lies beside it."""
    checksum = path.with_name(path.name + ".CHECKSUM")
    if not checksum.is_file():
        return
    fields = checksum.read_text(encoding="utf-8", errors="replace").split()
    if not fields or not re.fullmatch(r"[0-9a-fA-F]{64}", fields[0]):
        logger.warning("ignoring unreadable checksum file %s", checksum)
        return
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != fields[0].lower():
        raise CandleValidationError(
            str(path), f"SHA-256 {digest} does not match {checksum.name} ({fields[0]})",
            hint="The download is corrupt or incomplete; re-download it",
        )


def _has_header(data: bytes) -> bool:
    """True when the first line's first field is not a number (e.g. ``open_time,open,...``)."""
    end = data.find(b"\n")
    first = (data if end < 0 else data[:end]).lstrip(b"\xef\xbb\xbf").strip()
    field = first.split(b",", 1)[0].strip()
    return bool(first) and not field.lstrip(b"+-").isdigit()


def _parse_csv(data: bytes, label: str, header: bool) -> pa.Table:
    types = {c: pa.int64() for c in _INT_COLUMNS} | {c: pa.float64() for c in _FLOAT_COLUMNS}
    types["ignore"] = pa.string()
    try:
        return pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=list(KLINE_COLUMNS), skip_rows=1 if header else 0),
            parse_options=pacsv.ParseOptions(delimiter=","),
            convert_options=pacsv.ConvertOptions(
                column_types=types, include_columns=list(_KEEP), null_values=[], strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        problem = _diagnose(data, label, header)
        if problem is not None:
            raise problem from None
        raise CandleValidationError(
            label, f"cannot parse the CSV ({exc})", hint="Check the file is a Binance kline CSV; re-download it"
        ) from exc


def _diagnose(data: bytes, label: str, header: bool) -> CandleValidationError | None:
    """Slow line-by-line scan (only after the fast parse failed) to find the first bad line and field."""
    text = data.decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if (number == 1 and header) or not line.strip():
            continue
        values = line.split(",")
        if len(values) != len(KLINE_COLUMNS):
            return _line_error(
                label, number, f"expected {len(KLINE_COLUMNS)} comma-separated columns, found {len(values)}: "
                f"{line[:120]!r}",
                hint=f"A kline CSV has the columns {', '.join(KLINE_COLUMNS)}; the file is corrupt or not klines",
            )
        for column, value in zip(KLINE_COLUMNS, values, strict=True):
            if column in _INT_COLUMNS and not _INT_RE.match(value):
                what = "an integer"
            elif column in _FLOAT_COLUMNS and not _FLOAT_RE.match(value):
                what = "a number"
            else:
                continue
            return _line_error(
                label, number, f"value {value!r} is not {what}", field=column, hint="The file is corrupt; re-download it"
            )
    return None


def _time_unit(open_time: np.ndarray, label: str, first_line: int) -> str:
    """``"us"`` when open times are microseconds (2025+ files), else ``"ms"``; mixed units are an error."""
    micro = open_time >= _MICROSECOND_THRESHOLD
    unit = "us" if micro[0] else "ms"
    mixed = micro != micro[0]
    if mixed.any():
        i = int(np.argmax(mixed))
        other = "microseconds" if micro[i] else "milliseconds"
        raise _line_error(
            label, first_line + i,
            f"open_time {int(open_time[i])} is in {other} but line {first_line} is in "
            f"{'microseconds' if unit == 'us' else 'milliseconds'}",
            field="open_time", hint="A file must use one time unit; re-download it",
        )
    return unit


def _line_error(
    label: str, line: int, message: str, *, field: str | None = None, timestamp: str | None = None,
    hint: str | None = None,
) -> CandleValidationError:
    """An error at a CSV line: ``row`` is the 1-based line number and the message says so."""
    return CandleValidationError(
        label, f"CSV line {line}: {message}", row=line, field=field, timestamp=timestamp, hint=hint
    )


def _relabel(exc: CandleValidationError, label: str, line: int) -> CandleValidationError:
    """The same error with ``row`` as the 1-based CSV line instead of the 0-based frame row."""
    prefix = str(CandleValidationError(label, "", row=exc.row, field=exc.field, timestamp=exc.timestamp))
    message = str(exc)[len(prefix):].strip()
    return _line_error(label, line, message, field=exc.field, timestamp=exc.timestamp)


def _duration_name(ms: int) -> str | None:
    for unit, size in (("w", 7 * 1440 * MINUTE_MS), ("d", 1440 * MINUTE_MS), ("h", 60 * MINUTE_MS), ("m", MINUTE_MS)):
        if ms > 0 and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms / 1000:g}s" if ms > 0 else None


def _stamp(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").isoformat()


# ----------------------------------------------------------------------------- importing
def find_kline_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named in ``paths`` plus the ``*.zip``/``*.csv`` kline files under directories in it.

    Files inside directories whose names are not Binance kline names are
    skipped (logged); named files are always taken. Sorted, without repeats.
    """
    found: dict[Path, None] = {}
    for item in paths:
        path = Path(item)
        if path.is_dir():
            for candidate in sorted(path.rglob("*")):
                if not candidate.is_file() or candidate.suffix.lower() not in (".zip", ".csv"):
                    continue
                try:
                    parse_kline_filename(candidate)
                except ValueError:
                    logger.warning("skipping %s: not a Binance kline file name", candidate)
                    continue
                found[candidate.resolve()] = None
        elif path.is_file():
            found[path.resolve()] = None
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
    return sorted(found, key=lambda p: (p.name, str(p)))


def import_klines(
    store: CandleStore,
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    symbol: str | None = None,
    exchange: str = "binance",
    timeframe: str | None = None,
    mode: WriteMode = "merge",
) -> list[ShardInfo]:
    """Import Binance Vision kline files into ``store``, one shard per UTC year.

    ``paths``: files and/or directories (searched recursively for kline
    ``*.zip``/``*.csv``). ``symbol`` defaults to the file names' symbol split at
    a known quote asset (``BTCUSDT -> BTC/USDT``); ``timeframe`` to their
    interval. All files must agree on both. Every file is read and validated
    before anything is written. ``mode="merge"`` (default) makes re-imports
    idempotent and adds new months to a year shard; ``"error"`` and
    ``"overwrite"`` are passed to :meth:`CandleStore.write_shard`. Files may
    overlap (e.g. a month and its days) when their candles agree.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = find_kline_files(paths)
    if not files:
        raise FileNotFoundError(f"no Binance kline files (*.zip, *.csv) in {[str(p) for p in paths]}")

    names = {}
    for path in files:
        try:
            names[path] = parse_kline_filename(path)
        except ValueError:
            names[path] = None
    raw_symbols = sorted({n.raw_symbol for n in names.values() if n is not None})
    intervals = sorted({n.interval for n in names.values() if n is not None})
    if len(raw_symbols) > 1:
        raise ValueError(f"the files are for several symbols {raw_symbols}; import one symbol at a time")
    if len(intervals) > 1:
        raise ValueError(f"the files have several intervals {intervals}; import one interval at a time")
    if timeframe is None:
        if not intervals:
            raise ValueError("cannot tell the interval from the file names; pass timeframe (--timeframe 1m)")
        timeframe = intervals[0]
    elif intervals and intervals[0] != timeframe:
        raise ValueError(f"the file names say interval {intervals[0]!r} but timeframe {timeframe!r} was given")
    if symbol is None:
        if not raw_symbols:
            raise ValueError("cannot tell the symbol from the file names; pass symbol='BTC/USDT' (--symbol BTC/USDT)")
        symbol = split_symbol(raw_symbols[0])
    elif raw_symbols and symbol.replace("/", "").upper() != raw_symbols[0]:
        raise ValueError(f"symbol {symbol!r} does not match the files' symbol {raw_symbols[0]!r}")
    ShardKey(exchange, symbol, timeframe, 2000)  # validates exchange, symbol and timeframe up front

    # Decompression and CSV parsing release the GIL: read files in parallel (errors surface in file order).
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(files), os.cpu_count() or 1))) as pool:
        read = list(pool.map(lambda path: _read_kline_file(path, timeframe), files))
    for item in read:
        logger.info("read %s: %d candles (%s)", item.path.name, len(item.candles), item.time_unit)
    candles, origin = _combine(read)
    ts = candles["timestamp"].to_numpy(dtype="datetime64[ms]").astype(np.int64)
    years = candles["timestamp"].dt.year.to_numpy()

    results = []
    for year in np.unique(years):
        year = int(year)
        key = ShardKey(exchange, symbol, timeframe, year)
        mask = years == year
        lo, hi = year_bounds_ms(year)
        in_year = [read[i] for i in np.unique(origin[mask])]
        coverage = merge_intervals(
            [(max(a, lo), min(b, hi)) for a, b in (f.coverage for f in read) if a < hi and b > lo]
        )
        file_names = sorted({f.path.name for f in in_year})  # a merge unions them with the stored list
        info = store.write_shard(
            key,
            candles.loc[mask].reset_index(drop=True),
            source=SOURCE,
            mode=mode,
            coverage=coverage,
            extra_metadata={"binance_vision_files": file_names},
        )
        logger.info(
            "imported %d candles from %d file(s) into %s (%s rows stored, %d gaps, %s..%s)",
            int(mask.sum()), len(in_year), key, info.metadata["rows"], info.metadata["gaps"]["gap_count"],
            _stamp(int(ts[mask][0])), _stamp(int(ts[mask][-1])),
        )
        results.append(info)
    return results


def _combine(files: list[KlineFile]) -> tuple[pd.DataFrame, np.ndarray]:
    """Candles of all files sorted by time, overlaps that agree kept once; and each row's file index."""
    frames = [f.candles for f in files]
    origin = np.repeat(np.arange(len(files)), [len(f) for f in frames])
    candles = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if len(frames) == 1:
        return candles, origin
    ts = candles["timestamp"].to_numpy(dtype="datetime64[ms]").astype(np.int64)
    order = np.argsort(ts, kind="stable")
    if not np.array_equal(order, np.arange(len(order))):
        candles = candles.iloc[order].reset_index(drop=True)
        origin, ts = origin[order], ts[order]
    dup = np.flatnonzero(np.diff(ts) == 0)
    if dup.size:
        values = [c for c in candles.columns if c != "timestamp"]
        a = candles.iloc[dup][values].to_numpy(dtype=np.float64)
        b = candles.iloc[dup + 1][values].to_numpy(dtype=np.float64)
        differs = (a != b).any(axis=1)
        if differs.any():
            j = int(np.argmax(differs))
            first, second = files[origin[dup[j]]].path, files[origin[dup[j] + 1]].path
            raise CandleValidationError(
                str(second), f"candle at {_stamp(int(ts[dup[j]]))} differs from the one in {first}",
                field=values[int(np.argmax(a[j] != b[j]))], timestamp=_stamp(int(ts[dup[j]])),
                hint="Overlapping files must agree; drop the wrong one or re-download both",
            )
        keep = np.ones(len(candles), dtype=bool)
        keep[dup + 1] = False
        candles = candles.loc[keep].reset_index(drop=True)
        origin = origin[keep]
        logger.info("dropped %d candles that appear in more than one file", int(dup.size))
    return candles, origin

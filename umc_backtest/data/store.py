"""Parquet year-shard store for candles.

Layout (hive partitioning, readable by ``pyarrow.dataset`` as one dataset)::

    <root>/exchange=binance/symbol=BTC-USDT/timeframe=1m/year=2024/candles.parquet

Every write is validated and atomic (temp file in the same folder, fsync,
``os.replace``): a crash leaves either the old shard or the new one, never a
half-written file that looks whole. A stored shard is never replaced unless the
caller asks for ``mode="overwrite"``, or ``mode="merge"`` adds new candles to it
(identical candles de-duplicated; a conflicting candle is an error).

Shard metadata (JSON in the Parquet footer under ``umc_backtest``) records the
source, creation time, rows, time span, the covered intervals (what a download
has already fetched, so a rerun fetches only the rest), the gap report and a
SHA-256 of the candle values.

Nothing stored is lost:
- writers of one shard serialise on a lock file beside it (``fcntl.flock``), held
  from reading the old shard to renaming the new one, so two imports at once
  both land (format version 2);
- Parquet page checksums are written and verified, and the content hash is
  recomputed on every validated read: a flipped bit is an error naming the shard;
- ``load`` refuses a range the store never fetched (``CoverageError``) unless
  asked for the covered part (``allow_partial``);
- no error message suggests ``--overwrite`` without saying how many stored
  candles it would drop.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import CandleValidationError, CoverageError, MarketDataError, ShardExistsError, ShardNotFoundError
from .schema import (
    ARROW_TYPES,
    METADATA_KEY,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    SOURCES,
    ShardKey,
    path_to_symbol,
    symbol_to_path,
)
from .validate import GapReport, fill_gaps, gap_report, timestamps_ms, validate_candles

logger = logging.getLogger(__name__)

SHARD_FILE = "candles.parquet"
LOCK_FILE = ".candles.parquet.lock"
FORMAT_VERSION = 2
WriteMode = Literal["error", "overwrite", "merge"]
Interval = tuple[int, int]


def year_bounds_ms(year: int) -> Interval:
    """``[Jan 1 year, Jan 1 year+1)`` in epoch milliseconds (UTC)."""
    start = int(pd.Timestamp(year=year, month=1, day=1, tz="UTC").value // 1_000_000)
    end = int(pd.Timestamp(year=year + 1, month=1, day=1, tz="UTC").value // 1_000_000)
    return start, end


def merge_intervals(intervals: list[Interval] | list[list[int]]) -> list[Interval]:
    """Union of half-open ``[start, end)`` intervals, sorted, touching ones joined."""
    out: list[list[int]] = []
    for start, end in sorted((int(a), int(b)) for a, b in intervals if int(b) > int(a)):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def subtract_intervals(span: Interval, covered: list[Interval]) -> list[Interval]:
    """Parts of ``span`` not inside any of ``covered`` (sorted, merged)."""
    start, end = span
    missing: list[Interval] = []
    cursor = start
    for a, b in merge_intervals(covered):
        if b <= cursor or a >= end:
            continue
        if a > cursor:
            missing.append((cursor, min(a, end)))
        cursor = max(cursor, b)
        if cursor >= end:
            break
    if cursor < end:
        missing.append((cursor, end))
    return missing


def normalize_candles(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Cast known columns to the store's dtypes (timestamps to UTC ms).

    Integer timestamps are taken as epoch milliseconds. Raises
    :class:`CandleValidationError` for missing/extra columns or values that
    cannot be cast; it does not sort, de-duplicate or fill anything.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise CandleValidationError(
            source, f"missing column(s) {missing}; expected {list(REQUIRED_COLUMNS)}", field=missing[0],
            hint="Provide candles with exactly these columns",
        )
    unknown = [c for c in df.columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise CandleValidationError(
            source, f"unexpected column(s) {unknown}", field=unknown[0],
            hint=f"Allowed columns: {list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}",
        )
    columns = [c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in df.columns]
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    ts = df["timestamp"]
    if pd.api.types.is_integer_dtype(ts.dtype):
        out["timestamp"] = pd.DatetimeIndex(pd.to_datetime(ts.to_numpy(), unit="ms", utc=True)).as_unit("ms")
    elif isinstance(ts.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(ts.dtype):
        stamps = pd.DatetimeIndex(ts)
        stamps = stamps.tz_localize("UTC") if stamps.tz is None else stamps.tz_convert("UTC")
        out["timestamp"] = stamps.as_unit("ms")
    else:
        raise CandleValidationError(
            source, f"timestamp column has dtype {ts.dtype}; expected datetimes or integer milliseconds",
            field="timestamp",
        )
    for col in columns[1:]:
        target = ARROW_TYPES[col].to_pandas_dtype()
        try:
            out[col] = df[col].to_numpy().astype(target)
        except (TypeError, ValueError) as exc:
            raise CandleValidationError(
                source, f"cannot convert column to {np.dtype(target)}: {exc}", field=col,
                hint="Check the source file for text or empty values in this column",
            ) from exc
    return out


def content_sha256(df: pd.DataFrame) -> str:
    """SHA-256 over the column names and the raw values of every column, in order."""
    h = hashlib.sha256()
    for col in df.columns:
        h.update(col.encode())
        values = timestamps_ms(df) if col == "timestamp" else df[col].to_numpy()
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class CoverageReport:
    """How much of ``[start, end)`` the store has fetched; ``missing`` lists the rest."""

    start: pd.Timestamp
    end: pd.Timestamp
    fraction: float
    missing: list[tuple[pd.Timestamp, pd.Timestamp]]

    def describe(self, limit: int = 3) -> str:
        parts = [f"{a.isoformat()} .. {b.isoformat()}" for a, b in self.missing[:limit]]
        more = f" and {len(self.missing) - limit} more" if len(self.missing) > limit else ""
        return f"{100 * self.fraction:.1f}% of the range is stored; missing {', '.join(parts)}{more}"


@dataclass(frozen=True)
class ShardInfo:
    key: ShardKey
    path: Path
    metadata: dict

    @property
    def gaps(self) -> GapReport:
        return GapReport.from_dict(self.metadata["gaps"])


class CandleStore:
    """Validated reads and atomic writes of candle year shards under ``root``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # ----------------------------------------------------------------- paths
    def shard_path(self, key: ShardKey) -> Path:
        return self.root / key.relative_dir / SHARD_FILE

    def exists(self, key: ShardKey) -> bool:
        return self.shard_path(key).is_file()

    def list_shards(
        self,
        exchange: str | None = None,
        symbol: str | None = None,
        timeframe: str | None = None,
        year: int | None = None,
    ) -> list[ShardKey]:
        """Shard keys found on disk, filtered, sorted."""
        pattern = (
            f"exchange={exchange or '*'}/symbol={symbol_to_path(symbol) if symbol else '*'}/"
            f"timeframe={timeframe or '*'}/year={year if year is not None else '*'}/{SHARD_FILE}"
        )
        keys = []
        for path in self.root.glob(pattern):
            parts = dict(p.split("=", 1) for p in path.relative_to(self.root).parts[:-1])
            keys.append(
                ShardKey(parts["exchange"], path_to_symbol(parts["symbol"]), parts["timeframe"], int(parts["year"]))
            )
        return sorted(keys, key=lambda k: (k.exchange, k.symbol, k.timeframe, k.year))

    # ------------------------------------------------------------------ read
    def read_metadata(self, key: ShardKey) -> dict:
        path = self._existing(key)
        try:
            raw = pq.read_schema(path).metadata or {}
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise MarketDataError(
                f"shard {path} is corrupt or not a readable Parquet file ({exc}); restore it from its source "
                "(re-download, or re-import the source files with --overwrite)"
            ) from exc
        if METADATA_KEY not in raw:
            raise MarketDataError(
                f"shard {path} has no '{METADATA_KEY.decode()}' metadata: it was not written by this store. "
                "Re-import it with umc-data"
            )
        try:
            return json.loads(raw[METADATA_KEY])
        except (ValueError, UnicodeDecodeError) as exc:
            raise MarketDataError(
                f"shard {path} is corrupt: its metadata is not valid JSON ({exc}); restore it from its source "
                "(re-download, or re-import the source files with --overwrite)"
            ) from exc

    def info(self, key: ShardKey) -> ShardInfo:
        return ShardInfo(key, self.shard_path(key), self.read_metadata(key))

    def read_shard(self, key: ShardKey, validate: bool = True) -> pd.DataFrame:
        """Candles of one shard, validated unless ``validate=False``."""
        path = self._existing(key)
        try:
            table = pq.read_table(path, page_checksum_verification=True)
            df = table.to_pandas()
        except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError) as exc:
            raise MarketDataError(
                f"shard {path} is corrupt or not a readable Parquet file ({exc}); restore it from its source "
                "(re-download, or re-import the source files with --overwrite)"
            ) from exc
        if validate:
            meta = self.read_metadata(key)
            validate_candles(df, key.timeframe, str(path))
            self._check_year(df, key, str(path))
            if int(meta.get("rows", -1)) != len(df):
                raise CandleValidationError(
                    str(path), f"metadata says {meta.get('rows')} rows but the file holds {len(df)}",
                    hint="The shard was modified outside the store; re-import it",
                )
            stored_hash = meta.get("content_sha256")
            if stored_hash is None:
                logger.warning("shard %s has no content hash (written by format version %s); rewrite it to add one",
                               path, meta.get("format_version"))
            elif content_sha256(df) != stored_hash:
                raise MarketDataError(
                    f"shard {path} is corrupt: its candles do not match the content hash written with them; "
                    "restore it from its source (re-download, or re-import the source files with --overwrite)"
                )
        return df

    def load(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        start: str | pd.Timestamp | None = None,
        end: str | pd.Timestamp | None = None,
        allow_partial: bool = False,
    ) -> pd.DataFrame:
        """Validated candles with ``start <= timestamp < end`` across year shards.

        ``start``/``end`` default to the first/last stored candle. Raises
        :class:`ShardNotFoundError` when a year in the range has no shard and
        :class:`CoverageError` when part of the range was never fetched, unless
        ``allow_partial`` (then the covered part is returned; :meth:`coverage` says
        how much that is). Gaps *inside* fetched intervals (the exchange had no
        candles) are not missing coverage; the gap report lists them.
        """
        keys = self.list_shards(exchange, symbol, timeframe)
        if not keys:
            raise ShardNotFoundError(
                f"no shards for {exchange} {symbol} {timeframe} under {self.root}; "
                "create them with `umc-data download`, `umc-data import` or `umc-data synth`"
            )
        start_ts = _to_utc(start) if start is not None else None
        end_ts = _to_utc(end) if end is not None else None
        if start_ts is not None and end_ts is not None and start_ts >= end_ts:
            raise ValueError(
                f"start {start_ts.isoformat()} is after end {end_ts.isoformat()} (or equal): the range is empty; "
                "give start < end"
            )
        first_year = start_ts.year if start_ts is not None else keys[0].year
        last_year = (end_ts - pd.Timedelta(milliseconds=1)).year if end_ts is not None else keys[-1].year
        stored = {k.year: k for k in keys}
        years = [y for y in range(first_year, last_year + 1) if y in stored]
        absent = [y for y in range(first_year, last_year + 1) if y not in stored]
        if absent and not allow_partial:
            raise ShardNotFoundError(
                f"no shard for {exchange} {symbol} {timeframe} year(s) {absent} under {self.root} "
                f"(stored: {sorted(stored)}); fetch them first, narrow the range, or pass --allow-partial "
                "to run on the stored part only"
            )
        if start_ts is not None or end_ts is not None:
            report = self.coverage(exchange, symbol, timeframe, start_ts, end_ts)
            if report.missing and not allow_partial:
                raise CoverageError(
                    f"{exchange} {symbol} {timeframe} under {self.root}: {report.describe()}. Fetch the missing "
                    "part (umc-data download / import), narrow the range, or pass --allow-partial "
                    "(allow_partial=True) to run on the stored part and report its coverage"
                )
        if not years:
            raise CoverageError(
                f"{exchange} {symbol} {timeframe}: nothing stored between {start_ts} and {end_ts} under {self.root}"
            )
        frames = [self.read_shard(stored[y]) for y in years]
        df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        if len(frames) > 1:
            validate_candles(df, timeframe, f"{exchange} {symbol} {timeframe} {first_year}-{last_year}")
        ts = df["timestamp"]
        lo = 0 if start_ts is None else int(ts.searchsorted(start_ts, side="left"))
        hi = len(df) if end_ts is None else int(ts.searchsorted(end_ts, side="left"))
        out = df.iloc[lo:hi].reset_index(drop=True)
        if out.empty:
            raise CoverageError(
                f"{exchange} {symbol} {timeframe}: no candles stored between {start_ts} and {end_ts} "
                f"under {self.root}; fetch them first or choose another range"
            )
        return out

    def coverage(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        start: str | pd.Timestamp | None,
        end: str | pd.Timestamp | None,
    ) -> CoverageReport:
        """Which part of ``[start, end)`` the store's shards say they fetched (metadata only)."""
        keys = self.list_shards(exchange, symbol, timeframe)
        metas = [self.read_metadata(k) for k in keys]
        covered = merge_intervals([tuple(c) for m in metas for c in m["coverage"]])
        lo = int(_to_utc(start).value // 1_000_000) if start is not None else (covered[0][0] if covered else 0)
        hi = int(_to_utc(end).value // 1_000_000) if end is not None else (covered[-1][1] if covered else 0)
        if hi <= lo:
            raise ValueError(f"coverage: start {start} must be before end {end}")
        missing = subtract_intervals((lo, hi), covered)
        gap = sum(b - a for a, b in missing)

        def stamp(ms: int) -> pd.Timestamp:
            return pd.Timestamp(ms, unit="ms", tz="UTC")

        return CoverageReport(stamp(lo), stamp(hi), 1.0 - gap / (hi - lo), [(stamp(a), stamp(b)) for a, b in missing])

    def validate_shard(self, key: ShardKey) -> GapReport:
        """Re-validate a stored shard fully; returns its gap report."""
        df = self.read_shard(key, validate=True)
        return gap_report(timestamps_ms(df), key.timeframe)

    # ----------------------------------------------------------------- write
    def write_shard(
        self,
        key: ShardKey,
        candles: pd.DataFrame,
        source: str,
        mode: WriteMode = "error",
        coverage: list[Interval] | None = None,
        extra_metadata: dict | None = None,
    ) -> ShardInfo:
        """Validate and atomically store ``candles`` as the shard ``key``.

        ``mode``: ``"error"`` refuses to touch an existing shard, ``"overwrite"``
        replaces it, ``"merge"`` adds the new candles to it. ``coverage`` lists
        the ``[start, end)`` ms intervals the caller has fully fetched (default:
        first to last candle); it is merged with the stored coverage.
        """
        if source not in SOURCES:
            raise ValueError(f"source {source!r} must be one of {SOURCES}")
        if mode not in ("error", "overwrite", "merge"):
            raise ValueError(f"mode {mode!r} must be 'error', 'overwrite' or 'merge'")
        path = self.shard_path(key)
        label = f"new candles for shard {key}"
        df = normalize_candles(candles, label)
        validate_candles(df, key.timeframe, label)
        self._check_year(df, key, label)
        ts = timestamps_ms(df)
        year_start, year_end = year_bounds_ms(key.year)
        new_coverage = [
            (max(a, year_start), min(b, year_end))
            for a, b in merge_intervals(coverage or [(int(ts[0]), int(ts[-1]) + key.timeframe_ms)])
        ]
        new_coverage = [c for c in new_coverage if c[1] > c[0]]
        created_at = None
        sources = [source]
        extra = dict(extra_metadata or {})

        with self._lock(key):
            return self._write_locked(key, path, df, source, mode, new_coverage, sources, extra, created_at)

    def _write_locked(self, key, path, df, source, mode, new_coverage, sources, extra, created_at) -> ShardInfo:
        if path.exists():
            if mode == "error":
                rows = self.read_metadata(key).get("rows", "?")
                raise ShardExistsError(
                    f"shard {path} already exists with {rows} stored candles; merge (--merge, the import default) "
                    f"adds the new candles to it, while --overwrite replaces the whole shard and drops its "
                    f"{rows} stored candles"
                )
            if mode == "merge":
                old_meta = self.read_metadata(key)
                old = self.read_shard(key)
                old_sources = old_meta.get("sources", [old_meta.get("source")])
                if ("synthetic" in old_sources) != (source == "synthetic"):
                    raise ShardExistsError(
                        f"refusing to merge {source} candles into shard {path} whose sources are {old_sources}: "
                        "synthetic and real prices never mix in one shard"
                    )
                df = _merge_frames(old, df, str(path))
                new_coverage = merge_intervals(list(new_coverage) + [tuple(c) for c in old_meta["coverage"]])
                sources = sorted(set(old_sources) | {source})
                extra = _merge_extra(old_meta.get("extra", {}), extra)
                created_at = old_meta.get("created_at")
                validate_candles(df, key.timeframe, f"merged shard {path}")

        return self._commit(key, df, sources, new_coverage, extra, created_at)

    def add_coverage(self, key: ShardKey, intervals: list[Interval]) -> ShardInfo:
        """Record intervals as fetched although they hold no candles (e.g. before a listing).

        The candles are kept as they are; only the ``coverage`` metadata grows.
        """
        with self._lock(key):
            meta = self.read_metadata(key)
            df = self.read_shard(key)
            lo, hi = year_bounds_ms(key.year)
            clipped = [(max(a, lo), min(b, hi)) for a, b in intervals]
            coverage = merge_intervals([tuple(c) for c in meta["coverage"]] + [c for c in clipped if c[1] > c[0]])
            return self._commit(key, df, meta["sources"], coverage, meta.get("extra", {}), meta.get("created_at"))

    def fill_gaps(self, key: ShardKey) -> ShardInfo:
        """Explicitly fill the shard's gaps (flat candles flagged ``filled=True``).

        Stored candles, sources and coverage are kept; only flagged rows are added.
        With nothing to fill the shard is left exactly as it is (no ``filled`` column).
        """
        with self._lock(key):
            meta = self.read_metadata(key)
            stored = self.read_shard(key)
            if gap_report(timestamps_ms(stored), key.timeframe).missing_candles == 0:
                logger.info("%s has no gaps: nothing to fill, shard unchanged", key)
                return self.info(key)
            df = fill_gaps(stored, key.timeframe)
            return self._commit(
                key, df, meta["sources"], [tuple(c) for c in meta["coverage"]], meta.get("extra", {}),
                meta.get("created_at"),
            )

    def _commit(
        self,
        key: ShardKey,
        df: pd.DataFrame,
        sources: list[str],
        coverage: list[Interval],
        extra: dict,
        created_at: str | None = None,
    ) -> ShardInfo:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        path = self.shard_path(key)
        report = gap_report(timestamps_ms(df), key.timeframe)
        metadata = {
            "format_version": FORMAT_VERSION,
            "exchange": key.exchange,
            "symbol": key.symbol,
            "timeframe": key.timeframe,
            "year": int(key.year),
            "source": "+".join(sources),
            "sources": list(sources),
            "synthetic": list(sources) == ["synthetic"],
            "created_at": created_at or now,
            "updated_at": now,
            "rows": len(df),
            "first_timestamp": report.first_timestamp,
            "last_timestamp": report.last_timestamp,
            "filled_rows": int(df["filled"].sum()) if "filled" in df.columns else 0,
            "coverage": [list(c) for c in coverage],
            "gaps": report.to_dict(),
            "extra": extra,
            "content_sha256": content_sha256(df),
        }
        self._atomic_write(path, df, metadata)
        logger.info("wrote %s rows to %s (%s)", len(df), path, metadata["source"])
        return ShardInfo(key, path, metadata)

    # -------------------------------------------------------------- internal
    @contextlib.contextmanager
    def _lock(self, key: ShardKey) -> Iterator[None]:
        """Exclusive lock of one shard for a whole read-modify-write (blocks until the other writer is done)."""
        folder = self.shard_path(key).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise MarketDataError(
                f"cannot write under {folder}: {exc.strerror or exc}; choose a writable --root"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _existing(self, key: ShardKey) -> Path:
        path = self.shard_path(key)
        if not path.is_file():
            raise ShardNotFoundError(
                f"no shard {key} at {path}; create it with `umc-data download`, `import` or `synth`"
            )
        return path

    @staticmethod
    def _check_year(df: pd.DataFrame, key: ShardKey, source: str) -> None:
        ts = timestamps_ms(df)
        lo, hi = year_bounds_ms(key.year)
        outside = (ts < lo) | (ts >= hi)
        if outside.any():
            row = int(np.argmax(outside))
            raise CandleValidationError(
                source, f"candle is outside year {key.year} of this shard", row=row, field="timestamp",
                timestamp=pd.Timestamp(int(ts[row]), unit="ms", tz="UTC").isoformat(),
                hint="Split candles by UTC year before writing (one shard per year)",
            )

    @staticmethod
    def _atomic_write(path: Path, df: pd.DataFrame, metadata: dict) -> None:
        fields = [pa.field(c, ARROW_TYPES[c]) for c in df.columns]
        schema = pa.schema(fields, metadata={METADATA_KEY: json.dumps(metadata).encode()})
        table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                pq.write_table(table, fh, compression="zstd", row_group_size=1 << 20, write_page_checksum=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise MarketDataError(
                f"writing shard {path} failed: {exc.strerror or exc}; the stored shard (if any) is unchanged. "
                "Free space or choose a writable --root, then retry"
            ) from exc
        finally:
            if tmp.exists():
                tmp.unlink()
        try:
            dir_fd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _merge_extra(old: dict, new: dict) -> dict:
    """New extra metadata over the old; list values (e.g. imported file names) are unioned, not replaced."""
    out = dict(old)
    for key, value in new.items():
        if isinstance(value, list) and isinstance(old.get(key), list):
            out[key] = sorted(set(old[key]) | set(value))
        else:
            out[key] = value
    return out


def _merge_frames(old: pd.DataFrame, new: pd.DataFrame, source: str) -> pd.DataFrame:
    """Union of two validated candle frames; identical duplicates kept once.

    A real candle replaces a ``filled=True`` placeholder at the same time. Optional columns the
    new candles lack are an error (the stored values cannot be invented); ``filled`` is the
    exception: rows without it are real candles.
    """
    old, new = old.copy(), new.copy()
    if "filled" in old.columns and "filled" not in new.columns:
        new["filled"] = False
    if "filled" in new.columns and "filled" not in old.columns:
        old["filled"] = False
    if "filled" in old.columns:
        placeholder = old["filled"].to_numpy() & np.isin(timestamps_ms(old), timestamps_ms(new))
        old = old.loc[~placeholder]
    columns = list(old.columns)
    if set(new.columns) != set(columns):
        differ = sorted(set(columns) ^ set(new.columns))
        raise CandleValidationError(
            source, f"cannot merge candles with different columns (differ in {differ})",
            field=differ[0], hint=(
                f"Import candles from the same kind of source; --overwrite would replace the whole shard and "
                f"drop its {len(old)} stored candles"
            ),
        )
    new = new[columns]
    both = pd.concat([old, new], ignore_index=True)
    ts = timestamps_ms(both)
    order = np.argsort(ts, kind="stable")
    both = both.iloc[order].reset_index(drop=True)
    ts = ts[order]
    dup = np.flatnonzero(np.diff(ts) == 0)
    if dup.size:
        a = both.iloc[dup].reset_index(drop=True)
        b = both.iloc[dup + 1].reset_index(drop=True)
        value_cols = [c for c in columns if c != "timestamp"]
        differs = ~((a[value_cols] == b[value_cols]) | (a[value_cols].isna() & b[value_cols].isna())).all(axis=1)
        if differs.any():
            i = int(np.argmax(differs.to_numpy()))
            raise CandleValidationError(
                source, f"stored candle differs from the new one ({a.iloc[i].to_dict()} vs {b.iloc[i].to_dict()})",
                timestamp=a["timestamp"].iloc[i].isoformat(),
                hint=(
                    "The stored shard is kept unchanged. If the new data is right, --overwrite replaces the whole "
                    f"shard and drops its {len(old)} stored candles"
                ),
            )
        both = both.drop(index=dup + 1).reset_index(drop=True)
    return both


def _to_utc(value: str | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")

"""Validation and gap reports for candle frames. Pure functions on DataFrames.

Every check is vectorised and reports the *first* offending row so the error
can say exactly where the data is wrong. Nothing here modifies its input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from .errors import CandleValidationError
from .schema import OPTIONAL_COLUMNS, PRICE_COLUMNS, REQUIRED_COLUMNS, timeframe_grid_offset_ms, timeframe_to_ms

_FIX_HINT = "Fix or re-download the source data; the store never repairs candles silently"


def timestamps_ms(df: pd.DataFrame) -> np.ndarray:
    """Candle open times as int64 milliseconds since the epoch (UTC)."""
    ts = df["timestamp"]
    if isinstance(ts.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(ts.dtype):
        values = ts.to_numpy(dtype="datetime64[ms]") if ts.dt.tz is None else (
            ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ms]")
        )
        return values.astype(np.int64)
    return ts.to_numpy(dtype=np.int64)


def _stamp(ms: int) -> str:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").isoformat()


def _first(mask: np.ndarray) -> int | None:
    idx = int(np.argmax(mask)) if mask.size else 0
    return idx if mask.size and mask[idx] else None


def validate_candles(df: pd.DataFrame, timeframe: str, source: str) -> None:
    """Raise :class:`CandleValidationError` at the first invariant ``df`` breaks.

    Checks, in order: columns present and numeric; not empty; no NaN or inf;
    timestamps on the timeframe grid, strictly increasing (which also rules out
    duplicates); ``low <= min(open, close)``, ``high >= max(open, close)``;
    ``volume >= 0``. ``source`` names the shard or file in the message.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise CandleValidationError(
            source,
            f"missing column(s) {missing}; expected {list(REQUIRED_COLUMNS)}",
            field=missing[0],
            hint="Write candles with exactly these columns",
        )
    unknown = [c for c in df.columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise CandleValidationError(
            source,
            f"unexpected column(s) {unknown}; allowed: {list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}",
            field=unknown[0],
            hint="Drop the extra columns before storing",
        )
    if len(df) == 0:
        raise CandleValidationError(source, "no candles (empty)", hint="Nothing to store or read")

    tf_ms = timeframe_to_ms(timeframe)
    try:
        ts = timestamps_ms(df)
    except (TypeError, ValueError) as exc:
        raise CandleValidationError(
            source, f"timestamps are not datetimes or integer milliseconds ({exc})", field="timestamp"
        ) from exc
    if pd.isna(df["timestamp"]).any():
        row = _first(pd.isna(df["timestamp"]).to_numpy())
        raise CandleValidationError(source, "missing timestamp", row=row, field="timestamp", hint=_FIX_HINT)

    numeric = [c for c in (*REQUIRED_COLUMNS[1:], "quote_volume") if c in df.columns]
    for col in numeric:
        if not pd.api.types.is_numeric_dtype(df[col].dtype) or pd.api.types.is_bool_dtype(df[col].dtype):
            raise CandleValidationError(
                source, f"column has dtype {df[col].dtype}, expected float64", field=col, hint=_FIX_HINT
            )
    values = {col: df[col].to_numpy(dtype=np.float64) for col in numeric}
    for col in numeric:
        bad = ~np.isfinite(values[col])
        row = _first(bad)
        if row is not None:
            raise CandleValidationError(
                source, f"value {values[col][row]} is NaN or infinite", row=row, field=col,
                timestamp=_stamp(ts[row]), hint=_FIX_HINT,
            )

    off_grid = (ts - timeframe_grid_offset_ms(timeframe)) % tf_ms != 0
    row = _first(off_grid)
    if row is not None:
        raise CandleValidationError(
            source, f"timestamp is not on the {timeframe} grid (open times must be multiples of {tf_ms} ms)",
            row=row, field="timestamp", timestamp=_stamp(ts[row]), hint=_FIX_HINT,
        )
    step = np.diff(ts)
    row = _first(step == 0)
    if row is not None:
        raise CandleValidationError(
            source, "duplicate timestamp (same as the previous row)", row=row + 1, field="timestamp",
            timestamp=_stamp(ts[row + 1]), hint="De-duplicate the candles (e.g. merge) before storing",
        )
    row = _first(step < 0)
    if row is not None:
        raise CandleValidationError(
            source, f"timestamps not increasing (previous row is {_stamp(ts[row])})", row=row + 1,
            field="timestamp", timestamp=_stamp(ts[row + 1]), hint="Sort the candles by timestamp before storing",
        )

    o, h, lo, c = (values[k] for k in PRICE_COLUMNS)
    for col, bad, what in (
        ("low", lo > np.minimum(o, c), "low > min(open, close)"),
        ("high", h < np.maximum(o, c), "high < max(open, close)"),
        ("low", lo <= 0, "non-positive price"),
    ):
        row = _first(bad)
        if row is not None:
            raise CandleValidationError(
                source,
                f"OHLC inconsistent: {what} (open={o[row]}, high={h[row]}, low={lo[row]}, close={c[row]})",
                row=row, field=col, timestamp=_stamp(ts[row]), hint=_FIX_HINT,
            )
    for col in ("volume", "quote_volume"):
        if col in values:
            row = _first(values[col] < 0)
            if row is not None:
                raise CandleValidationError(
                    source, f"negative volume {values[col][row]}", row=row, field=col,
                    timestamp=_stamp(ts[row]), hint=_FIX_HINT,
                )
    if "trades" in df.columns:
        trades = df["trades"].to_numpy()
        if not pd.api.types.is_integer_dtype(trades.dtype):
            raise CandleValidationError(source, f"dtype {trades.dtype}, expected int64", field="trades")
        row = _first(trades < 0)
        if row is not None:
            raise CandleValidationError(source, "negative trade count", row=row, field="trades",
                                        timestamp=_stamp(ts[row]), hint=_FIX_HINT)


@dataclass(frozen=True)
class Gap:
    """Missing candles between two stored candles: ``[start, end)`` open times."""

    start: str
    end: str
    missing_candles: int


@dataclass(frozen=True)
class GapReport:
    rows: int
    first_timestamp: str | None
    last_timestamp: str | None
    expected_rows: int
    missing_candles: int
    gap_count: int
    longest_gap_candles: int
    longest_gap_start: str | None
    first_gaps: list[Gap] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GapReport:
        data = dict(data)
        data["first_gaps"] = [Gap(**g) for g in data.get("first_gaps", [])]
        return cls(**data)


def gap_report(ts_ms: np.ndarray, timeframe: str, max_listed: int = 10) -> GapReport:
    """Gaps between consecutive candles of sorted open times ``ts_ms`` (int64 ms, shape [N]).

    Only gaps *between* stored candles count; candles before the first or after
    the last are outside the data's span, not missing.
    """
    tf_ms = timeframe_to_ms(timeframe)
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    if ts_ms.size == 0:
        return GapReport(0, None, None, 0, 0, 0, 0, None, [])
    missing = np.diff(ts_ms) // tf_ms - 1
    gap_idx = np.flatnonzero(missing > 0)
    longest = int(missing[gap_idx].max()) if gap_idx.size else 0
    longest_start = (
        _stamp(ts_ms[gap_idx[int(np.argmax(missing[gap_idx]))]] + tf_ms) if gap_idx.size else None
    )
    listed = [
        Gap(_stamp(ts_ms[i] + tf_ms), _stamp(ts_ms[i + 1]), int(missing[i])) for i in gap_idx[:max_listed]
    ]
    total_missing = int(missing[gap_idx].sum()) if gap_idx.size else 0
    return GapReport(
        rows=int(ts_ms.size),
        first_timestamp=_stamp(ts_ms[0]),
        last_timestamp=_stamp(ts_ms[-1]),
        expected_rows=int(ts_ms.size) + total_missing,
        missing_candles=total_missing,
        gap_count=int(gap_idx.size),
        longest_gap_candles=longest,
        longest_gap_start=longest_start,
        first_gaps=listed,
    )


def fill_gaps(df: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    """Explicit gap filling: insert flat candles at the previous close, zero volume.

    Inserted rows have ``filled=True``; stored rows keep ``filled=False``. Only
    called when the user asks for it (``--fill-gaps``); the store never fills.
    """
    tf_ms = timeframe_to_ms(timeframe)
    ts = timestamps_ms(df)
    full = np.arange(ts[0], ts[-1] + tf_ms, tf_ms, dtype=np.int64)
    out = df.copy()
    out.index = ts
    out = out.reindex(full)
    filled = out["close"].isna().to_numpy()
    close = out["close"].ffill()
    for col in PRICE_COLUMNS:
        out[col] = out[col].fillna(close)
    for col in ("volume", "quote_volume"):
        if col in out.columns:
            out[col] = out[col].fillna(0.0)
    if "trades" in out.columns:
        out["trades"] = out["trades"].fillna(0).astype(np.int64)
    previous = df["filled"].to_numpy(dtype=bool) if "filled" in df.columns else np.zeros(len(df), bool)
    flags = filled.copy()
    flags[np.searchsorted(full, ts)] = previous
    out["filled"] = flags
    out["timestamp"] = pd.to_datetime(full, unit="ms", utc=True).as_unit("ms")
    return out.reset_index(drop=True)

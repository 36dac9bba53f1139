"""Resumable candle downloads from an exchange through ccxt into the candle store.

The download walks ``[start, end)`` month by month. For every month it asks the
year shard's stored ``coverage`` what has already been fetched and requests only
the rest, paginating ``fetch_ohlcv`` forward. After each month, and before an
error is re-raised, the fetched candles are merged into the year shard together
with exactly the interval(s) they cover, so an interrupted download loses at most
the page in flight and a rerun resumes where it stopped.

Nothing is invented: candles the exchange does not return stay missing and are
reported as gaps by the store; they are never filled here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TypeVar

import ccxt
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .errors import DownloadError
from .schema import REQUIRED_COLUMNS, ShardKey, timeframe_to_ms
from .store import CandleStore, Interval, merge_intervals, subtract_intervals
from .validate import GapReport

logger = logging.getLogger(__name__)

T = TypeVar("T")
TimeLike = str | int | date | datetime | pd.Timestamp

#: ccxt errors worth another try. ``NetworkError`` covers network trouble,
#: timeouts, rate limits and outages (``RequestTimeout``, ``ExchangeNotAvailable``,
#: ``DDoSProtection``, ``RateLimitExceeded``); its parent ``OperationFailed`` adds
#: what ccxt documents as "failed, may succeed on retry", e.g. Binance's
#: ``-1001 Internal error`` and ``-1008 Server is currently overloaded``.
#: ``ExchangeError`` (bad symbol, bad request, ...) is never retried.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (ccxt.NetworkError, ccxt.OperationFailed)


# --------------------------------------------------------------------------- exchange
def make_exchange(exchange_id: str = "binance", **config) -> ccxt.Exchange:
    """A ccxt client for public market data: no API key, rate limiting on.

    For Binance the market loading is restricted to spot (``options['fetchMarkets']
    = {'types': ['spot']}``), margin pairs and currencies (private endpoints) are
    not fetched, so ``load_markets`` calls ``GET /api/v3/exchangeInfo`` only and
    never a futures, options or margin endpoint. ``config`` is passed to the ccxt
    constructor (``options`` are merged into the defaults above).

    Raises :class:`DownloadError` if ccxt does not know ``exchange_id`` or the
    exchange cannot fetch OHLCV candles.
    """
    if exchange_id not in ccxt.exchanges:
        raise DownloadError(
            f"unknown exchange id {exchange_id!r}: ccxt {ccxt.__version__} has no such exchange. "
            "Use a lowercase ccxt id such as 'binance', 'kraken' or 'okx' (see ccxt.exchanges)"
        )
    options = dict(config.pop("options", {}) or {})
    if exchange_id in ("binance", "binanceus"):
        options = {
            "defaultType": "spot",
            "fetchMarkets": {"types": ["spot"]},
            "fetchMargins": False,
            "fetchCurrencies": False,
            **options,
        }
    settings = {"enableRateLimit": True, **config, "options": options}
    for secret in ("apiKey", "secret", "password", "uid"):
        settings.pop(secret, None)
    exchange = getattr(ccxt, exchange_id)(settings)
    if not exchange.has.get("fetchOHLCV"):
        raise DownloadError(
            f"exchange {exchange_id!r} does not offer OHLCV candles through ccxt (has['fetchOHLCV'] is "
            f"{exchange.has.get('fetchOHLCV')!r}); pick an exchange that does, e.g. 'binance'"
        )
    return exchange


# --------------------------------------------------------------------------- pure helpers
def to_utc_ms(value: TimeLike) -> int:
    """Epoch milliseconds (UTC) of a date, datetime, ISO string or integer ms.

    Naive dates and datetimes are taken as UTC.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value // 1_000_000)


def ms_to_iso(ms: int) -> str:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").isoformat()


def ceil_to_grid(ms: int, tf_ms: int) -> int:
    """First multiple of ``tf_ms`` at or after ``ms``."""
    return -(-int(ms) // tf_ms) * tf_ms


def expected_candles(interval: Interval, tf_ms: int) -> int:
    """Number of candle open times on the ``tf_ms`` grid inside ``[start, end)``."""
    start, end = interval
    return max(0, (ceil_to_grid(end, tf_ms) - ceil_to_grid(start, tf_ms)) // tf_ms)


def month_parts(start_ms: int, end_ms: int) -> list[Interval]:
    """``[start, end)`` cut at UTC month boundaries, in order.

    >>> [(ms_to_iso(a), ms_to_iso(b)) for a, b in month_parts(to_utc_ms("2024-01-20"), to_utc_ms("2024-03-02"))][1]
    ('2024-02-01T00:00:00+00:00', '2024-03-01T00:00:00+00:00')
    """
    parts: list[Interval] = []
    cursor = int(start_ms)
    while cursor < end_ms:
        stamp = pd.Timestamp(cursor, unit="ms", tz="UTC")
        next_month = (stamp.replace(day=1, hour=0, minute=0, second=0, microsecond=0, nanosecond=0)
                      + pd.DateOffset(months=1))
        boundary = int(next_month.value // 1_000_000)
        parts.append((cursor, min(boundary, int(end_ms))))
        cursor = boundary
    return parts


def page_to_frame(page: list[list]) -> pd.DataFrame:
    """ccxt OHLCV rows ``[[ms, open, high, low, close, volume], ...]`` as a candle frame.

    ``timestamp`` stays int64 ms (the store converts it), the rest is float64.
    A missing value (``None``) becomes NaN, which the store rejects; nothing is
    filled in.
    """
    if not page:
        return pd.DataFrame({c: pd.Series(dtype=np.int64 if c == "timestamp" else np.float64)
                             for c in REQUIRED_COLUMNS})
    arr = np.asarray([row[:6] for row in page], dtype=object)
    out = {"timestamp": arr[:, 0].astype(np.int64)}
    for j, col in enumerate(REQUIRED_COLUMNS[1:], start=1):
        out[col] = np.array([np.nan if v is None else v for v in arr[:, j]], dtype=np.float64)
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class DownloadSummary:
    """What one :func:`download_ohlcv` call did.

    ``requested_candles``: candle slots in the (clipped) range; ``fetched_candles``:
    candles received and stored by this call; ``requests``: ``fetch_ohlcv`` pages
    that succeeded; ``retries``: failed attempts that were retried;
    ``months_skipped``: months already complete in the store; ``months_fetched``:
    months (or month parts) this call requested; ``shards_written``: year shards
    updated; ``gap_reports``: the store's gap report of each written shard;
    ``empty_intervals``: intervals where the exchange had no candles and that
    could not be recorded as covered (no candle of that year is stored; the
    store cannot hold an empty shard), so a rerun asks for them again.
    """

    exchange: str
    symbol: str
    timeframe: str
    start_ms: int
    end_ms: int
    requested_candles: int = 0
    fetched_candles: int = 0
    requests: int = 0
    retries: int = 0
    months_skipped: int = 0
    months_fetched: int = 0
    shards_written: tuple[ShardKey, ...] = ()
    gap_reports: dict[ShardKey, GapReport] = field(default_factory=dict)
    empty_intervals: tuple[Interval, ...] = ()

    @property
    def pages(self) -> int:
        return self.requests

    @property
    def missing_candles(self) -> int:
        return sum(r.missing_candles for r in self.gap_reports.values())


@dataclass
class _Stats:
    fetched: int = 0
    requests: int = 0
    retries: int = 0
    skipped: int = 0
    months: int = 0
    written: dict[ShardKey, GapReport] = field(default_factory=dict)


# --------------------------------------------------------------------------- retries
def call_with_retries(
    fn: Callable[[], T],
    *,
    describe: str,
    max_retries: int,
    backoff_base: float,
    backoff_cap: float,
    sleep: Callable[[float], None],
    on_retry: Callable[[], None] | None = None,
) -> T:
    """``fn()``, retrying :data:`RETRYABLE_ERRORS` with exponential backoff.

    Attempt ``k`` (0-based) that fails waits ``min(backoff_cap, backoff_base * 2**k)``
    seconds, up to ``max_retries`` retries; then :class:`DownloadError`. Any other
    ccxt error raises :class:`DownloadError` at once. ``describe`` says what was
    being fetched and how to resume, for the messages.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except RETRYABLE_ERRORS as exc:
            if attempt >= max_retries:
                raise DownloadError(
                    f"{describe} failed after {max_retries} retries ({type(exc).__name__}: {exc}). "
                    "Candles fetched so far are stored; rerun the same download to resume from there "
                    "(check the network / exchange status, or raise max_retries / backoff)"
                ) from exc
            delay = min(backoff_cap, backoff_base * 2**attempt)
            logger.warning(
                "%s: %s (%s); retry %d/%d in %.1fs", describe, type(exc).__name__, exc, attempt + 1, max_retries, delay
            )
            if on_retry is not None:
                on_retry()
            sleep(delay)
            attempt += 1
        except ccxt.BadSymbol as exc:
            raise DownloadError(
                f"{describe}: the exchange does not know the symbol ({exc}). Check the spelling (BASE/QUOTE, "
                "e.g. BTC/USDT) and that it is a spot market"
            ) from exc
        except ccxt.BaseError as exc:
            raise DownloadError(
                f"{describe} failed: {type(exc).__name__}: {exc}. This is not a network error, so it was "
                "not retried; fix the request (symbol, timeframe, dates) and rerun"
            ) from exc


# --------------------------------------------------------------------------- download
@dataclass
class _MonthTask:
    key: ShardKey
    part: Interval
    missing: list[Interval]


def download_ohlcv(
    store: CandleStore,
    symbol: str,
    timeframe: str,
    start: TimeLike,
    end: TimeLike,
    exchange: str | ccxt.Exchange = "binance",
    *,
    store_exchange_name: str | None = None,
    limit: int = 1000,
    max_retries: int = 6,
    backoff_base: float = 1.0,
    backoff_cap: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    progress: bool = True,
    now_ms: int | None = None,
) -> DownloadSummary:
    """Download closed ``symbol`` candles of ``timeframe`` with open time in ``[start, end)`` into ``store``.

    ``start`` is inclusive and ``end`` exclusive (dates, datetimes, ISO strings or
    epoch ms; naive means UTC). ``end`` is clipped to the current time floored to
    the timeframe (``now_ms`` overrides the clock), so only closed candles are
    stored. Months already covered in the shard metadata are skipped, partial
    ones resume after their last covered candle. Network errors are retried with
    exponential backoff (``min(backoff_cap, backoff_base * 2**attempt)`` seconds,
    at most ``max_retries`` times), then :class:`DownloadError`; other exchange
    errors raise :class:`DownloadError` at once. What was fetched is stored before
    any error propagates.

    ``exchange`` is a ccxt id (built with :func:`make_exchange`) or a ccxt client;
    shards are stored under ``store_exchange_name`` (default: the client's id).
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    tf_ms = timeframe_to_ms(timeframe)
    client = make_exchange(exchange) if isinstance(exchange, str) else exchange
    name = store_exchange_name or client.id
    start_ms = ceil_to_grid(to_utc_ms(start), tf_ms)
    requested_end = to_utc_ms(end)
    now = int(time.time() * 1000) if now_ms is None else int(now_ms)
    end_ms = min(requested_end, now // tf_ms * tf_ms)
    if end_ms < requested_end:
        logger.info("end clipped from %s to %s (only closed candles)", ms_to_iso(requested_end), ms_to_iso(end_ms))
    ShardKey(name, symbol, timeframe, 2000)  # validates name, symbol and timeframe early
    stats = _Stats()
    empty: list[Interval] = []
    base_summary = dict(exchange=name, symbol=symbol, timeframe=timeframe, start_ms=start_ms, end_ms=end_ms)
    if end_ms <= start_ms:
        logger.info("nothing to download for %s %s %s: empty range after clipping", name, symbol, timeframe)
        return DownloadSummary(**base_summary)

    tasks = _plan(store, name, symbol, timeframe, start_ms, end_ms)
    requested = sum(expected_candles(t.part, tf_ms) for t in tasks)
    to_fetch = sum(expected_candles(m, tf_ms) for t in tasks for m in t.missing)
    stats.skipped = sum(1 for t in tasks if not t.missing)
    if to_fetch == 0:
        logger.info("%s %s %s %s..%s is already stored; nothing to fetch", name, symbol, timeframe,
                    ms_to_iso(start_ms), ms_to_iso(end_ms))
        return DownloadSummary(**base_summary, requested_candles=requested, months_skipped=stats.skipped)

    _ensure_market(client, symbol, timeframe, max_retries, backoff_base, backoff_cap, sleep, stats)
    pending_empty: dict[int, list[Interval]] = {}
    with tqdm(total=to_fetch, unit="candle", desc=f"{name} {symbol} {timeframe}", disable=not progress) as bar:
        for task in tasks:
            if not task.missing:
                continue
            stats.months += 1
            frames: list[pd.DataFrame] = []
            covered: list[Interval] = []
            try:
                for interval in task.missing:
                    _fetch_interval(
                        client, symbol, timeframe, interval, limit, frames, covered, bar, stats,
                        retry=dict(max_retries=max_retries, backoff_base=backoff_base, backoff_cap=backoff_cap,
                                   sleep=sleep),
                    )
            except BaseException:
                _flush(store, task.key, frames, covered, pending_empty, stats, failing=True)
                raise
            _flush(store, task.key, frames, covered, pending_empty, stats, failing=False)
    empty.extend(i for intervals in pending_empty.values() for i in intervals)
    for interval in empty:
        logger.warning(
            "%s %s %s: the exchange has no candles in %s..%s; not recorded as covered (the store cannot "
            "hold a shard without candles), so a rerun asks again", name, symbol, timeframe, ms_to_iso(interval[0]), ms_to_iso(interval[1]),
        )
    return DownloadSummary(
        **base_summary,
        requested_candles=requested,
        fetched_candles=stats.fetched,
        requests=stats.requests,
        retries=stats.retries,
        months_skipped=stats.skipped,
        months_fetched=stats.months,
        shards_written=tuple(stats.written),
        gap_reports=dict(stats.written),
        empty_intervals=tuple(merge_intervals(empty)),
    )


def _plan(store: CandleStore, name: str, symbol: str, timeframe: str, start_ms: int, end_ms: int) -> list[_MonthTask]:
    """Month parts of ``[start_ms, end_ms)`` with what each still misses per the shards' coverage."""
    coverage: dict[int, list[Interval]] = {}
    tasks = []
    for part in month_parts(start_ms, end_ms):
        year = pd.Timestamp(part[0], unit="ms", tz="UTC").year
        key = ShardKey(name, symbol, timeframe, year)
        if year not in coverage:
            coverage[year] = (
                [(int(a), int(b)) for a, b in store.read_metadata(key).get("coverage", [])]
                if store.exists(key) else []
            )
        tf_ms = key.timeframe_ms
        missing = [m for m in subtract_intervals(part, coverage[year]) if expected_candles(m, tf_ms) > 0]
        tasks.append(_MonthTask(key, part, missing))
    return tasks


def _ensure_market(client, symbol, timeframe, max_retries, backoff_base, backoff_cap, sleep, stats) -> None:
    """Load markets (with retries) and check that ``symbol`` and ``timeframe`` exist on the exchange."""

    def bump() -> None:
        stats.retries += 1

    call_with_retries(
        client.load_markets,
        describe=f"{client.id}: loading markets",
        max_retries=max_retries, backoff_base=backoff_base, backoff_cap=backoff_cap, sleep=sleep, on_retry=bump,
    )
    if symbol not in client.markets:
        base = symbol.split("/")[0]
        similar = sorted(s for s in client.markets if s.startswith(base + "/"))[:8]
        raise DownloadError(
            f"{client.id} has no market {symbol!r}"
            + (f" (markets with base {base}: {similar})" if similar else "")
            + ". Check the symbol (BASE/QUOTE, spot market) and rerun"
        )
    if client.timeframes and timeframe not in client.timeframes:
        raise DownloadError(
            f"{client.id} does not offer {timeframe!r} candles; available: {sorted(client.timeframes)}"
        )


def _fetch_interval(
    client: ccxt.Exchange,
    symbol: str,
    timeframe: str,
    interval: Interval,
    limit: int,
    frames: list[pd.DataFrame],
    covered: list[Interval],
    bar,
    stats: _Stats,
    retry: dict,
) -> None:
    """Paginate ``fetch_ohlcv`` over ``[a, b)``; append pages to ``frames`` and what they cover to ``covered``.

    ``covered`` always holds what is safe to record: ``[a, last candle + tf)``
    while paging, ``[a, b)`` once the exchange has answered up to ``b`` (an empty
    page means it has nothing more there).
    """
    tf_ms = timeframe_to_ms(timeframe)
    a, b = interval
    cursor = ceil_to_grid(a, tf_ms)
    slot = len(covered)
    covered.append((a, a))

    def bump() -> None:
        stats.retries += 1

    while cursor < b:
        since = cursor
        page = call_with_retries(
            lambda since=since: client.fetch_ohlcv(symbol, timeframe, since=since, limit=limit,
                                                   params={"until": b - 1}),
            describe=f"{client.id} {symbol} {timeframe} fetch_ohlcv(since={since} = {ms_to_iso(since)})",
            on_retry=bump,
            **retry,
        )
        stats.requests += 1
        frame = page_to_frame(page)
        ts = frame["timestamp"].to_numpy()
        inside = frame[(ts >= cursor) & (ts < b)].reset_index(drop=True)
        if inside.empty:
            # ccxt usually drops rows before `since` itself, so this guard catches clients that do not;
            # with such filtering a stuck exchange reads as "no more data" and ends the interval.
            if len(frame) and (ts < cursor).all():
                raise DownloadError(
                    f"{client.id} {symbol} {timeframe}: page for since={since} ({ms_to_iso(since)}) holds only "
                    f"candles before it (last {ms_to_iso(int(ts.max()))}); the download would not advance. "
                    "The exchange ignores `since` for this market; the candles before this page are stored"
                )
            covered[slot] = (a, b)  # the exchange answered: nothing more up to b
            bar.update(expected_candles((cursor, b), tf_ms))
            return
        frames.append(inside)
        stats.fetched += len(inside)
        last = int(inside["timestamp"].max())
        new_cursor = last + tf_ms
        covered[slot] = (a, min(new_cursor, b))
        bar.update(expected_candles((cursor, min(new_cursor, b)), tf_ms))
        cursor = new_cursor
    covered[slot] = (a, b)


def _flush(
    store: CandleStore,
    key: ShardKey,
    frames: list[pd.DataFrame],
    covered: list[Interval],
    pending_empty: dict[int, list[Interval]],
    stats: _Stats,
    *,
    failing: bool,
) -> None:
    """Merge the month's candles into its shard with exactly the covered intervals.

    The store refuses a write without candles. When the exchange had none in the
    covered intervals (before a listing, after a delisting) and the shard exists,
    only its coverage grows (``CandleStore.add_coverage``); with no shard yet, the intervals wait in
    ``pending_empty`` until a write to the same year records them. During error
    handling a failed write is logged, not raised, so the original error propagates.
    """
    covered = [c for c in merge_intervals(covered) if c[1] > c[0]]
    frames = [f for f in frames if len(f)]
    if not covered and not frames:
        return
    if frames:
        df = pd.concat(frames, ignore_index=True).sort_values("timestamp", kind="stable").reset_index(drop=True)
    elif store.exists(key):
        store.add_coverage(key, merge_intervals(covered + pending_empty.pop(key.year, [])))
        return
    else:
        pending_empty.setdefault(key.year, []).extend(covered)
        return
    coverage = merge_intervals(covered + pending_empty.pop(key.year, []))
    try:
        info = store.write_shard(key, df, source="ccxt", mode="merge", coverage=coverage)
    except Exception:
        if not failing:
            raise
        logger.exception("could not store the %d candles fetched for %s before the error", len(df), key)
        return
    stats.written[key] = info.gaps
    logger.info(
        "%s: stored %d candles, coverage %s",
        key, sum(len(f) for f in frames), ", ".join(f"{ms_to_iso(x)}..{ms_to_iso(y)}" for x, y in coverage),
    )
    if failing:
        logger.warning("%s: stored what was fetched before the error; a rerun resumes from %s", key,
                       ms_to_iso(coverage[-1][1]))


__all__ = [
    "RETRYABLE_ERRORS",
    "DownloadSummary",
    "call_with_retries",
    "download_ohlcv",
    "expected_candles",
    "make_exchange",
    "month_parts",
    "page_to_frame",
    "to_utc_ms",
]

"""Errors of the market-data layer. Each names where the problem is and what to do."""

from __future__ import annotations


class MarketDataError(Exception):
    """Base class of every market-data error."""


class CandleValidationError(MarketDataError):
    """Candles that break an invariant of the store.

    ``source`` names the shard or file, ``row`` the first offending row
    (0-based position in the data as given), ``field`` the column.
    """

    def __init__(
        self,
        source: str,
        message: str,
        *,
        row: int | None = None,
        field: str | None = None,
        timestamp: object | None = None,
        hint: str | None = None,
    ) -> None:
        self.source = source
        self.row = row
        self.field = field
        self.timestamp = timestamp
        self.hint = hint
        where = [f"in {source}"]
        if row is not None:
            where.append(f"row {row}")
        if timestamp is not None:
            where.append(f"timestamp {timestamp}")
        if field is not None:
            where.append(f"field {field!r}")
        text = f"{', '.join(where)}: {message}"
        if hint:
            text += f". {hint}"
        super().__init__(text)


class ShardExistsError(MarketDataError):
    """A write would replace a stored shard without being asked to."""


class ShardNotFoundError(MarketDataError):
    """No shard is stored for what was asked."""


class DownloadError(MarketDataError):
    """A download failed for good (after its retries)."""


class CoverageError(MarketDataError):
    """The store never fetched part of the asked range: a backtest over it would silently run on less data."""

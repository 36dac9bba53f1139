"""Column layout, timeframes and shard keys of the candle store.

A shard holds one (exchange, symbol, timeframe, year) of candles. Timestamps are
the candle *open* time, UTC, stored as ``timestamp[ms, tz=UTC]``; prices and
volumes are float64.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

#: Columns every shard has, in this order.
REQUIRED_COLUMNS: tuple[str, ...] = ("timestamp", "open", "high", "low", "close", "volume")
#: Columns a shard may have when its source provides them.
OPTIONAL_COLUMNS: tuple[str, ...] = ("quote_volume", "trades", "filled")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")

ARROW_TYPES: dict[str, pa.DataType] = {
    "timestamp": pa.timestamp("ms", tz="UTC"),
    "open": pa.float64(),
    "high": pa.float64(),
    "low": pa.float64(),
    "close": pa.float64(),
    "volume": pa.float64(),
    "quote_volume": pa.float64(),
    "trades": pa.int64(),
    "filled": pa.bool_(),
}

#: Where the store keeps its JSON metadata inside the Parquet footer.
METADATA_KEY = b"umc_backtest"

#: Sources a shard may come from (recorded in its metadata).
SOURCES: tuple[str, ...] = ("ccxt", "binance-vision", "synthetic")

MINUTE_MS = 60_000
_UNIT_MS = {"m": MINUTE_MS, "h": 60 * MINUTE_MS, "d": 1440 * MINUTE_MS, "w": 7 * 1440 * MINUTE_MS}
_TIMEFRAME_RE = re.compile(r"^(\d+)([mhdw])$")


def timeframe_to_ms(timeframe: str) -> int:
    """Length of one candle in milliseconds, e.g. ``"1m" -> 60000``.

    Month candles (``1M``) are not supported: they are not on a fixed grid.
    """
    match = _TIMEFRAME_RE.match(timeframe)
    if match is None:
        raise ValueError(
            f"unsupported timeframe {timeframe!r}: use <n><unit> with unit m, h, d or w "
            "(e.g. 1m, 5m, 1h, 1d)"
        )
    count = int(match.group(1))
    if count <= 0:
        raise ValueError(f"unsupported timeframe {timeframe!r}: the count must be positive")
    return count * _UNIT_MS[match.group(2)]


def timeframe_grid_offset_ms(timeframe: str) -> int:
    """Where the candle grid starts relative to the epoch, in ms.

    Weekly candles open on Mondays (Binance, ccxt); the epoch was a Thursday,
    so the weekly grid is shifted by four days. Other grids start at the epoch.
    """
    return 4 * 1440 * MINUTE_MS if timeframe_to_ms(timeframe) % (7 * 1440 * MINUTE_MS) == 0 else 0


def symbol_to_path(symbol: str) -> str:
    """``"BTC/USDT" -> "BTC-USDT"`` (a slash cannot appear in a partition value)."""
    if "/" not in symbol or symbol.count("/") != 1 or not all(symbol.split("/")):
        raise ValueError(f"symbol {symbol!r} must look like BASE/QUOTE, e.g. BTC/USDT")
    return symbol.replace("/", "-")


def path_to_symbol(value: str) -> str:
    return value.replace("-", "/", 1)


@dataclass(frozen=True)
class ShardKey:
    """Identifies one year shard: ``exchange=…/symbol=…/timeframe=…/year=…``."""

    exchange: str
    symbol: str
    timeframe: str
    year: int

    def __post_init__(self) -> None:
        if not self.exchange or "/" in self.exchange or "=" in self.exchange:
            raise ValueError(f"exchange {self.exchange!r} must be a plain name like 'binance'")
        symbol_to_path(self.symbol)
        timeframe_to_ms(self.timeframe)
        if not 1970 <= int(self.year) <= 2200:
            raise ValueError(f"year {self.year!r} is out of range 1970..2200")

    @property
    def timeframe_ms(self) -> int:
        return timeframe_to_ms(self.timeframe)

    @property
    def relative_dir(self) -> str:
        return (
            f"exchange={self.exchange}/symbol={symbol_to_path(self.symbol)}/"
            f"timeframe={self.timeframe}/year={int(self.year)}"
        )

    def __str__(self) -> str:
        return f"{self.exchange} {self.symbol} {self.timeframe} {self.year}"

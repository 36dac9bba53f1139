"""Market data: validated Parquet year shards of candles (ccxt, Binance Vision, synthetic)."""

from .errors import CandleValidationError, DownloadError, MarketDataError, ShardExistsError, ShardNotFoundError
from .schema import ShardKey, timeframe_to_ms
from .store import CandleStore, ShardInfo
from .validate import GapReport, fill_gaps, gap_report, validate_candles

__all__ = [
    "CandleStore",
    "CandleValidationError",
    "DownloadError",
    "GapReport",
    "MarketDataError",
    "ShardExistsError",
    "ShardInfo",
    "ShardKey",
    "ShardNotFoundError",
    "fill_gaps",
    "gap_report",
    "timeframe_to_ms",
    "validate_candles",
]

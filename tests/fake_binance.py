"""A local fake of Binance's public spot REST API, for tests that run the real ccxt client.

``FakeBinance`` serves ``GET /api/v3/exchangeInfo`` and ``GET /api/v3/klines``
(the only endpoints ccxt.binance calls for ``load_markets`` + ``fetch_ohlcv``
on spot when built by :func:`umc_backtest.data.ccxt_download.make_exchange`)
from candle arrays given at construction, so a test knows exactly what was
served. Every request is logged (path + query parameters + status), and faults
can be injected by klines request number, as a permanent failure after the
n-th klines request, or by an arbitrary callback.

Usage::

    candles = make_candles("2024-01-01", 3500, "1m")
    with FakeBinance({("BTCUSDT", "1m"): candles}) as server:
        exchange = binance_client(server)
        ...
        assert len(server.klines_requests) == 4

Nothing here can reach the internet: :func:`binance_client` points every
``exchange.urls['api']`` entry at the local server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import ccxt
import numpy as np
import pandas as pd

from umc_backtest.data.ccxt_download import make_exchange
from umc_backtest.data.schema import timeframe_to_ms

KLINES_PATH = "/api/v3/klines"
EXCHANGE_INFO_PATH = "/api/v3/exchangeInfo"
#: Binance's own default and maximum ``limit`` of spot klines.
DEFAULT_KLINES_LIMIT = 500
MAX_KLINES_LIMIT = 1000

SERVER_TIME_MS = 1_767_225_600_000  # 2026-01-01, reported by exchangeInfo / time only


# --------------------------------------------------------------------------- replies
@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, body (dict/list sent as JSON, str/bytes as is) and headers."""

    status: int
    body: object = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, (dict, list)):
            return json.dumps(self.body).encode(), "application/json;charset=UTF-8"
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        return str(self.body).encode(), "text/html"


def rate_limited() -> Reply:
    """HTTP 429 the way Binance sends it (ccxt raises DDoSProtection, a NetworkError)."""
    return Reply(429, {"code": -1003, "msg": "Too many requests"}, {"Retry-After": "1"})


def server_error(status: int = 502) -> Reply:
    """A 5xx from Binance's front end: an HTML page (ccxt raises ExchangeNotAvailable / RequestTimeout)."""
    return Reply(status, f"<html><body><h1>{status} Server Error</h1></body></html>")


def binance_error(status: int, code: int, msg: str) -> Reply:
    return Reply(status, {"code": code, "msg": msg})


# --------------------------------------------------------------------------- candles
def make_candles(start: str | int, count: int, timeframe: str, seed: int = 0) -> np.ndarray:
    """``count`` consistent candles from ``start`` on the ``timeframe`` grid, shape [count, 6].

    Columns: open time (ms), open, high, low, close, volume. Prices have 2
    decimals and volumes 8, so Binance's 8-decimal strings parse back to the
    identical float64 values.
    """
    tf_ms = timeframe_to_ms(timeframe)
    start_ms = int(start) if isinstance(start, (int, np.integer)) else int(pd.Timestamp(start, tz="UTC").value // 1_000_000)
    if start_ms % tf_ms:
        raise ValueError(f"start {start!r} is not on the {timeframe} grid")
    rng = np.random.default_rng(seed)
    ts = start_ms + tf_ms * np.arange(count, dtype=np.int64)
    close = np.round(40_000 + np.cumsum(rng.normal(0, 20, count)), 2)
    open_ = np.round(np.concatenate([[40_000.0], close[:-1]]), 2)
    high = np.round(np.maximum(open_, close) + rng.uniform(0, 10, count), 2)
    low = np.round(np.minimum(open_, close) - rng.uniform(0, 10, count), 2)
    volume = np.round(rng.uniform(0, 50, count), 8)
    out = np.empty((count, 6), dtype=object)
    out[:, 0] = ts.tolist()
    for j, col in enumerate((open_, high, low, close, volume), start=1):
        out[:, j] = col.tolist()
    return out


def candles_frame(candles: np.ndarray) -> pd.DataFrame:
    """The served candles as the store returns them (UTC ms timestamps, float64 OHLCV)."""
    arr = np.asarray(candles, dtype=object)
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime(arr[:, 0].astype(np.int64), unit="ms", utc=True).as_unit("ms"),
            **{c: arr[:, j].astype(np.float64) for j, c in enumerate(("open", "high", "low", "close", "volume"), 1)},
        }
    )


def _fmt(value: float) -> str:
    return f"{float(value):.8f}"


def kline_row(candle, tf_ms: int) -> list:
    """One real 12-field Binance kline row for ``[ts, o, h, l, c, v]``."""
    ts, o, h, lo, c, v = candle
    ts = int(ts)
    quote_volume = float(v) * (float(o) + float(c)) / 2
    return [
        ts, _fmt(o), _fmt(h), _fmt(lo), _fmt(c), _fmt(v), ts + tf_ms - 1, _fmt(quote_volume),
        int(float(v) * 10) + 1, _fmt(float(v) / 2), _fmt(quote_volume / 2), "0",
    ]


# --------------------------------------------------------------------------- markets
def spot_market(symbol_id: str, base: str, quote: str) -> dict:
    """One entry of ``exchangeInfo['symbols']`` shaped like Binance's real spot answer."""
    return {
        "symbol": symbol_id,
        "status": "TRADING",
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT",
                       "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "amendAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": True,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
             "tickSize": "0.01000000"},
            {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
            {"filterType": "ICEBERG_PARTS", "limit": 10},
            {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "100.00000000",
             "stepSize": "0.00000000"},
            {"filterType": "TRAILING_DELTA", "minTrailingAboveDelta": 10, "maxTrailingAboveDelta": 2000,
             "minTrailingBelowDelta": 10, "maxTrailingBelowDelta": 2000},
            {"filterType": "PERCENT_PRICE_BY_SIDE", "bidMultiplierUp": "5", "bidMultiplierDown": "0.2",
             "askMultiplierUp": "5", "askMultiplierDown": "0.2", "avgPriceMins": 5},
            {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
        ],
        "permissions": [],
        "permissionSets": [["SPOT", "MARGIN", "TRD_GRP_004", "TRD_GRP_005", "TRD_GRP_006"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


DEFAULT_MARKETS: tuple[tuple[str, str, str], ...] = (
    ("BTCUSDT", "BTC", "USDT"),
    ("ETHUSDT", "ETH", "USDT"),
    ("ETHBTC", "ETH", "BTC"),
)


def exchange_info(markets: Iterable[tuple[str, str, str]]) -> dict:
    return {
        "timezone": "UTC",
        "serverTime": SERVER_TIME_MS,
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
        ],
        "exchangeFilters": [],
        "symbols": [spot_market(*m) for m in markets],
    }


# --------------------------------------------------------------------------- server
@dataclass(frozen=True)
class LoggedRequest:
    """One request the server saw: 1-based number overall and among klines requests (0 if not klines)."""

    number: int
    klines_number: int
    path: str
    params: dict[str, str]
    status: int = 0


FaultHook = Callable[[LoggedRequest], "Reply | None"]


class FakeBinance:
    """Local Binance spot REST server on ``127.0.0.1:<free port>``; use as a context manager.

    ``candles`` maps ``(symbol_id, interval)`` (e.g. ``("BTCUSDT", "1m")``) to
    an array ``[N, 6]`` of ``[open_ms, open, high, low, close, volume]`` sorted
    by time. Faults:

    * ``klines_faults[n] = reply`` answers the n-th klines request (1-based) with ``reply``;
    * ``fail_klines_after(n, reply)`` answers every klines request after the n-th with ``reply``;
    * ``hook(request) -> Reply | None`` sees every request first (None: serve normally).
    """

    def __init__(
        self,
        candles: Mapping[tuple[str, str], np.ndarray] | None = None,
        markets: Iterable[tuple[str, str, str]] = DEFAULT_MARKETS,
        hook: FaultHook | None = None,
    ) -> None:
        self.markets = tuple(markets)
        self.candles: dict[tuple[str, str], np.ndarray] = {}
        self._times: dict[tuple[str, str], np.ndarray] = {}
        for key, arr in (candles or {}).items():
            self.set_candles(key[0], key[1], arr)
        self.hook = hook
        self.klines_faults: dict[int, Reply] = {}
        self._fail_after: tuple[int, Reply] | None = None
        self.requests: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._count = 0
        self._klines_count = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- setup
    def set_candles(self, symbol_id: str, interval: str, candles: np.ndarray) -> None:
        arr = np.asarray(candles, dtype=object)
        if arr.ndim != 2 or arr.shape[1] != 6:
            raise ValueError(f"candles must have shape [N, 6], got {arr.shape}")
        times = arr[:, 0].astype(np.int64)
        if np.any(np.diff(times) <= 0):
            raise ValueError("candles must be sorted by open time without duplicates")
        self.candles[(symbol_id, interval)] = arr
        self._times[(symbol_id, interval)] = times

    def fail_klines_after(self, n: int, reply: Reply | None = None) -> None:
        """Answer every klines request after the n-th with ``reply`` (default: HTTP 503)."""
        self._fail_after = (n, reply or server_error(503))

    def heal(self) -> None:
        """Drop every injected fault (the exchange is back)."""
        self._fail_after = None
        self.klines_faults.clear()
        self.hook = None

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    @property
    def klines_count(self) -> int:
        """Klines requests answered so far (never reset; fault numbers count from here)."""
        with self._lock:
            return self._klines_count

    @property
    def klines_requests(self) -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == KLINES_PATH]

    @property
    def paths(self) -> set[str]:
        with self._lock:
            return {r.path for r in self.requests}

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started; use `with FakeBinance(...) as server:`")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------- lifecycle
    def start(self) -> FakeBinance:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-binance", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeBinance:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------- serving
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        with self._lock:
            self._count += 1
            klines_number = 0
            if parts.path == KLINES_PATH:
                self._klines_count += 1
                klines_number = self._klines_count
            request = LoggedRequest(self._count, klines_number, parts.path, params)
        reply = self._fault(request) or self._serve(parts.path, params)
        with self._lock:
            self.requests.append(LoggedRequest(request.number, klines_number, parts.path, params, reply.status))
        body, content_type = reply.encoded()
        handler.send_response(reply.status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    def _fault(self, request: LoggedRequest) -> Reply | None:
        if self.hook is not None:
            reply = self.hook(request)
            if reply is not None:
                return reply
        if request.klines_number:
            if request.klines_number in self.klines_faults:
                return self.klines_faults[request.klines_number]
            if self._fail_after is not None and request.klines_number > self._fail_after[0]:
                return self._fail_after[1]
        return None

    def _serve(self, path: str, params: dict[str, str]) -> Reply:
        if path == EXCHANGE_INFO_PATH:
            return Reply(200, exchange_info(self.markets))
        if path == "/api/v3/time":
            return Reply(200, {"serverTime": SERVER_TIME_MS})
        if path == "/api/v3/ping":
            return Reply(200, {})
        if path == KLINES_PATH:
            return self._klines(params)
        return Reply(404, f"<html><body>no route {path} in FakeBinance</body></html>")

    def _klines(self, params: dict[str, str]) -> Reply:
        symbol = params.get("symbol", "")
        interval = params.get("interval", "")
        if symbol not in {m[0] for m in self.markets}:
            return binance_error(400, -1121, "Invalid symbol.")
        try:
            tf_ms = timeframe_to_ms(interval)
        except ValueError:
            return binance_error(400, -1120, "Invalid interval.")
        try:
            limit = int(params.get("limit", DEFAULT_KLINES_LIMIT))
            start = int(params["startTime"]) if "startTime" in params else None
            end = int(params["endTime"]) if "endTime" in params else None
        except ValueError:
            return binance_error(400, -1100, "Illegal characters found in a parameter.")
        if not 1 <= limit <= MAX_KLINES_LIMIT:
            return binance_error(400, -1130, "Invalid data sent for a parameter.")
        arr = self.candles.get((symbol, interval))
        if arr is None:
            return Reply(200, [])
        times = self._times[(symbol, interval)]
        lo = 0 if start is None else int(np.searchsorted(times, start, side="left"))
        hi = len(times) if end is None else int(np.searchsorted(times, end, side="right"))  # endTime inclusive
        if start is None:  # Binance: without startTime the *latest* candles up to endTime
            lo = max(lo, hi - limit)
        hi = min(hi, lo + limit)
        return Reply(200, [kline_row(arr[i], tf_ms) for i in range(lo, hi)])


# --------------------------------------------------------------------------- client
def binance_client(server: FakeBinance, **config) -> ccxt.binance:
    """A real ``ccxt.binance`` (via ``make_exchange``) whose every API URL points at ``server``.

    The throttle is shortened (``rateLimit=1``) so tests do not wait out
    Binance's request weights; pass ``rateLimit=`` to change it.
    """
    config = {"rateLimit": 1, "timeout": 10_000, **config}
    exchange = make_exchange("binance", **config)
    api = exchange.urls["api"]
    for name, value in list(api.items()):
        if not isinstance(value, str):
            raise TypeError(f"urls['api'][{name!r}] is {value!r}; expected a URL string (ccxt changed?)")
        api[name] = server.url + urlsplit(value).path
    for name in ("test", "demo", "apiBackup"):
        exchange.urls.pop(name, None)
    # ccxt picks Binance's per-market-type error codes by the URL's host (e.g. spot -1008 ->
    # OperationFailed); classify the fake's URLs like the real hosts. Only a lookup, no request.
    by_url = exchange.get_exceptions_by_url

    def get_exceptions_by_url(url, exact_or_broad):
        if url is not None and url.startswith(server.url + "/"):
            path = url[len(server.url):]
            prefix = path.split("/")[1]
            host = {"fapi": "fapi", "dapi": "dapi", "eapi": "eapi", "papi": "papi"}.get(prefix, "api")
            url = f"https://{host}.binance.com{path}"
        return by_url(url, exact_or_broad)

    exchange.get_exceptions_by_url = get_exceptions_by_url
    return exchange

"""download_ohlcv with the real ccxt.binance client against the local FakeBinance server."""

from __future__ import annotations

import logging

import ccxt
import numpy as np
import pandas as pd
import pytest
from fake_binance import (
    EXCHANGE_INFO_PATH,
    KLINES_PATH,
    FakeBinance,
    binance_client,
    binance_error,
    candles_frame,
    make_candles,
    rate_limited,
    server_error,
)

from umc_backtest.data import CandleStore, DownloadError, ShardKey
from umc_backtest.data.ccxt_download import (
    DownloadSummary,
    download_ohlcv,
    expected_candles,
    make_exchange,
    month_parts,
    page_to_frame,
    to_utc_ms,
)

H = 3_600_000
M = 60_000
KEY_2024_1H = ShardKey("binance", "BTC/USDT", "1h", 2024)


def ms(text: str) -> int:
    return to_utc_ms(text)


class Sleeps(list):
    """A ``sleep`` that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def served(candles: np.ndarray, start: str | int, end: str | int) -> pd.DataFrame:
    """The served candles with open time in [start, end), as the store returns them."""
    ts = candles[:, 0].astype(np.int64)
    lo, hi = (ms(start) if isinstance(start, str) else start), (ms(end) if isinstance(end, str) else end)
    return candles_frame(candles[(ts >= lo) & (ts < hi)]).reset_index(drop=True)


@pytest.fixture
def store(tmp_path) -> CandleStore:
    return CandleStore(tmp_path / "candles")


def download(
    store, server, symbol="BTC/USDT", timeframe="1h", start="2024-01-01", end="2024-02-01", **kw
) -> DownloadSummary:
    """download_ohlcv through a fresh client of ``server``; no real sleeping, no progress bar."""
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("progress", False)
    kw.setdefault("exchange", binance_client(server))
    return download_ohlcv(store, symbol, timeframe, start, end, **kw)


# --------------------------------------------------------------------------- happy path
def test_three_plus_pages_store_exactly_the_served_candles(store):
    candles = make_candles("2024-01-01", 3_500, "1m")
    end = ms("2024-01-01") + 3_500 * M
    with FakeBinance({("BTCUSDT", "1m"): candles}) as server:
        summary = download(store, server, timeframe="1m", start="2024-01-01", end=end, limit=1000)

        klines = server.klines_requests
        assert server.paths == {EXCHANGE_INFO_PATH, KLINES_PATH}  # spot only: no futures/margin/sapi calls
        assert len(klines) == 4
        assert [int(r.params["startTime"]) for r in klines] == [ms("2024-01-01") + i * 1000 * M for i in range(4)]
        assert all(r.params["limit"] == "1000" and r.params["endTime"] == str(end - 1) for r in klines)
        assert {r.params["symbol"] for r in klines} == {"BTCUSDT"}

    key = ShardKey("binance", "BTC/USDT", "1m", 2024)
    pd.testing.assert_frame_equal(store.read_shard(key), candles_frame(candles))
    meta = store.read_metadata(key)
    assert meta["coverage"] == [[ms("2024-01-01"), end]]
    assert meta["sources"] == ["ccxt"]
    assert meta["gaps"]["missing_candles"] == 0
    assert summary.requested_candles == summary.fetched_candles == 3_500
    assert (summary.requests, summary.pages, summary.retries) == (4, 4, 0)
    assert (summary.months_fetched, summary.months_skipped) == (1, 0)
    assert summary.shards_written == (key,)
    assert summary.gap_reports[key].missing_candles == 0


def test_rerun_of_a_complete_range_makes_no_request(store):
    candles = make_candles("2024-01-01", 744 + 696, "1h")
    with FakeBinance({("BTCUSDT", "1h"): candles}) as server:
        download(store, server, start="2024-01-01", end="2024-03-01", limit=1000)
        server.reset_log()
        again = download(store, server, start="2024-01-01", end="2024-03-01", limit=1000)
        assert server.requests == []  # not even load_markets
    assert (again.months_skipped, again.months_fetched, again.requests, again.fetched_candles) == (2, 0, 0, 0)
    assert again.requested_candles == 744 + 696


def test_end_is_clipped_to_closed_candles(store):
    candles = make_candles("2024-01-01", 72, "1h")  # the fake serves "future" candles too
    now = ms("2024-01-02 10:30")
    with FakeBinance({("BTCUSDT", "1h"): candles}) as server:
        summary = download(store, server, start="2024-01-01", end="2030-01-01", now_ms=now)
        assert server.klines_requests[0].params["endTime"] == str(ms("2024-01-02 10:00") - 1)
    stored = store.read_shard(KEY_2024_1H)
    assert stored["timestamp"].iloc[-1] == pd.Timestamp("2024-01-02 09:00", tz="UTC")  # the 10:00 candle is open
    assert summary.end_ms == ms("2024-01-02 10:00")
    assert store.read_metadata(KEY_2024_1H)["coverage"] == [[ms("2024-01-01"), ms("2024-01-02 10:00")]]


# --------------------------------------------------------------------------- retries
def test_429_and_5xx_are_retried_with_exponential_backoff(store, caplog):
    candles = make_candles("2024-01-01", 744, "1h")
    with FakeBinance({("BTCUSDT", "1h"): candles}) as server:
        server.klines_faults.update({
            1: rate_limited(),
            2: server_error(502),
            3: server_error(500),
            5: binance_error(503, -1008, "Server is currently overloaded with other requests."),
        })
        sleeps = Sleeps()
        with caplog.at_level(logging.WARNING, logger="umc_backtest.data.ccxt_download"):
            summary = download(store, server, limit=500, sleep=sleeps, backoff_base=0.5)
        statuses = [r.status for r in server.klines_requests]
    assert statuses == [429, 502, 500, 200, 503, 200]
    assert sleeps == [0.5, 1.0, 2.0, 0.5]  # backoff restarts for each page
    assert summary.retries == 4 and summary.requests == 2
    retry_logs = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retry_logs) == 4
    assert "DDoSProtection" in retry_logs[0].getMessage() or "RateLimitExceeded" in retry_logs[0].getMessage()
    pd.testing.assert_frame_equal(store.read_shard(KEY_2024_1H), candles_frame(candles))


def test_exhausted_retries_raise_download_error_and_keep_what_is_stored(store):
    candles = make_candles("2024-01-01", 744 + 696, "1h")
    with FakeBinance({("BTCUSDT", "1h"): candles}) as server:
        download(store, server, start="2024-01-01", end="2024-02-01")  # January stored first
        server.fail_klines_after(server.klines_count + 3, server_error(503))  # February: 3 pages, then down
        sleeps = Sleeps()
        with pytest.raises(DownloadError) as info:
            download(store, server, start="2024-01-01", end="2024-03-01", limit=100,
                     max_retries=6, backoff_base=1.0, backoff_cap=3.0, sleep=sleeps)
        assert len(server.klines_requests) == 1 + 3 + 7  # Jan once; Feb 3 pages + first try + 6 retries
    since = ms("2024-02-01") + 300 * H
    message = str(info.value)
    for part in ("binance", "BTC/USDT", "1h", str(since), "6 retries", "rerun"):
        assert part in message
    assert isinstance(info.value.__cause__, ccxt.NetworkError)
    assert sleeps == [1.0, 2.0, 3.0, 3.0, 3.0, 3.0]  # capped
    pd.testing.assert_frame_equal(store.read_shard(KEY_2024_1H), served(candles, "2024-01-01", since))
    assert store.read_metadata(KEY_2024_1H)["coverage"] == [[ms("2024-01-01"), since]]


def test_permanent_failure_mid_range_keeps_finished_months_and_rerun_fetches_only_the_rest(store):
    # Jan-Apr 2024, 1h: 744 + 696 + 744 + 720 candles; limit 500 -> 2 pages per month.
    candles = make_candles("2024-01-01", 744 + 696 + 744 + 720, "1h")
    with FakeBinance({("BTCUSDT", "1h"): candles}) as server:
        server.fail_klines_after(5, server_error(503))  # dies on the 2nd page of March
        with pytest.raises(DownloadError, match="rerun"):
            download(store, server, start="2024-01-01", end="2024-05-01", limit=500, max_retries=2)
        assert len(server.klines_requests) == 5 + 3

        resume_at = ms("2024-03-01") + 500 * H
        pd.testing.assert_frame_equal(store.read_shard(KEY_2024_1H), served(candles, "2024-01-01", resume_at))
        assert store.read_metadata(KEY_2024_1H)["coverage"] == [[ms("2024-01-01"), resume_at]]

        server.heal()
        server.reset_log()
        summary = download(store, server, start="2024-01-01", end="2024-05-01", limit=500)
        starts = [int(r.params["startTime"]) for r in server.klines_requests]

    # rest of March (1 page), April (2 pages); January and February are not asked again
    assert starts == [resume_at, ms("2024-04-01"), ms("2024-04-01") + 500 * H]
    assert starts[0] == int(served(candles, "2024-01-01", resume_at)["timestamp"].iloc[-1].value // 10**6) + H
    assert (summary.months_skipped, summary.months_fetched, summary.requests) == (2, 2, 3)
    assert summary.fetched_candles == 244 + 720
    pd.testing.assert_frame_equal(store.read_shard(KEY_2024_1H), candles_frame(candles))
    assert store.read_metadata(KEY_2024_1H)["coverage"] == [[ms("2024-01-01"), ms("2024-05-01")]]


def test_non_network_error_fails_at_once(store):
    candles = make_candles("2024-01-01", 48, "1h")
    with FakeBinance({("BTCUSDT", "1h"): candles}) as server:
        server.klines_faults[1] = binance_error(400, -1100, "Illegal characters found in parameter 'symbol'.")
        sleeps = Sleeps()
        with pytest.raises(DownloadError, match="not a network error") as info:
            download(store, server, start="2024-01-01", end="2024-01-03", sleep=sleeps)
        assert len(server.klines_requests) == 1
    assert sleeps == []
    assert isinstance(info.value.__cause__, ccxt.BadRequest)
    assert not store.exists(KEY_2024_1H)


def test_page_that_does_not_advance_raises(store):
    candles = make_candles("2024-01-01", 200, "1h")
    with FakeBinance({("BTCUSDT", "1h"): candles}) as server:
        exchange = binance_client(server)
        real_fetch = exchange.fetch_ohlcv

        def stuck(symbol, timeframe="1m", since=None, limit=None, params={}):  # ignores `since`
            return real_fetch(symbol, timeframe, since=ms("2024-01-01"), limit=limit, params=params)

        exchange.fetch_ohlcv = stuck
        with pytest.raises(DownloadError, match="would not advance"):
            download(store, server, start="2024-01-01", end="2024-01-09", limit=100, exchange=exchange)
        assert len(server.klines_requests) == 2
    # the first page was good and is kept
    pd.testing.assert_frame_equal(store.read_shard(KEY_2024_1H), candles_frame(candles[:100]))


# --------------------------------------------------------------------------- shards, gaps
def test_range_over_two_years_writes_two_shards(store):
    candles = make_candles("2023-12-20", 24 * 25, "1h")  # to 2024-01-14
    with FakeBinance({("BTCUSDT", "1h"): candles}) as server:
        summary = download(store, server, start="2023-12-20", end="2024-01-14", limit=1000, progress=True)
    k2023 = ShardKey("binance", "BTC/USDT", "1h", 2023)
    assert store.list_shards("binance", "BTC/USDT", "1h") == [k2023, KEY_2024_1H]
    assert set(summary.shards_written) == {k2023, KEY_2024_1H}
    pd.testing.assert_frame_equal(store.read_shard(k2023), served(candles, "2023-12-20", "2024-01-01"))
    pd.testing.assert_frame_equal(store.read_shard(KEY_2024_1H), served(candles, "2024-01-01", "2024-01-14"))
    assert store.read_metadata(k2023)["coverage"] == [[ms("2023-12-20"), ms("2024-01-01")]]
    pd.testing.assert_frame_equal(
        store.load("binance", "BTC/USDT", "1h", "2023-12-20", "2024-01-14"), candles_frame(candles)
    )


def test_gap_in_served_data_is_reported_not_filled_and_month_counts_as_covered(store):
    candles = make_candles("2024-01-01", 744, "1h")
    holey = np.delete(candles, np.s_[100:105], axis=0)  # 5 missing hours
    with FakeBinance({("BTCUSDT", "1h"): holey}) as server:
        summary = download(store, server, limit=1000)
        server.reset_log()
        again = download(store, server, limit=1000)
        assert server.klines_requests == []
    stored = store.read_shard(KEY_2024_1H)
    pd.testing.assert_frame_equal(stored, candles_frame(holey))
    assert "filled" not in stored.columns
    meta = store.read_metadata(KEY_2024_1H)
    assert meta["coverage"] == [[ms("2024-01-01"), ms("2024-02-01")]]
    assert (meta["gaps"]["gap_count"], meta["gaps"]["missing_candles"]) == (1, 5)
    assert meta["gaps"]["first_gaps"][0]["start"] == pd.Timestamp(int(candles[100, 0]), unit="ms", tz="UTC").isoformat()
    assert summary.missing_candles == 5 and summary.fetched_candles == 739
    assert again.months_skipped == 1


def test_months_before_listing_are_reported_as_empty(store):
    candles = make_candles("2024-01-10", 24 * 22, "1h")  # listed 2024-01-10, data to 2024-02-01
    with FakeBinance({("BTCUSDT", "1h"): candles}) as server:
        summary = download(store, server, start="2023-12-01", end="2024-02-01", limit=1000)
        assert len(server.klines_requests) == 2  # December: one empty page; January: one page
    assert summary.empty_intervals == ((ms("2023-12-01"), ms("2024-01-01")),)
    assert summary.shards_written == (KEY_2024_1H,)
    pd.testing.assert_frame_equal(store.read_shard(KEY_2024_1H), candles_frame(candles))
    assert store.read_metadata(KEY_2024_1H)["coverage"] == [[ms("2024-01-01"), ms("2024-02-01")]]


def test_empty_month_is_recorded_with_a_later_month_of_the_same_year(store):
    candles = make_candles("2024-02-01", 696, "1h")  # nothing in January
    with FakeBinance({("BTCUSDT", "1h"): candles}) as server:
        summary = download(store, server, start="2024-01-01", end="2024-03-01", limit=1000)
        server.reset_log()
        download(store, server, start="2024-01-01", end="2024-03-01", limit=1000)
        assert server.klines_requests == []
    assert summary.empty_intervals == ()
    assert store.read_metadata(KEY_2024_1H)["coverage"] == [[ms("2024-01-01"), ms("2024-03-01")]]


def test_months_after_the_data_ends_are_recorded_as_covered(store):
    candles = make_candles("2024-01-01", 24 * 10, "1h")  # delisted 2024-01-11
    with FakeBinance({("BTCUSDT", "1h"): candles}) as server:
        summary = download(store, server, start="2024-01-01", end="2024-04-01", limit=1000)
        # January: a page, then an empty page; February and March: one empty page each
        assert len(server.klines_requests) == 4
        server.reset_log()
        again = download(store, server, start="2024-01-01", end="2024-04-01", limit=1000)
        assert server.klines_requests == []
    assert summary.empty_intervals == () and again.months_skipped == 3
    pd.testing.assert_frame_equal(store.read_shard(KEY_2024_1H), candles_frame(candles))
    assert store.read_metadata(KEY_2024_1H)["coverage"] == [[ms("2024-01-01"), ms("2024-04-01")]]


# --------------------------------------------------------------------------- errors up front
def test_unknown_symbol_is_a_clear_error(store):
    with FakeBinance({}) as server:
        with pytest.raises(DownloadError, match=r"no market 'DOGE/EUR'.*BASE/QUOTE"):
            download(store, server, symbol="DOGE/EUR")
        assert server.klines_requests == []


def test_unknown_symbol_rejected_by_the_exchange_is_wrapped(store):
    with FakeBinance({}, markets=[("BTCUSDT", "BTC", "USDT")]) as server:
        exchange = binance_client(server)
        exchange.load_markets()
        server.markets = ()  # delisted after markets were loaded: klines answers -1121
        with pytest.raises(DownloadError, match="does not know the symbol") as info:
            download(store, server, exchange=exchange)
    assert isinstance(info.value.__cause__, ccxt.BadSymbol)


def test_make_exchange_errors_and_spot_only_options():
    with pytest.raises(DownloadError, match="unknown exchange id 'binanze'"):
        make_exchange("binanze")
    no_ohlcv = "coinspot"
    if no_ohlcv not in ccxt.exchanges or getattr(ccxt, no_ohlcv)().has.get("fetchOHLCV"):
        pytest.skip(f"{no_ohlcv} changed in this ccxt version")
    with pytest.raises(DownloadError, match="does not offer OHLCV"):
        make_exchange(no_ohlcv)
    exchange = make_exchange("binance", apiKey="k", secret="s")
    assert exchange.enableRateLimit is True
    assert not exchange.apiKey and not exchange.secret
    assert exchange.options["fetchMarkets"]["types"] == ["spot"]
    assert exchange.options["fetchMargins"] is False


# --------------------------------------------------------------------------- helpers
def test_month_parts_and_expected_candles():
    parts = month_parts(ms("2023-12-15"), ms("2024-03-02 06:00"))
    assert parts == [
        (ms("2023-12-15"), ms("2024-01-01")),
        (ms("2024-01-01"), ms("2024-02-01")),
        (ms("2024-02-01"), ms("2024-03-01")),
        (ms("2024-03-01"), ms("2024-03-02 06:00")),
    ]
    assert month_parts(5, 5) == []
    assert expected_candles((ms("2024-02-01"), ms("2024-03-01")), H) == 696
    assert expected_candles((ms("2024-01-01") + 1, ms("2024-01-01") + 2 * H), H) == 1


def test_page_to_frame_types():
    df = page_to_frame([[1_704_067_200_000, 1, 2.5, 0.5, 2, 10], [1_704_067_260_000, 2, 3, 1, 2, None]])
    assert list(df.columns) == ["timestamp", "open", "high", "low", "close", "volume"]
    assert df["timestamp"].dtype == np.int64
    assert all(df[c].dtype == np.float64 for c in df.columns[1:])
    assert np.isnan(df["volume"].iloc[1])
    assert len(page_to_frame([])) == 0

"""Backtest engine: golden numbers on hand-made series, properties (hypothesis), metrics, features,
and a cross-check against backtesting.py on real Binance candles."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umc_backtest.engine.backtest import BacktestError, prepare_market_data, run_backtest
from umc_backtest.engine.config import ConfigError, EngineConfig, RiskLimits, periods_per_year
from umc_backtest.engine.features import FEATURE_NAMES, WARMUP_BARS, compute_features, ema, rolling_mean, rsi
from umc_backtest.engine.kernel import ORDER_STOP, risk_caps, round_trips, simulate
from umc_backtest.engine.metrics import compute_metrics, drawdown, max_drawdown_duration
from umc_backtest.engine.strategies import (
    AgentStrategy,
    BuyAndHold,
    SMACrossover,
    StrategyError,
    make_strategy,
    sma_signal,
)

FIXTURE = Path(__file__).parent / "fixtures" / "backtest" / "BTCUSDT-1m-2024-01-11_13.parquet"
NO_RISK = RiskLimits.off()


def cfg(**kw):
    kw.setdefault("risk", NO_RISK)
    return EngineConfig(**kw)


# ------------------------------------------------------------------ golden numbers
def test_fill_at_next_open_with_slippage_and_taker_fee():
    open_ = np.array([100.0, 101.0, 102.0, 103.0])
    close = np.array([100.5, 101.5, 102.5, 103.5])
    target = np.array([1.0, 1.0, 0.0, 0.0])
    sim = simulate(open_, close, target, np.ones(4), cfg(initial_cash=1000.0, fee_taker=0.001, slippage=0.0001))
    buy_px = 101.0 * 1.0001
    units = 1000.0 / (buy_px * 1.001)  # spends the whole equity, fee included
    sell_px = 103.0 * 0.9999
    assert sim.order_bar.tolist() == [1, 3]
    np.testing.assert_allclose(sim.order_price, [buy_px, sell_px])
    np.testing.assert_allclose(sim.order_units, [units, -units])
    np.testing.assert_allclose(sim.order_fee, [units * buy_px * 0.001, units * sell_px * 0.001])
    np.testing.assert_allclose(sim.cash, [1000.0, 0.0, 0.0, units * sell_px * 0.999], atol=1e-9)
    np.testing.assert_allclose(sim.equity, [1000.0, units * 101.5, units * 102.5, units * sell_px * 0.999])
    trades = round_trips(sim)
    np.testing.assert_allclose(trades.pnl, [units * sell_px * 0.999 - 1000.0])
    assert trades.entry_bar.tolist() == [1] and trades.exit_bar.tolist() == [3]
    assert not trades.open_position


def test_fractional_sizing_and_maker_fee_for_passive_orders():
    open_ = np.full(3, 200.0)
    close = np.full(3, 200.0)
    sim = simulate(open_, close, np.full(3, 0.25), np.ones(3),
                   cfg(initial_cash=10_000.0, fee_maker=0.0005, slippage=0.01), passive=True)
    units = 0.25 * 10_000.0 / (200.0 * 1.0005)  # maker fee, no slippage
    np.testing.assert_allclose(sim.order_units, [units])
    np.testing.assert_allclose(sim.order_price, [200.0])
    np.testing.assert_allclose(sim.cash[-1], 10_000.0 - 2_500.0)
    np.testing.assert_allclose(sim.order_fee, [units * 200.0 * 0.0005])


def test_target_clipped_to_max_position_and_cap():
    n = 5
    prices = np.full(n, 50.0)
    sim = simulate(prices, prices, np.full(n, 1.0), np.full(n, 0.3), cfg(initial_cash=1000.0, fee_taker=0.0, slippage=0.0))
    np.testing.assert_allclose(sim.units[-1] * 50.0 / sim.equity[-1], 0.3)
    sim = simulate(prices, prices, np.full(n, 1.0), np.ones(n),
                   cfg(initial_cash=1000.0, fee_taker=0.0, slippage=0.0, max_position=0.6))
    np.testing.assert_allclose(sim.units[-1] * 50.0 / sim.equity[-1], 0.6)


def test_long_only_never_sells_more_than_held_nor_buys_beyond_cash():
    rng = np.random.default_rng(1)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 500)))
    open_ = np.r_[100.0, close[:-1]]
    target = rng.uniform(-1.0, 2.0, 500)
    sim = simulate(open_, close, target, np.ones(500), cfg(initial_cash=1000.0))
    assert (sim.units >= 0).all()
    assert (sim.cash >= -1e-9).all()


def test_drawdown_stop_fires_on_the_right_bar_and_trading_stops():
    close = np.array([100, 100, 95, 91, 89, 80, 120, 130], dtype=float)
    open_ = np.r_[100.0, close[:-1]]
    target = np.array([1, 1, 1, 1, 1, 1, 0, 1], dtype=float)
    c = cfg(initial_cash=1000.0, fee_taker=0.0, slippage=0.0, risk=RiskLimits(max_drawdown=0.1, kelly_fraction=None,
                                                                               daily_var=None))
    sim = simulate(open_, close, target, np.ones(8), c)
    # bought at open[1]=100; equity at close: 1000, 1000, 950, 910, 890 -> 11% below the peak at bar 4
    assert sim.stop_bar == 4
    assert sim.order_bar.tolist() == [1, 5]
    assert sim.order_kind.tolist() == [0, ORDER_STOP]
    assert sim.units[5:].tolist() == [0, 0, 0]  # the target of bar 7 is ignored: trading stopped
    np.testing.assert_allclose(sim.equity[-1], 10 * 89.0)


def test_rebalance_only_past_the_threshold():
    prices = np.full(6, 10.0)
    cap = np.array([1.0, 0.98, 0.9, 0.88, 0.5, 0.5])
    sim = simulate(prices, prices, np.ones(6), cap, cfg(initial_cash=100.0, fee_taker=0.0, slippage=0.0,
                                                        rebalance_threshold=0.05))
    # order at 0 (->1.0); 0.98 and then 0.9 move less/more than 0.05 from 1.0: only 0.9 trades; 0.88 no; 0.5 yes
    assert sim.order_bar.tolist() == [1, 3, 5]


def test_var_cap_golden():
    # log returns alternate +a, -a: sample std over a window of even length w is a * sqrt(w / (w - 1))
    a = 0.001
    r = np.tile([a, -a], 2000)
    close = 100 * np.exp(np.concatenate(([0.0], np.cumsum(r))))
    limits = RiskLimits(max_drawdown=None, kelly_fraction=None, daily_var=0.02, var_confidence=0.95,
                        var_window_days=100 / 1440, min_history_days=100 / 1440)
    cap = risk_caps(close, 1440.0, 1.0, limits)
    sigma_day = a * math.sqrt(100 / 99) * math.sqrt(1440)
    assert cap[99] == 0.0  # not enough history yet
    np.testing.assert_allclose(cap[1001], 0.02 / (1.6448536269514722 * sigma_day), rtol=1e-6)


def test_kelly_cap_golden():
    r = np.tile([0.002, 0.0], 1000)  # mean 0.001, population var 1e-6
    close = 100 * np.exp(np.concatenate(([0.0], np.cumsum(r))))
    w = 200
    limits = RiskLimits(max_drawdown=None, kelly_fraction=0.25, daily_var=None, kelly_window_days=w / 1440,
                        min_history_days=w / 1440)
    cap = risk_caps(close, 1440.0, 10.0, limits)
    kelly = 0.001 / (1e-6 * w / (w - 1))
    np.testing.assert_allclose(cap[1500], min(10.0, 0.25 * kelly), rtol=1e-6)
    falling = 100 * np.exp(-np.concatenate(([0.0], np.cumsum(r))))
    assert risk_caps(falling, 1440.0, 1.0, limits)[1500] == 0.0


# ------------------------------------------------------------------ properties
def _series(seed, n):
    rng = np.random.default_rng(seed)
    close = 30_000 * np.exp(np.cumsum(rng.standard_t(3, n) * 8e-4))
    open_ = np.r_[close[0], close[:-1]] * (1 + rng.normal(0, 1e-4, n))
    high = np.maximum(open_, close) * 1.0005
    low = np.minimum(open_, close) * 0.9995
    ts = pd.date_range("2024-01-01", periods=n, freq="1min", tz="UTC").as_unit("ms")
    return pd.DataFrame({"timestamp": ts, "open": open_, "high": high, "low": low, "close": close,
                         "volume": rng.lognormal(0, 1, n)})


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), cut=st.integers(WARMUP_BARS + 1, 2_400), strategy=st.sampled_from(["sma", "bh"]))
def test_changing_prices_after_t_never_changes_decisions_or_fills_up_to_t(seed, cut, strategy):
    df = _series(seed, 2_500)
    changed = df.copy()
    rng = np.random.default_rng(seed + 1)
    scale = np.exp(np.cumsum(rng.normal(0, 0.01, len(df) - cut - 1)))
    for col in ("open", "high", "low", "close"):
        changed.loc[cut + 1 :, col] = df[col].to_numpy()[cut + 1 :] * scale
    changed.loc[cut + 1 :, "volume"] *= 3.0
    strat = SMACrossover(5, 30) if strategy == "sma" else BuyAndHold()
    config = EngineConfig(risk=RiskLimits(min_history_days=60 / 1440, var_window_days=60 / 1440,
                                          kelly_window_days=300 / 1440), rebalance_threshold=0.0)
    a = run_backtest(prepare_market_data(df, "1m"), strat, config)
    b = run_backtest(prepare_market_data(changed, "1m"), strat, config)
    t = cut - WARMUP_BARS  # bar index inside the window
    np.testing.assert_array_equal(a.target[: t + 1], b.target[: t + 1])
    np.testing.assert_array_equal(a.cap[: t + 1], b.cap[: t + 1])
    np.testing.assert_array_equal(a.sim.equity[: t + 1], b.sim.equity[: t + 1])
    fills_a = a.sim.order_bar <= t
    fills_b = b.sim.order_bar <= t
    np.testing.assert_array_equal(a.sim.order_units[fills_a], b.sim.order_units[fills_b])
    np.testing.assert_array_equal(a.sim.order_price[fills_a], b.sim.order_price[fills_b])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), fee=st.sampled_from([0.0, 0.001]), slip=st.sampled_from([0.0, 0.0005]))
def test_equity_is_cash_plus_position_times_price_at_every_bar(seed, fee, slip):
    rng = np.random.default_rng(seed)
    n = 400
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[100.0, close[:-1]]
    target = np.where(rng.random(n) < 0.1, rng.uniform(0, 1, n), np.nan)
    sim = simulate(open_, close, target, rng.uniform(0.2, 1.0, n), cfg(fee_taker=fee, slippage=slip,
                                                                       rebalance_threshold=0.0))
    np.testing.assert_allclose(sim.equity, sim.cash + sim.units * close, rtol=1e-12)
    # cash only changes by the orders' flows
    flows = np.zeros(n)
    np.add.at(flows, sim.order_bar, -sim.order_units * sim.order_price - sim.order_fee)
    np.testing.assert_allclose(sim.cash, 10_000.0 + np.cumsum(flows), rtol=1e-9)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_buy_and_hold_without_costs_returns_the_price_ratio_from_its_fill(seed):
    df = _series(seed, 300)
    data = prepare_market_data(df, "1m")
    res = run_backtest(data, BuyAndHold(), cfg(fee_taker=0.0, slippage=0.0))
    fill = df["open"].to_numpy()[WARMUP_BARS + 1]
    assert res.sim.order_bar.tolist() == [1]
    np.testing.assert_allclose(res.metrics["total_return"], df["close"].iloc[-1] / fill - 1.0, rtol=1e-9)


# ------------------------------------------------------------------ metrics
def test_metrics_against_hand_computed_values():
    equity = np.array([100.0, 110.0, 99.0, 108.9, 120.0])
    m = compute_metrics(equity, np.array([5.0, -2.0, 3.0]), periods_per_year=365.0, initial_equity=100.0,
                        fees_paid=1.5, traded_notional=215.0, exposure=np.array([0, 1, 1, 0.5, 0]))
    r = np.array([0.0, 0.1, -0.1, 0.1, 120.0 / 108.9 - 1])
    assert m["total_return"] == pytest.approx(0.2)
    assert m["cagr"] == pytest.approx(1.2 ** (365 / 5) - 1)
    assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(365))
    assert m["sortino"] == pytest.approx(r.mean() / math.sqrt(np.mean(np.minimum(r, 0) ** 2)) * math.sqrt(365))
    assert m["annual_volatility"] == pytest.approx(r.std(ddof=1) * math.sqrt(365))
    assert m["max_drawdown"] == pytest.approx(0.1)
    assert m["calmar"] == pytest.approx(m["cagr"] / 0.1)
    assert m["max_drawdown_duration_bars"] == 2  # from the peak at 110 until 120
    assert m["win_rate"] == pytest.approx(2 / 3)
    assert m["profit_factor"] == pytest.approx(8 / 2)
    assert m["num_trades"] == 3
    assert m["turnover"] == pytest.approx(215.0 / equity.mean())
    assert m["exposure_time"] == pytest.approx(0.6)
    assert m["mean_exposure"] == pytest.approx(0.5)
    assert m["fees_paid"] == 1.5


def test_undefined_ratios_are_nan_not_made_up():
    m = compute_metrics(np.full(10, 100.0), np.array([]), 525_600.0)
    assert math.isnan(m["sharpe"]) and math.isnan(m["win_rate"]) and math.isnan(m["profit_factor"])
    assert math.isnan(m["calmar"]) and m["max_drawdown"] == 0.0


@pytest.mark.parametrize(("timeframe", "ppy"), [("1m", 525_600), ("5m", 105_120), ("1h", 8_760), ("1d", 365)])
def test_annualisation_is_for_a_24_7_market(timeframe, ppy):
    assert periods_per_year(timeframe) == ppy
    rng = np.random.default_rng(0)
    equity = 100 * np.cumprod(1 + rng.normal(1e-4, 1e-3, 1000))
    m = compute_metrics(equity, np.array([]), ppy)
    r = equity / np.r_[equity[0], equity[:-1]] - 1
    assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(ppy))


def test_drawdown_helpers():
    eq = np.array([1.0, 2.0, 1.0, 1.5, 2.5, 2.0])
    np.testing.assert_allclose(drawdown(eq), [0, 0, 0.5, 0.25, 0, 0.2])
    assert max_drawdown_duration(eq) == 2


# ------------------------------------------------------------------ features
def test_features_are_causal_and_match_reference_formulas():
    df = _series(3, 400)
    close, volume = df["close"].to_numpy(), df["volume"].to_numpy()
    f = compute_features(close, volume)
    assert f.shape == (400, len(FEATURE_NAMES))
    col = {n: f[:, i] for i, n in enumerate(FEATURE_NAMES)}
    s = pd.Series(close)
    np.testing.assert_allclose(col["sma_50"][49:], s.rolling(50).mean()[49:], rtol=1e-10)
    np.testing.assert_allclose(col["ema_12"], s.ewm(span=12, adjust=False).mean(), rtol=1e-10)
    np.testing.assert_allclose(col["volatility_20"][21:], np.log(s).diff().rolling(20).std(ddof=0)[21:], rtol=1e-6)
    np.testing.assert_allclose(col["bb_upper"][19:], (s.rolling(20).mean() + 2 * s.rolling(20).std(ddof=0))[19:],
                               rtol=1e-8)
    # no NaN after the warm-up
    assert not np.isnan(f[WARMUP_BARS:]).any()
    # causal: the future does not change the past
    g = compute_features(np.r_[close[:200], close[200:] * 1.5], np.r_[volume[:200], volume[200:] * 9])
    np.testing.assert_array_equal(f[:200], g[:200])


def test_rsi_and_rolling_mean_golden():
    np.testing.assert_allclose(rolling_mean(np.arange(5.0), 2), [np.nan, 0.5, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(ema(np.array([1.0, 2.0, 3.0]), alpha=0.5), [1.0, 1.5, 2.25])
    up = rsi(np.arange(1.0, 40.0))
    assert up[-1] == 100.0
    c = np.array([10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11.0])
    val = rsi(c, 2)
    with np.errstate(divide="ignore"):
        gains = ema(np.maximum(np.diff(c), 0), alpha=0.5)
        losses = ema(np.maximum(-np.diff(c), 0), alpha=0.5)
        expected = np.where(losses > 0, 100 - 100 / (1 + gains / losses), 100.0)
    np.testing.assert_allclose(val[1:], expected)


def test_warm_up_is_dropped_not_padded():
    df = _series(0, 200)
    data = prepare_market_data(df, "1m")
    res = run_backtest(data, BuyAndHold(), cfg())
    assert data.start == WARMUP_BARS
    assert res.metrics["bars"] == 200 - WARMUP_BARS
    assert res.timestamps[0] == df["timestamp"].iloc[WARMUP_BARS].value // 1_000_000
    with pytest.raises(BacktestError, match="warm-up"):
        prepare_market_data(df.iloc[:WARMUP_BARS], "1m")


# ------------------------------------------------------------------ strategies
def test_sma_signal_golden():
    close = np.array([1, 2, 3, 4, 3, 2, 1, 2, 3.0])
    sig = sma_signal(close, 2, 3)
    # SMA2 / SMA3 from index 2: (2.5,2) (3.5,3) (3.5,3.33) (2.5,3) (1.5,2) (1.5,1.67) (2.5,2)
    np.testing.assert_array_equal(sig, [0, 0, 1, 1, 1, 0, 0, 0, 1])


@pytest.mark.parametrize(("name", "params", "match"), [
    ("sma", {"fast": 50, "slow": 20}, "fast=50 must be smaller than slow=20"),
    ("sma", {"fast": 0, "slow": 20}, "fast=0 must be a positive integer"),
    ("sma", {"fast": 5, "slowest": 20}, r"unknown parameter\(s\) \['slowest'\]"),
    ("buy_and_hold", {"exposure": 1.5}, r"exposure=1.5 must be in \(0, 1\]"),
    ("nope", {}, "unknown strategy 'nope'"),
    ("missing.py:Foo", {}, "strategy file missing.py not found"),
])
def test_bad_strategies_get_clear_errors(name, params, match):
    with pytest.raises(StrategyError, match=match):
        make_strategy(name, params)


def test_bad_engine_config_names_every_field():
    with pytest.raises(ConfigError) as info:
        EngineConfig(initial_cash=-1, fee_taker=0.5, risk=RiskLimits(max_drawdown=0.0))
    text = str(info.value)
    assert "initial_cash=-1" in text and "fee_taker=0.5" in text and "risk.max_drawdown=0.0" in text


class _Spy(AgentStrategy):
    """Records what the engine shows it and tries to write into it."""

    name = "spy"

    def __init__(self):
        self.seen = []
        self.write_error = None

    def step(self, features, close):
        self.seen.append(close)
        try:
            features[0] = 0.0
        except ValueError as exc:
            self.write_error = exc
        return 1.0 if len(self.seen) % 50 < 25 else 0.0


def test_agent_sees_one_bar_at_a_time_read_only_and_trades_through_the_same_kernel():
    df = _series(5, 400)
    data = prepare_market_data(df, "1m")
    agent = _Spy()
    res = run_backtest(data, agent, cfg())
    np.testing.assert_array_equal(agent.seen, df["close"].to_numpy()[WARMUP_BARS:])
    assert agent.write_error is not None
    assert res.sim.order_units.size > 4
    np.testing.assert_allclose(res.sim.equity, res.sim.cash + res.sim.units * res.close)


def test_file_strategy_is_loaded_by_path(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "import numpy as np\n"
        "from dataclasses import dataclass\n"
        "from umc_backtest.engine.strategies import SignalStrategy\n"
        "@dataclass(frozen=True)\n"
        "class Half(SignalStrategy):\n"
        "    name = 'half'\n"
        "    level: float = 0.5\n"
        "    def targets(self, data):\n"
        "        return np.full(data.close.size, self.level)\n"
    )
    strat = make_strategy(f"{path}:Half", {"level": 0.25})
    res = run_backtest(prepare_market_data(_series(1, 120), "1m"), strat, cfg(fee_taker=0, slippage=0))
    np.testing.assert_allclose(res.sim.order_units[0] * res.sim.order_price[0], 0.25 * 10_000.0)


# ------------------------------------------------------------------ cross-check: backtesting.py
def test_sma_crossover_matches_backtesting_py_on_real_candles():
    """SMA(20, 50) crossover on 3 days of real BTCUSDT 1m candles (2024-01-11..13), 50% of equity per entry.

    Convention differences, and how the test aligns them:
    - backtesting.py trades whole units; ``FractionalBacktest`` trades satoshis (1e-8 BTC), ours any
      float: sizes differ by < 1 satoshi per trade -> final equity within 1e-6 relative.
    - backtesting.py sizes an order by ``int(fraction * margin / (adjusted_price + commission per unit))``
      with commission on the unadjusted price; ours by ``fraction * equity / (fill_price * (1 + fee))``.
      ``spread`` is backtesting.py's slippage (buy higher, sell lower by the rate). The difference is
      the fee on the slippage, a relative 1e-7 of the size.
    - backtesting.py 0.6 applies ``spread`` only when a trade opens (a ``position.close()`` fills at
      the raw open), ours slips both fills; so this comparison runs without slippage (our slippage on
      both sides is checked by ``test_fill_at_next_open_with_slippage_and_taker_fee``). The taker fee
      (``commission``) is charged on both fills by both.
    - our window starts after the 50-bar feature warm-up; the backtesting.py strategy acts from the
      same bar (index 50), on the same rule: long while SMA20 > SMA50, flat otherwise.
    - a position still open at the end is not a closed trade in either (``finalize_trades=False``).
    """
    from backtesting import Strategy
    from backtesting.lib import FractionalBacktest

    df = pd.read_parquet(FIXTURE)
    fee, slip = 0.001, 0.0
    ours = run_backtest(prepare_market_data(df, "1m"), SMACrossover(20, 50, exposure=0.5),
                        cfg(fee_taker=fee, slippage=slip, initial_cash=10_000.0))

    class Sma(Strategy):
        def init(self):
            close = pd.Series(self.data.Close)
            self.fast = self.I(lambda: close.rolling(20).mean().to_numpy())
            self.slow = self.I(lambda: close.rolling(50).mean().to_numpy())

        def next(self):
            if len(self.data) - 1 < WARMUP_BARS:
                return
            if self.fast[-1] > self.slow[-1]:
                if not self.position:
                    self.buy(size=0.5)
            elif self.position:
                self.position.close()

    bt_data = df.set_index(pd.DatetimeIndex(df["timestamp"]).tz_localize(None))[["open", "high", "low", "close", "volume"]]
    bt_data.columns = ["Open", "High", "Low", "Close", "Volume"]
    bt = FractionalBacktest(bt_data, Sma, cash=10_000.0, commission=fee, spread=slip, finalize_trades=False)
    stats = bt.run()
    theirs = stats["_trades"]
    ts = pd.DatetimeIndex(df["timestamp"]).tz_localize(None)
    entry_ours = ts[WARMUP_BARS + ours.trades.entry_bar]
    assert len(theirs) == len(ours.trades.pnl) > 20
    np.testing.assert_array_equal(theirs["EntryTime"].to_numpy(), entry_ours.to_numpy())
    np.testing.assert_array_equal(theirs["ExitTime"].to_numpy(), ts[WARMUP_BARS + ours.trades.exit_bar].to_numpy())
    np.testing.assert_allclose(theirs["EntryPrice"].to_numpy(), ours.trades.entry_price, rtol=1e-12)
    np.testing.assert_allclose(theirs["ExitPrice"].to_numpy(), ours.trades.exit_price, rtol=1e-12)
    np.testing.assert_allclose(theirs["PnL"].to_numpy(), ours.trades.pnl, rtol=2e-4, atol=0.02)
    np.testing.assert_allclose(stats["Equity Final [$]"], ours.metrics["final_equity"], rtol=1e-6)

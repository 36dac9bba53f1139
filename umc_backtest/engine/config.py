"""Typed, validated settings of a backtest run (costs, sizing, risk limits).

Defaults are the prototype parameters of ``umc.md``: capital 10,000 USDT,
taker 0.1 %, maker 0.05 %, slippage 0.01 %, position size 0.1 of equity,
max position 1.0, max drawdown 15 % (stop trading), Kelly fraction 0.25,
daily VaR 2 %. Each risk limit can be switched off with ``None``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..data.schema import timeframe_to_ms

MINUTES_PER_YEAR = 525_600  # a 24/7 market: 365 days x 1,440 minutes
MINUTES_PER_DAY = 1_440


def periods_per_year(timeframe: str) -> float:
    """Bars per year of a market that trades 24/7: 525,600 for 1m, 8,760 for 1h, 365 for 1d."""
    return MINUTES_PER_YEAR * 60_000 / timeframe_to_ms(timeframe)


def bars_per_day(timeframe: str) -> float:
    return MINUTES_PER_DAY * 60_000 / timeframe_to_ms(timeframe)


class ConfigError(ValueError):
    """A setting out of its valid range; the message names the field and the range."""


def _check(errors: list[str], name: str, value: float | None, lo: float, hi: float, lo_open: bool = False) -> None:
    if value is None:
        return
    ok = (lo < value if lo_open else lo <= value) and value <= hi
    if not ok:
        bracket = "(" if lo_open else "["
        errors.append(f"{name}={value!r} is outside {bracket}{lo}, {hi}]")


@dataclass(frozen=True)
class RiskLimits:
    """Limits the engine enforces whatever the strategy asks (``None`` switches one off).

    - ``max_drawdown``: when equity at a close is this far below its running peak, the
      position is closed at the next open and the run stops trading.
    - ``kelly_fraction``: exposure <= ``kelly_fraction * max(mu / sigma^2, 0)``, the
      continuous-time Kelly fraction of the bar log returns over the past ``kelly_window_days``.
    - ``daily_var``: exposure <= ``daily_var / (z * sigma_day)``: the parametric one-day value
      at risk at ``var_confidence`` of the position stays within this fraction of equity;
      ``sigma_day`` from the bar log returns over the past ``var_window_days``.
    Before ``min_history_days`` of returns exist the Kelly and VaR caps are unknown and the
    engine holds no position (it never assumes a risk it cannot estimate).
    """

    max_drawdown: float | None = 0.15
    kelly_fraction: float | None = 0.25
    daily_var: float | None = 0.02
    var_confidence: float = 0.95
    var_window_days: float = 1.0
    kelly_window_days: float = 30.0
    min_history_days: float = 1.0

    @classmethod
    def off(cls) -> RiskLimits:
        return cls(max_drawdown=None, kelly_fraction=None, daily_var=None)

    @property
    def uses_history(self) -> bool:
        return self.kelly_fraction is not None or self.daily_var is not None

    def errors(self) -> list[str]:
        errors: list[str] = []
        _check(errors, "max_drawdown", self.max_drawdown, 0.0, 1.0, lo_open=True)
        _check(errors, "kelly_fraction", self.kelly_fraction, 0.0, 10.0, lo_open=True)
        _check(errors, "daily_var", self.daily_var, 0.0, 1.0, lo_open=True)
        _check(errors, "var_confidence", self.var_confidence, 0.5, 0.9999, lo_open=True)
        _check(errors, "var_window_days", self.var_window_days, 0.0, 3650.0, lo_open=True)
        _check(errors, "kelly_window_days", self.kelly_window_days, 0.0, 3650.0, lo_open=True)
        _check(errors, "min_history_days", self.min_history_days, 0.0, 3650.0)
        return errors


@dataclass(frozen=True)
class EngineConfig:
    """Costs, sizing and risk of one backtest. ``validate()`` runs on construction.

    ``position_size`` is the step by which stepping agents change their exposure (a
    fraction of equity per buy/sell); signal strategies give their target exposure
    directly. Every target is clipped to ``[0, max_position]`` (long-only spot).
    ``rebalance_threshold``: besides target changes, the engine re-sizes a position
    only when the risk caps move the allowed exposure by at least this much.
    """

    initial_cash: float = 10_000.0
    fee_taker: float = 0.001
    fee_maker: float = 0.0005
    slippage: float = 0.0001
    position_size: float = 0.1
    max_position: float = 1.0
    rebalance_threshold: float = 0.05
    risk: RiskLimits = field(default_factory=RiskLimits)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        errors: list[str] = []
        _check(errors, "initial_cash", self.initial_cash, 0.0, 1e15, lo_open=True)
        _check(errors, "fee_taker", self.fee_taker, 0.0, 0.1)
        _check(errors, "fee_maker", self.fee_maker, 0.0, 0.1)
        _check(errors, "slippage", self.slippage, 0.0, 0.1)
        _check(errors, "position_size", self.position_size, 0.0, 1.0, lo_open=True)
        _check(errors, "max_position", self.max_position, 0.0, 1.0, lo_open=True)
        _check(errors, "rebalance_threshold", self.rebalance_threshold, 0.0, 1.0)
        errors += [f"risk.{e}" for e in self.risk.errors()]
        if errors:
            raise ConfigError("invalid engine config: " + "; ".join(errors))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EngineConfig:
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown engine config field(s) {unknown}; known: {sorted(known)}")
        risk = data.pop("risk", None)
        if isinstance(risk, dict):
            risk_known = {f.name for f in dataclasses.fields(RiskLimits)}
            bad = sorted(set(risk) - risk_known)
            if bad:
                raise ConfigError(f"unknown risk field(s) {bad}; known: {sorted(risk_known)}")
            risk = RiskLimits(**risk)
        return cls(**data, risk=risk if risk is not None else RiskLimits())

"""The strategy interface and the baselines.

Two kinds, one engine:

- :class:`SignalStrategy`: computes its target exposure for every bar of the series at once
  (vectorised). ``targets(data)[t]`` must depend on ``data`` up to bar ``t`` only; the tests
  check each baseline by changing the future and comparing.
- :class:`AgentStrategy`: a learning agent stepped bar by bar. The engine hands it one bar at a
  time (that bar's causal features and close, read-only) and takes its target exposure after
  that bar's close, so it cannot see the future: the engine, not the agent, guarantees it. It
  learns from what it has been shown (realised returns), nothing else.

Targets are exposures, fractions of equity held in the asset; the engine clips them to
``[0, max_position]`` and applies the risk limits (``kernel.py``).

Strategies are named in a registry (``buy_and_hold``, ``sma``) or loaded from a Python file as
``path/to/file.py:ClassName`` (how freqtrade loads user strategies), so a batch can run a
researcher's own strategy on any worker that sees the file.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .config import EngineConfig
from .features import FEATURE_NAMES, compute_features


class StrategyError(ValueError):
    """An unknown strategy or invalid strategy parameters; the message says which and what is allowed."""


@dataclass(frozen=True)
class MarketData:
    """One series as the engine sees it: candles and causal features, and the evaluated window.

    Arrays are (N,) over the whole loaded series (warm-up included); ``features`` is (N, F) with
    columns ``feature_names``, computed once, on first use (signal strategies that only need
    prices never pay for it). The backtest evaluates bars ``start .. N-1``.
    """

    timestamps: np.ndarray  # int64 epoch ms, candle open times
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    start: int
    timeframe: str
    label: str = ""
    feature_names: tuple[str, ...] = FEATURE_NAMES

    def __post_init__(self) -> None:
        n = self.close.size
        for name in ("timestamps", "open", "high", "low", "volume"):
            if getattr(self, name).size != n:
                raise ValueError(f"MarketData.{name} has {getattr(self, name).size} values, close has {n}")
        if not 0 <= self.start < n:
            raise ValueError(f"window start {self.start} outside the {n} loaded bars")

    @functools.cached_property
    def features(self) -> np.ndarray:
        out = compute_features(self.close, self.volume)
        out.setflags(write=False)
        return out

    @property
    def bars(self) -> int:
        return self.close.size - self.start


class Strategy(ABC):  # noqa: B024 - the abstract methods are on its two kinds
    """Common part: a registry name, typed parameters, and whether it posts passively (maker)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    passive: ClassVar[bool] = False

    @property
    def label(self) -> str:
        params = dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}
        return f"{self.name}({','.join(_fmt(v) for v in params.values())})" if params else self.name

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}


class SignalStrategy(Strategy):
    kind: ClassVar[str] = "signal"

    @abstractmethod
    def targets(self, data: MarketData) -> np.ndarray:
        """(N,) target exposure after each bar's close, from data up to that bar; NaN keeps the last."""


@dataclass(frozen=True)
class AgentContext:
    """What an agent may know before the window starts: settings and the history before it."""

    feature_names: tuple[str, ...]
    timeframe: str
    config: EngineConfig
    history_features: np.ndarray  # (start, F): bars before the window (warm-up included)
    history_close: np.ndarray  # (start,)
    bars: int  # length of the window (for progress only)


class AgentStrategy(Strategy):
    kind: ClassVar[str] = "agent"

    def begin(self, context: AgentContext) -> None:
        """Called once before the first bar."""

    @abstractmethod
    def step(self, features: np.ndarray, close: float) -> float:
        """See one bar (read-only (F,) causal features, its close); return the target exposure after it."""

    def finish(self) -> dict[str, Any]:
        """Called after the last bar; returns the agent's own metrics and diagnostics (JSON-able)."""
        return {}


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- baselines
@dataclass(frozen=True)
class BuyAndHold(SignalStrategy):
    """Hold ``exposure`` of equity from the window's first close to its end."""

    name: ClassVar[str] = "buy_and_hold"
    exposure: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.exposure <= 1.0:
            raise StrategyError(f"buy_and_hold: exposure={self.exposure!r} must be in (0, 1]")

    @property
    def label(self) -> str:
        return "buy_and_hold" if self.exposure == 1.0 else f"buy_and_hold({self.exposure:g})"

    def targets(self, data: MarketData) -> np.ndarray:
        return np.full(data.close.size, self.exposure)


def sma_signal(close: np.ndarray, fast: int, slow: int) -> np.ndarray:
    """1.0 where the ``fast``-bar SMA of closes is above the ``slow``-bar one, else 0.0.

    Causal: both means at ``t`` use closes ``t - w + 1 .. t``; 0 before the slow mean exists.
    """
    c = np.concatenate(([0.0], np.cumsum(close, dtype=np.float64)))
    n = close.size
    out = np.zeros(n)
    if n >= slow:
        f = (c[slow:] - c[slow - fast : n + 1 - fast]) / fast
        s = (c[slow:] - c[: n + 1 - slow]) / slow
        out[slow - 1 :] = (f > s).astype(np.float64)
    return out


@dataclass(frozen=True)
class SMACrossover(SignalStrategy):
    """Long ``exposure`` while SMA(``fast``) > SMA(``slow``) of closes, flat otherwise."""

    name: ClassVar[str] = "sma"
    fast: int = 20
    slow: int = 50
    exposure: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        for field_name in ("fast", "slow"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                problems.append(f"{field_name}={value!r} must be a positive integer")
        if not problems and self.fast >= self.slow:
            problems.append(f"fast={self.fast} must be smaller than slow={self.slow}")
        if not 0.0 < self.exposure <= 1.0:
            problems.append(f"exposure={self.exposure!r} must be in (0, 1]")
        if problems:
            raise StrategyError("sma: " + "; ".join(problems))

    @property
    def label(self) -> str:
        return f"sma({self.fast},{self.slow})" + ("" if self.exposure == 1.0 else f"x{self.exposure:g}")

    def targets(self, data: MarketData) -> np.ndarray:
        return self.exposure * sma_signal(data.close, self.fast, self.slow)


#: Registry of named strategies. UMC adds itself in its own module.
STRATEGIES: dict[str, type[Strategy]] = {BuyAndHold.name: BuyAndHold, SMACrossover.name: SMACrossover}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` available by ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} needs a class attribute `name`")
    STRATEGIES[cls.name] = cls
    return cls


def _load_from_file(ref: str) -> type[Strategy]:
    path_text, _, cls_name = ref.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise StrategyError(f"strategy file {path} not found (from {ref!r}); give path/to/file.py:ClassName")
    spec = importlib.util.spec_from_file_location(f"umc_user_strategy_{abs(hash(str(path.resolve())))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise StrategyError(f"strategy file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    cls = getattr(module, cls_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, (SignalStrategy, AgentStrategy))):
        raise StrategyError(f"{path} has no SignalStrategy/AgentStrategy subclass named {cls_name!r}")
    return cls


def resolve_strategy(name: str) -> type[Strategy]:
    """The class named ``name`` in the registry, or ``path/file.py:ClassName``."""
    if name.endswith(".py") or ".py:" in name:
        if ":" not in name:
            raise StrategyError(f"strategy {name!r}: a file strategy is path/to/file.py:ClassName")
        return _load_from_file(name)
    if name not in STRATEGIES:
        _import_plugins()  # only then: the agent pulls in torch
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)} or path/to/file.py:ClassName")
    return STRATEGIES[name]


def make_strategy(name: str, params: dict[str, Any] | None = None) -> Strategy:
    """Instantiate a strategy from its name and parameters, rejecting unknown or invalid ones."""
    cls = resolve_strategy(name)
    params = dict(params or {})
    if dataclasses.is_dataclass(cls):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - set(fields))
        if unknown:
            raise StrategyError(f"{name}: unknown parameter(s) {unknown}; parameters: {sorted(fields)}")
        for key, value in params.items():
            want = fields[key].type
            if want in ("int", int) and isinstance(value, float) and value.is_integer():
                params[key] = int(value)
    try:
        return cls(**params)
    except StrategyError:
        raise
    except (TypeError, ValueError) as exc:
        raise StrategyError(f"{name}: invalid parameters {params}: {exc}") from exc


def _import_plugins() -> None:
    """Strategies that live in other modules register themselves on import."""
    try:
        import umc_backtest.agent  # noqa: F401  (the UMC agent, when present)
    except ImportError as exc:  # only "no such module" is expected; anything else is a real error
        if getattr(exc, "name", None) != "umc_backtest.agent":
            raise


def describe(strategy: Strategy) -> dict[str, Any]:
    params = strategy.params()
    return {"strategy": strategy.name, "label": strategy.label, "kind": strategy.kind, "params": params,
            "passive": bool(strategy.passive)}


__all__ = [
    "STRATEGIES",
    "AgentContext",
    "AgentStrategy",
    "BuyAndHold",
    "MarketData",
    "SMACrossover",
    "SignalStrategy",
    "Strategy",
    "StrategyError",
    "describe",
    "make_strategy",
    "register_strategy",
    "resolve_strategy",
    "sma_signal",
]

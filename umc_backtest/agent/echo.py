"""The Echo population: NPC traders with parametric strategies, evolved by elite selection.

100 traders by default, each of one kind (momentum, mean reversion, breakout, trend following,
noise) with its own parameters. All of them step together in one compiled call per bar (Numba,
a loop over the population); every ``evolve_every`` bars the top ``elite_fraction`` by realised
PnL since the last evolution are kept and the rest replaced by mutated copies of them. They only
ever see bars up to the current one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

KINDS = ("momentum", "mean_reversion", "breakout", "trend_following", "noise")


@numba.njit(cache=True, nogil=True)
def _step_nb(kind, fast, slow, thr, ema_r, ema_f, ema_s, pos, pnl, r, close, vol, u, cost):  # pragma: no cover
    for i in range(kind.shape[0]):
        old = pos[i]
        ema_r[i] += fast[i] * (r - ema_r[i])
        ema_f[i] += fast[i] * (close - ema_f[i])
        ema_s[i] += slow[i] * (close - ema_s[i])
        k = kind[i]
        if k == 0:  # momentum: the sign of the smoothed return
            new = 1.0 if ema_r[i] > 0 else (-1.0 if ema_r[i] < 0 else old)
        elif k == 1:  # mean reversion: against the deviation from the fast mean, in volatility units
            dev = (close / ema_f[i] - 1.0) / (thr[i] * vol + 1e-12)
            new = -max(-1.0, min(1.0, dev))
        elif k == 2:  # breakout: beyond a volatility band around the slow mean
            if close > ema_s[i] * (1.0 + thr[i] * vol):
                new = 1.0
            elif close < ema_s[i] * (1.0 - thr[i] * vol):
                new = -1.0
            else:
                new = old
        elif k == 3:  # trend following: fast mean above the slow one
            new = 1.0 if ema_f[i] > ema_s[i] else -1.0
        else:  # noise: keeps its position, re-draws it with probability fast
            new = 2.0 * u[i] - 1.0 if u[i + kind.shape[0]] < fast[i] else old
        pnl[i] += old * r - cost * abs(new - old)
        pos[i] = new


@dataclass
class EchoHistory:
    bars: list
    fitness_mean: list
    fitness_max: list
    elite_mean: list
    mix: list  # counts per kind after each evolution


class EchoPopulation:
    """``size`` traders; ``step`` once per bar; ``consensus`` is the elites' mean position in [-1, 1]."""

    def __init__(self, size: int = 100, elite_fraction: float = 0.2, evolve_every: int = 1000, cost: float = 0.001,
                 mutation: float = 0.1, kind_switch: float = 0.05, seed: int = 0) -> None:
        if size < 5 or not 0 < elite_fraction < 1 or evolve_every < 1:
            raise ValueError(f"echo: size={size} (>=5), elite_fraction={elite_fraction} (0..1), evolve_every="
                             f"{evolve_every} (>=1)")
        self.rng = np.random.default_rng(seed)
        self.size, self.elite_fraction, self.evolve_every = size, elite_fraction, evolve_every
        self.cost, self.mutation, self.kind_switch = cost, mutation, kind_switch
        self.kind = np.arange(size) % len(KINDS)
        self.fast = np.exp(self.rng.uniform(np.log(0.01), np.log(0.3), size))
        self.slow = self.fast * np.exp(self.rng.uniform(np.log(0.05), np.log(0.5), size))
        self.thr = self.rng.uniform(0.5, 3.0, size)
        self.ema_r = np.zeros(size)
        self.ema_f = np.zeros(size)
        self.ema_s = np.zeros(size)
        self.pos = np.zeros(size)
        self.pnl = np.zeros(size)
        self.elite = np.arange(size)
        self.bars = 0
        self.history = EchoHistory([], [], [], [], [])
        self._started = False

    def step(self, log_return: float, close: float, vol: float) -> None:
        if not self._started:  # start the means at the first price seen
            self.ema_f[:] = close
            self.ema_s[:] = close
            self._started = True
        u = self.rng.random(2 * self.size)
        _step_nb(self.kind, self.fast, self.slow, self.thr, self.ema_r, self.ema_f, self.ema_s, self.pos, self.pnl,
                 float(log_return), float(close), float(vol), u, self.cost)
        self.bars += 1
        if self.bars % self.evolve_every == 0:
            self.evolve()

    @property
    def consensus(self) -> float:
        return float(self.pos[self.elite].mean())

    def evolve(self) -> None:
        """Keep the top ``elite_fraction`` by PnL since the last evolution; refill with mutated elite copies."""
        n_elite = max(1, round(self.elite_fraction * self.size))
        order = np.argsort(-self.pnl, kind="stable")
        elite = order[:n_elite]
        rest = order[n_elite:]
        self.history.bars.append(self.bars)
        self.history.fitness_mean.append(float(self.pnl.mean()))
        self.history.fitness_max.append(float(self.pnl.max()))
        self.history.elite_mean.append(float(self.pnl[elite].mean()))
        parents = elite[self.rng.integers(0, n_elite, rest.size)]
        for arr in (self.fast, self.slow, self.thr):
            arr[rest] = arr[parents] * np.exp(self.mutation * self.rng.standard_normal(rest.size))
        np.clip(self.fast, 1e-3, 0.9, out=self.fast)
        np.clip(self.slow, 1e-4, 0.5, out=self.slow)
        switch = self.rng.random(rest.size) < self.kind_switch
        self.kind[rest] = np.where(switch, self.rng.integers(0, len(KINDS), rest.size), self.kind[parents])
        for arr in (self.ema_r, self.ema_f, self.ema_s, self.pos):
            arr[rest] = arr[parents]
        self.pnl[:] = 0.0
        self.elite = np.sort(elite)
        self.history.mix.append(np.bincount(self.kind, minlength=len(KINDS)).tolist())

    def sample_action(self) -> int:
        """One trader's latest action as sell/hold/buy (0/1/2), for the gate's echo samples."""
        i = int(self.rng.integers(0, self.size))
        return int(np.sign(self.pos[i])) + 1

"""Adaptive lambda (umc.md) and the coherence it reads. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LambdaSchedule:
    """``lambda`` in ``[low, high]`` around ``base`` (umc.md: 0.28 in [0.1, 0.46]).

    Each step: x ``up`` (1.1) when the info gain is below ``info_gain_floor`` (0.01: under-exploring),
    else x ``down`` (0.9) when coherence is below ``coherence_floor`` (0.7: the model disagrees with the
    market, explore less on it), else relax toward ``base`` by ``relax`` (10%) of the distance.
    The first rule wins when both hold: an agent that learns nothing must explore.
    """

    base: float = 0.28
    low: float = 0.1
    high: float = 0.46
    up: float = 1.1
    down: float = 0.9
    relax: float = 0.1
    info_gain_floor: float = 0.01
    coherence_floor: float = 0.7

    def step(self, lam: float, info_gain: float, coherence: float) -> float:
        if info_gain < self.info_gain_floor:
            lam = lam * self.up
        elif coherence < self.coherence_floor:
            lam = lam * self.down
        else:
            lam = lam + self.relax * (self.base - lam)
        return min(self.high, max(self.low, lam))


def interval_hit(observed: np.ndarray, mean: np.ndarray, var: np.ndarray, z: float = 1.6448536269514722) -> float:
    """Share of dimensions whose observation lies inside the model's central 90% predictive interval.

    ``observed``, ``mean``, ``var``: (D,). Coherence is the exponential moving average of this share:
    a calibrated model scores ~0.9, one that the market contradicts scores less.
    """
    d = observed - mean
    return float(np.count_nonzero(d * d <= (z * z) * var)) / observed.size

"""Macrostate detector: k-means regimes of causal features, fitted only on bars before the window.

Each regime is named by its mean return and volatility relative to the others (z-scores across
clusters): BREAKOUT (up, volatile), MARKUP (up, calm), CAPITULATION (down, volatile), MARKDOWN
(down, calm), DISTRIBUTION (flat, volatile), ACCUMULATION (flat, quiet), RANGE (flat, average).
Names that repeat get a suffix. ``label`` assigns a bar to the nearest centroid from that bar's
features alone, so a regime at ``t`` depends on data up to ``t`` and on the fit period only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..engine.features import FEATURE_NAMES

_COL = {n: i for i, n in enumerate(FEATURE_NAMES)}


def regime_features(features: np.ndarray, close: np.ndarray) -> np.ndarray:
    """(N, F) engine features + (N,) closes -> (N, 4): return, log volatility, trend, RSI (all causal)."""
    vol = np.log(np.maximum(features[:, _COL["volatility_20"]], 1e-8))
    trend = features[:, _COL["sma_20"]] / features[:, _COL["sma_50"]] - 1.0
    rsi = features[:, _COL["rsi_14"]] / 100.0 - 0.5
    ret = (close - features[:, _COL["sma_20"]]) / features[:, _COL["sma_20"]]  # where the price is vs its mean
    return np.column_stack([ret, vol, trend, rsi])


def name_regimes(mean_return: np.ndarray, volatility: np.ndarray) -> list[str]:
    """Names from each cluster's mean return and volatility (z-scored across clusters)."""
    def z(x):
        sd = x.std()
        return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)

    zr, zv = z(mean_return), z(volatility)
    names = []
    for r, v in zip(zr, zv, strict=True):
        if r > 0.5:
            base = "BREAKOUT" if v > 0.5 else "MARKUP"
        elif r < -0.5:
            base = "CAPITULATION" if v > 0.5 else "MARKDOWN"
        else:
            base = "DISTRIBUTION" if v > 0.5 else ("ACCUMULATION" if v < -0.5 else "RANGE")
        names.append(base)
    seen: Counter = Counter()
    out = []
    for n in names:
        seen[n] += 1
        out.append(n if names.count(n) == 1 else f"{n}-{seen[n]}")
    return out


@dataclass
class MacrostateDetector:
    n_regimes: int = 7
    seed: int = 0
    max_fit_rows: int = 20_000

    def fit(self, features: np.ndarray, close: np.ndarray, forward_return: np.ndarray) -> MacrostateDetector:
        """Fit on the bars before the window: ``features`` (N, F), ``close`` (N,), and each bar's realised
        next-bar log return ``forward_return`` (N,), used only to *name* the clusters (all inside the fit period)."""
        from sklearn.cluster import KMeans

        x = regime_features(features, close)
        ok = np.isfinite(x).all(axis=1) & np.isfinite(forward_return)
        x, fr = x[ok], forward_return[ok]
        if len(x) < 10 * self.n_regimes:
            raise ValueError(f"macrostates: {len(x)} usable bars before the window; need at least "
                             f"{10 * self.n_regimes} to fit {self.n_regimes} regimes (start the data earlier)")
        step = max(1, len(x) // self.max_fit_rows)
        self.mean_, self.std_ = x.mean(0), x.std(0) + 1e-12
        z = (x - self.mean_) / self.std_
        km = KMeans(n_clusters=self.n_regimes, n_init=4, random_state=self.seed).fit(z[::step])
        self.centroids_ = km.cluster_centers_
        labels = self.label_many(x)
        mean_ret = np.array([fr[labels == k].mean() if (labels == k).any() else 0.0 for k in range(self.n_regimes)])
        vol = np.array([x[labels == k, 1].mean() if (labels == k).any() else 0.0 for k in range(self.n_regimes)])
        self.names_ = name_regimes(mean_ret, vol)
        return self

    def label_many(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean_) / self.std_
        d = ((z[:, None, :] - self.centroids_[None, :, :]) ** 2).sum(-1)
        return d.argmin(1)

    def label(self, x_row: np.ndarray) -> int:
        z = (x_row - self.mean_) / self.std_
        d = self.centroids_ - z
        return int((d * d).sum(1).argmin())

    def label_bar(self, features: np.ndarray, close: float) -> int:
        """The regime of one bar from its own features (same numbers as :func:`regime_features`)."""
        sma20 = features[_COL["sma_20"]]
        row = np.array([
            (close - sma20) / sma20,
            np.log(max(features[_COL["volatility_20"]], 1e-8)),
            sma20 / features[_COL["sma_50"]] - 1.0,
            features[_COL["rsi_14"]] / 100.0 - 0.5,
        ])
        return self.label(row)


def regime_cycles(labels: np.ndarray, names: list[str], bar_minutes: float = 1.0) -> dict:
    """Distribution, run lengths and cycles of a regime sequence.

    Returns the share of bars per regime, each regime's mean run length (bars), stability (share of
    bars whose next bar has the same regime), the number of runs, and the most frequent 3-regime
    cycles (consecutive distinct runs) with their counts.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return {"distribution": {}, "runs": 0}
    change = np.flatnonzero(np.diff(labels) != 0) + 1
    starts = np.r_[0, change]
    lengths = np.diff(np.r_[starts, labels.size])
    run_labels = labels[starts]
    dist = {names[k]: float((labels == k).mean()) for k in range(len(names))}
    mean_run = {names[k]: float(lengths[run_labels == k].mean()) if (run_labels == k).any() else 0.0
                for k in range(len(names))}
    cycles = Counter(tuple(names[k] for k in run_labels[i : i + 3]) for i in range(len(run_labels) - 2))
    return {
        "distribution": dist,
        "mean_run_bars": mean_run,
        "stability": float((labels[1:] == labels[:-1]).mean()) if labels.size > 1 else 1.0,
        "runs": len(starts),
        "regimes_seen": len(set(labels.tolist())),
        "top_cycles": [{"cycle": " -> ".join(c), "count": n} for c, n in cycles.most_common(5)],
        "mean_run_minutes": float(lengths.mean() * bar_minutes),
    }

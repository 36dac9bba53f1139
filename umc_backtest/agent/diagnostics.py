"""Diagnostics: empowerment (action -> future-state mutual information) and the contraction check."""

from __future__ import annotations

import itertools

import numpy as np
from scipy.special import logsumexp

from .market_gi import N_ACTIONS, NumpyGI


def gaussian_mixture_mi(means: np.ndarray, var: np.ndarray, samples: int, rng: np.random.Generator) -> float:
    """``I(A; S)`` in nats for ``A`` uniform over K components and ``S | a ~ N(means[a], diag(var))``.

    ``means`` (K, L), ``var`` (L,). Monte Carlo: ``E_a E_{s~p(s|a)} [log p(s|a) - log (1/K) sum_b p(s|b)]``
    with ``samples`` draws per component. 0 when every component is the same; at most ``log K``.
    """
    k, dim = means.shape
    s = means[:, None, :] + np.sqrt(var) * rng.standard_normal((k, samples, dim))  # (K, n, L)
    flat = s.reshape(-1, dim)
    # log N(s; means[b], var) up to the shared constant, for every b: (K*n, K)
    d2 = (((flat[:, None, :] - means[None, :, :]) ** 2) / var).sum(-1)
    logp = -0.5 * d2
    own = logp[np.arange(k * samples), np.repeat(np.arange(k), samples)]
    return float(np.mean(own - (logsumexp(logp, axis=1) - np.log(k))))


def empowerment(gi: NumpyGI, s: np.ndarray, horizon: int, samples: int, rng: np.random.Generator) -> float:
    """Mutual information between the agent's next ``horizon`` actions and MarketGI's state after them.

    Every action sequence (3^horizon) is rolled through the ensemble-mean transition; the state after
    it is ``N(mean, horizon * transition noise)``; the MI of that mixture is estimated by Monte Carlo
    (:func:`gaussian_mixture_mi`). It is a lower bound of empowerment (uniform action sequences).
    """
    seqs = np.array(list(itertools.product(range(N_ACTIONS), repeat=horizon)))  # (K, h)
    states = np.repeat(s[None, :], len(seqs), axis=0)
    for step in range(horizon):
        nxt = np.empty_like(states)
        for a in range(N_ACTIONS):
            idx = seqs[:, step] == a
            if idx.any():
                x = states[idx]
                h = np.tanh(np.einsum("kl,elh->ekh", x, gi.t_w1_s) + gi.t_w1_a[:, a, None, :] + gi.t_b1)
                nxt[idx] = (x + np.einsum("ekh,ehl->ekl", h, gi.t_w2) + gi.t_b2).mean(0)
        states = nxt
    return gaussian_mixture_mi(states, horizon * gi.t_var, samples, rng)


def update_size(before: list[np.ndarray], after: list[np.ndarray]) -> float:
    """Mean squared parameter change of one update (the contraction check's quantity)."""
    total = sum(float(((a - b) ** 2).sum()) for a, b in zip(after, before, strict=True))
    return total / sum(a.size for a in after)

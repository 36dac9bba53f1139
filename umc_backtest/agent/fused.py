"""The per-bar decision of the UMC agent as one compiled call (Numba).

Exactly the computation of the NumPy path (:class:`~umc_backtest.agent.market_gi.NumpyGI` for the
filter and the predictions, :mod:`~umc_backtest.agent.objective` for ``G^lambda``), fused so a bar
costs one call instead of ~60 small NumPy calls. ``tests/test_umc_agent.py`` holds the two equal;
``benchmarks/umc_speed.py`` times both.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .objective import LOG_2PI_E


@numba.njit(cache=True, nogil=True, fastmath=False)
def decide_nb(prior, obs, ctx, enc_w1, enc_b1, enc_w2, enc_b2, t_w1_s, t_w1_a, t_b1, t_w2, t_b2, em_w1, em_b1, em_w2,
              em_b2, exposure, step, max_pos, drift, cost_scaled, pref_mean, pref_var, lam, temperature, u):  # pragma: no cover
    L = prior.shape[0]
    D = obs.shape[0]
    C = ctx.shape[0]
    H = enc_b1.shape[0]
    E = t_w2.shape[0]
    A = t_w1_a.shape[1]
    # encoder: s = (tanh([prior, obs, ctx] W1 + b1) W2 + b2)[:L]
    x = np.empty(L + D + C)
    x[:L] = prior
    x[L:L + D] = obs
    x[L + D:] = ctx
    h = np.empty(H)
    for k in range(H):
        acc = enc_b1[k]
        for i in range(L + D + C):
            acc += x[i] * enc_w1[i, k]
        h[k] = math.tanh(acc)
    s = np.empty(L)
    for j in range(L):
        acc = enc_b2[j]
        for k in range(H):
            acc += h[k] * enc_w2[k, j]
        s[j] = acc
    # transition heads for every action, then emission
    base = np.empty((E, H))
    for e in range(E):
        for k in range(H):
            acc = t_b1[e, 0, k]
            for j in range(L):
                acc += s[j] * t_w1_s[e, j, k]
            base[e, k] = acc
    nxt = np.empty((A, E, L))
    mean_o = np.empty((A, E, D))
    var_o = np.empty((A, E, D))
    hh = np.empty(H)
    for a in range(A):
        for e in range(E):
            for k in range(H):
                hh[k] = math.tanh(base[e, k] + t_w1_a[e, a, k])
            for j in range(L):
                acc = s[j] + t_b2[e, 0, j]
                for k in range(H):
                    acc += hh[k] * t_w2[e, k, j]
                nxt[a, e, j] = acc
            for k in range(H):
                acc = em_b1[k]
                for j in range(L):
                    acc += nxt[a, e, j] * em_w1[j, k]
                hh[k] = math.tanh(acc)
            for d in range(2 * D):
                acc = em_b2[d]
                for k in range(H):
                    acc += hh[k] * em_w2[k, d]
                if d < D:
                    mean_o[a, e, d] = acc
                else:
                    var_o[a, e, d - D] = math.exp(min(max(acc, -8.0), 4.0))
    # G^lambda per action; each action's ensemble mean and variance of o' kept for the chosen one
    g = np.empty(A)
    ig = np.empty(A)
    expo = np.empty(A)
    mix_mean = np.empty((A, D))
    mix_var = np.empty((A, D))
    for a in range(A):
        ex = exposure + (a - 1) * step
        ex = min(max(ex, 0.0), max_pos)
        expo[a] = ex
        amb = 0.0
        info = 0.0
        for d in range(D):
            m = 0.0
            msq = 0.0
            v = 0.0
            for e in range(E):
                m += mean_o[a, e, d]
                msq += mean_o[a, e, d] * mean_o[a, e, d]
                v += var_o[a, e, d]
                amb += math.log(var_o[a, e, d])
            m /= E
            spread = max(msq / E - m * m, 0.0)
            info += math.log1p(spread / (v / E))
            mix_mean[a, d] = m
            mix_var[a, d] = v / E + spread
        rm = mix_mean[a, 0]  # the predicted return is observation dimension 0
        rv = mix_var[a, 0]
        pm = ex * (drift + rm) - cost_scaled * abs(ex - exposure)
        pv = ex * ex * rv + pref_var
        risk = 0.5 * (math.log(pref_var / pv) + (pv + (pm - pref_mean) ** 2) / pref_var - 1.0)
        amb = 0.5 * (D * LOG_2PI_E + amb / E)
        info = 0.5 * info
        ig[a] = info
        g[a] = risk + amb - lam * info
    gmin = g.min()
    p = np.empty(A)
    total = 0.0
    for a in range(A):
        p[a] = math.exp(-(g[a] - gmin) / temperature)
        total += p[a]
    target = u * total
    chosen = A - 1
    cum = 0.0
    for a in range(A):
        cum += p[a]
        if target <= cum:
            chosen = a
            break
    pred_mean = mix_mean[chosen].copy()
    pred_var = mix_var[chosen].copy()
    next_prior = np.zeros(L)
    for j in range(L):
        acc = 0.0
        for e in range(E):
            acc += nxt[chosen, e, j]
        next_prior[j] = acc / E
    return s, chosen, expo[chosen], ig[chosen], gmin, pred_mean, pred_var, next_prior

"""The expected free energy ``G^lambda = Risk + Ambiguity - lambda * InfoGain``: pure functions.

Shapes: ``A`` candidate actions (sell, hold, buy), ``E`` ensemble transition heads, ``D``
observation dimensions. All inputs are NumPy arrays; nothing here holds state.
"""

from __future__ import annotations

import numpy as np

LOG_2PI_E = float(np.log(2.0 * np.pi * np.e))


def gaussian_kl(mu_q: np.ndarray, var_q: np.ndarray, mu_p: float | np.ndarray, var_p: float | np.ndarray) -> np.ndarray:
    """``KL(N(mu_q, var_q) || N(mu_p, var_p))`` elementwise (nats)."""
    return 0.5 * (np.log(var_p / var_q) + (var_q + (mu_q - mu_p) ** 2) / var_p - 1.0)


def risk(pnl_mean: np.ndarray, pnl_var: np.ndarray, pref_mean: float, pref_var: float) -> np.ndarray:
    """Risk per action (A,): KL from the predicted outcome ``N(pnl_mean, pnl_var)`` to the preferred ``P*``.

    ``pnl_mean``, ``pnl_var``: (A,) predicted next-bar outcome of each action (the exposure it leads to
    times the predicted return, minus its trading cost), in units of the return's scale.
    """
    return gaussian_kl(pnl_mean, pnl_var, pref_mean, pref_var)


def ambiguity(obs_var: np.ndarray) -> np.ndarray:
    """Ambiguity per action (A,): expected entropy of the predicted observation, ``obs_var`` (A, E, D).

    The entropy of a diagonal Gaussian, averaged over the ensemble heads, summed over dimensions.
    """
    heads, dims = obs_var.shape[-2], obs_var.shape[-1]
    return 0.5 * (dims * LOG_2PI_E + np.log(obs_var).sum(axis=(-2, -1)) / heads)


def info_gain(obs_mean: np.ndarray, obs_var: np.ndarray) -> np.ndarray:
    """Expected information gain about the model per action (A,), from ensemble disagreement.

    ``obs_mean``, ``obs_var``: (A, E, D) each head's predicted observation. With the heads as a uniform
    posterior over models, ``I(model; o') = H[mixture] - E_heads H[head]``; the mixture entropy is
    bounded above by its moment-matched Gaussian's, giving
    ``0.5 * sum_d log(1 + Var_heads(mean_d) / E_heads(var_d))``: 0 exactly when the heads agree,
    growing with their disagreement.
    """
    heads = obs_mean.shape[-2]
    m = obs_mean.sum(axis=-2) / heads
    spread = np.maximum((obs_mean * obs_mean).sum(axis=-2) / heads - m * m, 0.0)  # (A, D) variance of the heads' means
    noise = obs_var.sum(axis=-2) / heads
    return 0.5 * np.log1p(spread / noise).sum(axis=-1)


def expected_free_energy(risk_: np.ndarray, ambiguity_: np.ndarray, info_gain_: np.ndarray, lam: float) -> np.ndarray:
    """``G^lambda = Risk + Ambiguity - lambda * InfoGain`` (A,)."""
    return risk_ + ambiguity_ - lam * info_gain_


def softmax_policy(g: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(-G / temperature)`` (A,), numerically stable."""
    z = -(g - g.min()) / temperature
    p = np.exp(z)
    return p / p.sum()

"""MarketGI: a latent-state generative model of the market, trained by variational free energy.

- encoder ``q(s_t | prior_t, o_t, c_t)``: a diagonal Gaussian over the latent state from the prior
  mean, the observation and the context (regime, echo consensus);
- transition ``s' = T(s, a)``: an ensemble of ``E`` heads (their disagreement is the info gain),
  with a learned diagonal noise; the prior of ``s_t`` is the heads' mean from ``(s_{t-1}, a_{t-1})``;
- emission ``o = O(s)``: a diagonal Gaussian over the next observation.

Training (:func:`free_energy`): ``F = -log p(o_t | s_t) + beta * KL(q(s_t) || p(s_t | s_{t-1}, a_{t-1}))``
with ``s_t`` drawn from ``q`` (reparameterised), each head's KL on its own bootstrap mask. The
agent carries the posterior mean from bar to bar (no window is re-encoded) and runs the per-bar
inference on a NumPy copy of the weights (:class:`NumpyGI`): a tiny network's torch call costs
more than its arithmetic. Learning runs in torch on replay minibatches every few bars.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

N_ACTIONS = 3  # sell, hold, buy
LOGVAR_MIN, LOGVAR_MAX = -8.0, 4.0


class MarketGI(nn.Module):
    def __init__(self, obs_dim: int, ctx_dim: int, latent: int = 8, hidden: int = 32, heads: int = 5) -> None:
        super().__init__()
        self.obs_dim, self.ctx_dim, self.latent, self.hidden, self.heads = obs_dim, ctx_dim, latent, hidden, heads
        self.enc1 = nn.Linear(latent + obs_dim + ctx_dim, hidden)
        self.enc2 = nn.Linear(hidden, 2 * latent)
        # ensemble transition: (E, in, hidden) and (E, hidden, latent) weights
        self.t_w1 = nn.Parameter(torch.randn(heads, latent + N_ACTIONS, hidden) / math.sqrt(latent + N_ACTIONS))
        self.t_b1 = nn.Parameter(torch.zeros(heads, 1, hidden))
        self.t_w2 = nn.Parameter(torch.randn(heads, hidden, latent) / math.sqrt(hidden) * 0.5)
        self.t_b2 = nn.Parameter(torch.zeros(heads, 1, latent))
        self.t_logvar = nn.Parameter(torch.full((latent,), -2.0))
        self.em1 = nn.Linear(latent, hidden)
        self.em2 = nn.Linear(hidden, 2 * obs_dim)

    def encode(self, prior_mu: torch.Tensor, obs: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.enc1(torch.cat([prior_mu, obs, ctx], dim=-1)))
        mu, logvar = self.enc2(h).chunk(2, dim=-1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def transition(self, s: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """(B, L), (B,) long -> (E, B, L) each head's next-state mean (a residual step)."""
        x = torch.cat([s, nn.functional.one_hot(action, N_ACTIONS).to(s.dtype)], dim=-1)
        h = torch.tanh(torch.matmul(x.unsqueeze(0), self.t_w1) + self.t_b1)
        return s.unsqueeze(0) + torch.matmul(h, self.t_w2) + self.t_b2

    def emit(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.em2(torch.tanh(self.em1(s))).chunk(2, dim=-1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


def gaussian_nll(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``-log N(x; mu, exp(logvar))`` summed over the last axis (nats)."""
    return 0.5 * (math.log(2 * math.pi) + logvar + (x - mu) ** 2 / logvar.exp()).sum(-1)


def kl_diag(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """``KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p))`` summed over the last axis."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1.0).sum(-1)


def free_energy(model: MarketGI, s_prev, a_prev, obs, ctx, mask, beta: float, generator=None) -> tuple[torch.Tensor, dict]:
    """Variational free energy of a batch (mean over rows): reconstruction + beta x KL to the prior.

    ``s_prev`` (B, L) the carried posterior mean at t-1, ``a_prev`` (B,) the action taken then,
    ``obs`` (B, D), ``ctx`` (B, C), ``mask`` (E, B) each head's bootstrap weights.
    """
    prior = model.transition(s_prev, a_prev)  # (E, B, L)
    mu_q, logvar_q = model.encode(prior.mean(0), obs, ctx)
    eps = torch.randn(mu_q.shape, generator=generator, dtype=mu_q.dtype)
    s = mu_q + (0.5 * logvar_q).exp() * eps
    mu_o, logvar_o = model.emit(s)
    recon = gaussian_nll(obs, mu_o, logvar_o)  # (B,)
    logvar_p = model.t_logvar.expand_as(prior)
    kl = kl_diag(mu_q.unsqueeze(0), logvar_q.unsqueeze(0), prior, logvar_p)  # (E, B)
    kl = (kl * mask).sum(0) / mask.sum(0).clamp_min(1.0)
    loss = (recon + beta * kl).mean()
    return loss, {"recon": float(recon.detach().mean()), "kl": float(kl.detach().mean())}


class NumpyGI:
    """The per-bar inference of :class:`MarketGI` on NumPy copies of its weights (refreshed after updates)."""

    def __init__(self, model: MarketGI) -> None:
        self.refresh(model)

    def refresh(self, model: MarketGI) -> None:
        with torch.no_grad():
            g = {k: np.ascontiguousarray(v.detach().cpu().double().numpy().T if v.ndim == 2 else
                                         v.detach().cpu().double().numpy())
                 for k, v in model.state_dict().items()}  # 2-D Linear weights stored transposed: x @ W
        self.latent = model.latent
        self.enc_w1, self.enc_b1 = g["enc1.weight"], g["enc1.bias"]
        self.enc_w2, self.enc_b2 = g["enc2.weight"], g["enc2.bias"]
        self.t_w1, self.t_b1, self.t_w2, self.t_b2 = g["t_w1"], g["t_b1"], g["t_w2"], g["t_b2"]
        self.t_w1_s = np.ascontiguousarray(self.t_w1[:, : self.latent, :])  # (E, L, H)
        self.t_w1_a = np.ascontiguousarray(self.t_w1[:, self.latent :, :])  # (E, A, H)
        self.t_var = np.exp(g["t_logvar"])
        self.em_w1, self.em_b1 = g["em1.weight"], g["em1.bias"]
        self.em_w2, self.em_b2 = g["em2.weight"], g["em2.bias"]

    def prior(self, s: np.ndarray, action: int) -> np.ndarray:
        """(L,) -> (E, L) each head's next-state mean for one action."""
        h = np.tanh(np.einsum("l,elh->eh", s, self.t_w1_s) + self.t_w1_a[:, action, :] + self.t_b1[:, 0, :])
        return s + np.einsum("eh,ehl->el", h, self.t_w2) + self.t_b2[:, 0, :]

    def next_states(self, s: np.ndarray) -> np.ndarray:
        """(L,) -> (A, E, L) each head's next-state mean for every action."""
        base = np.einsum("l,elh->eh", s, self.t_w1_s) + self.t_b1[:, 0, :]  # (E, H)
        h = np.tanh(base[None, :, :] + self.t_w1_a.transpose(1, 0, 2))  # (A, E, H)
        return s + np.einsum("aeh,ehl->ael", h, self.t_w2) + self.t_b2[None, :, 0, :]

    def encode(self, prior_mu: np.ndarray, obs: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        x = np.concatenate((prior_mu, obs, ctx))
        out = np.tanh(x @ self.enc_w1 + self.enc_b1) @ self.enc_w2 + self.enc_b2
        return out[: self.latent]

    def emit(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(..., L) -> mean, var (..., D)."""
        out = np.tanh(s @ self.em_w1 + self.em_b1) @ self.em_w2 + self.em_b2
        d = out.shape[-1] // 2
        return out[..., :d], np.exp(np.clip(out[..., d:], LOGVAR_MIN, LOGVAR_MAX))

"""The world model ``p_theta(o' | o, a)`` of AMAL and its likelihood maths.

A diagonal Gaussian ``N(o'; mu_theta(o, a), diag(sigma_theta^2))`` with one
mean head per action: one forward pass gives ``mu_theta(o, a)`` for every
``a`` (shape ``[B, A, D]``), so the action is structural (the prototype fed
it as 8 of 83 inputs and the predictions barely depended on it) and the
mixture over actions in the MI estimator costs one pass, not ``A``. The
heads predict the change of the observation (``mu = o + delta``); the
per-dimension log standard deviation is learned and clamped, so every
log-likelihood is in nats.

Shapes: ``B`` samples, ``A`` actions, ``Do`` input observation size, ``D``
predicted size (the observation without the agent-id one-hot: it never changes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

LOG_2PI = math.log(2.0 * math.pi)
#: Bounds of the learned log standard deviation (sigma in [0.0067, 2.7]).
MIN_LOG_STD, MAX_LOG_STD = -5.0, 1.0


class GaussianWorldModel(nn.Module):
    """``mu_theta(o, a)`` for all actions at once, plus a learned ``log sigma`` per predicted dimension."""

    def __init__(self, obs_dim: int, target_dim: int, n_actions: int, hidden: Sequence[int] = (256, 256, 128)) -> None:
        super().__init__()
        if not 0 < target_dim <= obs_dim:
            raise ValueError(f"target_dim={target_dim} must be in [1, obs_dim={obs_dim}]")
        self.obs_dim, self.target_dim, self.n_actions = obs_dim, target_dim, n_actions
        layers: list[nn.Module] = []
        last = obs_dim
        for width in hidden:
            layers += [nn.Linear(last, width), nn.ReLU()]
            last = width
        self.body = nn.Sequential(*layers)
        self.heads = nn.Linear(last, n_actions * target_dim)
        nn.init.zeros_(self.heads.weight)
        nn.init.zeros_(self.heads.bias)
        self.log_std = nn.Parameter(torch.zeros(target_dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Predicted means ``[B, A, D]`` of the next observation for every action."""
        return self.target(obs)[:, None, :] + self.predicted_change(obs)

    def predicted_change(self, obs: torch.Tensor) -> torch.Tensor:
        """``delta`` ``[B, A, D]``: each action's predicted change of the observation (``mu = o + delta``)."""
        return self.heads(self.body(obs)).view(obs.shape[0], self.n_actions, self.target_dim)

    def clamped_log_std(self) -> torch.Tensor:
        """``log sigma`` ``[D]`` within ``[MIN_LOG_STD, MAX_LOG_STD]``."""
        return self.log_std.clamp(MIN_LOG_STD, MAX_LOG_STD)

    def target(self, next_obs: torch.Tensor) -> torch.Tensor:
        """The predicted part ``[B, D]`` of an observation ``[B, Do]``."""
        return next_obs[:, : self.target_dim]


def gaussian_log_prob(target: torch.Tensor, means: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """``log N(target; mean_a, diag(exp(log_std)^2))`` for every action, summed over dimensions.

    ``target`` ``[B, D]``, ``means`` ``[B, A, D]``, ``log_std`` ``[D]`` -> ``[B, A]`` (nats).
    """
    z = (target[:, None, :] - means) * torch.exp(-log_std)
    return -0.5 * (z**2).sum(-1) - _log_normaliser(log_std)


#: Rows per block in :func:`action_log_likelihoods`: the ``[rows, A, D]`` intermediates of one block
#: (~2.4 MB at SMAX sizes) stay in cache. On a default 3m batch (40,000 rows) on this project's 2-core
#: machine: ~2x faster than one block (``benchmarks/mi_estimator.py --blocks``), ~3x faster than the
#: density over ``model(obs)``'s means in one pass (the code before).
LIKELIHOOD_BLOCK_ROWS = 1024


def action_log_likelihoods(
    model: GaussianWorldModel, obs: torch.Tensor, next_obs: torch.Tensor, block_rows: int | None = LIKELIHOOD_BLOCK_ROWS
) -> torch.Tensor:
    """``log p_theta(o' | o, a)`` ``[B, A]`` for every action ``a``, from ``obs``/``next_obs`` ``[B, Do]``.

    The same density as ``gaussian_log_prob(model.target(next_obs), model(obs), log_std)``, computed
    from the change ``o' - o`` against each head's predicted change (so the ``[B, A, D]`` means are
    never formed), ``block_rows`` rows at a time (``None``: the whole batch in one block).
    Differentiable.
    """
    log_std = model.clamped_log_std()
    inv_std = torch.exp(-log_std)
    rows = obs.shape[0]
    block = max(1, rows if block_rows is None else int(block_rows))
    parts = []
    for start in range(0, max(rows, 1), block):  # one (empty) block when there are no rows
        o = obs[start : start + block]
        change = model.target(next_obs[start : start + block]) - model.target(o)
        z = (change[:, None, :] - model.predicted_change(o)) * inv_std
        parts.append(torch.einsum("bad,bad->ba", z, z) * -0.5 - _log_normaliser(log_std))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _log_normaliser(log_std: torch.Tensor) -> torch.Tensor:
    """``sum(log sigma) + D/2 log(2 pi)``: the Gaussian's log normaliser over ``D`` dimensions."""
    return log_std.sum() + 0.5 * LOG_2PI * log_std.shape[-1]


def transition_nll(
    model: GaussianWorldModel, obs: torch.Tensor, actions: torch.Tensor, next_obs: torch.Tensor
) -> torch.Tensor:
    """``-log p_theta(o' | o, a)`` ``[B]`` of the actions taken (``actions`` ``[B]`` int).

    Only the taken action's head enters the density (every head's change comes out of one matmul,
    then one is picked per row), so the loss and its gradient cost ``1/A`` of :func:`action_log_likelihoods`'
    elementwise work.
    """
    log_std = model.clamped_log_std()
    taken = model.predicted_change(obs)[torch.arange(obs.shape[0], device=obs.device), actions.long()]  # [B, D]
    z = (model.target(next_obs) - model.target(obs) - taken) * torch.exp(-log_std)
    return 0.5 * (z**2).sum(-1) + _log_normaliser(log_std)


def world_model_loss(
    model: GaussianWorldModel, obs: torch.Tensor, actions: torch.Tensor, next_obs: torch.Tensor
) -> torch.Tensor:
    """Mean NLL per transition (nats) over the given transitions: the world model's training loss.

    The caller passes only the transitions the model may learn from (primary
    policy, alive agent, real timestep): isolation is by selection, so no other
    sample even enters the forward pass. Returns 0 for an empty selection.
    """
    if obs.shape[0] == 0:
        return model.log_std.sum() * 0.0
    return transition_nll(model, obs, actions, next_obs).mean()

"""Running value normalisation (MAPPO's ``ValueNorm``).

The critic predicts values in normalised units; GAE works in raw units
(``denormalize``), the value loss compares normalised predictions with
normalised targets. Statistics are debiased exponential moving averages, kept
as module buffers so they are checkpointed and move with the module's device.
"""

from __future__ import annotations

import torch
from torch import nn


class ValueNormalizer(nn.Module):
    def __init__(self, beta: float = 0.99999, epsilon: float = 1e-5, var_floor: float = 1e-2) -> None:
        super().__init__()
        if not 0.0 < beta < 1.0:
            raise ValueError(f"value-norm beta must be in (0, 1), got {beta}")
        self.beta = beta
        self.epsilon = epsilon
        self.var_floor = var_floor
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_mean_sq", torch.zeros(()))
        self.register_buffer("debiasing_term", torch.zeros(()))

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        denom = self.debiasing_term.clamp_min(self.epsilon)
        mean = self.running_mean / denom
        mean_sq = self.running_mean_sq / denom
        return mean, (mean_sq - mean**2).clamp_min(self.var_floor)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch of raw targets ``x`` ``[N]`` into the running statistics."""
        if x.numel() == 0:
            return
        x = x.detach().to(self.running_mean.dtype)
        weight = self.beta
        self.running_mean.mul_(weight).add_(x.mean() * (1.0 - weight))
        self.running_mean_sq.mul_(weight).add_((x**2).mean() * (1.0 - weight))
        self.debiasing_term.mul_(weight).add_(1.0 - weight)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return (x - mean) / torch.sqrt(var)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return x * torch.sqrt(var) + mean

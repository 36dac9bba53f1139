"""PPO / MAPPO loss terms as pure functions on tensors.

Shapes: ``[B]`` is a flat batch of agent-steps; ``mask`` ``[B]`` is 1.0 for
samples that count (alive agents, real timesteps) and 0.0 otherwise.
"""

from __future__ import annotations

import torch

#: Added to the logits of invalid actions (finite, so no NaN in softmax/entropy).
MASKED_LOGIT = torch.finfo(torch.float32).min


def mask_logits(logits: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, A]`` with invalid actions (``action_mask == 0``) pushed to ~-inf.

    Invalid actions get probability exactly 0 after the softmax. A row with no
    valid action is a bug in the env and would make every action -inf.
    """
    return torch.where(action_mask > 0.5, logits, torch.full_like(logits, MASKED_LOGIT))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` ``[B]`` over entries where ``mask`` ``[B]`` is 1 (0 if none)."""
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def ppo_clip_objective(
    logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample clipped surrogate ``min(r A, clip(r, 1-eps, 1+eps) A)`` and ``|r-1| > eps``.

    ``logp``/``logp_old``/``advantages``: ``[B]``. Returns (surrogate ``[B]``,
    clipped indicator ``[B]`` as float). The loss is ``-masked_mean(surrogate)``.
    """
    ratio = torch.exp(logp - logp_old)
    surrogate = torch.min(ratio * advantages, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages)
    return surrogate, ((ratio - 1.0).abs() > clip).float()


def huber(error: torch.Tensor, delta: float) -> torch.Tensor:
    """Elementwise Huber loss of ``error`` with threshold ``delta`` (MAPPO's value loss)."""
    abs_err = error.abs()
    quadratic = torch.clamp(abs_err, max=delta)
    return 0.5 * quadratic**2 + delta * (abs_err - quadratic)

"""Golden-number tests of the pure loss and normalisation functions."""

import math

import pytest
import torch

from amal_rllib.core.losses import MASKED_LOGIT, huber, mask_logits, masked_mean, ppo_clip_objective
from amal_rllib.core.value_norm import ValueNormalizer


def test_mask_logits_gives_zero_probability_to_invalid_actions():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    probs = torch.softmax(mask_logits(logits, mask), dim=-1)
    assert probs[0, 1] == 0.0 and probs[1, 0] == 0.0 and probs[1, 1] == 0.0
    assert torch.allclose(probs[0, [0, 2]], torch.softmax(torch.tensor([1.0, 3.0]), -1))
    assert probs[1, 2] == 1.0
    assert mask_logits(logits, mask)[0, 1] == MASKED_LOGIT
    # Entropy stays finite with masked entries.
    dist = torch.distributions.Categorical(logits=mask_logits(logits, mask))
    assert torch.isfinite(dist.entropy()).all()


def test_masked_mean():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    assert masked_mean(x, torch.tensor([1.0, 1.0, 1.0, 0.0])) == pytest.approx(2.0)
    assert masked_mean(x, torch.zeros(4)) == 0.0


def test_ppo_clip_objective_golden_numbers():
    # ratio = 1.5 with A=+1 is clipped to 1.2; ratio = 0.5 with A=-1 is clipped to -0.8;
    # ratio = 1.1 with A=+2 is inside the trust region.
    logp_old = torch.zeros(3)
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1]))
    adv = torch.tensor([1.0, -1.0, 2.0])
    surrogate, clipped = ppo_clip_objective(logp, logp_old, adv, clip=0.2)
    assert torch.allclose(surrogate, torch.tensor([1.2, -0.8, 2.2]))
    assert clipped.tolist() == [1.0, 1.0, 0.0]


def test_huber_golden_numbers():
    err = torch.tensor([0.5, -2.0, 12.0])
    assert torch.allclose(huber(err, 10.0), torch.tensor([0.125, 2.0, 0.5 * 100 + 10 * 2]))


def test_value_normalizer_tracks_mean_and_variance_and_inverts():
    torch.manual_seed(0)
    norm = ValueNormalizer(beta=0.99)
    for _ in range(2000):
        norm.update(torch.randn(256) * 3.0 + 5.0)
    mean, var = norm.mean_var()
    assert mean.item() == pytest.approx(5.0, abs=0.1)
    assert math.sqrt(var.item()) == pytest.approx(3.0, abs=0.1)
    x = torch.linspace(-4, 12, 9)
    assert torch.allclose(norm.denormalize(norm.normalize(x)), x, atol=1e-5)


def test_value_normalizer_is_checkpointed_in_state_dict():
    norm = ValueNormalizer()
    norm.update(torch.tensor([1.0, 2.0]))
    other = ValueNormalizer()
    other.load_state_dict(norm.state_dict())
    assert torch.equal(other.mean_var()[0], norm.mean_var()[0])

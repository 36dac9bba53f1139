"""Proposition 1: the importance-sampled estimate of ``I(theta; O)`` per transition.

::

    I_hat(o, o') = log p(o' | o, theta, pi) - log( (1/K) sum_k p(o' | o, theta, pi_k) )
    p(o' | o, theta, pi) = sum_a pi(a | o) N(o'; mu_theta(o, a), sigma^2)     (valid a only)
    pi_k = pi with parameters phi + eps_k,  eps_k ~ N(0, perturbation_std^2 I)

The sum over actions uses the whole masked action distribution (log-sum-exp),
never an ``argmax``. Each chunk of ``M`` transitions (``mi_samples_M``) gets its
own ``K`` draws, and all ``C x K`` perturbed actors run as one batched
computation: MAPPO's MLP through :func:`fused_sequential_forward` (batched
matmuls, each LayerNorm's affine folded into the next Linear), any other actor
through ``torch.func.functional_call`` under two ``vmap``\\ s. No Python loop
over samples or policies, no copy of the policy.

Two exact identities are built in so the degenerate cases give exactly 0, not
rounding noise: the row maximum of ``log N`` is subtracted (it cancels between
the two terms), and each mixture is divided by ``sum_a pi(a)`` (which is 1).
So ``I_hat == 0`` exactly when every ``pi_k`` equals ``pi`` or when the world
model ignores the action.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from .losses import mask_logits

Params = Mapping[str, torch.Tensor]


def masked_log_policy(logits: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """``log pi(a | o)`` ``[..., A]`` with invalid actions at ``-inf``."""
    log_pi = torch.log_softmax(mask_logits(logits, action_mask), dim=-1)
    return torch.where(action_mask > 0.5, log_pi, torch.full_like(log_pi, -math.inf))


def centred_log_likelihoods(log_lik: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """``log N(o'; mu(o,a))`` ``[B, A]`` minus its maximum over valid actions (invalid -> ``-inf``)."""
    log_lik = torch.where(action_mask > 0.5, log_lik, torch.full_like(log_lik, -math.inf))
    return log_lik - log_lik.max(dim=-1, keepdim=True).values


def mixture_log_prob(log_pi: torch.Tensor, centred_log_lik: torch.Tensor) -> torch.Tensor:
    """``log sum_a pi(a) N(o'; mu(o,a)) - log sum_a pi(a)`` over the last axis: ``[..., A] -> [...]``."""
    return torch.logsumexp(log_pi + centred_log_lik, dim=-1) - torch.logsumexp(log_pi, dim=-1)


def log_mean_exp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``log mean exp(x)`` along ``dim``; exactly ``x`` when all entries are equal."""
    top = x.max(dim=dim, keepdim=True).values
    return (top + torch.log(torch.exp(x - top).mean(dim=dim, keepdim=True))).squeeze(dim)


def sample_parameter_noise(
    params: Params, num_chunks: int, num_policies: int, std: float, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """``eps`` ``{name: [C, K, *shape]}`` ~ ``N(0, std^2)``, one set of ``K`` draws per chunk."""
    return {
        name: torch.randn(
            (num_chunks, num_policies, *p.shape), generator=generator, device=p.device, dtype=p.dtype
        ).mul_(std)
        for name, p in params.items()
    }


ELEMENTWISE_ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.ELU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Sigmoid, nn.Identity)


def supports_fused_forward(actor: nn.Module) -> bool:
    """Whether :func:`fused_sequential_forward` can run ``actor``: an ``nn.Sequential``
    of ``Linear``, last-axis ``LayerNorm`` and elementwise activations (MAPPO's MLP)."""
    if not isinstance(actor, nn.Sequential) or len(actor) == 0:
        return False
    for layer in actor:
        if isinstance(layer, nn.LayerNorm):
            if len(layer.normalized_shape) != 1:
                return False
        elif not isinstance(layer, (nn.Linear, *ELEMENTWISE_ACTIVATIONS)):
            return False
    return True


def fused_sequential_forward(actor: nn.Sequential, batched: Params, obs: torch.Tensor) -> torch.Tensor:
    """Logits ``[C, P, M, out]`` of ``P`` parameter sets per chunk on that chunk's inputs.

    ``batched`` ``{name: [C, P, *shape]}`` (names as in ``actor.named_parameters()``),
    ``obs`` ``[C, M, in]``. The same maths as ``functional_call`` under two ``vmap``\\ s,
    with fewer passes over the ``C x P x M`` activations: each ``LayerNorm``'s
    affine is folded into the ``Linear`` after it (``W diag(g)``, ``W b + c``, on the
    small weight tensors), the normalisation runs without affine, the bias is fused
    into the matmul (``baddbmm``) and ReLU runs in place. The input ``LayerNorm`` is
    normalised once per chunk, not once per parameter set.
    """
    num_chunks, num_sets = next(iter(batched.values())).shape[:2]
    h = obs  # [C, M, d] while shared by the P sets, then [C * P, M, d]
    shared = True
    affine: tuple[torch.Tensor | None, torch.Tensor | None] | None = None  # a LayerNorm's (g, b) [C, P, d]
    layers = list(actor.named_children())
    for i, (name, layer) in enumerate(layers):
        if isinstance(layer, nn.LayerNorm):
            h = torch.nn.functional.layer_norm(h, layer.normalized_shape, eps=layer.eps)
            gain, bias = batched.get(f"{name}.weight"), batched.get(f"{name}.bias")
            if i + 1 < len(layers) and isinstance(layers[i + 1][1], nn.Linear):
                affine = (gain, bias)
                continue
            h, shared = _unshare(h, shared, num_sets)
            if gain is not None:
                h = h * gain.reshape(num_chunks * num_sets, 1, -1)
            if bias is not None:
                h = h + bias.reshape(num_chunks * num_sets, 1, -1)
        elif isinstance(layer, nn.Linear):
            weight = batched[f"{name}.weight"]  # [C, P, out, in]
            bias = batched.get(f"{name}.bias")
            bias = torch.zeros(weight.shape[:3], dtype=weight.dtype, device=weight.device) if bias is None else bias
            if affine is not None:
                gain, shift = affine
                if shift is not None:
                    bias = bias + (weight @ shift.unsqueeze(-1)).squeeze(-1)
                if gain is not None:
                    weight = weight * gain.unsqueeze(-2)
                affine = None
            h, shared = _unshare(h, shared, num_sets)
            out_dim, in_dim = weight.shape[-2:]
            h = torch.baddbmm(bias.reshape(-1, 1, out_dim), h, weight.reshape(-1, out_dim, in_dim).transpose(1, 2))
        elif isinstance(layer, nn.ReLU):
            h = torch.relu_(h) if not shared else torch.relu(h)
        else:
            h = layer(h)
    h, shared = _unshare(h, shared, num_sets)
    return h.view(num_chunks, num_sets, *h.shape[1:])


def _unshare(h: torch.Tensor, shared: bool, num_sets: int) -> tuple[torch.Tensor, bool]:
    """``[C, M, d]`` shared by ``P`` sets -> ``[C * P, M, d]`` (a copy per set)."""
    if not shared:
        return h, False
    return h.unsqueeze(1).expand(-1, num_sets, -1, -1).reshape(-1, *h.shape[1:]), False


#: Activation bytes per block of groups in :func:`batched_actor_logits`' fused path: a block's
#: ``[groups x P, M, width]`` activations stay in cache. At the MI estimator's SMAX sizes (11 parameter
#: sets x 1,024 rows x 64 units, ~2.9 MB per group) that is one group per block, ~2.3-2.5x faster on
#: this project's 2-core machine than the whole batch at once (``benchmarks/mi_estimator.py --blocks``).
FUSED_BLOCK_BYTES = 4 * 2**20


def fused_block_groups(actor: nn.Sequential, num_sets: int, rows: int, element_size: int = 4) -> int:
    """Groups per block of :func:`fused_sequential_forward` so one activation stays under ``FUSED_BLOCK_BYTES``."""
    width = max(
        [layer.in_features for layer in actor if isinstance(layer, nn.Linear)]
        + [layer.out_features for layer in actor if isinstance(layer, nn.Linear)],
        default=1,
    )
    return max(1, FUSED_BLOCK_BYTES // max(1, num_sets * rows * width * element_size))


def batched_actor_logits(actor: nn.Module, batched: Params, obs: torch.Tensor) -> torch.Tensor:
    """Logits ``[C, P, M, out]`` of ``P`` parameter sets of ``actor`` per group ``c`` on that group's inputs.

    ``batched`` ``{name: [C, P, *shape]}`` (names as in ``actor.named_parameters()``), ``obs``
    ``[C, M, in]``. MAPPO's MLP goes through :func:`fused_sequential_forward`; any other actor
    through ``vmap(vmap(functional_call))`` (the same values, more passes over memory). Used by the
    MI estimator (``P`` = the actor and its ``K`` perturbations) and by the auxiliary runners
    (``C`` CEM candidates, one parameter set each, on their own sub-envs' observations).
    """
    if supports_fused_forward(actor):
        groups = obs.shape[0]
        block = fused_block_groups(actor, next(iter(batched.values())).shape[1], obs.shape[1], obs.element_size())
        if block >= groups:
            return fused_sequential_forward(actor, batched, obs)
        return torch.cat(
            [
                fused_sequential_forward(
                    actor, {name: w[start : start + block] for name, w in batched.items()}, obs[start : start + block]
                )
                for start in range(0, groups, block)
            ]
        )

    def one_policy(weights: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(actor, dict(weights), (x,))

    over_policies = vmap(one_policy, in_dims=(0, None))  # weights [P, ...], x [M, Do] -> [P, M, A]
    return vmap(over_policies, in_dims=(0, 0))(batched, obs)  # [C, P, M, A]


def perturbed_log_policies(
    actor: nn.Module, params: Params, noise: Params, obs: torch.Tensor, action_mask: torch.Tensor
) -> torch.Tensor:
    """``log pi_k(a | o)`` for the unperturbed actor (k = 0) and each ``phi + eps_k`` (k = 1..K).

    ``noise`` ``{name: [C, K, *shape]}``; ``obs`` ``[C, M, Do]``; ``action_mask``
    ``[C, M, A]``. Returns ``[C, K + 1, M, A]``. The unperturbed actor runs
    inside the same batched call (zero noise), so it is computed by exactly the
    same kernels as the perturbed ones (:func:`batched_actor_logits`).
    """
    batched = {
        name: params[name] + torch.cat([torch.zeros_like(eps[:, :1]), eps], dim=1) for name, eps in noise.items()
    }
    return masked_log_policy(batched_actor_logits(actor, batched, obs), action_mask[:, None])


def _chunked_log_policies(actor, params, noise, obs, action_mask, log_lik):
    """``log pi_k`` ``[C, K+1, M, A]`` and the centred log-likelihoods ``[C, M, A]``, ``B`` padded to ``C * M``."""
    num_chunks = next(iter(noise.values())).shape[0]
    batch = obs.shape[0]
    chunk = max(1, math.ceil(batch / num_chunks))
    pad = num_chunks * chunk - batch
    if pad < 0:
        raise ValueError(f"{num_chunks} noise chunks cannot cover {batch} transitions")
    centred = centred_log_likelihoods(log_lik, action_mask)
    if pad:
        obs = torch.cat([obs, obs[-1:].expand(pad, -1)])
        action_mask = torch.cat([action_mask, action_mask[-1:].expand(pad, -1)])
        centred = torch.cat([centred, centred[-1:].expand(pad, -1)])
    log_pis = perturbed_log_policies(
        actor, params, noise, obs.view(num_chunks, chunk, -1), action_mask.view(num_chunks, chunk, -1)
    )
    return log_pis, centred.view(num_chunks, chunk, -1)


def tempered(centred_log_lik: torch.Tensor, temperature: float) -> torch.Tensor:
    """``temperature * log p(o' | o, a)`` for valid actions; invalid ones stay ``-inf`` (also at ``tau = 0``,
    where a plain product would give ``0 * -inf = nan``)."""
    return torch.where(torch.isfinite(centred_log_lik), centred_log_lik * temperature, centred_log_lik)


def _estimate(log_pis: torch.Tensor, centred: torch.Tensor, temperature: float, batch: int) -> torch.Tensor:
    log_p = mixture_log_prob(log_pis, tempered(centred, temperature)[:, None])  # [C, K+1, M]
    return (log_p[:, 0] - log_mean_exp(log_p[:, 1:], dim=1)).reshape(-1)[:batch]


def mi_estimate(
    actor: nn.Module,
    params: Params,
    noise: Params,
    obs: torch.Tensor,
    action_mask: torch.Tensor,
    log_lik: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``I_hat`` ``[B]`` for ``B`` transitions, chunk ``c`` using draws ``noise[name][c]``.

    ``actor``: the policy network (its parameters are replaced by ``params`` +
    noise); ``obs`` ``[B, Do]`` and ``action_mask`` ``[B, A]`` at ``o``;
    ``log_lik`` ``[B, A]`` = ``log p_theta(o' | o, a)`` of the observed ``o'`` for
    every action (see ``world_model.action_log_likelihoods``). ``B`` is padded
    up to ``C * M`` with ``C`` = the noise's chunk count. ``temperature`` ``tau``
    tempers the likelihood (``p(o'|o,a)^tau``, see :func:`fit_likelihood_temperature`);
    1.0 is Proposition 1 as written.
    """
    log_pis, centred = _chunked_log_policies(actor, params, noise, obs, action_mask, log_lik)
    return _estimate(log_pis, centred, temperature, obs.shape[0])


@dataclass(frozen=True)
class MIParts:
    """``I_hat`` at ``temperature``, at 1.0 (Proposition 1 as written), and the per-row ceiling
    ``log pi(a*) - log pibar(a*)`` (``pibar`` the mean of the ``K`` perturbed policies, ``a*`` the action
    taken), whose batch mean estimates ``KL(pi || pibar)``. All ``[B]``."""

    estimate: torch.Tensor
    untempered: torch.Tensor
    ceiling: torch.Tensor
    temperature: float


def mi_estimate_parts(
    actor: nn.Module,
    params: Params,
    noise: Params,
    obs: torch.Tensor,
    action_mask: torch.Tensor,
    log_lik: torch.Tensor,
    actions: torch.Tensor,
    temperature: float | Callable[[torch.Tensor], float],
) -> MIParts:
    """:func:`mi_estimate` at ``temperature`` and at 1.0, and the ceiling, from one batched actor pass.

    ``temperature`` may be a function of the unperturbed ``log pi(a | o)`` ``[B, A]`` (e.g. a fit on
    held-out rows): it gets the policy the batched pass computed anyway, so the actor runs once.
    """
    log_pis, centred = _chunked_log_policies(actor, params, noise, obs, action_mask, log_lik)
    batch = obs.shape[0]
    flat = log_pis.permute(0, 2, 1, 3).reshape(-1, log_pis.shape[1], log_pis.shape[-1])[:batch]  # [B, K+1, A]
    if callable(temperature):
        temperature = float(temperature(flat[:, 0]))
    taken = flat.gather(2, actions.long().view(-1, 1, 1).expand(-1, flat.shape[1], 1)).squeeze(2)  # [B, K+1]
    return MIParts(
        estimate=_estimate(log_pis, centred, temperature, batch),
        untempered=_estimate(log_pis, centred, 1.0, batch),
        ceiling=taken[:, 0] - log_mean_exp(taken[:, 1:], dim=1),
        temperature=float(temperature),
    )


def action_log_posterior(log_pi: torch.Tensor, log_lik: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log post(a | o, o')`` ``[B, A]``, ``post(a) ∝ pi(a | o) p(o' | o, a)^temperature`` (invalid: ``-inf``)."""
    joint = log_pi + temperature * torch.where(torch.isfinite(log_pi), log_lik, torch.zeros_like(log_lik))
    return joint - torch.logsumexp(joint, dim=-1, keepdim=True)


#: Where :func:`fit_likelihood_temperature` searches (``tau`` in ``[0] + [TAU_MIN, TAU_MAX]``).
TAU_MIN, TAU_MAX = 1e-4, 4.0


def fit_likelihood_temperature(
    log_pi: torch.Tensor, log_lik: torch.Tensor, actions: torch.Tensor, iterations: int = 30
) -> float:
    """The ``tau`` that maximises the mean ``log post_tau(a* | o, o')`` of the actions taken.

    A calibrated action posterior: a diagonal Gaussian world model treats
    correlated observation features (a unit's features vanishing together) as
    independent evidence and is far too sure which action produced ``o'``;
    ``tau`` is the single exponent that makes its action posterior as sure as
    the transitions justify. The objective is concave in ``tau`` (a linear term
    minus a log-sum-exp), so a golden-section search over ``log tau`` in
    ``[TAU_MIN, TAU_MAX]`` finds it (``iterations`` steps, ~1e-3 relative);
    ``tau = 0`` (ignore the model) wins when nothing beats it.
    ``log_pi``, ``log_lik`` ``[B, A]``, ``actions`` ``[B]``.
    """
    if log_pi.shape[0] == 0:
        return 1.0
    idx = actions.long()[:, None]
    # The mean log posterior of the taken actions, split into what does not depend on tau and one
    # log-sum-exp per tau; log p(o'|o,a) centred per row on its valid actions (the posterior ignores a
    # row's constant, and a model that ignores the action then scores exactly as tau = 0 does).
    valid = torch.isfinite(log_pi)
    lik = torch.where(valid, log_lik, torch.full_like(log_lik, -math.inf))
    lik = torch.where(valid, lik - lik.max(dim=-1, keepdim=True).values, torch.zeros_like(lik))
    taken_pi, taken_lik = float(log_pi.gather(1, idx).mean()), float(lik.gather(1, idx).mean())

    def score(tau: float) -> float:
        return taken_pi + tau * taken_lik - float(torch.logsumexp(torch.add(log_pi, lik, alpha=tau), dim=-1).mean())

    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    lo, hi = math.log(TAU_MIN), math.log(TAU_MAX)
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = score(math.exp(a)), score(math.exp(b))
    for _ in range(iterations):
        if fa < fb:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = score(math.exp(b))
        else:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = score(math.exp(a))
    best_log, best = (a, fa) if fa >= fb else (b, fb)
    for edge in (math.log(TAU_MIN), math.log(TAU_MAX)):  # a maximum on the boundary of the interval
        value = score(math.exp(edge))
        if value > best:
            best_log, best = edge, value
    return 0.0 if score(0.0) >= best else math.exp(best_log)


def mi_estimate_reference(
    actor: nn.Module,
    params: Params,
    noise: Params,
    obs: torch.Tensor,
    action_mask: torch.Tensor,
    log_lik: torch.Tensor,
) -> torch.Tensor:
    """The same formula as :func:`mi_estimate`, one sample and one policy at a time.

    A slow, literal reference for tests (Python loops, ``p = sum_a pi(a) N(...)``
    in probability space relative to the row maximum). Not for training.
    """
    num_chunks = next(iter(noise.values())).shape[0]
    num_policies = next(iter(noise.values())).shape[1]
    chunk = max(1, math.ceil(obs.shape[0] / num_chunks))
    out = torch.empty(obs.shape[0], dtype=torch.float64)
    for b in range(obs.shape[0]):
        c = b // chunk
        valid = action_mask[b] > 0.5
        lik = torch.exp((log_lik[b] - log_lik[b][valid].max()).double()) * valid

        def p_next(param_set: Params, x=obs[b : b + 1], valid=valid, lik=lik) -> torch.Tensor:
            logits = functional_call(actor, dict(param_set), (x,))[0].double()
            probs = torch.softmax(logits.masked_fill(~valid, -math.inf), dim=-1)
            return (probs * lik).sum()

        base = p_next(params)
        perturbed = [p_next({n: params[n] + noise[n][c, k] for n in params}) for k in range(num_policies)]
        out[b] = torch.log(base) - torch.log(torch.stack(perturbed).mean())
    return out.to(obs.dtype)


def normalised_bonus(mi: torch.Tensor, lambda_info: float, scale: float = 1.0, eps: float = 1e-8) -> torch.Tensor:
    """``lambda_info * scale * I_hat / std(I_hat)``: the intrinsic reward (``[B] -> [B]``).

    ``scale`` is the spread of the extrinsic reward, so ``lambda_info`` is the
    ratio of the two spreads whatever the scenario's reward units. Dividing by
    the batch standard deviation (not centring) keeps the sign of ``I_hat``.
    All-zero estimates give an all-zero bonus.
    """
    if mi.numel() < 2:
        return torch.zeros_like(mi)
    return lambda_info * scale * mi / (mi.std() + eps)

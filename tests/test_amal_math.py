"""AMAL's pure maths: world-model likelihoods, the MI estimator (Proposition 1), CEM."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from amal_rllib.core.cem import CEMPopulation, GenerationLedger, distance_penalised_fitness
from amal_rllib.core.mi import (
    action_log_posterior,
    fit_likelihood_temperature,
    fused_sequential_forward,
    masked_log_policy,
    mi_estimate,
    mi_estimate_parts,
    mi_estimate_reference,
    normalised_bonus,
    sample_parameter_noise,
    supports_fused_forward,
)
from amal_rllib.core.world_model import (
    GaussianWorldModel,
    action_log_likelihoods,
    gaussian_log_prob,
    transition_nll,
    world_model_loss,
)
from amal_rllib.mappo.module import build_mlp

OBS, ACTIONS = 12, 5


def actor_and_params(seed=0, obs_dim=OBS, n_actions=ACTIONS):
    torch.manual_seed(seed)
    actor = build_mlp(obs_dim, (32, 32), n_actions, layer_norm=True, out_gain=1.0)
    return actor, {name: p.detach() for name, p in actor.named_parameters()}


def random_batch(n=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, ACTIONS, generator=g) > 0.35).float()
    mask[:, 0] = 1.0
    return torch.randn(n, OBS, generator=g), mask, torch.randn(n, ACTIONS, generator=g) * 3.0


# --------------------------------------------------------------------------- world model


def test_gaussian_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    target, means, log_std = (
        torch.randn(7, 4, generator=g),
        torch.randn(7, 3, 4, generator=g),
        torch.randn(4, generator=g) * 0.3,
    )
    expected = torch.distributions.Normal(means, log_std.exp()).log_prob(target[:, None, :]).sum(-1)
    assert torch.allclose(gaussian_log_prob(target, means, log_std), expected, atol=1e-5)


def test_world_model_has_one_head_per_action_and_skips_id_dims():
    model = GaussianWorldModel(obs_dim=10, target_dim=7, n_actions=4, hidden=(16,))
    obs = torch.randn(5, 10)
    assert model(obs).shape == (5, 4, 7)
    # Zero-initialised heads: before training every action predicts "no change".
    assert torch.equal(model(obs), obs[:, None, :7].expand(5, 4, 7))
    with torch.no_grad():
        model.heads.bias.copy_(torch.arange(28.0))
    mu = model(obs)
    assert not torch.allclose(mu[:, 0], mu[:, 1]), "each action must have its own prediction"


def test_world_model_learns_action_dependent_dynamics_in_nats():
    torch.manual_seed(0)
    model = GaussianWorldModel(obs_dim=6, target_dim=6, n_actions=3, hidden=(64, 64))
    shift = torch.tensor([[1.0, 0, 0, 0, 0, 0], [0, -1.0, 0, 0, 0, 0], [0, 0, 0.5, 0, 0, 0]])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        obs = torch.randn(256, 6)
        actions = torch.randint(3, (256,))
        next_obs = obs + shift[actions] + 0.05 * torch.randn(256, 6)
        loss = world_model_loss(model, obs, actions, next_obs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    obs = torch.randn(512, 6)
    actions = torch.randint(3, (512,))
    next_obs = obs + shift[actions] + 0.05 * torch.randn(512, 6)
    log_lik = action_log_likelihoods(model, obs, next_obs)
    # The taken action explains o' far better than the others (nats, not raw MSE).
    assert (log_lik.argmax(1) == actions).float().mean() > 0.99
    # Units are nats with a learned sigma: a unit-variance Gaussian would score
    # >= 0.92 nats per dimension; the learned one is below 0 and still shrinking.
    assert transition_nll(model, obs, actions, next_obs).mean() / 6 < 0.0
    assert model.clamped_log_std().mean() < -1.0


@pytest.mark.parametrize("block_rows", [1, 4, 7, None])
def test_blocked_action_log_likelihoods_equal_the_gaussian_over_every_heads_mean(block_rows):
    """The blocked pass (changes against predicted changes) is the density of ``model(obs)``'s means,
    blocks of any size, a short last block included (17 rows)."""
    torch.manual_seed(2)
    model = GaussianWorldModel(obs_dim=10, target_dim=7, n_actions=4, hidden=(16, 8))
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    obs, next_obs = torch.randn(17, 10), torch.randn(17, 10)
    expected = gaussian_log_prob(model.target(next_obs), model(obs), model.clamped_log_std())
    got = action_log_likelihoods(model, obs, next_obs, block_rows=block_rows)
    assert got.shape == (17, 4)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert action_log_likelihoods(model, obs[:0], next_obs[:0], block_rows=block_rows).shape == (0, 4)


def test_transition_nll_of_the_taken_head_alone_equals_every_heads_likelihood_and_its_gradient():
    torch.manual_seed(3)
    model = GaussianWorldModel(obs_dim=10, target_dim=7, n_actions=4, hidden=(16,))
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    obs, next_obs, actions = torch.randn(9, 10), torch.randn(9, 10), torch.randint(4, (9,))
    nll = transition_nll(model, obs, actions, next_obs)
    grads = torch.autograd.grad(nll.sum(), list(model.parameters()))
    full = -gaussian_log_prob(model.target(next_obs), model(obs), model.clamped_log_std())[torch.arange(9), actions]
    expected = torch.autograd.grad(full.sum(), list(model.parameters()))
    assert torch.allclose(nll, full, atol=1e-5)
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_world_model_loss_of_an_empty_selection_is_zero_with_a_graph():
    model = GaussianWorldModel(4, 4, 2, hidden=(8,))
    loss = world_model_loss(model, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))
    loss.backward()
    assert loss.item() == 0.0


# --------------------------------------------------------------------------- MI estimator


def test_parameter_noise_has_the_requested_std_and_fresh_uncorrelated_draws_per_chunk_and_policy():
    _, params = actor_and_params()
    noise = sample_parameter_noise(params, 6, 7, 0.3, generator=torch.Generator().manual_seed(11))
    again = sample_parameter_noise(params, 6, 7, 0.3, generator=torch.Generator().manual_seed(11))
    for name, p in params.items():
        assert noise[name].shape == (6, 7, *p.shape) and noise[name].dtype == p.dtype
        assert torch.equal(noise[name], again[name])  # the generator alone fixes the draws
    flat = torch.cat([e.reshape(-1) for e in noise.values()])
    assert flat.numel() > 20_000
    assert abs(float(flat.mean())) < 0.01 and abs(float(flat.std()) / 0.3 - 1.0) < 0.02
    big = max(noise.values(), key=lambda e: e[0, 0].numel())  # fresh draws per chunk and per policy
    for other in (big[1, 0], big[0, 1]):
        assert abs(float(torch.corrcoef(torch.stack([big[0, 0].reshape(-1), other.reshape(-1)]))[0, 1])) < 0.1


def test_mi_is_exactly_zero_when_every_perturbed_policy_equals_pi():
    actor, params = actor_and_params()
    obs, mask, log_lik = random_batch()
    noise = {n: torch.zeros_like(e) for n, e in sample_parameter_noise(params, 4, 6, 0.1).items()}
    assert torch.equal(mi_estimate(actor, params, noise, obs, mask, log_lik), torch.zeros(len(obs)))


def test_mi_is_exactly_zero_when_the_world_model_ignores_the_action():
    actor, params = actor_and_params()
    obs, mask, _ = random_batch()
    log_lik = torch.randn(len(obs), 1).expand(-1, ACTIONS).contiguous()  # same for every action
    noise = sample_parameter_noise(params, 4, 6, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(mi_estimate(actor, params, noise, obs, mask, log_lik), torch.zeros(len(obs)))


def test_mi_is_positive_when_actions_matter_and_policies_differ():
    """o' generated by pi itself through action-specific means: E[I_hat] > 0 (Gibbs' inequality)."""
    actor, params = actor_and_params(seed=2)
    g = torch.Generator().manual_seed(5)
    n = 2000
    obs = torch.randn(n, OBS, generator=g)
    mask = torch.ones(n, ACTIONS)
    means = torch.randn(n, ACTIONS, 3, generator=g) * 2.0  # distinct outcome per action
    with torch.no_grad():
        probs = torch.softmax(actor(obs), -1)
    actions = torch.multinomial(probs, 1, generator=g).squeeze(1)
    next_target = means[torch.arange(n), actions] + 0.1 * torch.randn(n, 3, generator=g)
    log_lik = gaussian_log_prob(next_target, means, torch.full((3,), math.log(0.1)))
    noise = sample_parameter_noise(params, 20, 10, 0.5, generator=g)
    mi = mi_estimate(actor, params, noise, obs, mask, log_lik)
    assert mi.mean() > 0.01, mi.mean()
    assert torch.all(torch.isfinite(mi))


@pytest.mark.parametrize("chunks", [1, 3, 8])
def test_vectorised_mi_equals_the_per_sample_loop(chunks):
    actor, params = actor_and_params(seed=4)
    obs, mask, log_lik = random_batch(n=37, seed=6)  # 37 is not a multiple of the chunk size
    noise = sample_parameter_noise(params, chunks, 5, 0.2, generator=torch.Generator().manual_seed(7))
    fast = mi_estimate(actor, params, noise, obs, mask, log_lik)
    slow = mi_estimate_reference(actor, params, noise, obs, mask, log_lik)
    assert fast.abs().max() > 1e-3  # a non-trivial case
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()


def _vmapped_forward(actor, batched, obs):
    from torch.func import functional_call, vmap

    one = vmap(lambda w, x: functional_call(actor, dict(w), (x,)), in_dims=(0, None))
    return vmap(one, in_dims=(0, 0))(batched, obs)


@pytest.mark.parametrize(
    "make_actor",
    [
        lambda: build_mlp(OBS, (32, 16), ACTIONS, layer_norm=True, out_gain=1.0),
        lambda: build_mlp(OBS, (32, 16), ACTIONS, layer_norm=False, out_gain=1.0),
        # a LayerNorm that is not followed by a Linear keeps its own affine; Tanh goes through as is
        lambda: nn.Sequential(nn.Linear(OBS, 16), nn.Tanh(), nn.LayerNorm(16), nn.Linear(16, ACTIONS), nn.LayerNorm(5)),
    ],
)
def test_fused_forward_equals_vmapped_functional_call(make_actor):
    torch.manual_seed(11)
    actor = make_actor()
    for p in actor.parameters():  # non-trivial LayerNorm gains and biases
        nn.init.normal_(p, std=0.5)
    params = {name: p.detach() for name, p in actor.named_parameters()}
    noise = sample_parameter_noise(params, 3, 4, 0.2, generator=torch.Generator().manual_seed(2))
    batched = {n: params[n] + torch.cat([torch.zeros_like(e[:, :1]), e], dim=1) for n, e in noise.items()}
    obs = torch.randn(3, 9, OBS)
    assert supports_fused_forward(actor)
    fused = fused_sequential_forward(actor, batched, obs)
    assert fused.shape == (3, 5, 9, ACTIONS)
    assert torch.allclose(fused, _vmapped_forward(actor, batched, obs), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(fused[:, 0], actor(obs), atol=1e-5)  # set 0 is the unperturbed actor


def test_fused_forward_in_cache_sized_blocks_equals_one_pass(monkeypatch):
    """``batched_actor_logits`` splits the groups into blocks (here 2 groups, then a last block of 1)."""
    import amal_rllib.core.mi as mi

    torch.manual_seed(12)
    actor = build_mlp(OBS, (32, 16), ACTIONS, layer_norm=True, out_gain=1.0)
    params = {name: p.detach() for name, p in actor.named_parameters()}
    noise = sample_parameter_noise(params, 5, 4, 0.2, generator=torch.Generator().manual_seed(2))
    batched = {n: params[n] + torch.cat([torch.zeros_like(e[:, :1]), e], dim=1) for n, e in noise.items()}
    obs = torch.randn(5, 9, OBS)
    whole = fused_sequential_forward(actor, batched, obs)
    monkeypatch.setattr(mi, "FUSED_BLOCK_BYTES", 2 * 5 * 9 * 32 * 4)  # two groups' activations
    assert mi.fused_block_groups(actor, 5, 9) == 2
    assert torch.allclose(mi.batched_actor_logits(actor, batched, obs), whole, atol=1e-6)


def test_mi_of_an_actor_outside_the_fused_path_equals_the_per_sample_loop():
    torch.manual_seed(3)
    actor = _Residual()
    assert not supports_fused_forward(actor)
    params = {name: p.detach() for name, p in actor.named_parameters()}
    obs, mask, log_lik = random_batch(n=21, seed=4)
    noise = sample_parameter_noise(params, 3, 5, 0.3, generator=torch.Generator().manual_seed(5))
    fast = mi_estimate(actor, params, noise, obs, mask, log_lik)
    assert fast.abs().max() > 1e-3
    assert torch.allclose(fast, mi_estimate_reference(actor, params, noise, obs, mask, log_lik), atol=1e-5)


class _Residual(nn.Module):
    """An actor outside the fused path (``vmap(functional_call)``)."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(OBS, 16), nn.Linear(16, ACTIONS)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.out(h + h.mean(-1, keepdim=True))


def test_candidate_blocks_give_each_candidate_its_episodes_on_its_own_sub_envs():
    from amal_rllib.amal.rollouts import candidate_blocks

    block, quota = candidate_blocks(40, 10, 4)  # the defaults: 10 candidates x 4 episodes on 40 sub-envs
    assert block == 4 and quota.tolist() == [1] * 40
    block, quota = candidate_blocks(40, 7, 4)  # a generation's last, smaller share: 5 sub-envs each, 5 idle
    assert block == 5 and quota.reshape(-1)[:35].reshape(7, 5).sum(1).tolist() == [4] * 7
    assert quota[35:].sum() == 0
    block, quota = candidate_blocks(4, 2, 4)  # fewer sub-envs than episodes: two in a row on each
    assert block == 2 and quota.tolist() == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="3 candidates need 1 to num_envs=2"):
        candidate_blocks(2, 3, 1)


@pytest.mark.parametrize("fused", [True, False])
def test_candidate_policy_gives_each_sub_env_its_own_candidates_masked_logits(fused):
    """One batched forward equals, row by row, the candidate's own actor with the module's masking."""
    from amal_rllib.amal.rollouts import CandidatePolicy, actor_layout, actor_state_from_flat, flatten_actor
    from amal_rllib.core.losses import mask_logits

    torch.manual_seed(5)
    actor = build_mlp(OBS, (32, 16), ACTIONS, layer_norm=True, out_gain=1.0) if fused else _Residual()
    assert supports_fused_forward(actor) == fused
    phi, layout = flatten_actor(actor), actor_layout(actor)
    rng = np.random.default_rng(0)
    flats = [phi + rng.normal(scale=0.3, size=phi.shape) for _ in range(3)]
    states = [actor_state_from_flat(f, layout) for f in flats]
    num_envs, n_agents = 7, 3  # blocks of 2 sub-envs; sub-env 6 is left over (candidate 0 plays it)
    obs, mask, _ = random_batch(n=num_envs * n_agents, seed=3)
    out = CandidatePolicy(actor, states, num_envs)({"obs": obs, "action_mask": mask})
    assert out.shape == (num_envs * n_agents, ACTIONS)
    for row in range(num_envs * n_agents):
        env = row // n_agents
        candidate = env // 2 if env < 6 else 0
        own = copy_with_flat(actor, flats[candidate], layout)
        with torch.no_grad():
            expected = mask_logits(own(obs[row : row + 1]), mask[row : row + 1])[0]
        assert torch.allclose(out[row], expected, atol=1e-5), row
    assert not torch.allclose(out[:6], out[6:12], atol=1e-3)  # the candidates differ


def copy_with_flat(actor, flat, layout):
    import copy

    from amal_rllib.amal.rollouts import actor_state_from_flat

    own = copy.deepcopy(actor)
    state = actor_state_from_flat(flat, layout, prefix="")
    own.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    return own


def test_mi_never_looks_at_invalid_actions():
    actor, params = actor_and_params(seed=1)
    obs, mask, log_lik = random_batch(seed=8)
    noise = sample_parameter_noise(params, 2, 4, 0.3, generator=torch.Generator().manual_seed(1))
    base = mi_estimate(actor, params, noise, obs, mask, log_lik)
    changed = torch.where(mask > 0, log_lik, torch.full_like(log_lik, 1e4))  # huge likelihoods on invalid actions
    assert torch.equal(mi_estimate(actor, params, noise, obs, mask, changed), base)


def test_masked_log_policy_and_bonus_scaling():
    logits, mask = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 0.0, 1.0]])
    log_pi = masked_log_policy(logits, mask)
    assert log_pi[0, 1] == -math.inf
    assert torch.allclose(log_pi.exp().sum(), torch.tensor(1.0))
    mi = torch.tensor([1.0, -1.0, 3.0, 1.0])
    bonus = normalised_bonus(mi, lambda_info=0.5, scale=2.0)
    assert torch.allclose(bonus, 0.5 * 2.0 * mi / mi.std())
    assert torch.equal(normalised_bonus(torch.zeros(5), 0.5), torch.zeros(5))


# --------------------------------------------------------------------------- CEM


def test_cem_converges_on_a_toy_objective():
    optimum = np.linspace(-2.0, 2.0, 10)
    # AMAL's elite fraction; the sigma floor is what keeps CEM from stalling short
    # of the optimum (with a floor of 1e-3 it stops ~0.1-0.3 away).
    cem = CEMPopulation(np.zeros(10), init_sigma=1.0, population_size=50, elite_fraction=0.3, sigma_floor=0.05, seed=0)
    for _ in range(40):
        candidates = cem.ask()
        cem.tell(candidates, -((candidates - optimum) ** 2).sum(axis=1))
    assert np.abs(cem.mean - optimum).max() < 0.05
    assert cem.generation == 40


def test_cem_refits_to_elites_with_a_sigma_floor():
    cem = CEMPopulation(np.zeros(2), init_sigma=1.0, population_size=4, elite_fraction=0.5, sigma_floor=0.3, seed=0)
    candidates = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.2], [3.0, 3.0]])
    stats = cem.tell(candidates, np.array([0.0, 1.0, 3.0, 2.0]))
    assert np.allclose(cem.mean, [2.5, 2.6])
    assert np.allclose(cem.std, [0.5, 0.4])
    stats = cem.tell(candidates, np.array([5.0, 5.0, 0.0, 0.0]))
    assert np.allclose(cem.std, [0.5, 0.5])
    assert stats.best_fitness == 5.0 and stats.mean_fitness == 2.5 and stats.generation == 2
    with pytest.raises(ValueError, match="finite"):
        cem.tell(candidates, np.array([1.0, np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="candidates"):
        cem.tell(candidates[:, :1], np.zeros(4))


def test_cem_state_round_trip_continues_the_same_draws():
    a = CEMPopulation(np.ones(5), init_sigma=0.2, population_size=6, elite_fraction=0.5, sigma_floor=0.01, seed=3)
    a.tell(a.ask(), np.arange(6.0))
    b = CEMPopulation(np.zeros(5), init_sigma=1.0, population_size=6, elite_fraction=0.5, sigma_floor=0.01, seed=9)
    b.set_state(a.get_state())
    assert np.array_equal(a.ask(), b.ask()) and b.generation == 1


def test_distance_penalised_fitness():
    fitness = distance_penalised_fitness(np.array([1.0, 2.0]), np.array([[3.0, 4.0], [0.0, 0.0]]), np.zeros(2), 0.5)
    assert np.allclose(fitness, [1.0 - 2.5, 2.0])


def _mi_on(device):
    actor, _ = actor_and_params()
    actor = actor.to(device)
    params = {name: p.detach() for name, p in actor.named_parameters()}
    obs, mask, log_lik = (t.to(device) for t in random_batch())
    noise = sample_parameter_noise(params, 2, 3, 0.1)
    assert all(e.device.type == torch.device(device).type for e in noise.values())
    return mi_estimate(actor, params, noise, obs, mask, log_lik)


def test_mi_never_creates_a_tensor_off_the_actors_device():
    """On the "meta" device any tensor the estimator made on the CPU (a missing ``device=``) raises, as
    it would on CUDA; so this runs the device check without a GPU."""
    out = _mi_on("meta")
    assert out.device.type == "meta" and out.shape == (40,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the meta-device test covers the CPU-only case)")
def test_mi_runs_on_cuda_and_equals_the_cpu_result():
    torch.testing.assert_close(_mi_on("cuda").cpu(), _mi_on("cpu"), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- CEM generation bookkeeping
def test_generation_ledger_plays_a_generation_in_shares_and_tells_once():
    ledger = GenerationLedger()
    assert ledger.needs_generation() and not ledger.ready_to_tell()
    offsets = np.arange(8.0).reshape(4, 2)
    ledger.new_generation(offsets)
    first = ledger.take(3)
    assert first == [0, 1, 2] and ledger.queue == [3]
    ledger.launch(first, offsets[first] + 10.0)
    with pytest.raises(RuntimeError, match="still playing"):
        ledger.launch([3], offsets[[3]])
    assert ledger.collect({0, 2}) == [1]  # candidate 1's runner died: queued again, first
    assert ledger.queue == [1, 3] and not ledger.in_flight
    ledger.score([0, 2], [1.0, 2.0], [0.1, 0.2])
    assert not ledger.ready_to_tell()
    second = ledger.take(5)
    ledger.launch(second, offsets[second] + 10.0)
    ledger.collect(set(second))
    ledger.score(second, [3.0, 4.0], [0.3, 0.4])
    assert ledger.ready_to_tell() and ledger.unscored() == 0
    np.testing.assert_array_equal(ledger.params, offsets + 10.0)
    ledger.mark_told()
    assert not ledger.ready_to_tell() and ledger.needs_generation()


def test_generation_ledger_state_requeues_candidates_in_flight():
    ledger = GenerationLedger()
    ledger.new_generation(np.zeros((4, 3)))
    ledger.launch(ledger.take(2), np.ones((2, 3)))
    state = ledger.get_state()
    restored = GenerationLedger()
    restored.set_state(state)
    assert restored.queue == [0, 1, 2, 3] and restored.in_flight == [] and not restored.told
    ledger.collect({0, 1})
    ledger.score([0, 1], [1.0, 1.0], [0.0, 0.0])
    ledger.give_back(ledger.take(2))  # no runner: nothing launched, order kept
    assert ledger.queue == [2, 3]
    # A checkpoint of an older layout (no "told" flag) of a fully scored generation counts as told.
    old = {k: v for k, v in state.items() if k != "generation_told"} | {"generation_fitness": np.ones(4)}
    restored.set_state(old)
    assert restored.told


# --------------------------------------------------------------------------- a misspecified world model
def _equivalent_actions_toy(sigma: float, n: int = 4096):
    """Actions 0 and 1 have the same effect on o' (a stop and an attack that does not fire); action 2
    another. The policy is peaked (entropy ~0.38, mostly action 0). The world model's heads carry small
    errors of their own, so a model sure of itself (small ``sigma``) picks one of the two equivalent heads
    at random: the posterior collapses onto the wrong one on ~half of those rows."""
    torch.manual_seed(0)
    d, a = 8, 3
    actor = build_mlp(d, (32, 32), a, layer_norm=True, out_gain=1.0)
    with torch.no_grad():
        actor[-1].bias.copy_(torch.tensor([3.0, -1.0, 0.0]))
    params = {name: p.detach() for name, p in actor.named_parameters()}
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(n, d, generator=g)
    mask = torch.ones(n, a)
    with torch.no_grad():
        log_pi = masked_log_policy(actor(obs), mask)
    actions = torch.multinomial(log_pi.exp(), 1, generator=g).squeeze(1)
    v = torch.randn(d, generator=g)
    effect = torch.stack([v, v, -v])
    next_obs = obs + effect[actions] + 0.3 * torch.randn(n, d, generator=g)
    means = obs[:, None] + effect[None] + 0.3 * torch.randn(n, a, d, generator=g)
    log_lik = gaussian_log_prob(next_obs, means, torch.full((d,), math.log(sigma)))
    noise = sample_parameter_noise(params, math.ceil(n / 64), 10, 0.3, generator=torch.Generator().manual_seed(2))
    return actor, params, noise, obs, mask, log_pi, log_lik, actions


@pytest.mark.parametrize("sigma", [1.0, 0.3, 0.1, 0.03])
def test_calibrated_mi_stays_in_zero_to_kl_where_the_plain_estimate_turns_negative(sigma):
    actor, params, noise, obs, mask, log_pi, log_lik, actions = _equivalent_actions_toy(sigma)
    tau = fit_likelihood_temperature(log_pi, log_lik, actions)
    with torch.no_grad():
        parts = mi_estimate_parts(actor, params, noise, obs, mask, log_lik, actions, tau)
    ceiling = float(parts.ceiling.mean())
    assert ceiling > 0.1
    # Calibrated: the batch mean lies in [0, KL(pi || pibar)] (a little noise allowed) at every sigma.
    assert -0.01 <= float(parts.estimate.mean()) <= ceiling + 0.01
    plain = float(parts.untempered.mean())
    if sigma <= 0.3:  # Proposition 1 as written: the sign flips once the model is sure of itself
        assert plain < -0.1
    else:
        assert plain > 0
    if sigma <= 0.1:
        assert tau < 0.05  # the fitted temperature discounts an overconfident likelihood


def test_fitted_temperature_maximises_the_held_out_log_posterior_of_the_taken_actions():
    *_, log_pi, log_lik, actions = _equivalent_actions_toy(0.1)
    tau = fit_likelihood_temperature(log_pi, log_lik, actions)

    def score(t):
        return float(action_log_posterior(log_pi, log_lik, t).gather(1, actions[:, None]).mean())

    assert score(tau) >= max(score(tau * 0.5), score(tau * 2.0), score(1.0), score(0.0))
    # Temperature 0 ignores the model: the posterior is the policy, and I_hat is exactly 0.
    torch.testing.assert_close(action_log_posterior(log_pi, log_lik, 0.0), log_pi)


def test_fitted_temperature_ignores_each_rows_constant_likelihood_offset():
    """The posterior ignores a row's constant ``log p(o'|o)``, and so does the fit (a fit that did not
    would pick a temperature from rounding when the model ignores the action)."""
    *_, log_pi, log_lik, actions = _equivalent_actions_toy(0.3)
    offset = torch.randn(log_lik.shape[0], 1, generator=torch.Generator().manual_seed(9)) * 100.0
    tau = fit_likelihood_temperature(log_pi, log_lik, actions)
    assert 0.0 < tau < 4.0
    assert fit_likelihood_temperature(log_pi, log_lik + offset, actions) == pytest.approx(tau, rel=1e-2)
    assert fit_likelihood_temperature(log_pi, torch.zeros_like(log_lik) - 50.0 + offset, actions) == 0.0


def test_mi_parts_equal_the_per_sample_reference_at_any_temperature_and_the_ceiling_its_definition():
    actor, params = actor_and_params()
    obs, mask, log_lik = random_batch()
    actions = torch.multinomial(mask, 1, generator=torch.Generator().manual_seed(4)).squeeze(1)
    noise = sample_parameter_noise(params, 5, 3, 0.2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        parts = mi_estimate_parts(actor, params, noise, obs, mask, log_lik, actions, 0.3)
        torch.testing.assert_close(parts.untempered, mi_estimate(actor, params, noise, obs, mask, log_lik))
        reference = mi_estimate_reference(actor, params, noise, obs, mask, log_lik * 0.3)
        torch.testing.assert_close(parts.estimate, reference, atol=1e-5, rtol=1e-4)
        chunk = math.ceil(obs.shape[0] / 5)
        for b in (0, 17, 39):
            c = b // chunk
            log_pi = masked_log_policy(actor(obs[b : b + 1]), mask[b : b + 1])[0, actions[b]]
            perturbed = [
                torch.func.functional_call(actor, {n: params[n] + noise[n][c, k] for n in params}, (obs[b : b + 1],))
                for k in range(3)
            ]
            pibar = torch.stack([masked_log_policy(p, mask[b : b + 1])[0, actions[b]].exp() for p in perturbed]).mean()
            torch.testing.assert_close(parts.ceiling[b], log_pi - torch.log(pibar), atol=1e-5, rtol=1e-4)


def test_an_uninformative_world_model_gives_temperature_zero_and_a_zero_finite_bonus():
    """A fresh world model (zero heads: every action predicts the same ``o'``) cannot beat ``tau = 0``; the
    estimate is then exactly 0 on every row, invalid actions included (``0 * -inf`` would be nan and, through
    the rewards, poison the value normaliser for good: the bug that stopped 2 of 5 study trials at their
    first iteration)."""
    actor, params = actor_and_params()
    obs, mask, _ = random_batch()
    assert (mask < 0.5).any()
    log_lik = torch.full(mask.shape, -37.5)  # identical for every action
    actions = torch.multinomial(mask, 1, generator=torch.Generator().manual_seed(4)).squeeze(1)
    noise = sample_parameter_noise(params, 5, 3, 0.2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        log_pi = masked_log_policy(actor(obs), mask)
        assert fit_likelihood_temperature(log_pi, log_lik, actions) == 0.0
        parts = mi_estimate_parts(
            actor, params, noise, obs, mask, log_lik, actions, lambda lp: fit_likelihood_temperature(lp, log_lik, actions)
        )
    assert parts.temperature == 0.0
    torch.testing.assert_close(parts.estimate, torch.zeros_like(parts.estimate))
    torch.testing.assert_close(parts.untempered, torch.zeros_like(parts.untempered))
    assert torch.isfinite(normalised_bonus(parts.estimate, 0.5, scale=2.0)).all()
    with torch.no_grad():  # at tau = 0 on an informative model too: the posterior is the policy, I_hat = 0
        _, _, informative = random_batch()
        zero = mi_estimate(actor, params, noise, obs, mask, informative, temperature=0.0)
    torch.testing.assert_close(zero, torch.zeros_like(zero))

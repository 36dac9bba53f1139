"""MI estimator (Proposition 1): vectorised vs the prototype's per-sample loop, and vs one learner update.

    python benchmarks/mi_estimator.py [--batch 256] [--policies 10] [--device cpu|cuda] [--repeats 5]

SMAX 3m sizes: obs 78 (75 + agent id), 8 actions, the MAPPO actor (64, 64 +
LayerNorm), the world model (256, 256, 128) predicting 75 dimensions.

1. ``mi_estimate`` at ``B`` transitions (default path: the fused batched MLP
   forward; also timed through ``vmap(vmap(functional_call))``) against the
   baseline the prototype had: a Python loop over samples that deep-copies the
   actor ``K`` times per sample and adds the noise to the copy's parameters.
   All use the same noise; outputs are checked equal. Goal (issue 4): >= 100x.
2. One learner update of a whole training batch of the preset (4,000 env steps,
   ~9,000 alive primary agent-steps; the AMAL learner with ``lambda_info = 0``:
   connector, GAE, 5 epochs of PPO and world model). Goal (issue 4): the MI time
   at ``B`` <= 10% of it. Also printed: the MI bonus of the *whole* batch (what
   one training iteration pays, world-model pass and noise draws included) as
   a share of the update.
3. ``--blocks``: the MI bonus's two big passes over one default AMAL batch (16,384 env steps of
   3m: ``--rows`` ~40,000 alive primary agent-steps, ``mi_samples_M`` 1,024), in cache-sized blocks
   (the default: ``world_model.LIKELIHOOD_BLOCK_ROWS``, ``mi.FUSED_BLOCK_BYTES``) against one pass
   over the whole batch, with the learner's torch threads; outputs checked equal. One pass is the
   path before for the actors' logits; for the likelihoods it is today's formula in one block (the
   formula before, over the ``[B, A, D]`` means, was slower still: 0.42 s against 0.13 s blocked).
Timings are medians of ``--repeats`` runs, in this process, on ``--device``; the compared paths
alternate run by run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import pickle
import statistics
import time

import torch


def median_time(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fused_and_vmap_times(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median times of ``fn`` on the fused path and on the ``vmap`` path, alternating run by run
    (this machine's speed drifts by +-20% over a minute; alternating keeps the comparison fair)."""
    fused, vmapped = [], []
    fn()  # warm-up, both paths
    with generic_vmap_path():
        fn()
    for i in range(repeats):
        for path in ("fused", "vmap") if i % 2 == 0 else ("vmap", "fused"):
            if path == "fused":
                fused.append(median_time(fn, 1, device))
            else:
                with generic_vmap_path():
                    vmapped.append(median_time(fn, 1, device))
    return statistics.median(fused), statistics.median(vmapped)


def naive_mi(actor, world_model, noise, obs, mask, next_obs, chunk):
    """The prototype's shape: per sample, K deep copies of the actor with noise added in place."""
    from amal_rllib.core.mi import masked_log_policy
    from amal_rllib.core.world_model import action_log_likelihoods

    out = torch.empty(obs.shape[0])
    names = [n for n, _ in actor.named_parameters()]
    num_policies = next(iter(noise.values())).shape[1]
    with torch.no_grad():
        for b in range(obs.shape[0]):
            x, m = obs[b : b + 1], mask[b : b + 1]
            log_lik = action_log_likelihoods(world_model, x, next_obs[b : b + 1])
            log_lik = torch.where(m > 0.5, log_lik, torch.full_like(log_lik, -math.inf))
            log_lik = log_lik - log_lik.max()
            base = torch.logsumexp(masked_log_policy(actor(x), m) + log_lik, -1)
            perturbed = []
            for k in range(num_policies):
                policy_k = copy.deepcopy(actor)
                for name, p in zip(names, policy_k.parameters(), strict=True):
                    p.add_(noise[name][b // chunk, k])
                perturbed.append(torch.logsumexp(masked_log_policy(policy_k(x), m) + log_lik, -1))
            out[b] = (base - (torch.logsumexp(torch.stack(perturbed), 0) - math.log(num_policies)))[0]
    return out


@contextlib.contextmanager
def generic_vmap_path():
    """Run ``mi_estimate`` through ``vmap(vmap(functional_call))`` instead of the fused MLP forward."""
    from amal_rllib.core import mi

    fused = mi.supports_fused_forward
    mi.supports_fused_forward = lambda actor: False
    try:
        yield
    finally:
        mi.supports_fused_forward = fused


def part1(args, device):
    from amal_rllib.core.mi import mi_estimate, sample_parameter_noise
    from amal_rllib.core.world_model import GaussianWorldModel, action_log_likelihoods
    from amal_rllib.mappo.module import build_mlp

    torch.manual_seed(0)
    obs_dim, n_actions, target = 78, 8, 75
    actor = build_mlp(obs_dim, (64, 64), n_actions, True, 0.01).to(device)
    world_model = GaussianWorldModel(obs_dim, target, n_actions, (256, 256, 128)).to(device)
    torch.nn.init.normal_(world_model.heads.weight, std=0.05)
    obs = torch.randn(args.batch, obs_dim, device=device)
    next_obs = obs + 0.1 * torch.randn_like(obs)
    mask = (torch.rand(args.batch, n_actions, device=device) > 0.3).float()
    mask[:, 0] = 1.0
    params = {n: p.detach() for n, p in actor.named_parameters()}
    chunks = math.ceil(args.batch / args.samples)
    noise = sample_parameter_noise(
        params, chunks, args.policies, 0.05, generator=torch.Generator(device).manual_seed(1)
    )

    def fast():
        with torch.no_grad():
            return mi_estimate(actor, params, noise, obs, mask, action_log_likelihoods(world_model, obs, next_obs))

    t_fast, t_vmap = fused_and_vmap_times(fast, args.repeats, device)
    naive_actor, naive_wm = actor.cpu(), world_model.cpu()
    cpu_noise = {n: e.cpu() for n, e in noise.items()}
    t0 = time.perf_counter()
    slow = naive_mi(naive_actor, naive_wm, cpu_noise, obs.cpu(), mask.cpu(), next_obs.cpu(), args.samples)
    t_naive = time.perf_counter() - t0
    actor.to(device)
    world_model.to(device)
    diff = float((fast().cpu() - slow).abs().max())
    print(f"MI estimator, B={args.batch}, K={args.policies}, M={args.samples}, SMAX-3m sizes, device {device}")
    print(f"  vectorised, fused MLP forward (default): {t_fast * 1e3:9.2f} ms")
    print(f"  vectorised, vmap + functional_call:      {t_vmap * 1e3:9.2f} ms")
    print(f"  naive loop, deepcopy per sample x K (CPU): {t_naive * 1e3:9.1f} ms")
    print(f"  speed-up: {t_naive / t_fast:,.0f}x   (max |difference| {diff:.2e})")
    return t_fast


def part2(args, device, t_b: float):
    from amal_rllib.amal.connectors import AMALRewardsAndOffPolicy
    from amal_rllib.env_runner import TeamEnvRunner
    from amal_rllib.envs.registry import make_env
    from amal_rllib.mappo.config import SHARED_POLICY
    from amal_rllib.presets import amal_config

    config = amal_config(
        "3m",
        num_env_runners=0,
        num_envs_per_env_runner=16,
        train_batch_size=args.train_batch,
        evaluation_interval=None,
        num_aux_env_runners=0,
        lambda_info=0.0,
        mi_policies_K=args.policies,
        mi_samples_M=args.samples,
        seed=0,
        num_gpus_per_learner=1 if device.type == "cuda" else 0,
    )
    runner = TeamEnvRunner(config=config)
    blob = pickle.dumps(runner.sample(num_timesteps=args.train_batch))
    runner.stop()
    spec = make_env("3m", "smax").get_env_info()
    learner = config.build_learner(spaces={SHARED_POLICY: (spec.observation_space(), spec.action_space())})

    def update():
        learner.update(
            episodes=pickle.loads(blob),
            num_epochs=config.num_epochs,
            minibatch_size=config.minibatch_size,
            shuffle_batch_per_epoch=True,
        )

    update()
    t_update = median_time(update, max(1, args.repeats // 2), device)
    batch = learner._learner_connector(
        rl_module=learner.module, batch={}, episodes=pickle.loads(blob), shared_data={}, metrics=learner.metrics
    )[SHARED_POLICY]
    piece = AMALRewardsAndOffPolicy(
        lambda_info=0.5,
        perturbation_std=0.05,
        mi_samples_M=args.samples,
        mi_policies_K=args.policies,
        aux_importance_clip=1.0,
        seed=0,
    )
    module = learner.module[SHARED_POLICY]
    rows = int(batch["world_model_mask"].sum())
    t_mi, t_mi_vmap = fused_and_vmap_times(
        lambda: piece.process_module_batch(module, dict(batch)), args.repeats, device
    )
    print(
        f"MI bonus on one training batch ({args.train_batch} env steps, {rows} primary agent-steps), device {learner._device}"
    )
    print(f"  one learner update (lambda_info=0, {config.num_epochs} epochs): {t_update * 1e3:9.1f} ms")
    print(f"  MI at B={args.batch} (part 1) / update: {t_b / t_update:.2%}  (issue 4 goal <= 10%)")
    print(
        f"  MI bonus for the whole batch, fused MLP forward: {t_mi * 1e3:9.1f} ms  ({t_mi / t_update:.1%} of the update)"
    )
    print(f"  MI bonus for the whole batch, vmap path:         {t_mi_vmap * 1e3:9.1f} ms  ({t_mi_vmap / t_update:.1%})")


def part3(args, device) -> None:
    import amal_rllib.core.mi as mi
    from amal_rllib.core.world_model import LIKELIHOOD_BLOCK_ROWS, GaussianWorldModel, action_log_likelihoods
    from amal_rllib.mappo.module import build_mlp, set_cpu_threads

    set_cpu_threads()  # the learner process's rule (every usable core on a driver)
    torch.manual_seed(0)
    obs_dim, n_actions, target, rows, chunk = 78, 8, 75, args.rows, 1024
    actor = build_mlp(obs_dim, (64, 64), n_actions, False, 0.01).to(device)  # MAPPO's default actor
    world_model = GaussianWorldModel(obs_dim, target, n_actions, (256, 256, 128)).to(device)
    for p in world_model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    obs = torch.randn(rows, obs_dim, device=device)
    next_obs = obs + 0.1 * torch.randn_like(obs)
    params = {n: p.detach() for n, p in actor.named_parameters()}
    noise = mi.sample_parameter_noise(params, math.ceil(rows / chunk), args.policies, 0.05)
    batched = {n: params[n] + torch.cat([torch.zeros_like(e[:, :1]), e], dim=1) for n, e in noise.items()}
    padded = torch.cat([obs, obs[-1:].expand(math.ceil(rows / chunk) * chunk - rows, -1)])
    grouped = padded.view(-1, chunk, obs_dim)

    def likelihoods(block):
        with torch.no_grad():
            return action_log_likelihoods(world_model, obs, next_obs, block_rows=block)

    def logits(block_bytes):
        saved, mi.FUSED_BLOCK_BYTES = mi.FUSED_BLOCK_BYTES, block_bytes
        try:
            with torch.no_grad():
                return mi.batched_actor_logits(actor, batched, grouped)
        finally:
            mi.FUSED_BLOCK_BYTES = saved

    cases = {
        "world-model likelihoods, every action": (
            lambda: likelihoods(LIKELIHOOD_BLOCK_ROWS), lambda: likelihoods(None)
        ),
        f"perturbed actors' logits ({args.policies + 1} sets)": (
            lambda: logits(mi.FUSED_BLOCK_BYTES), lambda: logits(2**62)
        ),
    }
    print(f"MI bonus passes over {rows} agent-steps (one default 3m batch), torch threads {torch.get_num_threads()}, "
          f"device {device}: blocked (default) vs one pass")
    for name, (blocked, whole) in cases.items():
        diff = float((blocked() - whole()).abs().max())
        times = {"blocked": [], "whole": []}
        for i in range(args.repeats):
            for kind in ("blocked", "whole") if i % 2 == 0 else ("whole", "blocked"):
                times[kind].append(median_time(blocked if kind == "blocked" else whole, 1, device))
        tb, tw = statistics.median(times["blocked"]), statistics.median(times["whole"])
        print(f"  {name:<42} blocked {tb * 1e3:8.1f} ms   one pass {tw * 1e3:8.1f} ms   "
              f"{tw / tb:5.2f}x   (max |difference| {diff:.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--policies", type=int, default=10)
    parser.add_argument("--samples", type=int, default=256, help="mi_samples_M: transitions per set of K draws")
    parser.add_argument("--train-batch", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-update", action="store_true", help="only part 1 (no SMAX, no learner)")
    parser.add_argument("--blocks", action="store_true", help="only part 3: blocked vs one-pass whole-batch passes")
    parser.add_argument("--rows", type=int, default=40_000, help="part 3: agent-steps in the batch")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.blocks:
        return part3(args, device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # as in the learner process
    t_b = part1(args, device)
    if not args.skip_update:
        part2(args, device, t_b)


if __name__ == "__main__":
    main()

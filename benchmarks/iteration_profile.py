"""Where a training iteration's time goes: MAPPO and AMAL side by side, per part, and the MI bonus's pieces.

    python benchmarks/iteration_profile.py [--scenario 3m] [--iterations 4] [--warmup 3] [--repeats 5]

1. Builds MAPPO, then AMAL, on ``rl_throughput.py``'s default shape (one local runner x 128 envs,
   16,384-step batches, 4 minibatches; AMAL adds its auxiliary runner), runs ``--warmup`` iterations,
   then ``--iterations`` under ``cProfile``, and prints the seconds per iteration of each part (the
   cumulative time of the functions in ``PARTS``) for both and AMAL - MAPPO. ``cProfile`` slows every
   Python call a little, so the parts are for comparing; ``rl_throughput.py`` gives the figures.
2. The MI bonus's pieces, on the learner connector's input from the AMAL run above (one real batch),
   each timed alone (median of ``--repeats``): selecting the scored rows, the world model's likelihood of
   every action, the parameter noise, the ``K + 1`` actors' log-policies, the cross-fitted temperature,
   one estimate; and the bare matrix products of the two big passes at the same shapes and blocking (no
   activations, softmaxes or noise): the part that is arithmetic.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import math
import pstats
import statistics
import time
from pathlib import Path

import torch

#: label -> the functions it sums, (file name suffix, function name); seconds are cumulative (callees
#: included), so an indented part is contained in the part above it.
PARTS: list[tuple[str, tuple[tuple[str, str], ...]]] = [
    ("iteration", (("algorithm.py", "_run_one_training_iteration"),)),
    ("  sample the primary batch", (("rollout_ops.py", "synchronous_parallel_sample"),)),
    ("  env runner metrics", (("multi_agent_env_runner.py", "get_metrics"),)),
    ("  learner connector (episodes -> batch, GAE)", (("learner_connector_pipeline.py", "__call__"),)),
    ("    AMAL: MI bonus, importance weights", (("connectors.py", "process_module_batch"),)),
    ("  minibatches (shuffle, slice)", (("minibatch_utils.py", "__iter__"),)),
    ("  actor forward (forward_train)", (("torch_rl_module.py", "forward_train"),)),
    ("  losses (with the critic's forward)", (("core/learner/learner.py", "compute_losses"),)),
    ("    AMAL: world-model loss", (("world_model.py", "world_model_loss"),)),
    ("  backward", (("torch_learner.py", "compute_gradients"),)),
    ("  gradient clipping + optimizer steps", (("core/learner/learner.py", "postprocess_gradients"),
                                               ("torch_learner.py", "apply_gradients"))),
    ("  AMAL: launch auxiliary rollouts", (("algorithm.py", "_launch_aux_rollouts"),)),
    ("  AMAL: collect + score auxiliary episodes", (("algorithm.py", "_collect_aux_rollouts"),)),
    ("  AMAL: draw auxiliary episodes", (("algorithm.py", "_draw_auxiliary"),)),
]


def part_seconds(stats: pstats.Stats, iterations: int) -> dict[str, float]:
    """Seconds per iteration of each of ``PARTS`` (0.0 where none of its functions ran)."""
    out = {label: 0.0 for label, _ in PARTS}
    for (filename, _line, func), (_cc, _nc, _tt, cumulative, _callers) in stats.stats.items():
        for label, functions in PARTS:
            if any(func == name and filename.endswith(suffix) for suffix, name in functions):
                out[label] += cumulative / iterations
    return out


class _Capture:
    """Wraps AMAL's bonus connector on its instance: keeps a copy of the next module batch it is given."""

    def __init__(self, connector) -> None:
        self.connector, self.batch, self.module = connector, None, None
        self._original = connector.process_module_batch
        connector.process_module_batch = self

    def __call__(self, module, module_batch):
        if self.batch is None:
            self.batch, self.module = copy.deepcopy(dict(module_batch)), module
        return self._original(module, module_batch)

    def restore(self) -> None:
        self.connector.process_module_batch = self._original


def profile_algorithm(args, algo: str) -> tuple[dict[str, float], list[float], _Capture | None]:
    from rl_throughput import build_trainer

    from amal_rllib.amal.connectors import AMALRewardsAndOffPolicy

    trainer = build_trainer(args.scenario, 0, args.envs_per_runner, args.train_batch, algo, args.num_minibatches)
    try:
        for _ in range(args.warmup):
            trainer.train()
        capture = None
        if algo == "amal":
            learner = trainer.learner_group._learner
            bonus = [c for c in learner._learner_connector.connectors if isinstance(c, AMALRewardsAndOffPolicy)]
            capture = _Capture(bonus[0])
        profiler, times = cProfile.Profile(), []
        for _ in range(args.iterations):
            start = time.perf_counter()
            profiler.enable()
            trainer.train()
            profiler.disable()
            times.append(time.perf_counter() - start)
        if capture is not None:
            capture.restore()
        return part_seconds(pstats.Stats(profiler), args.iterations), times, capture
    finally:
        trainer.stop()


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


@torch.no_grad()
def bonus_pieces(capture: _Capture, repeats: int) -> list[tuple[str, float, str]]:
    """(piece, median ms, note) for the MI bonus on the captured batch (see the module docstring)."""
    from ray.rllib.core.columns import Columns

    from amal_rllib.amal.connectors import batch_rows, cross_fitted_temperature
    from amal_rllib.core import mi
    from amal_rllib.core.world_model import LIKELIHOOD_BLOCK_ROWS, action_log_likelihoods

    conn, module, batch = capture.connector, capture.module, capture.batch
    selected = batch_rows(batch)
    x, next_x, mask, real, aux, rows = (
        selected.x, selected.next_x, selected.action_mask, selected.real, selected.aux, selected.scored
    )
    n = rows.numel()
    actions = batch[Columns.ACTIONS][rows].long()
    xr, nxr, mr = x[rows], next_x[rows], mask[rows]
    params = {name: p.detach() for name, p in module.actor.named_parameters()}
    chunks = math.ceil(n / conn.mi_samples_M)
    generator = torch.Generator().manual_seed(0)
    log_lik = action_log_likelihoods(module.world_model, xr, nxr)
    noise = mi.sample_parameter_noise(params, chunks, conn.mi_policies_K, conn.perturbation_std, generator=generator)
    log_pis, centred = mi._chunked_log_policies(module.actor, params, noise, xr, mr, log_lik)
    flat = log_pis.permute(0, 2, 1, 3).reshape(-1, log_pis.shape[1], log_pis.shape[-1])[:n]
    tau = cross_fitted_temperature(flat[:, 0], log_lik, actions)
    out = [
        ("whole bonus connector (as trained, batch copy incl.)", median_ms(
            lambda: conn.process_module_batch(module, {k: (dict(v) if isinstance(v, dict) else v.clone())
                                                       for k, v in batch.items()}), repeats),
         f"{int(real.sum())} real rows ({int((aux & real).sum())} auxiliary), {n} scored"),
        ("select the scored rows", median_ms(lambda: (x[rows], next_x[rows], mask[rows]), repeats), ""),
        ("world model: likelihood of every action", median_ms(
            lambda: action_log_likelihoods(module.world_model, xr, nxr), repeats), ""),
        ("parameter noise", median_ms(lambda: mi.sample_parameter_noise(
            params, chunks, conn.mi_policies_K, conn.perturbation_std, generator=generator), repeats),
         f"{chunks} chunks x K={conn.mi_policies_K} x {sum(p.numel() for p in params.values())} parameters"),
        ("K + 1 actors' log-policies", median_ms(
            lambda: mi._chunked_log_policies(module.actor, params, noise, xr, mr, log_lik), repeats), ""),
        ("cross-fitted temperature", median_ms(lambda: cross_fitted_temperature(flat[:, 0], log_lik, actions),
                                               repeats), ""),
        ("one estimate (there are two: tempered, at 1.0)", median_ms(
            lambda: mi._estimate(log_pis, centred, tau, n), repeats), ""),
    ]
    # The bare matrix products of the two passes, same shapes and blocking as the code above.
    linears = [layer for layer in module.actor if isinstance(layer, torch.nn.Linear)]
    sets, per_chunk = conn.mi_policies_K + 1, math.ceil(n / chunks)
    block = mi.fused_block_groups(module.actor, sets, per_chunk)
    acts = [torch.randn(block * sets, per_chunk, layer.in_features) for layer in linears]
    weights = [torch.randn(block * sets, layer.in_features, layer.out_features) for layer in linears]
    biases = [torch.randn(block * sets, 1, layer.out_features) for layer in linears]

    def actor_products():
        for _ in range(0, chunks, block):
            for h, w, b in zip(acts, weights, biases, strict=True):
                torch.baddbmm(b, h, w)

    flops = 2 * chunks * sets * per_chunk * sum(layer.in_features * layer.out_features for layer in linears)
    ms = median_ms(actor_products, repeats)
    out.append(("  bare products: K + 1 actors", ms, f"{flops / 1e9:.1f} GFLOP, {flops / ms / 1e6:.0f} GFLOP/s"))
    wm = [layer for layer in [*module.world_model.body, module.world_model.heads] if isinstance(layer, torch.nn.Linear)]
    wm_in = [torch.randn(LIKELIHOOD_BLOCK_ROWS, layer.in_features) for layer in wm]
    wm_w = [layer.weight.detach().t().contiguous() for layer in wm]
    wm_b = [layer.bias.detach() for layer in wm]

    def world_model_products():
        for _ in range(0, n, LIKELIHOOD_BLOCK_ROWS):
            for h, w, b in zip(wm_in, wm_w, wm_b, strict=True):
                torch.addmm(b, h, w)

    flops = 2 * math.ceil(n / LIKELIHOOD_BLOCK_ROWS) * LIKELIHOOD_BLOCK_ROWS * sum(
        layer.in_features * layer.out_features for layer in wm)
    ms = median_ms(world_model_products, repeats)
    out.append(("  bare products: world model", ms, f"{flops / 1e9:.1f} GFLOP, {flops / ms / 1e6:.0f} GFLOP/s"))
    return out


def main() -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="3m")
    parser.add_argument("--iterations", type=int, default=4, help="profiled iterations per algorithm")
    parser.add_argument("--warmup", type=int, default=3, help="iterations before profiling (compile, freeze)")
    parser.add_argument("--envs-per-runner", type=int, default=128)
    parser.add_argument("--train-batch", type=int, default=16384)
    parser.add_argument("--num-minibatches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="part 2: timings are medians of this many runs")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        mappo, mappo_times, _ = profile_algorithm(args, "mappo")
        amal, amal_times, capture = profile_algorithm(args, "amal")
    finally:
        ray.shutdown()
    print(f"SMAX {args.scenario}, default shape, {args.iterations} profiled iterations each after {args.warmup} "
          f"(cProfile on); seconds per iteration")
    print(f"wall time per iteration: MAPPO {statistics.mean(mappo_times):.3f} s, AMAL "
          f"{statistics.mean(amal_times):.3f} s, AMAL / MAPPO {statistics.mean(amal_times) / statistics.mean(mappo_times):.2f}x")
    print(f"{'part':<50}{'MAPPO':>8}{'AMAL':>8}{'AMAL-MAPPO':>12}")
    for label, _ in PARTS:
        print(f"{label:<50}{mappo[label]:>8.3f}{amal[label]:>8.3f}{amal[label] - mappo[label]:>+12.3f}")
    print(f"\nthe MI bonus on one real AMAL batch (torch threads {torch.get_num_threads()}; median of {args.repeats}):")
    for piece, ms, note in bonus_pieces(capture, args.repeats):
        print(f"{piece:<50}{ms:>8.1f} ms   {note}")


if __name__ == "__main__":
    main()

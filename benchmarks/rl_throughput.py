"""RL throughput on SMAX: raw JAX env, the RLlib adapter, MAPPO per training iteration, old path vs new.

    python benchmarks/rl_throughput.py [--scenario 3m] [--iterations 4] [--amal]

Prints steps/s for (1) the raw jitted SMAX step in a Python loop and a vmapped
batch (the baselines, same process), (2) the ``MultiAgentEnv`` adapter with
random valid actions, (3) MAPPO's env steps per second of wall time for full
training iterations (sampling + learning):

- "RLlib loop": the path before issue 14, RLlib's per-step env-runner loop and
  its per-episode learner connectors (``fast_sampling=False``,
  ``bulk_learner_connector=False``, ``gc_freeze=False``), 2 remote runners x 16 envs, 4,000-step
  batches (what issue 14 measured at ~1,150 steps/s);
- "vectorised": ``amal_rllib.rollout`` + ``amal_rllib.learner_connector``, the
  same shape, then the default shape (one local runner x ``--envs`` envs,
  ``--train-batch`` steps, MAPPO's default epochs and minibatches).

``--amal`` adds AMAL vs MAPPO iteration time on the default shape (``--amal-only``: only that, runs
alternating ``--repeats`` times; ``--interleaved PAIRS``: both algorithms in one process, single
iterations alternating, the steadiest ratio). ``--gc-freeze PAIRS``: MAPPO with its long-lived objects
frozen out of the cyclic collector (``config.gc_freeze``, the default) vs not, in one process. Goals (issue
14): >= 4,000 MAPPO env steps/s on SMAX 3m with 2 CPU cores; AMAL <= 1.3x MAPPO.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def raw_smax(scenario: str, steps: int, batch: int) -> tuple[float, float]:
    import jax
    from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario

    env = HeuristicEnemySMAX(scenario=map_name_to_scenario(scenario))
    key = jax.random.PRNGKey(0)
    _, state = env.reset(key)
    n_actions = env.action_spaces[env.agents[0]].n
    step = jax.jit(env.step)

    rng = np.random.default_rng(0)
    # Actions drawn up front in numpy, so the loop times the env step alone.
    # (Random "valid" actions are not needed here: SMAX ignores impossible attacks.)
    action_table = rng.integers(0, n_actions, size=(steps + 3, len(env.agents))).astype(np.int32)

    def actions_at(i):
        return {a: action_table[i, j] for j, a in enumerate(env.agents)}

    # Warm up twice (the second call recompiles once in jaxmarl 0.2.0).
    for i in range(3):
        _, state, *_ = step(jax.random.fold_in(key, i), state, actions_at(i))
    jax.block_until_ready(state)
    keys = jax.random.split(key, steps)
    t0 = time.perf_counter()
    for i in range(steps):
        _, state, reward, _, _ = step(keys[i], state, actions_at(i))
        jax.device_get(reward)
    single = steps / (time.perf_counter() - t0)

    vreset = jax.jit(jax.vmap(env.reset))
    vstep = jax.jit(jax.vmap(env.step))
    bkeys = jax.random.split(key, batch)
    _, bstate = vreset(bkeys)

    batch_actions = {a: rng.integers(0, n_actions, size=batch).astype(np.int32) for a in env.agents}

    def brandom(k):
        return batch_actions

    for i in range(3):
        _, bstate, *_ = vstep(jax.random.split(jax.random.fold_in(key, i), batch), bstate, brandom(key))
    jax.block_until_ready(bstate)
    n = max(1, steps // 20)
    t0 = time.perf_counter()
    for i in range(n):
        k = jax.random.fold_in(key, 1000 + i)
        _, bstate, reward, *_ = vstep(jax.random.split(k, batch), bstate, brandom(k))
        jax.device_get(reward)
    vmapped = n * batch / (time.perf_counter() - t0)
    return single, vmapped


def adapter(scenario: str, steps: int) -> float:
    from amal_rllib.envs.registry import make_env

    env = make_env(scenario, backend="smax")
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(steps):
        actions = {a: int(rng.choice(np.flatnonzero(o["action_mask"]))) for a, o in obs.items()}
        obs, _, term, trunc, _ = env.step(actions)
        if term["__all__"] or trunc["__all__"]:
            obs, _ = env.reset()
    return steps / (time.perf_counter() - t0)


def build_trainer(
    scenario: str, runners: int, envs_per_runner: int, batch: int, algo: str = "mappo",
    num_minibatches: int | None = None, vectorize: bool = True, fast: bool = True, gc_freeze: bool = True,
    **amal_knobs,
):
    from amal_rllib.presets import amal_config, mappo_config

    common = dict(
        num_env_runners=runners, num_envs_per_env_runner=envs_per_runner, train_batch_size=batch,
        num_minibatches=num_minibatches, evaluation_interval=None, env_kwargs={"vectorize": vectorize, "fast_sampling": fast},
    )
    config = amal_config(scenario, **common, **amal_knobs) if algo == "amal" else mappo_config(scenario, **common)
    config.training(bulk_learner_connector=fast, gc_freeze=gc_freeze)
    return config.build_algo()


def mappo_iterations(
    scenario: str, runners: int, iterations: int, envs_per_runner: int, batch: int, vectorize: bool = True,
    algo: str = "mappo", warmup: int = 1, fast: bool = True, num_minibatches: int | None = None, **amal_knobs,
) -> dict:
    import ray

    from amal_rllib.metrics import (
        AUX_BUFFER_SAMPLE_TIMER,
        AUX_COLLECT_TIMER,
        AUX_LAUNCH_TIMER,
        ENV_STEPS_AUX,
        ENV_STEPS_SAMPLED,
        summarize_amal_result,
        summarize_result,
    )

    summarize = summarize_amal_result if algo == "amal" else summarize_result
    trainer = build_trainer(
        scenario, runners, envs_per_runner, batch, algo, num_minibatches, vectorize=vectorize, fast=fast,
        gc_freeze=fast, **amal_knobs,
    )
    learn_times: list[float] = []
    update = trainer.learner_group.update

    def timed_update(*a, **kw):  # exact per-iteration learner time (RLlib's timer is a moving average)
        t = time.perf_counter()
        out = update(*a, **kw)
        learn_times.append(time.perf_counter() - t)
        return out

    trainer.learner_group.update = timed_update
    try:
        for _ in range(warmup):  # JIT compilation, first episodes (AMAL: a filled auxiliary buffer)
            trainer.train()
        del learn_times[:]
        aux_cpu0 = _aux_cpu_seconds(trainer)
        steps = aux = 0.0
        aux_timers = {AUX_LAUNCH_TIMER: 0.0, AUX_COLLECT_TIMER: 0.0, AUX_BUFFER_SAMPLE_TIMER: 0.0}
        t0 = time.perf_counter()
        for _ in range(iterations):
            result = summarize(raw := trainer.train())
            steps += result[ENV_STEPS_SAMPLED]
            aux += result.get(ENV_STEPS_AUX, 0.0)
            for name in aux_timers:  # this iteration's seconds (window=1)
                aux_timers[name] += raw["timers"].get(name, 0.0)
        wall = time.perf_counter() - t0
        aux_cpu = _aux_cpu_seconds(trainer) - aux_cpu0
    finally:
        trainer.stop()
    ray.shutdown()
    return {
        "steps_per_s": steps / wall, "learn_s": float(np.mean(learn_times)), "iter_s": wall / iterations,
        "aux_steps_per_iter": aux / iterations,
        "aux_launch_s": aux_timers[AUX_LAUNCH_TIMER] / iterations,
        "aux_wait_s": aux_timers[AUX_COLLECT_TIMER] / iterations,
        "aux_buffer_s": aux_timers[AUX_BUFFER_SAMPLE_TIMER] / iterations,
        "aux_cpu_s": aux_cpu / iterations,
    }


def _aux_cpu_seconds(trainer) -> float:
    """CPU seconds used so far by the processes of AMAL's auxiliary env runners (0 for MAPPO)."""
    group = getattr(trainer, "aux_env_runner_group", None)
    if group is None:
        return 0.0
    return float(sum(group.foreach_env_runner(lambda r: time.process_time(), local_env_runner=False)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="3m")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=128, help="vmapped SMAX batch size")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--runners", type=int, nargs="+", default=[0],
                        help="remote env runners for the default-shape rows (one row each)")
    parser.add_argument("--envs-per-runner", type=int, default=128)
    parser.add_argument("--train-batch", type=int, default=16384)
    parser.add_argument("--num-minibatches", type=int, default=4)
    parser.add_argument("--skip-old", action="store_true", help="skip the two 2 x 16 / 4,000-step rows")
    parser.add_argument("--amal", action="store_true",
                        help="AMAL vs MAPPO iteration time with the same primary runners (+1 auxiliary runner)")
    parser.add_argument("--amal-only", action="store_true", help="skip the env and MAPPO rows")
    parser.add_argument("--amal-parts", action="store_true",
                        help="also AMAL with aux_ratio 0, with lambda_info 0 and with aux_rollout_overlap "
                        "'sampling': where the extra time goes")
    parser.add_argument("--interleaved", type=int, default=0, metavar="PAIRS",
                        help="AMAL vs MAPPO built side by side in one process, PAIRS pairs of single iterations "
                        "alternating (the steadiest ratio on a machine whose speed drifts); skips everything else")
    parser.add_argument("--repeats", type=int, default=1,
                        help="--amal-only: run the variants this many times, alternating; report medians")
    parser.add_argument("--gc-freeze", type=int, default=0, metavar="PAIRS",
                        help="MAPPO with its long-lived objects frozen (config gc_freeze) vs not, in one process: "
                        "PAIRS pairs of --iterations-iteration blocks alternating; skips everything else")
    args = parser.parse_args()

    import ray

    if args.interleaved:
        return interleaved_amal(args)
    if args.gc_freeze:
        return compare_gc_freeze(args)
    if args.amal_only:
        return compare_amal(args)
    single, vmapped = raw_smax(args.scenario, args.steps, args.batch)
    wrapped = adapter(args.scenario, args.steps)
    print(f"SMAX {args.scenario} throughput (env steps/s; one step moves the whole team)")
    print(f"{'measure':<66}{'steps/s':>10}{'vs raw':>8}")
    print(f"{'raw jitted step, Python loop (baseline)':<66}{single:>10.0f}{1.0:>8.2f}")
    print(f"{f'raw vmapped step, batch {args.batch}':<66}{vmapped:>10.0f}{vmapped / single:>8.2f}")
    print(f"{'MultiAgentEnv adapter, random valid actions':<66}{wrapped:>10.0f}{wrapped / single:>8.2f}")
    runs = [] if args.skip_old else [("RLlib loop", 2, 16, 4000, None, False), ("vectorised", 2, 16, 4000, None, True)]
    runs += [
        ("vectorised", r, args.envs_per_runner, args.train_batch, args.num_minibatches, True) for r in args.runners
    ]
    rows = {}
    for kind, runners, envs, batch, minibatches, fast in runs:
        ray.init(num_cpus=max(2, runners), include_dashboard=False, log_to_driver=False)
        res = mappo_iterations(args.scenario, runners, args.iterations, envs, batch, fast=fast,
                               num_minibatches=minibatches)
        label = f"MAPPO iteration, {kind}, {runners} remote x {envs} envs, batch {batch}"
        rows[(kind, runners, envs, batch)] = res
        print(
            f"{label:<66}{res['steps_per_s']:>10.0f}{res['steps_per_s'] / single:>8.2f}"
            f"   (iteration {res['iter_s']:.2f} s, learner update ~{res['learn_s']:.2f} s)"
        )
    if not args.skip_old:
        old, new = rows[("RLlib loop", 2, 16, 4000)], rows[("vectorised", 2, 16, 4000)]
        print(f"vectorised / RLlib loop, same shape: {new['steps_per_s'] / old['steps_per_s']:.2f}x")
    import torch

    from amal_rllib.mappo.module import usable_cores

    print(f"torch threads of the learner (this process): {torch.get_num_threads()}; CPU cores: {usable_cores()}")
    print("goal: >= 4,000 env steps/s per MAPPO iteration on SMAX 3m with 2 CPU cores")
    if args.amal:
        compare_amal(args)


def _settle_auxiliary(trainer) -> float:
    """Waits (without collecting them) until the auxiliary runners' in-flight requests are done; seconds waited."""
    import ray

    group = getattr(trainer, "aux_env_runner_group", None)
    refs = list(group._worker_manager._in_flight_req_to_actor_id) if group is not None else []
    start = time.perf_counter()
    if refs:
        ray.wait(refs, num_returns=len(refs), fetch_local=False)
    return time.perf_counter() - start


def interleaved_amal(args) -> None:
    """AMAL and MAPPO built side by side in one process; single training iterations alternate.

    The machine's speed drifts by up to ~1.6x within an hour (``docs/results/rl_throughput_3m``), so runs of a
    minute each, even alternating, put the two algorithms in different phases of it. Here each pair of
    iterations (order alternating per pair) runs within ~10 s. Before each MAPPO iteration the benchmark waits,
    untimed, for AMAL's auxiliary runner to finish what AMAL sent it, so MAPPO never shares the cores with
    AMAL's work; AMAL's own iterations bear any spill-over of their auxiliary play (the untimed waits are
    reported: ~0 s means there was none).
    """
    import ray

    from amal_rllib.metrics import ENV_STEPS_SAMPLED, summarize_result

    runners = max(args.runners)
    ray.init(num_cpus=max(2, runners + 1), include_dashboard=False, log_to_driver=False)
    trainers = {
        name: build_trainer(args.scenario, runners, args.envs_per_runner, args.train_batch, name, args.num_minibatches)
        for name in ("mappo", "amal")
    }
    try:
        for _ in range(3):  # JIT compilation, first episodes, a filled auxiliary buffer
            for trainer in trainers.values():
                trainer.train()
        times: dict[str, list[float]] = {name: [] for name in trainers}
        waited, mappo_steps = [], 0.0
        for pair in range(args.interleaved):
            for name in ("mappo", "amal") if pair % 2 == 0 else ("amal", "mappo"):
                if name == "mappo":
                    waited.append(_settle_auxiliary(trainers["amal"]))
                start = time.perf_counter()
                result = trainers[name].train()
                times[name].append(time.perf_counter() - start)
                if name == "mappo":
                    mappo_steps += summarize_result(result)[ENV_STEPS_SAMPLED]
    finally:
        for trainer in trainers.values():
            trainer.stop()
        ray.shutdown()
    ratios = [a / m for m, a in zip(times["mappo"], times["amal"], strict=True)]
    m, a = float(np.median(times["mappo"])), float(np.median(times["amal"]))
    print(f"AMAL vs MAPPO on SMAX {args.scenario}, interleaved in one process: {runners} primary runners x "
          f"{args.envs_per_runner} envs, batch {args.train_batch}, {args.interleaved} pairs of single iterations")
    print(f"MAPPO iteration: median {m:.2f} s ({mappo_steps / sum(times['mappo']):.0f} env steps/s overall), range "
          f"{min(times['mappo']):.2f}-{max(times['mappo']):.2f} s")
    print(f"AMAL iteration:  median {a:.2f} s, range {min(times['amal']):.2f}-{max(times['amal']):.2f} s")
    print("AMAL / MAPPO per pair: " + ", ".join(f"{r:.2f}x" for r in ratios))
    print(f"untimed waits for AMAL's auxiliary runner before MAPPO's iterations: total {sum(waited):.2f} s, "
          f"max {max(waited):.2f} s")
    print(f"AMAL / MAPPO iteration time: median of pairs {float(np.median(ratios)):.2f}x, ratio of medians "
          f"{a / m:.2f}x (goal <= 1.3x)")


def compare_gc_freeze(args) -> None:
    """MAPPO's iterations with the process's long-lived objects frozen (``amal_rllib.gc_freeze``, what
    ``config.gc_freeze`` does after the first iteration) and not, alternating blocks in one process; the
    seconds CPython's collector ran are timed with ``gc.callbacks``. Means, not medians: a full collection
    lands in one iteration of two or three, and its cost is spread over all of them."""
    import gc

    import ray

    from amal_rllib.gc_freeze import freeze_long_lived, unfreeze

    runners = max(args.runners)
    ray.init(num_cpus=max(2, runners + 1), include_dashboard=False, log_to_driver=False)
    trainer = build_trainer(args.scenario, runners, args.envs_per_runner, args.train_batch, "mappo",
                            args.num_minibatches, gc_freeze=False)
    clock = {"gc_s": 0.0, "start": 0.0, "full": 0}

    def on_gc(phase, info):
        if phase == "start":
            clock["start"] = time.perf_counter()
        else:
            clock["gc_s"] += time.perf_counter() - clock["start"]
            clock["full"] += info["generation"] == 2

    gc.callbacks.append(on_gc)
    times: dict[bool, list[float]] = {True: [], False: []}
    gc_s: dict[bool, float] = {True: 0.0, False: 0.0}
    full: dict[bool, int] = {True: 0, False: 0}
    frozen = 0
    try:
        for _ in range(2):  # JIT compilation, first episodes
            trainer.train()
        for pair in range(args.gc_freeze):
            for freeze in (True, False) if pair % 2 == 0 else (False, True):
                if freeze:
                    frozen = freeze_long_lived()
                else:
                    unfreeze()
                clock["gc_s"], clock["full"] = 0.0, 0
                for _ in range(args.iterations):
                    start = time.perf_counter()
                    trainer.train()
                    times[freeze].append(time.perf_counter() - start)
                gc_s[freeze] += clock["gc_s"]
                full[freeze] += clock["full"]
    finally:
        gc.callbacks.remove(on_gc)
        unfreeze()
        trainer.stop()
        ray.shutdown()
    print(f"MAPPO on SMAX {args.scenario}, {runners} remote runners x {args.envs_per_runner} envs, batch "
          f"{args.train_batch}: {args.gc_freeze} pairs of {args.iterations}-iteration blocks, frozen "
          f"({frozen:,} objects) and not, alternating in one process")
    for freeze in (False, True):
        n = len(times[freeze])
        print(f"{'frozen' if freeze else 'not frozen':<11} iteration mean {np.mean(times[freeze]):.3f} s (median "
              f"{np.median(times[freeze]):.3f} s, n={n}); collector {gc_s[freeze] / n:.3f} s and "
              f"{full[freeze] / n:.2f} full collections per iteration")
    print(f"not frozen / frozen, mean iteration time: {np.mean(times[False]) / np.mean(times[True]):.3f}x")


def compare_amal(args) -> None:
    """AMAL vs MAPPO, same primary runners and batch; AMAL adds one auxiliary runner.

    Ray gets one logical CPU per runner (3 on this 2-core machine for both runs),
    so the auxiliary runner competes for the same two cores: that cost is measured.
    """
    import ray

    runners = max(args.runners)
    variants = {"mappo": ("mappo", {}), "amal": ("amal", {})}
    if args.amal_parts:
        variants |= {
            "amal aux_ratio=0": ("amal", {"aux_ratio": 0.0}),
            "amal lambda=0": ("amal", {"lambda_info": 0.0}),
            "amal overlap=sampling": ("amal", {"aux_rollout_overlap": "sampling"}),
        }
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # the variants alternate, so slow phases of the machine hit them alike
        for name, (algo, knobs) in variants.items():
            ray.init(num_cpus=max(2, runners + 1), include_dashboard=False, log_to_driver=False)
            runs[name].append(
                mappo_iterations(
                    args.scenario, runners, args.iterations, args.envs_per_runner, args.train_batch, algo=algo,
                    warmup=3, num_minibatches=args.num_minibatches, **knobs,
                )
            )
    rows = {name: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for name, rs in runs.items()}
    m, a = rows["mappo"], rows["amal"]
    from amal_rllib.amal import AMALConfig

    d = AMALConfig()
    print(f"AMAL vs MAPPO on SMAX {args.scenario}: {runners} primary runners x {args.envs_per_runner} envs, "
          f"batch {args.train_batch}; AMAL + {d.num_aux_env_runners} auxiliary runner(s) (defaults: lambda_info "
          f"{d.lambda_info}, aux_ratio {d.aux_ratio}, aux_buffer_capacity {d.aux_buffer_capacity})")
    print(f"{'algorithm':<18}{'iteration s':>12}{'vs MAPPO':>9}{'learner s':>11}{'aux launch s':>14}"
          f"{'aux wait s':>12}{'aux draw s':>12}{'aux CPU s':>11}{'primary steps/s':>17}{'aux steps/iter':>16}")
    for name, r in rows.items():
        print(f"{name:<18}{r['iter_s']:>12.2f}{r['iter_s'] / m['iter_s']:>8.2f}x{r['learn_s']:>11.2f}"
              f"{r['aux_launch_s']:>14.2f}{r['aux_wait_s']:>12.2f}{r['aux_buffer_s']:>12.2f}{r['aux_cpu_s']:>11.2f}"
              f"{r['steps_per_s']:>17.0f}{r['aux_steps_per_iter']:>16.0f}")
    print("learner s: the learner update, timed per iteration; aux launch: CEM ask + candidate weights sent;")
    print("aux wait: waiting for the auxiliary runner after primary sampling + scoring + storing; aux draw: buffer sample;")
    print("aux CPU s: CPU seconds of the auxiliary runner process(es) per iteration (playing the CEM candidates)")
    if args.repeats > 1:
        print(f"medians over {args.repeats} alternating repeats; AMAL / MAPPO per repeat: " + ", ".join(
            f"{ra['iter_s'] / rm['iter_s']:.2f}x" for rm, ra in zip(runs["mappo"], runs["amal"], strict=True)
        ))
    print(f"AMAL / MAPPO iteration time: {a['iter_s'] / m['iter_s']:.2f}x (goal <= 1.3x)")


if __name__ == "__main__":
    main()

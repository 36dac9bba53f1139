"""Learning curves: MAPPO on SMAX, several seeds, win rate vs env steps (CSV + PNG).

    python scripts/learning_curves.py --scenario 3m --seeds 0 1 2 --env-steps 2000000 \
        --out results/mappo_3m [--max-minutes-per-seed 60]

Not part of CI. Rows are appended to ``<out>/curves.csv`` after every
iteration, so an interrupted run keeps what it measured. ``--max-minutes-per-seed``
caps the wall time of each seed; the summary says which budget stopped it.
Writes ``curves.csv``, ``summary.csv`` (final/best greedy win rate, env steps
to reach ``--target`` greedy win rate, wall time), ``curves.png`` and one RLlib
checkpoint per seed (``checkpoint_seed<N>``, for ``amal-replay``).
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

FIELDS = [
    "algo", "scenario", "seed", "iteration", "env_steps", "wall_s", "win_rate", "episode_return_mean",
    "episode_len_mean", "eval_win_rate", "eval_episode_return_mean", "policy_loss", "vf_loss", "entropy",
]


def run_seed(args: argparse.Namespace, seed: int, writer: csv.DictWriter, fh) -> dict:
    import ray

    from amal_rllib.metrics import (
        ENTROPY,
        ENV_STEPS_SAMPLED_LIFETIME,
        EPISODE_LEN_MEAN,
        EPISODE_RETURN_MEAN,
        EVAL_RETURN_MEAN,
        EVAL_WIN_RATE,
        POLICY_LOSS,
        VF_LOSS,
        WIN_RATE,
        summarize_result,
    )
    from amal_rllib.presets import mappo_config

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    config = mappo_config(
        args.scenario, seed=seed, num_env_runners=args.runners, num_envs_per_env_runner=args.envs_per_runner,
        train_batch_size=args.train_batch, evaluation_interval=args.eval_interval,
        evaluation_episodes=args.eval_episodes,
    )
    algo = config.build_algo()
    t0 = time.perf_counter()
    steps, stop_reason, reached = 0.0, "env-step budget", math.nan
    best_eval, last_eval = math.nan, math.nan
    try:
        while steps < args.env_steps:
            s = summarize_result(algo.train())
            if args.eval_interval and algo.training_iteration % args.eval_interval:
                # RLlib repeats the last evaluation's metrics in later results.
                s[EVAL_WIN_RATE] = s[EVAL_RETURN_MEAN] = math.nan
            steps = s[ENV_STEPS_SAMPLED_LIFETIME]
            wall = time.perf_counter() - t0
            row = {
                "algo": "mappo", "scenario": args.scenario, "seed": seed, "iteration": algo.training_iteration,
                "env_steps": int(steps), "wall_s": round(wall, 1), "win_rate": s[WIN_RATE],
                "episode_return_mean": s[EPISODE_RETURN_MEAN], "episode_len_mean": s[EPISODE_LEN_MEAN],
                "eval_win_rate": s[EVAL_WIN_RATE], "eval_episode_return_mean": s[EVAL_RETURN_MEAN],
                "policy_loss": s[POLICY_LOSS], "vf_loss": s[VF_LOSS], "entropy": s[ENTROPY],
            }
            writer.writerow(row)
            fh.flush()
            if not math.isnan(s[EVAL_WIN_RATE]):
                last_eval = s[EVAL_WIN_RATE]
                best_eval = s[EVAL_WIN_RATE] if math.isnan(best_eval) else max(best_eval, s[EVAL_WIN_RATE])
                if math.isnan(reached) and s[EVAL_WIN_RATE] >= args.target:
                    reached = steps
                print(f"seed {seed} it {algo.training_iteration} steps {int(steps)} wall {wall:.0f}s "
                      f"train win {s[WIN_RATE]:.2f} eval win {s[EVAL_WIN_RATE]:.2f}", flush=True)
            if args.max_minutes_per_seed and wall > 60 * args.max_minutes_per_seed:
                stop_reason = f"wall-time cap {args.max_minutes_per_seed} min"
                break
        checkpoint = algo.save_to_path(str((args.out / f"checkpoint_seed{seed}").resolve()))
    finally:
        algo.stop()
        ray.shutdown()
    return {
        "checkpoint": checkpoint,
        "algo": "mappo", "scenario": args.scenario, "seed": seed, "env_steps": int(steps),
        "wall_s": round(time.perf_counter() - t0, 1), "final_eval_win_rate": last_eval,
        "best_eval_win_rate": best_eval, f"env_steps_to_eval_win_{args.target}": reached, "stopped_by": stop_reason,
    }


def plot(out: Path, target: float, eval_interval: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(out / "curves.csv")
    if eval_interval:
        df.loc[df["iteration"] % eval_interval != 0, ["eval_win_rate", "eval_episode_return_mean"]] = math.nan
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for seed, g in df.groupby("seed"):
        axes[0].plot(g["env_steps"], g["win_rate"], label=f"seed {seed}", alpha=0.8)
        e = g.dropna(subset=["eval_win_rate"])
        axes[1].plot(e["env_steps"], e["eval_win_rate"], marker="o", ms=3, label=f"seed {seed}", alpha=0.8)
    evals = df.dropna(subset=["eval_win_rate"])
    if not evals.empty:
        grid = evals.groupby("iteration").agg(env_steps=("env_steps", "mean"), mean=("eval_win_rate", "mean"),
                                              std=("eval_win_rate", "std"), n=("seed", "count"))
        grid = grid[grid["n"] == grid["n"].max()]
        axes[1].plot(grid["env_steps"], grid["mean"], color="black", lw=2, label="mean over seeds")
        axes[1].fill_between(grid["env_steps"], grid["mean"] - grid["std"].fillna(0),
                             grid["mean"] + grid["std"].fillna(0), color="gray", alpha=0.25)
    for ax, title in zip(axes, ["training win rate (100-episode window)", "greedy evaluation win rate"], strict=True):
        ax.axhline(target, color="red", ls="--", lw=1)
        ax.set_xlabel("env steps")
        ax.set_ylabel("win rate")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.legend(fontsize=8)
    scenario = df["scenario"].iloc[0]
    fig.suptitle(f"MAPPO on SMAX {scenario}")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="3m")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--env-steps", type=int, default=2_000_000)
    parser.add_argument("--max-minutes-per-seed", type=float, default=None)
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--envs-per-runner", type=int, default=16)
    parser.add_argument("--train-batch", type=int, default=4000)
    parser.add_argument("--eval-interval", type=int, default=5)
    parser.add_argument("--eval-episodes", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/mappo_3m"))
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    summaries = []
    with open(args.out / "curves.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        for seed in args.seeds:
            summaries.append(run_seed(args, seed, writer, fh))
            plot(args.out, args.target, args.eval_interval)
    with open(args.out / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(summaries[0]))
        writer.writeheader()
        writer.writerows(summaries)
    for row in summaries:
        print(row)


if __name__ == "__main__":
    main()

"""Learning curves: MAPPO and AMAL on SMAX, several seeds, win rate vs env steps (CSV + PNG).

    python scripts/learning_curves.py --algos mappo amal --scenario 3m --seeds 0 1 2 \
        --env-steps 2000000 --out results/amal_vs_mappo_3m [--max-minutes-per-run 60]

Not part of CI. Every run stops at the same budget of **total** env steps:
AMAL's auxiliary-runner steps count (``env_steps`` below is primary + auxiliary;
``env_steps_primary`` and ``env_steps_auxiliary`` are kept apart too). Rows are
appended to ``<out>/curves.csv`` after every iteration, so an interrupted run
keeps what it measured; ``--max-minutes-per-run`` caps each run's wall time and
the summary says which budget stopped it. Writes ``curves.csv``,
``summary.csv`` (final/best greedy win rate, total env steps to reach
``--target`` greedy win rate, wall time), ``curves.png`` (win rates; for AMAL
the MI bonus and the CEM fitness) and one RLlib checkpoint per run
(``checkpoint_<algo>_seed<N>``, for ``amal-replay``).

``--continue-from DIR`` extends earlier runs instead of starting fresh: each run
restores ``DIR/checkpoint_<algo>_seed<N>`` (counters, CEM state and world model
included; AMAL's auxiliary buffer refills) and trains on to ``--env-steps``
total steps. Its rows start at the restored iteration, and ``wall_s`` counts
from the continuation's start. Concatenate the two ``curves.csv`` for the whole
curve.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

from amal_rllib.mappo.config import DEFAULT_NUM_ENVS_PER_ENV_RUNNER, DEFAULT_NUM_MINIBATCHES, DEFAULT_TRAIN_BATCH_SIZE

FIELDS = [
    "algo", "scenario", "seed", "iteration", "env_steps", "env_steps_primary", "env_steps_auxiliary", "wall_s",
    "win_rate", "team_return_mean", "episode_len_mean", "eval_win_rate", "eval_team_return_mean",
    "policy_loss", "vf_loss", "entropy", "world_model_loss", "mi_estimate_mean", "mi_estimate_std", "mi_bonus_mean",
    "mi_bonus_std", "intrinsic_extrinsic_ratio", "mi_temperature", "mi_hit_rate", "mi_estimate_hit_mean",
    "mi_estimate_miss_mean", "mi_ceiling_mean", "mi_estimate_untempered_mean", "mi_death_fraction",
    "aux_sample_fraction", "cem_generation", "cem_best_fitness",
    "cem_mean_fitness", "cem_sigma_norm",
]


def knob(text: str) -> tuple[str, object]:
    """``name=value`` with a Python literal value (``lambda_info=0.1``, ``world_model_hidden=(128,128)``)."""
    import ast

    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected KNOB=VALUE, got {text!r}")
    try:
        return name.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: the value must be a Python literal") from exc


def build(args: argparse.Namespace, algo: str, seed: int):
    from amal_rllib.presets import amal_config, mappo_config

    if args.continue_from is not None:
        path = (args.continue_from / f"checkpoint_{algo}_seed{seed}").resolve()
        if not path.is_dir():
            raise SystemExit(f"--continue-from: no checkpoint {path} (written by an earlier run of this script "
                             f"with --algos {algo} --seeds {seed}); drop the option to start fresh")
        from amal_rllib.amal import AMAL
        from amal_rllib.mappo import MAPPO

        return (AMAL if algo == "amal" else MAPPO).from_checkpoint(str(path))

    from amal_rllib.amal.config import AMAL_KNOBS

    common = dict(
        seed=seed, num_env_runners=args.runners, num_envs_per_env_runner=args.envs_per_runner,
        train_batch_size=args.train_batch, num_minibatches=args.num_minibatches,
        evaluation_interval=args.eval_interval, evaluation_episodes=args.eval_episodes,
    )
    knobs = dict(args.amal_knobs)
    training = {k: knobs.pop(k) for k in list(knobs) if k not in AMAL_KNOBS}
    if algo == "amal":
        config = amal_config(args.scenario, **common, num_aux_env_runners=args.aux_runners, **knobs)
    elif knobs:
        raise SystemExit(f"--set {sorted(knobs)}: AMAL knobs, but --algos has mappo")
    else:
        config = mappo_config(args.scenario, **common)
    config.training(**training)
    if args.constant_lr:
        config.training(lr_anneal_env_steps=None)
    elif args.anneal_lr_steps or "lr_anneal_env_steps" not in training:
        # JaxMARL's ANNEAL_LR: to 0 at the run's budget (or where --anneal-lr-steps says).
        config.training(lr_anneal_env_steps=args.anneal_lr_steps or args.env_steps)
    return config.build_algo()


def run(args: argparse.Namespace, algo_name: str, seed: int, writer: csv.DictWriter, fh) -> dict:
    import ray

    from amal_rllib import metrics as m

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    algo = build(args, algo_name, seed)
    t0 = time.perf_counter()
    total, stop_reason, reached = 0.0, "env-step budget", math.nan
    best_eval, last_eval = math.nan, math.nan
    try:
        while total < args.env_steps:
            s = m.summarize_amal_result(algo.train())
            if args.eval_interval and algo.training_iteration % args.eval_interval:
                # RLlib repeats the last evaluation's metrics in later results.
                s[m.EVAL_WIN_RATE] = s[m.EVAL_TEAM_RETURN_MEAN] = math.nan
            primary = s[m.ENV_STEPS_SAMPLED_LIFETIME]
            aux = 0.0 if math.isnan(s[m.ENV_STEPS_AUX_LIFETIME]) else s[m.ENV_STEPS_AUX_LIFETIME]
            total = primary + aux
            wall = time.perf_counter() - t0
            row = {name: s.get(name, math.nan) for name in FIELDS}
            row |= {
                "algo": algo_name, "scenario": args.scenario, "seed": seed, "iteration": algo.training_iteration,
                "env_steps": int(total), "env_steps_primary": int(primary), "env_steps_auxiliary": int(aux),
                "wall_s": round(wall, 1),
            }
            writer.writerow(row)
            fh.flush()
            if not math.isnan(s[m.EVAL_WIN_RATE]):
                last_eval = s[m.EVAL_WIN_RATE]
                best_eval = last_eval if math.isnan(best_eval) else max(best_eval, last_eval)
                if math.isnan(reached) and last_eval >= args.target:
                    reached = total
                print(f"{algo_name} seed {seed} it {algo.training_iteration} steps {int(total)} wall {wall:.0f}s "
                      f"train win {s[m.WIN_RATE]:.2f} eval win {last_eval:.2f}", flush=True)
            if args.max_minutes_per_run and wall > 60 * args.max_minutes_per_run:
                stop_reason = f"wall-time cap {args.max_minutes_per_run} min"
                break
        checkpoint = algo.save_to_path(str((args.out / f"checkpoint_{algo_name}_seed{seed}").resolve()))
    finally:
        algo.stop()
        ray.shutdown()
    return {
        "algo": algo_name, "scenario": args.scenario, "seed": seed, "env_steps": int(total),
        "wall_s": round(time.perf_counter() - t0, 1), "final_eval_win_rate": last_eval,
        "best_eval_win_rate": best_eval, f"env_steps_to_eval_win_{args.target}": reached, "stopped_by": stop_reason,
        "checkpoint": checkpoint,
    }


def plot(out: Path, target: float, eval_interval: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(out / "curves.csv")
    if eval_interval:
        df.loc[df["iteration"] % eval_interval != 0, ["eval_win_rate", "eval_team_return_mean"]] = math.nan
    has_amal = (df["algo"] == "amal").any()
    fig, axes = plt.subplots(2 if has_amal else 1, 2, figsize=(12, 9 if has_amal else 4.5), squeeze=False)
    # MAPPO blue, AMAL orange; other variants (ablations, merged older runs) take the next free colours.
    others = iter(["tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"])
    colors = {"mappo": "tab:blue", "amal": "tab:orange"}
    for algo, ga in df.groupby("algo"):
        c = colors.get(algo) or next(others, "black")
        for i, (_, g) in enumerate(ga.groupby("seed")):
            axes[0, 0].plot(g["env_steps"], g["win_rate"], color=c, alpha=0.6, label=f"{algo}" if i == 0 else None)
            e = g.dropna(subset=["eval_win_rate"])
            axes[0, 1].plot(e["env_steps"], e["eval_win_rate"], color=c, alpha=0.35, marker="o", ms=2)
        evals = ga.dropna(subset=["eval_win_rate"])
        if not evals.empty:
            grid = evals.groupby("iteration").agg(env_steps=("env_steps", "mean"), mean=("eval_win_rate", "mean"),
                                                  std=("eval_win_rate", "std"), n=("seed", "count"))
            grid = grid[grid["n"] == grid["n"].max()]
            n = int(grid["n"].max())
            axes[0, 1].plot(grid["env_steps"], grid["mean"], color=c, lw=2, label=f"{algo} mean of {n} seed(s)")
            axes[0, 1].fill_between(grid["env_steps"], grid["mean"] - grid["std"].fillna(0),
                                    grid["mean"] + grid["std"].fillna(0), color=c, alpha=0.2)
    titles = ["training win rate (100-episode window)", "greedy evaluation win rate"]
    for ax, title in zip(axes[0], titles, strict=True):
        ax.axhline(target, color="red", ls="--", lw=1)
        ax.set_xlabel("total env steps (AMAL: primary + auxiliary)")
        ax.set_ylabel("win rate")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.legend(fontsize=8)
    if has_amal:
        amal = df[df["algo"] == "amal"]
        for seed, g in amal.groupby("seed"):
            axes[1, 0].plot(g["env_steps"], g["mi_estimate_mean"], label=f"I_hat mean, seed {seed}")
            axes[1, 0].plot(g["env_steps"], g["mi_bonus_std"], ls=":", label=f"bonus std, seed {seed}")
            cem = g.dropna(subset=["cem_best_fitness"]).drop_duplicates("cem_generation")
            axes[1, 1].plot(cem["env_steps"], cem["cem_best_fitness"], marker="o", ms=3, label=f"best, seed {seed}")
            axes[1, 1].plot(cem["env_steps"], cem["cem_mean_fitness"], ls="--", label=f"mean, seed {seed}")
        axes[1, 0].set_title("MI estimate (nats) and intrinsic-reward spread")
        axes[1, 1].set_title("CEM fitness per generation (world-model NLL - beta * distance)")
        for ax in axes[1]:
            ax.set_xlabel("total env steps")
            ax.legend(fontsize=7)
    fig.suptitle(f"SMAX {df['scenario'].iloc[0]}: " + " vs ".join(sorted(df["algo"].unique())))
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", choices=["mappo", "amal"], default=["mappo"])
    parser.add_argument("--scenario", default="3m")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--env-steps", type=int, default=2_000_000, help="total env steps per run (aux counted)")
    parser.add_argument("--max-minutes-per-run", "--max-minutes-per-seed", dest="max_minutes_per_run", type=float)
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--runners", type=int, default=0, help="remote env runners (0: the algorithm's process)")
    parser.add_argument("--aux-runners", type=int, default=1)
    parser.add_argument("--envs-per-runner", type=int, default=DEFAULT_NUM_ENVS_PER_ENV_RUNNER)
    parser.add_argument("--set", dest="amal_knobs", type=knob, action="append", default=[], metavar="KNOB=VALUE",
                        help="a config knob, e.g. --set lambda_info=0.1 (AMAL only) or --set lr=2e-3 (any "
                        ".training() setting; repeatable)")
    parser.add_argument("--train-batch", type=int, default=DEFAULT_TRAIN_BATCH_SIZE)
    parser.add_argument("--num-minibatches", type=int, default=DEFAULT_NUM_MINIBATCHES, help="minibatches per epoch")
    parser.add_argument("--anneal-lr", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old commands
    parser.add_argument("--anneal-lr-steps", type=int, help="where the lr reaches 0 (default: --env-steps, JaxMARL's ANNEAL_LR)")
    parser.add_argument("--constant-lr", action="store_true", help="no lr annealing")
    parser.add_argument("--eval-interval", type=int, default=5)
    parser.add_argument("--eval-episodes", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=3, help="logical CPUs for Ray (one per runner)")
    parser.add_argument("--out", type=Path, default=Path("results/mappo_3m"))
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier study in --out")
    parser.add_argument("--continue-from", type=Path, metavar="DIR",
                        help="restore each run from DIR/checkpoint_<algo>_seed<N> and train on to --env-steps "
                             "(the checkpoint's config: runners, batch, evaluation and knobs)")
    args = parser.parse_args()
    if args.continue_from is not None and args.continue_from.resolve() == args.out.resolve():
        parser.error("--continue-from and --out name the same folder: the continuation would overwrite the earlier "
                     "curves.csv and checkpoints; give it a new --out")
    if args.continue_from is not None and args.amal_knobs:
        parser.error("--set has no effect with --continue-from: a restored run keeps its checkpoint's config")

    if (args.out / "curves.csv").is_file() and (args.out / "curves.csv").stat().st_size and not args.overwrite:
        parser.error(f"{args.out / 'curves.csv'} already holds a study: give a new --out, or --overwrite to replace it")
    args.out.mkdir(parents=True, exist_ok=True)
    summaries = []
    with open(args.out / "curves.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        for seed in args.seeds:
            for algo in args.algos:  # interleaved, so an interrupted study still compares like with like
                summaries.append(run(args, algo, seed, writer, fh))
                plot(args.out, args.target, args.eval_interval)
    with open(args.out / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(summaries[0]))
        writer.writeheader()
        writer.writerows(summaries)
    for row in summaries:
        print(row)


if __name__ == "__main__":
    main()

"""Plot the per-iteration MI diagnostics of an AMAL run (``scripts/learning_curves.py`` curves.csv).

    python docs/results/mi_diagnostics_3m/plot.py [results/mi_diagnostics_3m/curves.csv] [--out DIR]

Writes ``mi_diagnostics.png`` and ``mi_summary.csv`` (means per 250k-step window) next to this file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

COLUMNS = [
    "mi_estimate_mean", "mi_estimate_untempered_mean", "mi_ceiling_mean", "mi_estimate_hit_mean",
    "mi_estimate_miss_mean", "mi_hit_rate", "mi_temperature", "mi_death_fraction", "win_rate", "eval_win_rate",
]


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser()
    parser.add_argument("curves", nargs="?", type=Path, default=Path("results/mi_diagnostics_3m/curves.csv"))
    parser.add_argument("--out", type=Path, default=here)
    args = parser.parse_args()
    df = pd.read_csv(args.curves)
    df = df[df["algo"] == "amal"]
    x = df["env_steps"] / 1e6
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    ax = axes[0]
    ax.plot(x, df["mi_estimate_mean"], label="I_hat, calibrated (the bonus)", lw=2)
    ax.plot(x, df["mi_estimate_untempered_mean"], label="I_hat, temperature 1 (Proposition 1 as written)")
    ax.plot(x, df["mi_ceiling_mean"], "k--", label="ceiling E[log pi(a*)/pibar(a*)] ~ KL(pi||pibar)")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_title("batch mean of I_hat (nats) vs its bounds [0, KL]")
    ax = axes[1]
    ax.plot(x, df["mi_estimate_hit_mean"], label="I_hat on hit rows (best head = action taken)")
    ax.plot(x, df["mi_estimate_miss_mean"], label="I_hat on miss rows")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_title("calibrated I_hat on hit and miss rows (nats)")
    ax = axes[2]
    ax.plot(x, df["mi_hit_rate"], label="hit rate")
    ax.plot(x, df["mi_temperature"], label="fitted likelihood temperature")
    ax.plot(x, df["mi_death_fraction"], label="death transitions (no bonus)")
    ax.plot(x, df["win_rate"], ":", label="training win rate")
    ax.set_yscale("log")
    ax.set_title("hit rate, temperature, death share")
    for ax in axes:
        ax.set_xlabel("total env steps (M)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "mi_diagnostics.png", dpi=110)
    window = (df["env_steps"] // 250_000) * 0.25
    summary = df.groupby(window)[[c for c in COLUMNS if c in df]].mean().round(4)
    summary.index.name = "window_start_M_steps"
    summary.to_csv(args.out / "mi_summary.csv")
    print(summary.to_string())


if __name__ == "__main__":
    main()

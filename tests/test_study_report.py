"""The report's maths on hand-made curves (golden numbers), and reading Tune's trial folders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from amal_rllib.study.report import (
    bootstrap_claim,
    claim_saving,
    curves_on_grid,
    load_trials,
    mean_band,
    steps_to_reach,
    trial_table,
)


def test_steps_to_reach_is_the_first_crossing():
    steps = np.array([100.0, 200.0, 300.0, 400.0])
    assert steps_to_reach(steps, np.array([0.1, 0.5, 0.4, 0.9]), 0.5) == 200.0
    assert steps_to_reach(steps, np.array([0.1, 0.5, 0.4, 0.9]), 0.8) == 400.0
    assert math.isnan(steps_to_reach(steps, np.array([0.1, 0.2, 0.3, 0.4]), 0.5))


def test_curves_on_grid_interpolates_inside_and_is_nan_outside():
    grid = np.array([0.0, 50.0, 100.0, 150.0, 250.0])
    out = curves_on_grid([(np.array([50.0, 150.0]), np.array([0.2, 0.6]))], grid)
    np.testing.assert_allclose(out[0, 1:4], [0.2, 0.4, 0.6])
    assert np.isnan(out[0, 0]) and np.isnan(out[0, 4])


def test_mean_band_is_a_t_interval_of_the_mean():
    values = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    mean, low, high = mean_band(values, 0.95)
    np.testing.assert_allclose(mean, [1.0, 1.0])
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n)
    np.testing.assert_allclose([low[0], high[0]], [1.0 - half, 1.0 + half])
    np.testing.assert_allclose([low[1], high[1]], [1.0, 1.0])


def test_claim_saving_golden():
    grid = np.linspace(0.0, 1000.0, 11)
    mappo = np.array([np.clip(grid / 1000.0, 0, 1) * 0.8])  # reaches its final 0.8 at 1000 steps
    amal = np.array([np.clip(grid / 600.0, 0, 1) * 0.8])  # reaches 0.8 at 600
    saving, target, steps_a, steps_m = claim_saving(amal, mappo, grid)
    assert target == pytest.approx(0.8)
    assert steps_m == 1000.0 and steps_a == 600.0
    assert saving == pytest.approx(0.4)
    never = np.array([np.full_like(grid, 0.3)])
    assert claim_saving(never, mappo, grid)[0] == -math.inf


def _seeds(grid, reach, n, jitter, rng):
    """n noisy seeds of a curve rising linearly to 0.8 at ``reach`` steps."""
    return np.array([np.clip(grid / (reach * (1 + jitter * rng.standard_normal())), 0, 1) * 0.8 for _ in range(n)])


def test_bootstrap_separates_a_clear_difference_and_says_fewer():
    rng = np.random.default_rng(0)
    grid = np.linspace(0.0, 2e6, 201)
    claim = bootstrap_claim("3m", _seeds(grid, 1.0e6, 5, 0.03, rng), _seeds(grid, 1.6e6, 5, 0.03, rng), grid,
                            samples=500, confidence=0.95)
    assert claim.separable and claim.low > 0
    assert 0.3 < claim.saving < 0.45
    assert "fewer env steps" in claim.sentence() and "95% interval" in claim.sentence()


def test_bootstrap_of_identical_algorithms_is_not_separable():
    rng = np.random.default_rng(1)
    grid = np.linspace(0.0, 2e6, 201)
    claim = bootstrap_claim("3m", _seeds(grid, 1.2e6, 4, 0.2, rng), _seeds(grid, 1.2e6, 4, 0.2, rng), grid,
                            samples=500, confidence=0.95)
    assert not claim.separable and claim.low < 0 < claim.high
    assert claim.sentence().startswith("3m: not separable with 4 AMAL and 4 MAPPO seeds")


def test_one_seed_is_never_separable():
    grid = np.linspace(0.0, 1000.0, 11)
    claim = bootstrap_claim("3m", np.array([grid / 500.0]), np.array([grid / 1000.0]), grid, samples=50,
                            confidence=0.95)
    assert not claim.separable
    assert "not separable with 1 seed(s)" in claim.sentence()


def _trial_dir(root, name, rows, config):
    d = root / name
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(config))
    (d / "result.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n{\"training_iter")  # cut short


def test_load_trials_keeps_the_resumed_rows_and_counts_the_redone_ones(tmp_path):
    phase = tmp_path / "confirm-3m-mappo"

    def row(i, greedy=None):
        r = {"training_iteration": i, "env_steps_total_lifetime": 1000.0 * i, "time_total_s": 2.0 * i,
             "trial_id": "abc", "greedy_win_rate_mean": 0.5}
        if greedy is not None:
            r["greedy_win_rate"] = greedy
        return r

    # Iterations 1-4 ran, the checkpoint was at 2, the driver died; 3-5 ran again after the resume.
    rows = [row(1), row(2, 0.25), row(3), row(4, 0.5), row(3), row(4, 0.75), row(5)]
    _trial_dir(phase, "t0", rows, {"seed": 1000})
    [trial] = load_trials(phase)
    assert [r["training_iteration"] for r in trial.rows] == [1, 2, 3, 4, 5]
    assert trial.redone_iterations == 2
    assert trial.rows[3]["greedy_win_rate"] == 0.75  # the resumed timeline wins
    table = trial_table([trial])
    assert table.loc[0, "final_greedy_win_rate"] == 0.75 and table.loc[0, "best_greedy_win_rate"] == 0.75
    assert table.loc[0, "env_steps_to_0.5"] == 2000.0 * 2  # 0.25 at 2k, 0.75 at 4k
    assert math.isnan(table.loc[0, "env_steps_to_0.8"])
    assert table.loc[0, "variant"] == "mappo" and table.loc[0, "seed"] == 1000
    assert table.loc[0, "total_env_steps"] == 5000.0 and table.loc[0, "redone_iterations"] == 2


def test_never_reaching_the_target_is_said_plainly():
    grid = np.linspace(0.0, 1000.0, 11)
    mappo = np.array([np.clip(grid / 1000.0, 0, 1) * 0.8 + d for d in (0.0, 0.02, -0.02)])
    amal = np.array([np.full_like(grid, 0.3 + d) for d in (0.0, 0.01, 0.02)])
    claim = bootstrap_claim("3m", amal, mappo, grid, samples=200, confidence=0.95)
    assert claim.saving == -math.inf and claim.separable
    assert claim.sentence().startswith("3m: AMAL did not reach MAPPO's final greedy win rate (0.80)")
    assert "AMAL is slower" in claim.sentence()


def test_a_confirm_trial_short_of_its_budget_is_listed_but_left_out_of_the_claim(tmp_path):
    """A study stopped mid-phase: the cut trial would end the common horizon at its last step and make
    MAPPO's win rate there the claim's target; it must stay out of the claim and the per-variant table."""
    import pandas as pd

    from amal_rllib.study.config import load_preset
    from amal_rllib.study.report import write_report

    study = load_preset("smoke").replace(scenarios=("3m",), env_steps=10_000, seeds=2)
    budget = study.env_steps

    def rows(win_at, last_step, trial_id):
        # a greedy evaluation every 1,000 steps; win rate climbs linearly to 1 at ``win_at`` steps
        return [
            {"training_iteration": i, "env_steps_total_lifetime": 1000.0 * i, "time_total_s": float(i),
             "trial_id": trial_id, "greedy_win_rate": min(1.0, 1000.0 * i / win_at)}
            for i in range(1, last_step // 1000 + 1)
        ]

    for seed in (1000, 1001):
        _trial_dir(tmp_path / "confirm-3m-mappo", f"m{seed}", rows(8000, budget, f"m{seed}"), {"seed": seed})
        _trial_dir(tmp_path / "confirm-3m-amal_best", f"a{seed}", rows(4000, budget, f"a{seed}"), {"seed": seed})
    # the third MAPPO seed was stopped at 3,000 steps, where MAPPO's mean win rate is ~0.38
    _trial_dir(tmp_path / "confirm-3m-mappo", "m1002", rows(8000, 3000, "m1002"), {"seed": 1002})
    summary = write_report(tmp_path, {"study": study.to_dict(), "name": "t"})

    claim = pd.read_csv(tmp_path / "report" / "claims.csv").iloc[0]
    assert claim["n_mappo"] == 2 and claim["n_amal"] == 2
    assert claim["target"] == pytest.approx(1.0)  # MAPPO's win rate at the budget, not at the cut seed's 3,000
    assert claim["saving"] == pytest.approx(0.5, abs=0.06)  # 4k vs 8k steps to a win rate of 1
    trials = pd.read_csv(tmp_path / "report" / "trials.csv")
    assert trials.set_index("trial_id")["finished"].to_dict() == {
        "m1000": True, "m1001": True, "m1002": False, "a1000": True, "a1001": True
    }
    text = summary.read_text()
    assert "1 confirm trial(s) short of the 10,000-step budget" in text and "3m mappo seed 1002 at 3,000" in text
    per_variant = text.split("## Confirm phase, per variant (finished trials)")[1].split("## Every trial")[0]
    assert "| 3m | mappo | 2 |" in per_variant

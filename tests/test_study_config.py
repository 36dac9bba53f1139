"""The study's settings and CLI: presets, YAML, flags, and a one-line error for each bad input (no Ray)."""

from __future__ import annotations

import math
import os

import pytest

from amal_rllib.study import cli
from amal_rllib.study.config import PRESETS, StudyConfig, StudyConfigError, from_mapping, load_preset


def run_cli(argv, capsys):
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_validates_and_keeps_search_and_confirm_seeds_apart(name):
    study = load_preset(name).validate()
    assert not set(study.search_seed_list) & set(study.confirm_seeds)
    assert study.search_env_steps <= study.env_steps


def test_smoke_preset_trials_fit_two_cpu_cores():
    """Trial resources come from the algorithms' own request; on 2 cores the smoke preset must still run."""
    from amal_rllib.amal import AMAL
    from amal_rllib.mappo import MAPPO
    from amal_rllib.study.runner import algorithm_config

    study = load_preset("smoke")
    for algo, cls in (("amal", AMAL), ("mappo", MAPPO)):
        config = algorithm_config(study, "3m", algo, gpus=0)
        cpus = sum(b.get("CPU", 0) for b in cls.default_resource_request(config).bundles)
        assert cpus <= 2, (algo, cpus)
        assert config.restart_failed_env_runners


def test_flags_override_preset_and_yaml(tmp_path):
    yaml_file = tmp_path / "study.yaml"
    yaml_file.write_text("seeds: 4\nenv_steps: 2e5\nscenarios: 3m\n")
    args = cli.parser().parse_args(
        ["--config", str(yaml_file), "--seeds", "5", "--scenarios", "3m", "2s3z", "--env-steps", "2e6",
         "--lambda-info-bounds", "0.1", "1.0"]
    )
    study = cli.resolve_study(args, "smoke")
    assert study.seeds == 5 and study.env_steps == 2_000_000 and study.scenarios == ("3m", "2s3z")
    assert study.search_bounds["lambda_info"] == (0.1, 1.0)
    assert study.search_bounds["perturbation_std"] == load_preset("smoke").search_bounds["perturbation_std"]
    assert cli.resolve_study(cli.parser().parse_args(["--config", str(yaml_file)]), "smoke").env_steps == 200_000


def test_yaml_round_trip_of_the_manifest_config():
    study = load_preset("local")
    assert from_mapping(study.to_dict()) == study


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--preset", "smoke", "--scenarios", "9z"], ["--scenarios", "9z", "3m"]),
        (["--preset", "smoke", "--backend", "brood_war"], ["--backend", "smax"]),
        (["--preset", "huge"], ["--preset", "huge", "smoke"]),
        (["--preset", "smoke", "--env-steps", "0"], ["--env-steps", "positive"]),
        (["--preset", "smoke", "--search-env-steps", "-5"], ["--search-env-steps"]),
        (["--preset", "smoke", "--lambda-info-bounds", "0", "2"], ["--lambda-info-bounds", "lambda_info"]),
        (["--preset", "smoke", "--perturbation-std-bounds", "0.01", "50"], ["--perturbation-std-bounds", "10.0"]),
        (["--preset", "smoke", "--seeds", "0"], ["--seeds"]),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(argv, names, capsys):
    rc, err = run_cli(argv, capsys)
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("amal_vs_mappo.py: error:")
    for name in names:
        assert name in err, (name, err)


def test_unknown_yaml_field_names_the_field_and_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: 3\nlambda_infoo: 0.2\n")
    rc, err = run_cli(["--preset", "smoke", "--config", str(bad)], capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert "lambda_infoo" in err and str(bad) in err and "valid fields" in err


def test_resume_with_no_experiment_there(tmp_path, capsys):
    rc, err = run_cli(["--resume", str(tmp_path / "nothing"), "--storage-path", str(tmp_path)], capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert "--resume" in err and "run without --resume" in err
    rc, err = run_cli(["--resume", "--storage-path", str(tmp_path)], capsys)
    assert rc == 2 and "no study under" in err


def test_resume_refuses_new_settings(tmp_path, capsys):
    rc, err = run_cli(["--resume", str(tmp_path), "--seeds", "3"], capsys)
    assert rc == 2 and "keeps the settings" in err


def test_smac_backend_without_starcraft_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SC2PATH", str(tmp_path / "no_sc2"))
    rc, err = run_cli(["--preset", "smoke", "--backend", "smac", "--scenarios", "3m"], capsys)
    assert rc == 2, err
    assert len(err.splitlines()) == 1
    assert "smac" in err.lower() and ("install" in err.lower() or "SC2PATH" in err)


def test_validate_lists_every_bad_field_at_once():
    study = StudyConfig(env_steps=0, seeds=-1, confidence=1.5, num_gpus_per_learner="many")
    with pytest.raises(StudyConfigError) as info:
        study.validate()
    text = str(info.value)
    for field in ("env_steps", "seeds", "confidence", "num_gpus_per_learner"):
        assert field in text


def test_asha_grace_must_leave_room_for_a_greedy_evaluation():
    study = load_preset("smoke").replace(asha_grace_env_steps=100)
    assert any("asha_grace_env_steps" in e for e in study.errors())
    assert not math.isnan(float(load_preset("smoke").asha_grace_env_steps))
    assert os.path.isfile(os.path.join(os.path.dirname(cli.__file__), "presets", "smoke.yaml"))


@pytest.mark.ray
def test_unfinished_trials_counts_trials_tune_never_created_and_not_errored_ones(ray_local, tmp_path):
    """A phase stopped between two trials: Tune's saved state holds fewer trials than the phase needs.

    A real Tune run of two trials (one finishes, one errors) against phases that expect 2 and 5 trials.
    """
    from ray import tune

    from amal_rllib.study.runner import unfinished_trials

    def tiny_trainable(config):  # defined here so that Ray pickles it by value (workers cannot import tests/)
        if config["fail"]:
            raise RuntimeError("this trial fails on purpose")
        tune.report({"score": 1.0})

    tuner = tune.Tuner(
        tiny_trainable,
        param_space={"fail": tune.grid_search([False, True])},
        run_config=tune.RunConfig(name="phase", storage_path=str(tmp_path), verbose=0),
    )
    grid = tuner.fit()
    assert sorted(r.error is not None for r in grid) == [False, True]
    # A finished phase: an errored trial is finished too (run_study reports it as an error, not a stop).
    assert unfinished_trials(tmp_path / "phase", expected=2) == []
    # Three of five trials never created: the stop came between trials.
    assert unfinished_trials(tmp_path / "phase", expected=5) == ["3 not yet created"]

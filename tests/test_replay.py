"""amal_rllib.replay: loading a policy, greedy/random play, SMAX GIFs + index.html, SMAC replays, the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_smac import FakeStarCraft2Env

from amal_rllib.envs import ACTION_MASK_KEY, SMACMultiAgentEnv
from amal_rllib.replay import (
    ALGO_MODULES_SUBDIR,
    COLUMNS,
    GreedyPolicy,
    RandomPolicy,
    find_module_dir,
    load_policy,
    main,
    record_episodes,
)

FAKE_SMAC = {"env_cls": FakeStarCraft2Env, "check_install": False}


def fake_spec(scenario: str = "3m"):
    return SMACMultiAgentEnv(scenario, **FAKE_SMAC).get_env_info()


def build_module(spec):
    """An untrained MAPPO module for ``spec``'s spaces (no Ray, no Algorithm)."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from amal_rllib.mappo.module import MAPPOTorchRLModule

    return RLModuleSpec(
        module_class=MAPPOTorchRLModule,
        observation_space=spec.observation_space(),
        action_space=spec.action_space(),
        model_config={},
    ).build()


@pytest.fixture(scope="module")
def fake_module_dir(tmp_path_factory):
    """An RLModule checkpoint directory (``module.save_to_path``) fitting the fake SMAC 3m."""
    path = tmp_path_factory.mktemp("module") / "shared_policy"
    build_module(fake_spec()).save_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def smax_checkpoint(ray_local, tmp_path_factory):
    """A real (untrained) MAPPO Algorithm checkpoint on SMAX 3m, from ``algo.save_to_path``."""
    from amal_rllib.presets import mappo_config

    config = mappo_config(
        "3m", num_env_runners=0, num_envs_per_env_runner=1, train_batch_size=64, evaluation_interval=None
    )
    algo = config.build_algo()
    try:
        return Path(algo.save_to_path(str(tmp_path_factory.mktemp("algo") / "ckpt")))
    finally:
        algo.stop()


def obs_batch(spec, rng, n: int = 64):
    """``n`` per-agent observation dicts with random features and random non-empty masks."""
    obs = {}
    for i in range(n):
        mask = (rng.random(spec.n_actions) < 0.3).astype(np.float32)
        mask[rng.integers(spec.n_actions)] = 1.0
        obs[f"agent_{i}"] = {
            "obs": rng.normal(size=spec.obs_dim).astype(np.float32),
            "state": rng.normal(size=spec.state_dim).astype(np.float32),
            ACTION_MASK_KEY: mask,
            "alive": np.ones(1, np.float32),
        }
    return obs


# --- policies -----------------------------------------------------------------------------


def test_greedy_policy_is_the_argmax_of_the_valid_logits():
    import torch

    spec = fake_spec()
    module = build_module(spec)
    with torch.no_grad():  # larger logits than the init's tiny head, so the argmax is not a tie
        module.actor[-1].weight.mul_(100.0)
    obs = obs_batch(spec, np.random.default_rng(0))
    actions = GreedyPolicy(module)(obs)
    assert list(actions) == list(obs)
    with torch.no_grad():
        logits = module.actor(torch.from_numpy(np.stack([o["obs"] for o in obs.values()]))).numpy()
    for i, (aid, o) in enumerate(obs.items()):
        valid = np.flatnonzero(o[ACTION_MASK_KEY])
        assert actions[aid] in valid
        assert actions[aid] == valid[np.argmax(logits[i, valid])]


def test_random_policy_is_uniform_over_valid_actions():
    spec = fake_spec()
    obs = obs_batch(spec, np.random.default_rng(1), n=4)
    policy = RandomPolicy(seed=0)
    seen = {aid: set() for aid in obs}
    for _ in range(300):
        for aid, action in policy(obs).items():
            seen[aid].add(action)
    for aid, o in obs.items():
        assert seen[aid] == set(np.flatnonzero(o[ACTION_MASK_KEY]).tolist())
    assert RandomPolicy(seed=3)(obs) == RandomPolicy(seed=3)(obs)


# --- checkpoints ----------------------------------------------------------------------------


def test_bad_checkpoint_paths_raise_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=r"nope does not exist: expected an RLlib Algorithm checkpoint"):
        load_policy(missing)
    with pytest.raises(FileNotFoundError, match=r"is not an RLlib checkpoint: expected .*learner_group/learner"):
        load_policy(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file, not a directory"):
        load_policy(tmp_path / "file.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        record_episodes("3m", "smac", checkpoint=missing, episodes=1, out_dir=tmp_path / "out", env_kwargs=FAKE_SMAC)


def test_cli_exits_non_zero_with_a_message(tmp_path, capsys):
    assert main(["--backend", "smac", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 1
    assert "amal-replay: error: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--episodes", "0"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["--backend", "smac", "--max-steps", "5"])
    assert exc.value.code == 2


def test_cli_entry_point(tmp_path):
    exe = Path(sys.executable).with_name("amal-replay")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "amal_rllib.replay"]
    run = subprocess.run([*cmd, "--checkpoint", str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "does not exist: expected an RLlib Algorithm checkpoint" in run.stderr


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--checkpoint" in capsys.readouterr().out


# --- SMAC (fake StarCraft II) -----------------------------------------------------------------


def test_smac_records_replays_and_sidecars(tmp_path, fake_module_dir):
    out = tmp_path / "replays"
    df = record_episodes(
        "3m", "smac", checkpoint=fake_module_dir, episodes=2, out_dir=out, seed=5, env_kwargs=FAKE_SMAC
    )
    assert list(df.columns) == COLUMNS
    assert list(zip(df["policy"], df["episode"], df["seed"])) == [
        ("trained", 0, 5), ("trained", 1, 6), ("random", 0, 5), ("random", 1, 6),
    ]  # fmt: skip
    for row in df.itertuples(index=False):
        prefix = f"3m_{row.policy}_ep{row.episode:03d}"
        replay = Path(row.file)
        assert replay.parent == out.resolve() and replay.name.startswith(prefix) and replay.suffix == ".SC2Replay"
        assert replay.read_text().startswith("fake SC2 replay: map=3m")
        sidecar = json.loads((out / f"{prefix}.json").read_text())
        assert sidecar["policy"] == row.policy and sidecar["episode"] == row.episode
        assert sidecar["steps"] == row.steps > 0 and sidecar["won"] == row.won and sidecar["file"] == row.file
        assert sidecar["scenario"] == "3m" and sidecar["backend"] == "smac"
        assert math.isfinite(row._3)  # return
    assert df["won"].dtype == bool
    # On disk the table names files relative to its own folder.
    on_disk = df.assign(file=[Path(os.path.relpath(f, out)).as_posix() for f in df["file"]])
    pd.testing.assert_frame_equal(pd.read_csv(out / "episodes.csv"), on_disk, check_dtype=False)
    assert not (out / "index.html").exists()


def test_smac_without_checkpoint_records_random_only(tmp_path):
    df = record_episodes("3m", "smac", episodes=1, out_dir=tmp_path, env_kwargs=FAKE_SMAC)
    assert df["policy"].tolist() == ["random"]
    assert Path(df["file"][0]).name.startswith("3m_random_ep000")


def test_a_policy_of_another_map_is_refused(tmp_path, fake_module_dir):
    with pytest.raises(ValueError, match="does not fit smac 8m"):
        record_episodes("8m", "smac", checkpoint=fake_module_dir, episodes=1, out_dir=tmp_path, env_kwargs=FAKE_SMAC)


# --- SMAX, from a real Algorithm checkpoint ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.ray
def test_load_policy_from_algorithm_checkpoint_layouts(smax_checkpoint):
    from amal_rllib.mappo.module import MAPPOTorchRLModule

    module_dir = smax_checkpoint / ALGO_MODULES_SUBDIR / "shared_policy"
    assert find_module_dir(smax_checkpoint) == module_dir.resolve()
    for path in (smax_checkpoint, module_dir, module_dir.parent):  # algorithm, module, multi-module dirs
        assert isinstance(load_policy(path), MAPPOTorchRLModule)
    with pytest.raises(FileNotFoundError, match="TeamEnvRunner, not of an RLModule"):
        load_policy(smax_checkpoint / "env_runner")


@pytest.mark.slow
@pytest.mark.ray
def test_smax_trained_vs_random_gifs_and_index(smax_checkpoint, tmp_path):
    from PIL import Image

    out = tmp_path / "3m"
    df = record_episodes(
        "3m", "smax", checkpoint=smax_checkpoint, episodes=1, out_dir=out, seed=0, env_kwargs={"max_steps": 25}
    )
    assert list(df.columns) == COLUMNS
    assert df["policy"].tolist() == ["trained", "random"]
    assert df["won"].dtype == bool
    assert ((df["steps"] > 0) & (df["steps"] <= 25)).all()
    assert np.isfinite(df["return"]).all() and (df["return"] >= 0).all()  # SMAX rewards are damage dealt
    html = (out / "index.html").read_text()
    for row in df.itertuples(index=False):
        gif = Path(row.file)
        assert gif.parent == out.resolve() and gif.name == f"3m_{row.policy}_ep000.gif"
        with Image.open(gif) as im:
            assert im.format == "GIF" and im.n_frames > 1
        assert f'src="{gif.name}"' in html
    assert html.index("3m_trained_ep000.gif") < html.index("3m_random_ep000.gif")  # side by side, trained first
    csv = pd.read_csv(out / "episodes.csv")
    assert len(csv) == 2 and csv["won"].dtype == bool and (csv["steps"] > 0).all()


def test_algorithm_checkpoint_restores_in_a_fresh_process(smax_checkpoint):
    """``MAPPO.from_checkpoint`` in a process that never built a preset (so never registered the env names)."""
    code = (
        "import sys, ray; ray.init(address='local', num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
        "from amal_rllib.mappo import MAPPO\n"
        "algo = MAPPO.from_checkpoint(sys.argv[1])\n"
        "print('restored', algo.config.env, algo.env_runner.num_envs)\n"
        "algo.stop()\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(smax_checkpoint)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "restored amal_smax 1" in run.stdout

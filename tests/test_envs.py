"""The env contract (amal_rllib.envs.spec), checked on SMAX 3m and on SMAC over a fake StarCraft II.

The same contract tests run on both adapters. The first SMAX env of the session
costs ~20 s (JaxMARL import + XLA compile); every later one reuses the compiled
program.
"""

from __future__ import annotations

import builtins
import sys
import types

import gymnasium as gym
import numpy as np
import pytest
from fake_smac import FakeStarCraft2Env

from amal_rllib.envs import (
    ACTION_MASK_KEY,
    ALIVE_KEY,
    OBS_KEY,
    SCENARIOS,
    SMAC_NO_OP_ACTION,
    SMAX_NO_OP_ACTION,
    STATE_KEY,
    EnvSpec,
    SMACMultiAgentEnv,
    SMAXMultiAgentEnv,
    SMAXUnavailableError,
    StarCraftUnavailableError,
    env_creator,
    known_scenarios,
    make_env,
    register_envs,
)
from amal_rllib.envs import smax as smax_module

BACKENDS = ["smax", "fake_smac"]


def make(backend: str, limit: int | None = None, seed: int | None = None, **kwargs):
    """SMAX 3m, or the SMAC adapter over the fake StarCraft II (3m)."""
    if backend == "smax":
        return SMAXMultiAgentEnv("3m", max_steps=limit, seed=seed, **kwargs)
    if limit is not None:
        kwargs["episode_limit"] = limit
    return SMACMultiAgentEnv("3m", env_cls=FakeStarCraft2Env, check_install=False, seed=seed, **kwargs)


def random_valid_actions(obs: dict, rng: np.random.Generator) -> dict:
    return {aid: int(rng.choice(np.flatnonzero(o[ACTION_MASK_KEY]))) for aid, o in obs.items()}


def id_one_hot(env, i: int) -> np.ndarray:
    return np.eye(env.get_env_info().n_agents, dtype=np.float32)[i]


def assert_dead_agent_obs(env, aid: str, o: dict) -> None:
    spec = env.get_env_info()
    i = env.agents.index(aid)
    assert o[ALIVE_KEY][0] == 0.0
    np.testing.assert_array_equal(o[OBS_KEY][: spec.raw_obs_dim], 0.0)
    np.testing.assert_array_equal(o[STATE_KEY][: spec.raw_state_dim], 0.0)
    np.testing.assert_array_equal(o[OBS_KEY][spec.raw_obs_dim :], id_one_hot(env, i))
    np.testing.assert_array_equal(o[STATE_KEY][spec.raw_state_dim :], id_one_hot(env, i))
    np.testing.assert_array_equal(np.flatnonzero(o[ACTION_MASK_KEY]), [spec.no_op_action])


def assert_step_contract(env, obs, rewards, terminateds, truncateds) -> None:
    agents = set(env.possible_agents)
    assert set(obs) == agents
    for aid, o in obs.items():
        assert env.observation_spaces[aid].contains(o), aid
        assert o[ACTION_MASK_KEY].sum() >= 1
        i = env.agents.index(aid)
        np.testing.assert_array_equal(o[OBS_KEY][-len(agents) :], id_one_hot(env, i))
        np.testing.assert_array_equal(o[STATE_KEY][-len(agents) :], id_one_hot(env, i))
        if o[ALIVE_KEY][0] == 0:
            assert_dead_agent_obs(env, aid, o)
    assert set(rewards) == agents
    assert len(set(rewards.values())) == 1, "the team reward must be identical for every agent"
    assert all(isinstance(r, float) for r in rewards.values())
    assert set(terminateds) == set(truncateds) == agents | {"__all__"}
    assert len(set(terminateds.values())) == 1 and len(set(truncateds.values())) == 1
    assert not (terminateds["__all__"] and truncateds["__all__"]), "never both terminated and truncated"


# --- contract, on both adapters --------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_spaces_match_spec(backend):
    env = make(backend)
    spec = env.get_env_info()
    assert isinstance(spec, EnvSpec)
    assert env.agents == env.possible_agents == [f"agent_{i}" for i in range(spec.n_agents)] == spec.agent_ids
    assert spec.obs_dim == spec.raw_obs_dim + spec.n_agents and spec.state_dim == spec.raw_state_dim + spec.n_agents
    for aid in env.agents:
        space = env.observation_spaces[aid]
        assert isinstance(space, gym.spaces.Dict)
        assert set(space.spaces) == {OBS_KEY, STATE_KEY, ACTION_MASK_KEY, ALIVE_KEY}
        assert space[OBS_KEY].shape == (spec.obs_dim,) and space[OBS_KEY].dtype == np.float32
        assert space[STATE_KEY].shape == (spec.state_dim,) and space[STATE_KEY].dtype == np.float32
        assert space[ACTION_MASK_KEY].shape == (spec.n_actions,) and space[ALIVE_KEY].shape == (1,)
        assert env.action_spaces[aid] == gym.spaces.Discrete(spec.n_actions)
        assert env.get_observation_space(aid) is space
    expected = {
        # SMAX 3m: obs 75, state 72, 3 + 5 actions; SMAC 3m: obs 30, state 48, 6 + 3 actions
        "smax": (3, 8, 75, 72, 100, SMAX_NO_OP_ACTION, "smax"),
        "fake_smac": (3, 9, 30, 48, 60, SMAC_NO_OP_ACTION, "smac"),
    }[backend]
    got = (spec.n_agents, spec.n_actions, spec.raw_obs_dim, spec.raw_state_dim, spec.episode_limit)
    assert (*got, spec.no_op_action, spec.backend) == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_episode_follows_contract(backend):
    env = make(backend)
    rng = np.random.default_rng(0)
    obs, infos = env.reset(seed=3)
    assert isinstance(infos, dict)
    not_done = dict.fromkeys([*env.agents, "__all__"], False)
    assert_step_contract(env, obs, dict.fromkeys(env.agents, 0.0), not_done, not_done)
    n_actions = env.get_env_info().n_actions
    for t in range(env.get_env_info().episode_limit):
        actions = random_valid_actions(obs, rng)
        for aid, o in obs.items():
            if o[ALIVE_KEY][0] == 0:
                actions[aid] = n_actions - 1  # must be replaced by the no-op, not crash the env
        obs, rewards, terminateds, truncateds, infos = env.step(actions)
        assert_step_contract(env, obs, rewards, terminateds, truncateds)
        done = terminateds["__all__"] or truncateds["__all__"]
        if done:
            assert set(infos) == set(env.agents)
            assert all(isinstance(info["battle_won"], bool) for info in infos.values())
            assert len({info["battle_won"] for info in infos.values()}) == 1
            assert truncateds["__all__"] == (t + 1 == env.get_env_info().episode_limit)
            break
        assert all("battle_won" not in info for info in infos.values())
    else:
        pytest.fail("the episode did not end within the episode limit")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(actions)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_episode(backend):
    def rollout(seed):
        env = make(backend)
        obs, _ = env.reset(seed=seed)
        first = {aid: {k: v.copy() for k, v in o.items()} for aid, o in obs.items()}
        rng = np.random.default_rng(1)
        rewards = []
        for _ in range(8):
            obs, r, te, tr, _ = env.step(random_valid_actions(obs, rng))
            rewards.append(r["agent_0"])
            if te["__all__"] or tr["__all__"]:
                break
        return first, rewards, obs

    first_a, rewards_a, last_a = rollout(123)
    first_b, rewards_b, last_b = rollout(123)
    first_c, _, _ = rollout(124)
    for aid in first_a:
        for key in first_a[aid]:
            np.testing.assert_array_equal(first_a[aid][key], first_b[aid][key])
            np.testing.assert_array_equal(last_a[aid][key], last_b[aid][key])
    assert rewards_a == rewards_b
    assert not np.array_equal(first_a["agent_0"][STATE_KEY], first_c["agent_0"][STATE_KEY])


def test_smax_reset_seed_reproduces_within_one_env_and_episodes_differ():
    env = make("smax", seed=7)
    first, _ = env.reset(seed=11)
    env.step(dict.fromkeys(env.agents, 1))
    again, _ = env.reset(seed=11)
    np.testing.assert_array_equal(first["agent_0"][STATE_KEY], again["agent_0"][STATE_KEY])
    following, _ = env.reset()  # unseeded reset continues the RNG: a new episode
    assert not np.array_equal(following["agent_0"][STATE_KEY], again["agent_0"][STATE_KEY])
    # the constructor seed fixes the unseeded episodes too
    a, _ = make("smax", seed=5).reset()
    b, _ = make("smax", seed=5).reset()
    np.testing.assert_array_equal(a["agent_0"][STATE_KEY], b["agent_0"][STATE_KEY])


@pytest.mark.parametrize("backend", BACKENDS)
def test_episode_limit_truncates(backend):
    env = make(backend, limit=3)
    assert env.get_env_info().episode_limit == 3
    env.reset(seed=0)
    stop = {"smax": SMAX_NO_OP_ACTION, "fake_smac": 1}[backend]  # stop: valid for every living unit
    for t in range(3):
        _, _, terminateds, truncateds, infos = env.step(dict.fromkeys(env.agents, stop))
        assert not any(terminateds.values())
        assert all(truncateds.values()) == (t == 2) and any(truncateds.values()) == (t == 2)
    for info in infos.values():
        assert info == {**info, "battle_won": False, "episode_limit_reached": True}


def test_fake_smac_timeout_is_truncated_without_continuing_episode():
    # SMAC flags time-outs only with continuing_episode=True; the adapter recognises them anyway.
    env = make("fake_smac", limit=2, continuing_episode=False)
    env.reset(seed=0)
    env.step(dict.fromkeys(env.agents, 1))
    _, _, terminateds, truncateds, infos = env.step(dict.fromkeys(env.agents, 1))
    assert truncateds["__all__"] and not terminateds["__all__"]
    assert infos["agent_0"]["episode_limit_reached"]


# --- dead agents -----------------------------------------------------------------
def test_smax_dead_agent_sees_only_its_id_and_the_no_op():
    env = make("smax")
    rng = np.random.default_rng(0)
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        while True:
            obs, _, terminateds, truncateds, _ = env.step(random_valid_actions(obs, rng))
            dead = [aid for aid, o in obs.items() if o[ALIVE_KEY][0] == 0]
            if dead and not (terminateds["__all__"] or truncateds["__all__"]):
                for aid in dead:
                    assert_dead_agent_obs(env, aid, obs[aid])
                # an attack sent for a dead agent is replaced by the no-op: nothing breaks, it stays dead
                actions = random_valid_actions(obs, rng)
                actions.update(dict.fromkeys(dead, 5))
                obs, *_ = env.step(actions)
                for aid in dead:
                    assert_dead_agent_obs(env, aid, obs[aid])
                return
            if terminateds["__all__"] or truncateds["__all__"]:
                break
    pytest.fail("no ally died mid-episode in 20 random SMAX 3m episodes")


def test_fake_smac_dead_agent_sees_only_its_id_and_the_no_op():
    # One enemy that one-shots an ally per step; allies only stop: one dies, then the other.
    env = SMACMultiAgentEnv("2m_vs_1z", env_cls=FakeStarCraft2Env, check_install=False, enemy_damage=100.0)
    obs, _ = env.reset(seed=0)
    for _ in range(20):
        actions = {aid: 1 if o[ALIVE_KEY][0] else 6 for aid, o in obs.items()}  # 6: attack, invalid when dead
        obs, _, terminateds, _, infos = env.step(actions)
        dead = [aid for aid, o in obs.items() if o[ALIVE_KEY][0] == 0]
        for aid in dead:
            assert_dead_agent_obs(env, aid, obs[aid])
        if terminateds["__all__"]:
            assert len(dead) == 2 and not infos["agent_0"]["battle_won"]
            break
    else:
        pytest.fail("the fake battle did not end")
    # The fake asserts like SMAC on unavailable actions: getting here means the dead agent's 6 became the no-op.
    assert env.smac_env.step_calls >= 2


def test_smac_replaces_unavailable_action_of_living_agent_by_stop():
    env = make("fake_smac")
    obs, _ = env.reset(seed=0)
    assert obs["agent_0"][ACTION_MASK_KEY][8] == 0  # enemies start out of range: attacks unavailable
    env.step({aid: 8 for aid in env.agents})  # the fake would fail SMAC's assertion if they were sent
    assert env.replaced_actions == 3
    with pytest.raises(ValueError, match="outside"):
        env.step({"agent_0": 99})


def test_smax_rejects_out_of_range_action():
    env = make("smax")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="actions must lie"):
        env.step({"agent_0": 8, "agent_1": 0, "agent_2": 0})


# --- decided battles ---------------------------------------------------------------
def focus_fire(obs: dict, first_attack: int, move: int) -> dict:
    """Attack the lowest-numbered enemy in range, else move towards the enemy."""
    actions = {}
    for aid, o in obs.items():
        attacks = np.flatnonzero(o[ACTION_MASK_KEY][first_attack:])
        if attacks.size:
            actions[aid] = first_attack + int(attacks[0])
        else:
            actions[aid] = move if o[ACTION_MASK_KEY][move] else int(np.flatnonzero(o[ACTION_MASK_KEY])[0])
    return actions


def run_episode(env, policy, seed):
    obs, _ = env.reset(seed=seed)
    total = 0.0
    while True:
        obs, rewards, terminateds, truncateds, infos = env.step(policy(obs))
        total += rewards["agent_0"]
        if terminateds["__all__"] or truncateds["__all__"]:
            return total, terminateds["__all__"], truncateds["__all__"], infos["agent_0"]


def test_smax_win_and_loss_detection():
    # Focus fire beats the 3m heuristic enemy in about 4 of 10 episodes (action 1 moves east, 5+ attack).
    env = make("smax")
    outcomes = [run_episode(env, lambda o: focus_fire(o, 5, 1), seed) for seed in range(30)]
    wins = [o for o in outcomes if o[3]["battle_won"]]
    losses = [o for o in outcomes if not o[3]["battle_won"]]
    assert wins and losses
    for total, terminated, truncated, info in wins:
        assert terminated and not truncated and not info["episode_limit_reached"]
        assert total > 1.0  # enemy health removed (1.0) + the win bonus (1.0)
        assert info["dead_enemies"] == 3 and info["dead_allies"] < 3
    for total, terminated, truncated, info in losses:
        assert terminated and not truncated  # the heuristic always decides 3m well within 100 steps
        assert total < 1.0 and info["dead_allies"] == 3


def test_fake_smac_win_and_loss_terminate():
    win_env = make("fake_smac", enemy_damage=0.0)
    total, terminated, truncated, info = run_episode(win_env, lambda o: focus_fire(o, 6, 4), seed=0)
    assert terminated and not truncated and info["battle_won"] and total > 10.0  # 200/(max_reward/20) win bonus
    loss_env = make("fake_smac", ally_damage=0.0, enemy_damage=20.0)
    total, terminated, truncated, info = run_episode(loss_env, lambda o: focus_fire(o, 6, 4), seed=0)
    assert terminated and not truncated and not info["battle_won"] and info["dead_allies"] == 3


def test_smax_step_compiles_once():
    env = make("smax")
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, *_ = env.step(random_valid_actions(obs, rng))
    assert env._program.step._cache_size() == 1
    assert env._program.reset._cache_size() == 1
    assert make("smax", limit=7)._program is env._program  # the episode limit is a runtime argument


# --- registry ------------------------------------------------------------------------
def test_make_env_and_scenarios():
    smax_maps = {"3m", "2s3z", "5m_vs_6m", "3s5z", "8m", "25m", "3s_vs_5z", "6h_vs_8z", "27m_vs_30m"}
    assert smax_maps <= set(SCENARIOS["smax"])
    assert {"3m", "8m", "2s3z", "3s5z", "2s_vs_1sc", "5m_vs_6m", "MMM", "corridor"} <= set(SCENARIOS["smac"])
    assert set(known_scenarios("smax")) == set(smax_module._import_smax()[-1])
    env = make_env("3m", max_steps=50)
    assert isinstance(env, SMAXMultiAgentEnv) and env.get_env_info().episode_limit == 50
    env = env_creator({"scenario": "3m", "backend": "smac", "env_cls": FakeStarCraft2Env, "check_install": False})
    assert isinstance(env, SMACMultiAgentEnv) and env.get_env_info().backend == "smac"
    assert isinstance(env_creator({}), SMAXMultiAgentEnv)


@pytest.mark.parametrize("backend", ["smax", "smac"])
def test_unknown_scenario_lists_known_ones(backend):
    with pytest.raises(ValueError, match="Known SMA") as err:
        make_env("4m_vs_nothing", backend=backend)
    assert "3m" in str(err.value) and "2s3z" in str(err.value)
    assert ("corridor" in str(err.value)) == (backend == "smac")


def test_unknown_backend():
    with pytest.raises(ValueError, match="smax, smac"):
        make_env("3m", backend="starcraft3")


def test_register_envs_is_idempotent():
    from ray.tune.registry import ENV_CREATOR, _global_registry

    assert register_envs() == register_envs() == {"smax": "amal_smax", "smac": "amal_smac"}
    creator = _global_registry.get(ENV_CREATOR, "amal_smac")
    env = creator({"scenario": "3m", "env_cls": FakeStarCraft2Env, "check_install": False})
    assert isinstance(env, SMACMultiAgentEnv)
    assert isinstance(_global_registry.get(ENV_CREATOR, "amal_smax")({"max_steps": 9}), SMAXMultiAgentEnv)


def test_env_spec_validates():
    good = dict(scenario="x", n_agents=2, n_actions=4, obs_dim=12, state_dim=7, raw_obs_dim=10, raw_state_dim=5,
                episode_limit=9, no_op_action=0, backend="smax")  # fmt: skip
    EnvSpec(**good)
    with pytest.raises(ValueError, match="raw sizes"):
        EnvSpec(**{**good, "obs_dim": 10})
    with pytest.raises(ValueError, match="backend"):
        EnvSpec(**{**good, "backend": "sc2"})
    with pytest.raises(ValueError, match="no_op_action"):
        EnvSpec(**{**good, "no_op_action": 4})


# --- RLlib ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_rllib_multiagent_env_checker_accepts(backend):
    from ray.rllib.utils.pre_checks.env import check_multiagent_environments

    check_multiagent_environments(make(backend))


# --- replays -------------------------------------------------------------------------
def test_smac_save_replay_passthrough(tmp_path):
    env = make("fake_smac", replay_dir=tmp_path, replay_prefix="mappo_3m")
    run_episode(env, lambda o: focus_fire(o, 6, 4), seed=0)
    path = env.save_replay()
    files = list(tmp_path.iterdir())
    assert [str(f) for f in files] == [path]
    assert files[0].name.startswith("mappo_3m") and files[0].suffix == ".SC2Replay"
    env.close()
    assert env.smac_env.closed


# --- missing dependencies --------------------------------------------------------------
def test_missing_jaxmarl_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name.startswith("jaxmarl"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    monkeypatch.setattr(smax_module, "_PROGRAMS", {})
    with pytest.raises(SMAXUnavailableError, match=r"pip install jaxmarl six"):
        SMAXMultiAgentEnv("3m")
    assert isinstance(SMAXUnavailableError("x"), ImportError)
    assert smax_module.smax_scenarios() == smax_module.DEFAULT_SMAX_SCENARIOS  # listing still works


def _fake_smac_package(monkeypatch):
    smac = types.ModuleType("smac")
    smac.__path__ = []  # a package
    smac_env = types.ModuleType("smac.env")
    smac_env.StarCraft2Env = FakeStarCraft2Env
    smac.env = smac_env
    monkeypatch.setitem(sys.modules, "smac", smac)
    monkeypatch.setitem(sys.modules, "smac.env", smac_env)


def test_missing_smac_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "smac", None)
    with pytest.raises(StarCraftUnavailableError, match="not installed") as err:
        SMACMultiAgentEnv("3m")
    message = str(err.value)
    assert "git+https://github.com/oxwhirl/smac.git" in message and "docker/Dockerfile.sc2" in message
    assert "SC2PATH" in message and "SMAC_Maps" in message
    assert isinstance(err.value, RuntimeError)


def test_smac3_instead_of_smac_is_recognised(monkeypatch):
    monkeypatch.setitem(sys.modules, "smac", types.ModuleType("smac"))  # PyPI's SMAC3: no smac.env
    monkeypatch.delitem(sys.modules, "smac.env", raising=False)
    with pytest.raises(StarCraftUnavailableError, match="SMAC3") as err:
        make_env("3m", backend="smac")
    assert 'pip install "smac @ git+https://github.com/oxwhirl/smac.git"' in str(err.value)


def test_missing_starcraft_ii_and_maps(monkeypatch, tmp_path):
    _fake_smac_package(monkeypatch)
    monkeypatch.setenv("SC2PATH", str(tmp_path / "nowhere"))
    with pytest.raises(StarCraftUnavailableError, match=r"SC2PATH=.*nowhere") as err:
        SMACMultiAgentEnv("3m")
    assert "docker/Dockerfile.sc2" in str(err.value)

    monkeypatch.delenv("SC2PATH")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(StarCraftUnavailableError, match="SC2PATH is not set and ~/StarCraftII does not exist"):
        SMACMultiAgentEnv("3m")

    sc2 = tmp_path / "StarCraftII"
    sc2.mkdir()
    with pytest.raises(StarCraftUnavailableError, match="SMAC_Maps"):
        SMACMultiAgentEnv("3m")  # found through the default ~/StarCraftII

    maps = sc2 / "Maps" / "SMAC_Maps"
    maps.mkdir(parents=True)
    with pytest.raises(StarCraftUnavailableError, match=r"3m\.SC2Map"):
        SMACMultiAgentEnv("3m")

    (maps / "3m.SC2Map").write_bytes(b"")
    monkeypatch.setenv("SC2PATH", str(sc2))
    env = SMACMultiAgentEnv("3m", seed=0)  # the whole check passes: the (fake) smac.env class is used
    assert isinstance(env.smac_env, FakeStarCraft2Env)
    obs, _ = env.reset()
    assert set(obs) == set(env.agents)

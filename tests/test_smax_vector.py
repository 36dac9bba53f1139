"""The vmapped SMAX batch equals independent SMAXMultiAgentEnv instances, step for step."""

import numpy as np
import pytest

from amal_rllib.envs.smax import SMAXMultiAgentEnv
from amal_rllib.envs.smax_vector import SMAXVectorEnv

pytestmark = pytest.mark.slow


def policy(obs):
    """Deterministic: the last valid action (attacks when an enemy is in range)."""
    return {aid: int(np.flatnonzero(o["action_mask"])[-1]) for aid, o in obs.items()}


def assert_same_obs(a, b):
    assert a.keys() == b.keys()
    for aid in a:
        for key in a[aid]:
            np.testing.assert_array_equal(a[aid][key], b[aid][key])


def test_vector_env_matches_single_envs_including_autoreset():
    n_envs, seed = 3, 11
    vector = SMAXVectorEnv(n_envs, "3m")
    singles = [SMAXMultiAgentEnv("3m") for _ in range(n_envs)]
    v_obs, _ = vector.reset(seed=seed)
    s_obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]
    pending_reset = [False] * n_envs
    finished = 0
    for _ in range(80):
        actions = [policy(o) for o in v_obs]
        v_obs, v_rew, v_term, v_trunc, v_info = vector.step(actions)
        for i, env in enumerate(singles):
            if pending_reset[i]:
                # RLlib's next-step auto-reset: fresh episode, zero reward, no done flags.
                s_obs[i], _ = env.reset()
                assert all(r == 0.0 for r in v_rew[i].values())
                assert not v_term[i]["__all__"] and not v_trunc[i]["__all__"]
                pending_reset[i] = False
            else:
                s_obs[i], rew, term, trunc, info = env.step(actions[i])
                assert rew == v_rew[i] and term == v_term[i] and trunc == v_trunc[i] and info == v_info[i]
                if term["__all__"] or trunc["__all__"]:
                    pending_reset[i] = True
                    finished += 1
            assert_same_obs(s_obs[i], v_obs[i])
    assert finished >= n_envs  # every env went through at least one auto-reset


def test_vector_env_rejects_bad_input():
    vector = SMAXVectorEnv(2, "3m")
    with pytest.raises(RuntimeError, match="before reset"):
        vector.step([{}, {}])
    vector.reset(seed=0)
    with pytest.raises(ValueError, match="actions must lie"):
        vector.step([{"agent_0": 99}, {}])
    with pytest.raises(ValueError, match="num_envs"):
        SMAXVectorEnv(0, "3m")

"""``amal_rllib.gc_freeze``: what freezing does to the collector, and MAPPO's use of it."""

import gc
import weakref

import pytest

from amal_rllib.gc_freeze import freeze_long_lived, frozen_count, unfreeze


class _Leaf:
    pass


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture
def thawed():
    unfreeze()
    yield
    unfreeze()


def test_frozen_cyclic_garbage_waits_for_unfreeze_and_acyclic_objects_are_freed_at_once(thawed):
    cyclic, leaf = _Node(), _Leaf()
    cyclic_ref, leaf_ref = weakref.ref(cyclic), weakref.ref(leaf)
    assert freeze_long_lived() > 0
    assert frozen_count() == gc.get_freeze_count() > 0
    del cyclic, leaf
    gc.collect()
    assert leaf_ref() is None  # reference counting still frees frozen objects
    assert cyclic_ref() is not None  # the full collection skipped the frozen cycle
    unfreeze()
    assert frozen_count() == 0
    gc.collect()
    assert cyclic_ref() is None  # back with the collector, the cycle is freed


@pytest.mark.ray
@pytest.mark.slow
def test_mappo_freezes_after_its_first_iteration_in_its_process_and_remote_runners_and_thaws_at_stop(
    ray_local, thawed
):
    from amal_rllib.presets import mappo_config

    config = mappo_config(
        "3m", num_env_runners=1, num_envs_per_env_runner=2, train_batch_size=100, evaluation_interval=None, seed=0
    )
    assert config.gc_freeze is True  # the default
    algo = config.build_algo()
    try:
        assert frozen_count() == 0
        assert algo.env_runner_group.foreach_env_runner(frozen_count, local_env_runner=False) == [0]
        algo.train()
        assert frozen_count() > 100_000  # torch, JAX, Ray and RLlib objects of this process
        assert algo.env_runner_group.foreach_env_runner(frozen_count, local_env_runner=False)[0] > 10_000
    finally:
        algo.stop()
    assert frozen_count() == 0

    off = config.copy(copy_frozen=False).training(gc_freeze=False).env_runners(num_env_runners=0)
    algo = off.build_algo()
    try:
        algo.train()
        assert frozen_count() == 0
    finally:
        algo.stop()


def test_gc_freeze_must_be_a_bool():
    from amal_rllib.presets import mappo_config

    config = mappo_config("3m", evaluation_interval=None).training(gc_freeze="yes")
    with pytest.raises(ValueError, match=r"gc_freeze='yes': must be True or False"):
        config.validate()

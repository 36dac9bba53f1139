"""The Tune trainables of the study: MAPPO and AMAL as they are, plus one thing, the seed of a repeat.

When the search evaluates each configuration on several search seeds, Tune's
``Repeater`` runs it as ``search_seeds`` trials that differ only in
``__trial_index__``; here that index is added to the trial's ``seed``, so the
repeats are different seeds rather than the same run twice.
"""

from __future__ import annotations

from ..amal import AMAL
from ..mappo import MAPPO

TRIAL_INDEX = "__trial_index__"  # ray.tune.search.repeater.TRIAL_INDEX


def trial_seed(config: dict) -> int:
    """The seed a trial with this (Tune) config runs with."""
    return int(config.get("seed") or 0) + int(config.get(TRIAL_INDEX, 0))


def _seeded_config(config):
    if isinstance(config, dict) and TRIAL_INDEX in config:
        config = dict(config)
        config["seed"] = trial_seed(config)
        config.pop(TRIAL_INDEX)
    return config


class MAPPOTrial(MAPPO):
    def __init__(self, config=None, **kwargs):
        super().__init__(_seeded_config(config), **kwargs)


class AMALTrial(AMAL):
    def __init__(self, config=None, **kwargs):
        super().__init__(_seeded_config(config), **kwargs)


TRAINABLES = {"mappo": MAPPOTrial, "amal": AMALTrial}

"""MAPPO on RLlib's new API stack: shared actor, centralised critic, value normalisation."""

from .algorithm import MAPPO
from .config import MAPPOConfig
from .learner import MAPPOTorchLearner
from .module import MAPPOTorchRLModule

__all__ = ["MAPPO", "MAPPOConfig", "MAPPOTorchLearner", "MAPPOTorchRLModule"]

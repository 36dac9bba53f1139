"""AMAL = MAPPO + an isolated world model, an MI exploration bonus and CEM auxiliary runners."""

from .algorithm import AMAL
from .config import AMALConfig
from .learner import AMALTorchLearner
from .module import AMALTorchRLModule

__all__ = ["AMAL", "AMALConfig", "AMALTorchLearner", "AMALTorchRLModule"]

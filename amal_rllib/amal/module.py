"""AMAL's RLModule: MAPPO's shared actor and centralised critic, plus the world model.

The world model lives on the learner only (it is a non-inference attribute,
like the critic), so env runners never carry it.
"""

from __future__ import annotations

from ..core.world_model import GaussianWorldModel
from ..envs.spec import OBS_KEY
from ..mappo.module import MAPPOTorchRLModule

DEFAULT_AMAL_MODEL_CONFIG = {"world_model_hidden": (256, 256, 128), "obs_id_dims": 0}


class AMALTorchRLModule(MAPPOTorchRLModule):
    def setup(self) -> None:
        # The actor and critic are built first, so with the same seed they start
        # exactly as MAPPO's do.
        super().setup()
        if self.inference_only:
            return
        cfg = {**DEFAULT_AMAL_MODEL_CONFIG, **(self.model_config or {})}
        obs_dim = int(self.observation_space[OBS_KEY].shape[0])
        id_dims = int(cfg["obs_id_dims"] or 0)
        if not 0 <= id_dims < obs_dim:
            raise ValueError(f"obs_id_dims={id_dims} must be in [0, obs_dim={obs_dim})")
        self.world_model = GaussianWorldModel(
            obs_dim, obs_dim - id_dims, int(self.action_space.n), tuple(cfg["world_model_hidden"])
        )

    def get_non_inference_attributes(self) -> list[str]:
        return [*super().get_non_inference_attributes(), "world_model"]

    def actor_parameters(self) -> dict:
        """The actor's parameters by name (``phi``), as the MI estimator and CEM see them."""
        return dict(self.actor.named_parameters())

"""AMAL's learner: MAPPO's loss (with importance weights on auxiliary samples) plus the world model.

- Optimizers per module: MAPPO's (the actor and the critic, each its own with
  ``separate_critic_optimizer``; ``lr``) and the world model's
  (``world_model_lr``). Gradient clipping is per optimizer, so the world model
  never changes the policy's update.
- The world-model loss sees only rows with ``world_model_mask`` (primary
  episode, alive agent, real timestep), selected *before* the forward pass, at
  most ``world_model_train_samples`` per gradient step.
"""

from __future__ import annotations

import torch
from ray.rllib.connectors.learner import AddOneTsToEpisodesAndTruncate, GeneralAdvantageEstimation
from ray.rllib.core.columns import Columns

from ..core.world_model import transition_nll, world_model_loss
from ..envs.spec import OBS_KEY
from ..learner_connector import TeamGAE
from ..mappo.learner import MAPPOTorchLearner
from ..metrics import WORLD_MODEL_LOSS, WORLD_MODEL_SAMPLES
from .connectors import (
    AUXILIARY,
    NEXT_OBS,
    WORLD_MODEL_MASK,
    AMALRewardsAndOffPolicy,
    MarkAuxiliaryRows,
    PerSourceAdvantages,
    auxiliary_flag,
)

WORLD_MODEL_OPTIMIZER = "world_model"


def world_model_rows(batch: dict, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(obs, actions, next_obs)`` of the rows the world model may learn from (first ``limit`` of them)."""
    idx = batch[WORLD_MODEL_MASK].reshape(-1).nonzero().squeeze(1)
    if limit is not None:
        idx = idx[:limit]
    return batch[Columns.OBS][OBS_KEY][idx], batch[Columns.ACTIONS][idx], batch[NEXT_OBS][idx]


class AMALTorchLearner(MAPPOTorchLearner):
    def build(self) -> None:
        super().build()
        config = self.config
        # Bulk pipeline: auxiliary rows are flagged while the batch is built (``episode_columns``);
        # RLlib's: by ``MarkAuxiliaryRows`` after the bootstrap rows are added.
        gae = TeamGAE if self.bulk_pipeline else GeneralAdvantageEstimation
        if not self.bulk_pipeline:
            self._learner_connector.insert_after(AddOneTsToEpisodesAndTruncate, MarkAuxiliaryRows())
        self._learner_connector.insert_before(
            gae,
            AMALRewardsAndOffPolicy(
                lambda_info=config.lambda_info,
                perturbation_std=config.perturbation_std,
                mi_samples_M=config.mi_samples_M,
                mi_policies_K=config.mi_policies_K,
                aux_importance_clip=config.aux_importance_clip,
                mi_temperature=config.mi_temperature,
                seed=config.seed,
            ),
        )
        if config.aux_advantage_norm == "per_source":
            self._learner_connector.insert_after(gae, PerSourceAdvantages())

    def episode_columns(self) -> dict:
        return {AUXILIARY: auxiliary_flag}

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        module = self._module[module_id]
        world_model = getattr(module, "world_model", None)
        if world_model is None:
            return super().configure_optimizers_for_module(module_id, config)
        wm_ids = {id(p) for p in world_model.parameters()}
        policy_params = [p for p in self.get_parameters(module) if id(p) not in wm_ids]
        wm_params = list(world_model.parameters())
        self.register_policy_optimizers(module_id, config, policy_params)
        self.register_optimizer(
            module_id=module_id,
            optimizer_name=WORLD_MODEL_OPTIMIZER,
            optimizer=torch.optim.Adam(wm_params),
            params=wm_params,
            lr_or_lr_schedule=config.world_model_lr,
        )

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        total = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        module = self.module[module_id].unwrapped()
        if not hasattr(module, "world_model") or WORLD_MODEL_MASK not in batch:
            return total
        obs, actions, next_obs = world_model_rows(batch, config.world_model_train_samples)
        wm_loss = world_model_loss(module.world_model, obs, actions, next_obs)
        self.metrics.log_dict(
            {WORLD_MODEL_LOSS: wm_loss.detach(), WORLD_MODEL_SAMPLES: float(obs.shape[0])}, key=module_id, window=1
        )
        return total + wm_loss

    @torch.no_grad()
    def world_model_nll(self, module_id: str, transitions: list[dict]) -> list[float]:
        """Mean NLL (nats per agent transition) of the world model on each set of transitions.

        ``transitions``: dicts of numpy arrays ``obs``/``actions``/``next_obs``
        (see ``amal.rollouts.episode_transitions``). Used for CEM fitness.
        """
        module = self.module[module_id].unwrapped()
        out = []
        for t in transitions:
            if len(t["actions"]) == 0:
                out.append(float("nan"))
                continue
            obs, actions, next_obs = (
                torch.as_tensor(t[k], device=self._device) for k in ("obs", "actions", "next_obs")
            )
            out.append(float(transition_nll(module.world_model, obs.float(), actions, next_obs.float()).mean()))
        return out

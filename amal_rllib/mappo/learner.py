"""MAPPO's learner: PPO's clipped objective, Huber value loss on normalised targets,
dead agents masked out of every term."""

from __future__ import annotations

import torch
from ray.rllib.algorithms.ppo.ppo import LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import DEFAULT_OPTIMIZER, ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.torch_utils import explained_variance

from ..core.losses import huber, masked_mean, ppo_clip_objective
from ..envs.spec import ALIVE_KEY
from ..learner_connector import use_bulk_pipeline
from ..metrics import CLIP_FRACTION

#: The critic's optimiser when ``separate_critic_optimizer`` is on (the actor keeps RLlib's default name).
CRITIC_OPTIMIZER = "critic"

#: Optional per-sample weight of the policy term (AMAL: clipped importance ratios of
#: auxiliary samples, 1.0 for on-policy samples). Absent in MAPPO's batches.
SAMPLE_WEIGHT = "sample_weight"


def sample_mask(batch: dict) -> torch.Tensor:
    """1.0 for agent-steps that count in the loss: alive agents at real (unpadded) timesteps."""
    mask = batch[Columns.OBS][ALIVE_KEY].reshape(-1).float()
    if Columns.LOSS_MASK in batch:
        mask = mask * batch[Columns.LOSS_MASK].reshape(-1).float()
    return mask


def check_finite_targets(targets: torch.Tensor) -> None:
    """Fail loudly on a nan/inf value target: it would enter the value normaliser's running statistics and
    every later update (RLlib would only zero the gradients, update after update)."""
    bad = ~torch.isfinite(targets)
    if bool(bad.any()):
        raise FloatingPointError(
            f"{int(bad.sum())} of {targets.numel()} value targets are nan/inf: the rewards (an intrinsic "
            "bonus?) or the critic's values are not finite in this batch; stopping before the value normaliser "
            "and the networks take them in"
        )


class MAPPOTorchLearner(PPOTorchLearner):
    def build(self) -> None:
        super().build()
        # RLlib's PPO pipeline, rebuilt in bulk (same batch; see amal_rllib.learner_connector).
        self.bulk_pipeline = bool(getattr(self.config, "bulk_learner_connector", True)) and use_bulk_pipeline(
            self, episode_columns=self.episode_columns()
        )

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        """PPO's Adam over the module's parameters, with ``lr_anneal_env_steps`` applied."""
        module = self._module[module_id]
        self.register_policy_optimizers(module_id, config, self.get_parameters(module))

    def register_policy_optimizers(self, module_id, config, params: list) -> None:
        """Adam over the actor and critic ``params``: one optimiser (``default_optimizer``), or with
        ``separate_critic_optimizer`` the critic's own (``critic``, JaxMARL's two train states), so
        that ``grad_clip`` clips each network's gradient norm apart. Both follow ``lr_or_schedule()``."""
        critic = getattr(self._module[module_id].unwrapped(), "critic", None)
        critic_ids = {id(p) for p in critic.parameters()} if critic is not None else set()
        groups = [(DEFAULT_OPTIMIZER, params)]
        if config.separate_critic_optimizer and critic_ids:
            groups = [
                (DEFAULT_OPTIMIZER, [p for p in params if id(p) not in critic_ids]),
                (CRITIC_OPTIMIZER, [p for p in params if id(p) in critic_ids]),
            ]
        for name, group in groups:
            self.register_optimizer(
                module_id=module_id,
                optimizer_name=name,
                optimizer=torch.optim.Adam(group, eps=config.adam_eps),
                params=group,
                lr_or_lr_schedule=config.lr_or_schedule(),
            )

    def episode_columns(self) -> dict:
        """Per-chunk constant columns for the bulk pipeline (AMAL adds one)."""
        return {}

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        module = self.module[module_id].unwrapped()
        mask = sample_mask(batch)

        dist = module.get_train_action_dist_cls().from_logits(fwd_out[Columns.ACTION_DIST_INPUTS])
        logp = dist.logp(batch[Columns.ACTIONS])
        surrogate, clipped = ppo_clip_objective(
            logp, batch[Columns.ACTION_LOGP], batch[Postprocessing.ADVANTAGES], config.clip_param
        )
        if SAMPLE_WEIGHT in batch:
            surrogate = surrogate * batch[SAMPLE_WEIGHT]
        entropy = dist.entropy()

        targets = batch[Postprocessing.VALUE_TARGETS]
        check_finite_targets(targets)
        values_n = module.normalized_values(batch)
        if module.use_value_norm:
            module.value_norm.update(targets[mask > 0])
            targets_n = module.value_norm.normalize(targets)
        else:
            targets_n = targets
        vf_loss = masked_mean(huber(values_n - targets_n, config.huber_delta), mask)

        policy_loss = -masked_mean(surrogate, mask)
        mean_entropy = masked_mean(entropy, mask)
        entropy_coeff = self.entropy_coeff_schedulers_per_module[module_id].get_current_value()
        total_loss = policy_loss + config.vf_loss_coeff * vf_loss - entropy_coeff * mean_entropy

        with torch.no_grad():
            values = module.value_norm.denormalize(values_n) if module.use_value_norm else values_n
            alive = mask > 0
            explained = explained_variance(targets[alive], values[alive]) if alive.any() else torch.zeros(())
        self.metrics.log_dict(
            {
                POLICY_LOSS_KEY: policy_loss,
                VF_LOSS_KEY: vf_loss,
                ENTROPY_KEY: mean_entropy,
                CLIP_FRACTION: masked_mean(clipped, mask),
                LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY: explained,
            },
            key=module_id,
            window=1,
        )
        return total_loss

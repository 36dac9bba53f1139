"""``MAPPOConfig``: PPO's config with MAPPO's defaults (Yu et al. 2022, SMAC settings) and knobs.

Deviations from the paper's SMAC settings, and why:
- ``num_epochs`` 5 and one minibatch per epoch: the paper's value for easy maps
  (15 for hard ones); set higher with ``.training(num_epochs=...)``.
- ``train_batch_size_per_learner`` 2,000 env steps (paper: 8 threads x 400 =
  3,200): smaller iterations on 2-core laptops; Tune presets raise it.
- No value clipping (RLlib's ``vf_clip_param`` is unused): the Huber loss on
  normalised targets already bounds the gradient.
"""

from __future__ import annotations

import math
from typing import Any

from ray.rllib.algorithms.algorithm_config import NotProvided
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from ..callbacks import BattleMetricsCallback
from ..env_runner import TeamEnvRunner

SHARED_POLICY = "shared_policy"


def map_to_shared_policy(agent_id: Any, episode: Any = None, **kwargs: Any) -> str:
    """Parameter sharing: every agent of the team uses the same module."""
    return SHARED_POLICY


class MAPPOConfig(PPOConfig):
    def __init__(self, algo_class: type | None = None) -> None:
        if algo_class is None:
            from .algorithm import MAPPO

            algo_class = MAPPO
        super().__init__(algo_class=algo_class)
        # PPO parts with MAPPO's SMAC defaults.
        self.lr = 5e-4
        self.gamma = 0.99
        self.lambda_ = 0.95
        self.clip_param = 0.2
        self.entropy_coeff = 0.01
        self.vf_loss_coeff = 1.0
        self.grad_clip = 10.0
        self.grad_clip_by = "global_norm"
        self.num_epochs = 5
        self.train_batch_size_per_learner = 2000
        self.minibatch_size = None
        self.use_kl_loss = False
        self.kl_coeff = 0.0
        self.vf_clip_param = math.inf
        # MAPPO knobs.
        self.actor_hidden: tuple[int, ...] = (64, 64)
        self.critic_hidden: tuple[int, ...] = (64, 64)
        self.use_layer_norm = True
        self.use_value_norm = True
        self.value_norm_beta = 0.99999
        self.huber_delta = 10.0
        # Several envs per runner batch the per-step connector and forward-pass
        # overhead (~2.5 ms a call). RLlib 2.60's MultiAgentEnvRunner re-numpy-izes
        # every finished episode at every step when `episodes_to_numpy` is on
        # (quadratic in the episodes per sample); TeamEnvRunner converts each
        # returned episode once instead.
        self.num_envs_per_env_runner = 8
        self.episodes_to_numpy = False
        self.env_runner_cls = TeamEnvRunner
        # One shared policy for the whole team; win rate and team return metrics.
        self.multi_agent(policies={SHARED_POLICY}, policy_mapping_fn=map_to_shared_policy)
        self.callbacks(BattleMetricsCallback)

    def training(
        self,
        *,
        actor_hidden: tuple[int, ...] | None = NotProvided,
        critic_hidden: tuple[int, ...] | None = NotProvided,
        use_layer_norm: bool = NotProvided,
        use_value_norm: bool = NotProvided,
        value_norm_beta: float = NotProvided,
        huber_delta: float = NotProvided,
        **kwargs: Any,
    ) -> MAPPOConfig:
        super().training(**kwargs)
        for name, value in (
            ("actor_hidden", actor_hidden),
            ("critic_hidden", critic_hidden),
            ("use_layer_norm", use_layer_norm),
            ("use_value_norm", use_value_norm),
            ("value_norm_beta", value_norm_beta),
            ("huber_delta", huber_delta),
        ):
            if value is not NotProvided:
                setattr(self, name, tuple(value) if name.endswith("hidden") else value)
        return self

    @property
    def _model_config_auto_includes(self) -> dict[str, Any]:
        return super()._model_config_auto_includes | {
            "actor_hidden": tuple(self.actor_hidden),
            "critic_hidden": tuple(self.critic_hidden),
            "use_layer_norm": self.use_layer_norm,
            "use_value_norm": self.use_value_norm,
            "value_norm_beta": self.value_norm_beta,
        }

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        from .module import MAPPOTorchRLModule

        return RLModuleSpec(module_class=MAPPOTorchRLModule)

    def get_default_learner_class(self):
        from .learner import MAPPOTorchLearner

        return MAPPOTorchLearner

    def validate(self) -> None:
        super().validate()
        errors = list(self.mappo_errors())
        if errors:
            self._value_error("Invalid MAPPO config:\n  - " + "\n  - ".join(errors))

    def mappo_errors(self) -> list[str]:
        """Every out-of-range MAPPO setting, as messages that say what is allowed."""
        errors = []
        for name in ("actor_hidden", "critic_hidden"):
            sizes = getattr(self, name)
            if not sizes or not all(isinstance(s, int) and s > 0 for s in sizes):
                errors.append(f"{name}={sizes!r}: must be a non-empty sequence of positive ints, e.g. (64, 64)")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            errors.append(f"lr={self.lr!r}: must be a positive number (schedules are not supported by MAPPO)")
        if not 0.0 < self.clip_param < 1.0:
            errors.append(f"clip_param={self.clip_param}: must be in (0, 1); MAPPO uses 0.2")
        if not 0.0 < self.gamma <= 1.0:
            errors.append(f"gamma={self.gamma}: must be in (0, 1]")
        if not 0.0 <= self.lambda_ <= 1.0:
            errors.append(f"lambda_={self.lambda_}: must be in [0, 1]")
        if isinstance(self.entropy_coeff, (int, float)) and self.entropy_coeff < 0:
            errors.append(f"entropy_coeff={self.entropy_coeff}: must be >= 0")
        if self.vf_loss_coeff < 0:
            errors.append(f"vf_loss_coeff={self.vf_loss_coeff}: must be >= 0")
        if not self.huber_delta > 0:
            errors.append(f"huber_delta={self.huber_delta}: must be > 0")
        if not 0.0 < self.value_norm_beta < 1.0:
            errors.append(f"value_norm_beta={self.value_norm_beta}: must be in (0, 1), e.g. 0.99999")
        if self.num_epochs < 1:
            errors.append(f"num_epochs={self.num_epochs}: must be >= 1")
        if self.grad_clip is not None and not self.grad_clip > 0:
            errors.append(f"grad_clip={self.grad_clip}: must be > 0 or None")
        if self.train_batch_size_per_learner is not None and self.train_batch_size_per_learner < 1:
            errors.append(f"train_batch_size_per_learner={self.train_batch_size_per_learner}: must be >= 1")
        return errors

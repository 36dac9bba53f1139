"""``MAPPOConfig``: PPO's config with MAPPO's structure (Yu et al. 2022) and JaxMARL's SMAX settings.

Structure (Yu et al.): one actor shared by the team on local observations, a
centralised critic on the agent-specific global state, value normalisation,
Huber value loss, dead agents masked out of every term. No value clipping
(RLlib's ``vf_clip_param`` must stay inf): the Huber loss on normalised
targets bounds the gradient.

Optimisation settings (issue 14): JaxMARL's MAPPO on SMAX (lr 2e-3 annealed
linearly to 0 over the run, 4 epochs x 4 minibatches of 128 envs x 128 steps,
entropy 0, gradient norm 0.25, value coefficient 0.5, 128-unit layers, no
LayerNorm, the actor and the critic each with its own Adam and gradient clip
like JaxMARL's two train states), as an MLP: ablations on SMAX 3m (``docs/results/mappo_parity``)
measured these against the paper's settings. The paper's settings, the
defaults before issue 14, stay one call away:
``config.training(**MAPPO_PAPER_SETTINGS)``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from ray.rllib.algorithms.algorithm_config import NotProvided
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from ..callbacks import BattleMetricsCallback
from ..env_runner import TeamEnvRunner
from .module import DEFAULT_MODEL_CONFIG

SHARED_POLICY = "shared_policy"


def map_to_shared_policy(agent_id: Any, episode: Any = None, **kwargs: Any) -> str:
    """Parameter sharing: every agent of the team uses the same module."""
    return SHARED_POLICY


def lr_errors(lr: Any) -> list[str]:
    """``lr``: a positive number or RLlib's piecewise-linear schedule ``[[timestep, lr], ...]``
    (timesteps: env steps sampled, from 0, increasing; rates >= 0, the first > 0)."""
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        return [] if lr > 0 else [f"lr={lr!r}: must be > 0"]
    hint = "a positive number or a schedule [[0, 2e-3], [2_000_000, 0.0]] (env steps, rate)"
    try:
        points = [(float(t), float(v)) for t, v in lr]
    except (TypeError, ValueError):
        return [f"lr={lr!r}: must be {hint}"]
    steps = [t for t, _ in points]
    if not points or steps[0] != 0 or any(b <= a for a, b in itertools.pairwise(steps)):
        return [f"lr={lr!r}: schedule timesteps must start at 0 and increase; {hint}"]
    if any(v < 0 for _, v in points) or points[0][1] <= 0:
        return [f"lr={lr!r}: rates must be >= 0 and the first > 0; {hint}"]
    return []


def linear_lr_anneal(lr: float, env_steps: int) -> list[list[float]]:
    """JaxMARL's ``ANNEAL_LR``: ``lr`` falling linearly to 0 at ``env_steps`` (RLlib schedule format)."""
    return [[0, float(lr)], [int(env_steps), 0.0]]


def with_battle_metrics(callbacks_class: Any) -> Any:
    """``callbacks_class`` (a class, a list of them, or None) with ``BattleMetricsCallback`` in it."""
    if callbacks_class is None:
        return BattleMetricsCallback
    classes = list(callbacks_class) if isinstance(callbacks_class, (list, tuple)) else [callbacks_class]
    if any(isinstance(c, type) and issubclass(c, BattleMetricsCallback) for c in classes):
        return callbacks_class
    return [BattleMetricsCallback, *classes]


#: JaxMARL's SMAX shape, the one place for it (presets, the study and scripts read these): envs per runner,
#: env steps per iteration (128 envs x 128 steps) and minibatches per epoch.
DEFAULT_NUM_ENVS_PER_ENV_RUNNER = 128
DEFAULT_TRAIN_BATCH_SIZE = 16384
DEFAULT_NUM_MINIBATCHES = 4

#: The settings before issue 14 (Yu et al.'s MAPPO SMAC values, 64-unit LayerNorm MLPs): one call away,
#: ``config.training(**MAPPO_PAPER_SETTINGS)``, for runs that compare with the earlier results.
MAPPO_PAPER_SETTINGS: dict[str, Any] = {
    "lr": 5e-4,
    "lr_anneal_env_steps": None,
    "entropy_coeff": 0.01,
    "vf_loss_coeff": 1.0,
    "grad_clip": 10.0,
    "num_epochs": 5,
    "actor_hidden": (64, 64),
    "critic_hidden": (64, 64),
    "use_layer_norm": True,
    "separate_critic_optimizer": False,
    "adam_eps": 1e-8,
}


class MAPPOConfig(PPOConfig):
    def __init__(self, algo_class: type | None = None) -> None:
        if algo_class is None:
            from .algorithm import MAPPO

            algo_class = MAPPO
        super().__init__(algo_class=algo_class)
        # PPO parts: JaxMARL's SMAX settings (module docstring).
        self.lr = 2e-3
        self.lr_anneal_env_steps: int | None = 2_000_000
        self.gamma = 0.99
        self.lambda_ = 0.95
        self.clip_param = 0.2
        self.entropy_coeff = 0.0
        self.vf_loss_coeff = 0.5
        self.grad_clip = 0.25
        self.grad_clip_by = "global_norm"
        self.num_epochs = 4
        self.train_batch_size_per_learner = DEFAULT_TRAIN_BATCH_SIZE
        self.minibatch_size = None
        self.use_kl_loss = False
        self.kl_coeff = 0.0
        self.vf_clip_param = math.inf
        # MAPPO knobs.
        self.actor_hidden: tuple[int, ...] = DEFAULT_MODEL_CONFIG["actor_hidden"]
        self.critic_hidden: tuple[int, ...] = DEFAULT_MODEL_CONFIG["critic_hidden"]
        self.use_layer_norm = DEFAULT_MODEL_CONFIG["use_layer_norm"]
        self.use_value_norm = DEFAULT_MODEL_CONFIG["use_value_norm"]
        self.value_norm_beta = DEFAULT_MODEL_CONFIG["value_norm_beta"]
        self.huber_delta = 10.0
        # JaxMARL's two train states: the actor and the critic each get their own Adam (eps 1e-5) and
        # their own gradient-norm clip. One Adam over both clips them jointly: the critic's gradient
        # then sets the actor's step size.
        self.separate_critic_optimizer = True
        self.adam_eps = 1e-5
        # The learner's episodes-to-batch pipeline in bulk (amal_rllib.learner_connector); False: RLlib's.
        self.bulk_learner_connector = True
        # After the first iteration, move the process's long-lived objects out of the cyclic GC's full
        # passes (amal_rllib.gc_freeze; ~0.1 s per iteration on SMAX 3m); the algorithm's stop undoes it.
        self.gc_freeze = True
        # Many envs per runner: TeamEnvRunner steps them in one vmapped call with one policy forward.
        # RLlib 2.60's MultiAgentEnvRunner re-numpy-izes every finished episode at every step when
        # `episodes_to_numpy` is on (quadratic); TeamEnvRunner converts each returned episode once.
        self.num_envs_per_env_runner = DEFAULT_NUM_ENVS_PER_ENV_RUNNER
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
        bulk_learner_connector: bool = NotProvided,
        gc_freeze: bool = NotProvided,
        lr_anneal_env_steps: int | None = NotProvided,
        separate_critic_optimizer: bool = NotProvided,
        adam_eps: float = NotProvided,
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
            ("bulk_learner_connector", bulk_learner_connector),
            ("gc_freeze", gc_freeze),
            ("lr_anneal_env_steps", lr_anneal_env_steps),
            ("separate_critic_optimizer", separate_critic_optimizer),
            ("adam_eps", adam_eps),
        ):
            if value is not NotProvided:
                setattr(self, name, tuple(value) if name.endswith("hidden") else value)
        return self

    def lr_or_schedule(self) -> Any:
        """What the learner's policy optimiser gets: ``lr`` annealed linearly to 0 at
        ``lr_anneal_env_steps`` (JaxMARL's ``ANNEAL_LR``), or ``lr`` as given (a number or a schedule)."""
        if self.lr_anneal_env_steps and isinstance(self.lr, (int, float)):
            return linear_lr_anneal(self.lr, self.lr_anneal_env_steps)
        return self.lr

    def callbacks(self, callbacks_class: Any = NotProvided, **kwargs: Any) -> MAPPOConfig:
        """RLlib's ``callbacks``, keeping ``BattleMetricsCallback``: the user's classes run beside it.

        RLlib replaces ``callbacks_class``, which would silently drop the win-rate metric
        (``win_rate`` NaN, every study's stop and search key gone).
        """
        if callbacks_class is not NotProvided:
            callbacks_class = with_battle_metrics(callbacks_class)
        return super().callbacks(callbacks_class, **kwargs)

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

    def team_size(self) -> int | None:
        """Agents per env step of the configured team env (None when it is not one of ours)."""
        env_config = dict(self.env_config or {})
        scenario, backend = env_config.get("scenario"), env_config.get("backend")
        if scenario is None or backend is None:
            return None
        from ..envs.registry import scenario_n_agents

        try:
            return int(scenario_n_agents(scenario, backend))
        except (ValueError, ImportError):  # an unknown scenario or a missing backend: the env reports it
            return None

    def _value_error(self, errmsg) -> None:
        # PPO compares `minibatch_size` (agent rows, one per agent and env step) with
        # `train_batch_size_per_learner` (env steps): with n agents a batch has ~n x as many rows, and
        # JaxMARL's 4 minibatches of a 5-agent batch hold more rows than the batch has env steps.
        # That check is made in rows in `mappo_errors` instead.
        rows_vs_steps = errmsg.startswith("`minibatch_size` (") and "`train_batch_size_per_learner`" in errmsg
        if rows_vs_steps and self.team_size() is not None:
            return
        super()._value_error(errmsg)

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
        errors += lr_errors(self.lr)
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
        if not (isinstance(self.adam_eps, (int, float)) and 0 < self.adam_eps < 1):
            errors.append(f"adam_eps={self.adam_eps!r}: must be in (0, 1), e.g. 1e-5")
        for name in ("separate_critic_optimizer", "bulk_learner_connector", "gc_freeze"):
            if not isinstance(getattr(self, name), bool):
                errors.append(f"{name}={getattr(self, name)!r}: must be True or False")
        if self.grad_clip is not None and not self.grad_clip > 0:
            errors.append(f"grad_clip={self.grad_clip}: must be > 0 or None")
        anneal = self.lr_anneal_env_steps
        if anneal is not None and (isinstance(anneal, bool) or not isinstance(anneal, int) or anneal < 1):
            errors.append(f"lr_anneal_env_steps={anneal!r}: must be None (constant lr) or an int >= 1 (env steps)")
        if anneal and not isinstance(self.lr, (int, float)):
            errors.append("lr is a schedule and lr_anneal_env_steps is set: give one of them (lr_anneal_env_steps=None)")
        if self.use_kl_loss:
            errors.append("use_kl_loss=True: MAPPO's loss has no KL term (clipped surrogate only); set it False")
        if self.vf_clip_param is not None and math.isfinite(self.vf_clip_param):
            errors.append(
                f"vf_clip_param={self.vf_clip_param}: MAPPO does not clip values (its Huber loss on normalised "
                "targets bounds the gradient; huber_delta sets where); leave it at inf"
            )
        if with_battle_metrics(self.callbacks_class) is not self.callbacks_class:
            errors.append(
                f"callbacks_class={self.callbacks_class!r} lacks BattleMetricsCallback (win_rate would be NaN); "
                "set callbacks with config.callbacks(...), which keeps it"
            )
        team = self.team_size()
        batch, minibatch = self.train_batch_size_per_learner, self.minibatch_size
        if team and isinstance(batch, int) and isinstance(minibatch, int) and minibatch > batch * team:
            errors.append(
                f"minibatch_size={minibatch}: more agent rows than a batch holds ({batch} env steps x {team} "
                "agents); lower it or raise train_batch_size_per_learner"
            )
        if self.train_batch_size_per_learner is not None and self.train_batch_size_per_learner < 1:
            errors.append(f"train_batch_size_per_learner={self.train_batch_size_per_learner}: must be >= 1")
        return errors

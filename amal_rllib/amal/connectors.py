"""AMAL's learner connector pieces (thin: unpack, call the pure maths, write columns, log).

``MarkAuxiliaryRows`` (right after ``AddOneTsToEpisodesAndTruncate``): a 0/1
column saying which rows came from auxiliary episodes (their episode ids carry
``AUX_EPISODE_PREFIX``).

``AMALRewardsAndOffPolicy`` (right before GAE, on the full batch, before any
minibatching):
- next-observation column for the world model: row ``t + 1`` of the same
  episode chunk (every chunk ends with the phantom bootstrap row, whose loss
  mask is 0, so row ``t + 1`` never belongs to another chunk for a real row);
- ``world_model_mask``: real timestep, alive agent, primary episode;
- Idea 2: ``lambda_info * std(r) * I_hat / std(I_hat)`` added to the rewards of
  primary rows, so GAE turns the bonus into advantages;
- auxiliary rows: the current policy's log-prob replaces the behaviour one in
  ``action_logp`` (PPO's ratio is then taken against the current policy) and
  ``sample_weight`` = ``min(pi(a|o) / mu(a|o), aux_importance_clip)`` with the
  candidate's stored log-prob ``mu``: the truncated importance ratio.

``PerSourceAdvantages`` (right after GAE, only with ``aux_advantage_norm =
"per_source"``): the advantages, already standardised over the whole batch by
RLlib's GAE, are standardised again within the primary rows and within the
auxiliary rows. A batch without auxiliary rows is left untouched, so AMAL
without auxiliary data stays MAPPO exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing

from ..core.mi import (
    fit_likelihood_temperature,
    masked_log_policy,
    mi_estimate_parts,
    normalised_bonus,
    sample_parameter_noise,
)
from ..core.world_model import action_log_likelihoods
from ..envs.spec import ACTION_MASK_KEY, ALIVE_KEY, OBS_KEY
from ..mappo.learner import SAMPLE_WEIGHT
from ..metrics import (
    AUX_IMPORTANCE_WEIGHT_MEAN,
    AUX_SAMPLE_FRACTION,
    INTRINSIC_EXTRINSIC_RATIO,
    MI_BONUS_MEAN,
    MI_BONUS_STD,
    MI_CEILING_MEAN,
    MI_DEATH_FRACTION,
    MI_ESTIMATE_HIT_MEAN,
    MI_ESTIMATE_MEAN,
    MI_ESTIMATE_MISS_MEAN,
    MI_ESTIMATE_POSITIVE_FRACTION,
    MI_ESTIMATE_STD,
    MI_ESTIMATE_UNTEMPERED_MEAN,
    MI_HIT_RATE,
    MI_TEMPERATURE,
)

AUX_EPISODE_PREFIX = "amal-aux-"
AUXILIARY = "amal_auxiliary"
NEXT_OBS = "amal_next_obs"
WORLD_MODEL_MASK = "world_model_mask"


def standardize_per_group(values: torch.Tensor, group: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``(x - mean) / max(eps, std)`` within the rows where ``group`` is true and within the others.

    RLlib's GAE standardisation (population std, floor ``eps``), applied to
    each group on its own. A group with no rows is skipped.
    """
    out = values.clone()
    for rows in (group, ~group):
        if bool(rows.any()):
            x = values[rows]
            out[rows] = (x - x.mean()) / x.std(unbiased=False).clamp_min(eps)
    return out


@dataclass(frozen=True)
class BatchRows:
    """What AMAL's connector reads off a module batch, all ``[B]`` masks over its rows.

    ``x``/``next_x`` ``[B, Do]`` (``next_x`` is row ``t + 1``: see the module docstring), ``action_mask``
    ``[B, A]``; ``primary``: real timestep, alive agent, primary episode (what the world model and the
    bonus may use); ``dying``: primary rows whose next row is dead (``o'`` is the death mask, whatever the
    action: no bonus); ``scored``: the indices of the primary rows that get the bonus.
    """

    x: torch.Tensor
    next_x: torch.Tensor
    action_mask: torch.Tensor
    real: torch.Tensor
    aux: torch.Tensor
    primary: torch.Tensor
    dying: torch.Tensor
    scored: torch.Tensor


def batch_rows(module_batch: dict) -> BatchRows:
    obs = module_batch[Columns.OBS]
    x = obs[OBS_KEY]
    alive = obs[ALIVE_KEY].reshape(-1) > 0.5
    real = module_batch[Columns.LOSS_MASK].reshape(-1).bool()
    aux = module_batch[AUXILIARY].reshape(-1) > 0.5 if AUXILIARY in module_batch else torch.zeros_like(real)
    primary = real & alive & ~aux
    dying = primary & ~torch.roll(alive, shifts=-1, dims=0)
    return BatchRows(
        x=x,
        next_x=torch.roll(x, shifts=-1, dims=0),
        action_mask=obs[ACTION_MASK_KEY],
        real=real,
        aux=aux,
        primary=primary,
        dying=dying,
        scored=(primary & ~dying).nonzero().squeeze(1),
    )


def is_auxiliary_episode_id(episode_id: str) -> bool:
    return str(episode_id).startswith(AUX_EPISODE_PREFIX)


def auxiliary_flag(sa_episode) -> float:
    """1.0 for an agent's chunk of an auxiliary episode, else 0.0."""
    return float(is_auxiliary_episode_id(sa_episode.multi_agent_episode_id or sa_episode.id_))


class MarkAuxiliaryRows(ConnectorV2):
    def __call__(self, *, rl_module, batch, episodes, **kwargs) -> Any:
        for sa_episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            flag = auxiliary_flag(sa_episode)
            self.add_n_batch_items(batch, AUXILIARY, [flag] * len(sa_episode), len(sa_episode), sa_episode)
        return batch


class AMALRewardsAndOffPolicy(ConnectorV2):
    def __init__(
        self,
        input_observation_space=None,
        input_action_space=None,
        *,
        lambda_info: float,
        perturbation_std: float,
        mi_samples_M: int,
        mi_policies_K: int,
        aux_importance_clip: float,
        mi_temperature: float | None = None,
        seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.lambda_info = float(lambda_info)
        self.perturbation_std = float(perturbation_std)
        self.mi_samples_M = int(mi_samples_M)
        self.mi_policies_K = int(mi_policies_K)
        self.aux_importance_clip = float(aux_importance_clip)
        self.mi_temperature = None if mi_temperature is None else float(mi_temperature)
        self._seed = 0 if seed is None else int(seed)
        self._generators: dict[str, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        # A generator of its own: the noise draws never shift the global torch RNG.
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self._seed + 7919)
        return self._generators[key]

    def __call__(self, *, rl_module, batch, episodes, metrics=None, **kwargs) -> Any:
        for module_id, module_batch in batch.items():
            module = rl_module[module_id]
            if not hasattr(module, "world_model"):
                continue
            stats = self.process_module_batch(module, module_batch)
            if metrics is not None:
                metrics.log_dict(stats, key=module_id, window=1)
        return batch

    @torch.no_grad()
    def process_module_batch(self, module, module_batch: dict) -> dict[str, float]:
        selected = batch_rows(module_batch)
        x, action_mask, real, aux = selected.x, selected.action_mask, selected.real, selected.aux
        module_batch[NEXT_OBS] = selected.next_x
        module_batch[WORLD_MODEL_MASK] = selected.primary.float()
        stats: dict[str, float] = {AUX_SAMPLE_FRACTION: float((aux & real).sum() / real.sum().clamp_min(1))}

        if self.lambda_info > 0 and int(selected.primary.sum()) >= 2:
            stats |= self._add_bonus(module, module_batch, selected)

        weights = torch.ones_like(real, dtype=torch.float32)
        aux_rows = aux & real
        if bool(aux_rows.any()):
            logits = module.actor(x[aux_rows])
            log_pi = masked_log_policy(logits, action_mask[aux_rows])
            current = log_pi.gather(1, module_batch[Columns.ACTIONS][aux_rows].long()[:, None]).squeeze(1)
            behaviour = module_batch[Columns.ACTION_LOGP][aux_rows]
            ratio = torch.exp(current - behaviour).clamp(max=self.aux_importance_clip)
            weights[aux_rows] = ratio.float()
            logp = module_batch[Columns.ACTION_LOGP].clone()
            logp[aux_rows] = current.to(logp.dtype)
            module_batch[Columns.ACTION_LOGP] = logp
            stats[AUX_IMPORTANCE_WEIGHT_MEAN] = float(ratio.mean())
        module_batch[SAMPLE_WEIGHT] = weights
        return stats

    def _add_bonus(self, module, module_batch, selected: BatchRows) -> dict[str, float]:
        """Idea 2 on the primary rows: ``I_hat`` at a calibrated likelihood temperature, scaled into the rewards.

        Death transitions (alive at ``o``, dead at ``o'``: ``o'`` is the death mask whatever the
        action) get no bonus and do not enter the temperature fit.
        """
        x, next_x, action_mask, rows = selected.x, selected.next_x, selected.action_mask, selected.scored
        stats = {MI_DEATH_FRACTION: float(selected.dying.sum() / selected.primary.sum())}
        if rows.numel() < 2:
            return stats
        actions = module_batch[Columns.ACTIONS][rows].long()
        log_lik = action_log_likelihoods(module.world_model, x[rows], next_x[rows])
        params = {name: p.detach() for name, p in module.actor.named_parameters()}
        if self.mi_temperature is None:  # fitted on the policy the MI pass computes

            def temperature(log_pi: torch.Tensor) -> float:
                return cross_fitted_temperature(log_pi, log_lik, actions)

        else:
            temperature = self.mi_temperature
        noise = sample_parameter_noise(
            params,
            math.ceil(rows.numel() / self.mi_samples_M),
            self.mi_policies_K,
            self.perturbation_std,
            generator=self._generator(x.device),
        )
        parts = mi_estimate_parts(
            module.actor, params, noise, x[rows], action_mask[rows], log_lik, actions, temperature
        )
        mi = parts.estimate
        extrinsic = module_batch[Columns.REWARDS][rows].float()
        bonus = normalised_bonus(mi, self.lambda_info, scale=float(extrinsic.std()))
        if not bool(torch.isfinite(bonus).all()):
            raise FloatingPointError(
                f"AMAL's MI bonus is nan/inf on {int((~torch.isfinite(bonus)).sum())} of {bonus.numel()} rows "
                f"(likelihood temperature {parts.temperature}, world-model log-likelihoods finite: "
                f"{bool(torch.isfinite(log_lik).all())}); refusing to add it to the rewards"
            )
        rewards = module_batch[Columns.REWARDS].clone()
        rewards[rows] += bonus.to(rewards.dtype)
        module_batch[Columns.REWARDS] = rewards
        hit = log_lik.argmax(dim=1) == actions
        return stats | {
            MI_ESTIMATE_MEAN: float(mi.mean()),
            MI_ESTIMATE_STD: float(mi.std()),
            MI_ESTIMATE_POSITIVE_FRACTION: float((mi > 0).float().mean()),
            MI_BONUS_MEAN: float(bonus.mean()),
            MI_BONUS_STD: float(bonus.std()),
            INTRINSIC_EXTRINSIC_RATIO: float(bonus.abs().sum() / extrinsic.abs().sum().clamp_min(1e-8)),
            MI_TEMPERATURE: parts.temperature,
            MI_HIT_RATE: float(hit.float().mean()),
            MI_ESTIMATE_HIT_MEAN: float(mi[hit].mean()) if hit.any() else math.nan,
            MI_ESTIMATE_MISS_MEAN: float(mi[~hit].mean()) if (~hit).any() else math.nan,
            MI_CEILING_MEAN: float(parts.ceiling.mean()),
            MI_ESTIMATE_UNTEMPERED_MEAN: float(parts.untempered.mean()),
        }


def cross_fitted_temperature(log_pi: torch.Tensor, log_lik: torch.Tensor, actions: torch.Tensor) -> float:
    """:func:`fit_likelihood_temperature` on held-out rows: fitted on the even rows and on the odd ones,
    each fit scored on the other half; returns the mean of the two fits."""
    taus = []
    for fold in (0, 1):
        fit = torch.arange(log_pi.shape[0], device=log_pi.device) % 2 == fold
        taus.append(fit_likelihood_temperature(log_pi[fit], log_lik[fit], actions[fit]))
    return float(sum(taus) / len(taus))


class PerSourceAdvantages(ConnectorV2):
    def __call__(self, *, rl_module, batch, episodes, **kwargs) -> Any:
        for module_batch in batch.values():
            if AUXILIARY not in module_batch or Postprocessing.ADVANTAGES not in module_batch:
                continue
            aux = module_batch[AUXILIARY].reshape(-1) > 0.5
            if bool(aux.any()):
                advantages = module_batch[Postprocessing.ADVANTAGES]
                module_batch[Postprocessing.ADVANTAGES] = standardize_per_group(advantages.reshape(-1), aux).view_as(
                    advantages
                )
        return batch

"""The MI bonus's per-transition inputs, computed while the primary env runner samples.

The bonus (``connectors.AMALRewardsAndOffPolicy``) needs, for every alive primary
agent-step, the world model's ``log p(o' | o, a)`` of every action and the
``K + 1`` log-policies ``log pi_k(a | o)`` (the actor and its ``K`` perturbations).
Both depend only on the transition, the world model and the actor, and neither
changes between sampling and the learner's connector. Computed in the
connector they are the learner's largest AMAL-only cost (~0.5 s of a default 3m
iteration on 2 cores), while the vectorised sampler leaves ~0.65 of a core idle
as the jitted env steps.

:class:`SamplerMIInputs` is a step observer for :class:`~amal_rllib.rollout.VectorRollout`:
``observe`` hands it each step's observations, a background thread computes the
inputs for every ``block_steps`` steps with the *learner's* modules (same
process: the local env runner and the local learner), and ``finish`` returns
them as ``[T, E, N, ...]`` arrays that the rollout stores as extra model outputs
(``MI_LOG_LIK``, ``MI_LOG_POLICIES``). They reach the learner batch like
``action_logp``; the connector fits the temperature and finishes the estimate
(:func:`~amal_rllib.core.mi.mi_parts_from_log_policies`). Rows of agents dead at
``o`` are NaN (they get no bonus).

The numbers are those the connector would compute, except the grouping of the
perturbation draws: here each block's alive rows are cut into chunks of at most
``mi_samples_M`` rows, each with its own ``K`` draws (the connector cuts the
learner batch instead). Every row still gets ``K`` i.i.d. draws shared with at
most ``M - 1`` others.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Mapping

import numpy as np
import torch

from ..core.mi import per_row_log_policies, sample_parameter_noise
from ..core.world_model import action_log_likelihoods
from ..envs.spec import ACTION_MASK_KEY, ALIVE_KEY, OBS_KEY

logger = logging.getLogger(__name__)

#: Extra model outputs (then learner batch columns) holding the precomputed inputs.
MI_LOG_LIK = "amal_mi_log_lik"
MI_LOG_POLICIES = "amal_mi_log_policies"
#: Env steps per background block: 8 x 384 agent rows on 3m with 128 sub-envs, ~3 noise chunks of 1,024.
DEFAULT_BLOCK_STEPS = 8


class SamplerMIInputs:
    """Computes ``MI_LOG_LIK`` ``[A]`` and ``MI_LOG_POLICIES`` ``[K + 1, A]`` per agent-step while a rollout steps.

    ``module``: the learner's AMAL module (``actor`` and ``world_model``), read, never written;
    ``layout``: ``{key: slice}`` of the packed observation rows (``obs``, ``action_mask``, ``alive``).
    One rollout at a time: ``start``, ``observe`` per step, then ``finish`` (or ``cancel``).
    """

    def __init__(
        self,
        module,
        layout: Mapping[str, slice],
        *,
        mi_policies_K: int,
        perturbation_std: float,
        mi_samples_M: int,
        seed: int = 0,
        block_steps: int = DEFAULT_BLOCK_STEPS,
    ) -> None:
        if block_steps < 1:
            raise ValueError(f"block_steps={block_steps}: must be >= 1")
        self.module = module
        self.layout = {key: layout[key] for key in (OBS_KEY, ACTION_MASK_KEY, ALIVE_KEY)}
        self.num_policies = int(mi_policies_K)
        self.perturbation_std = float(perturbation_std)
        self.chunk_rows = int(mi_samples_M)
        self.block_steps = int(block_steps)
        self._generator_seed = int(seed)
        self._generator: torch.Generator | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ rollout side
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("SamplerMIInputs.start: the previous rollout was neither finished nor cancelled")
        self._device = next(self.module.world_model.parameters()).device
        if self._generator is None:
            self._generator = torch.Generator(device=self._device).manual_seed(self._generator_seed)
        self._params = {name: p.detach() for name, p in self.module.actor.named_parameters()}
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._steps = 0
        self._blocks: queue.Queue = queue.Queue()
        self._results: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._error: BaseException | None = None
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(1)
        self._thread = threading.Thread(target=self._work, name="amal-mi-inputs", daemon=True)
        self._thread.start()

    def observe(self, obs: np.ndarray, next_obs: np.ndarray) -> None:
        """One env step: packed rows ``[E, N, W]`` before it (``obs``) and after it (``next_obs``, pre-reset)."""
        self._pending.append((obs, next_obs))
        if len(self._pending) >= self.block_steps:
            self._flush()

    def finish(self) -> dict[str, np.ndarray]:
        """Waits for the background thread; ``{MI_LOG_LIK: [T, E, N, A], MI_LOG_POLICIES: [T, E, N, K+1, A]}``."""
        self._flush()
        self._stop()
        if self._error is not None:
            raise RuntimeError("computing the MI bonus's inputs during sampling failed") from self._error
        self._results.sort(key=lambda item: item[0])
        return {
            MI_LOG_LIK: np.concatenate([lik for _, lik, _ in self._results]),
            MI_LOG_POLICIES: np.concatenate([pis for _, _, pis in self._results]),
        }

    def cancel(self) -> None:
        """Drops the rollout (the sampler failed or stepped nothing)."""
        self._pending = []
        if self._thread is not None:
            self._stop()

    def _flush(self) -> None:
        if not self._pending:
            return
        obs = np.stack([o for o, _ in self._pending])
        next_obs = np.stack([n for _, n in self._pending])
        self._blocks.put((self._steps, obs, next_obs))
        self._steps += len(self._pending)
        self._pending = []

    def _stop(self) -> None:
        self._blocks.put(None)
        self._thread.join()
        self._thread = None
        torch.set_num_threads(self._threads_before)

    # ------------------------------------------------------------------ background thread
    def _work(self) -> None:
        with torch.no_grad():  # grad mode is per thread
            while (item := self._blocks.get()) is not None:
                if self._error is not None:
                    continue
                try:
                    start, obs, next_obs = item
                    self._results.append((start, *self.block_inputs(obs, next_obs)))
                except BaseException as exc:  # re-raised by finish() in the sampling thread
                    self._error = exc

    def block_inputs(self, obs: np.ndarray, next_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The inputs of one block of steps ``[S, E, N, W]``: ``([S, E, N, A], [S, E, N, K+1, A])``, NaN where dead."""
        lead = obs.shape[:-1]
        rows = obs.reshape(-1, obs.shape[-1])
        alive = np.flatnonzero(rows[:, self.layout[ALIVE_KEY]].reshape(rows.shape[0], -1)[:, 0] > 0.5)
        n_actions = self.layout[ACTION_MASK_KEY].stop - self.layout[ACTION_MASK_KEY].start
        log_lik = np.full((rows.shape[0], n_actions), np.nan, np.float32)
        log_pis = np.full((rows.shape[0], self.num_policies + 1, n_actions), np.nan, np.float32)
        if alive.size:
            device = self._device
            x = torch.from_numpy(np.ascontiguousarray(rows[alive, self.layout[OBS_KEY]])).to(device)
            after = next_obs.reshape(-1, next_obs.shape[-1])[alive, self.layout[OBS_KEY]]
            x_next = torch.from_numpy(np.ascontiguousarray(after)).to(device)
            mask = torch.from_numpy(np.ascontiguousarray(rows[alive, self.layout[ACTION_MASK_KEY]])).to(device)
            noise = sample_parameter_noise(
                self._params,
                math.ceil(alive.size / self.chunk_rows),
                self.num_policies,
                self.perturbation_std,
                generator=self._generator,
            )
            log_lik[alive] = action_log_likelihoods(self.module.world_model, x, x_next).cpu().numpy()
            log_pis[alive] = per_row_log_policies(self.module.actor, self._params, noise, x, mask).cpu().numpy()
        return log_lik.reshape(*lead, n_actions), log_pis.reshape(*lead, self.num_policies + 1, n_actions)

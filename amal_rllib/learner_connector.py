"""The learner's episodes-to-batch pipeline in bulk: RLlib's PPO learner connectors, same batch, no per-row Python.

RLlib's default PPO learner pipeline (``AddOneTsToEpisodesAndTruncate``,
``AddObservationsFromEpisodesToBatch``, ``AddColumnsFromEpisodesToTrainBatch``,
..., ``NumpyToTensor``, ``GeneralAdvantageEstimation``) walks every agent's
episode chunk several times in Python and ends with a Python loop over every
row for GAE: on SMAX 3m, 16k env steps (~3,000 agent chunks, 50k rows) cost
~1.6 s per update, more than the gradient steps. The two connectors here build
the same module batches from the episodes' numpy buffers with one slice per
chunk and a time-vectorised GAE:

- :class:`TeamEpisodesToBatch`: per module, the columns RLlib's pipeline
  builds, as tensors on the learner's device: ``obs`` (dict), ``actions``,
  ``rewards``, ``terminateds``, ``truncateds``, ``loss_mask`` and every extra
  model output, with RLlib's bootstrap convention: each chunk of ``L`` steps
  gives ``L + 1`` rows, the last one a copy of the final observation (action
  and extra outputs repeated, reward 0, ``loss_mask`` False); the last real row
  carries the chunk's ``terminated`` and its ``truncated`` (True also for a chunk
  cut before its episode ended). ``episode_columns`` adds per-chunk constant
  columns (AMAL: which rows are auxiliary).
- :class:`TeamGAE`: ``compute_values`` on the module batch, then
  :func:`gae` (pure, tested against RLlib's ``compute_value_targets``);
  advantages standardised over the module batch as RLlib does (phantom rows
  included), ``value_targets`` = advantages + values.

``tests/test_learner_connector.py`` checks that the batch equals RLlib's
pipeline's, column by column. Recurrent modules need RLlib's time-dim padding:
:func:`use_bulk_pipeline` leaves RLlib's pipeline in place for them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping

import numpy as np
import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.evaluation.postprocessing import Postprocessing

logger = logging.getLogger(__name__)


def gae(
    values: np.ndarray,
    rewards: np.ndarray,
    terminateds: np.ndarray,
    truncateds: np.ndarray,
    gamma: float,
    lambda_: float,
) -> np.ndarray:
    """GAE advantages of a flat batch of rows, RLlib's ``compute_value_targets`` convention.

    ``terminateds[t]``: no bootstrap from row ``t + 1``; ``truncateds[t]``: row ``t``
    ends a chunk (bootstrap from row ``t + 1``, no propagation across it). The
    recursion runs backwards over time for all chunks at once: rows are
    grouped into chunks at every ``terminated | truncated`` and at the end,
    laid out in a ``[chunks, max_len]`` array, and swept right to left.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if n == 0:
        return np.zeros(0, np.float32)
    rewards = np.asarray(rewards, dtype=np.float64)
    non_terminal = 1.0 - np.asarray(terminateds, dtype=np.float64)
    ends = np.asarray(terminateds, dtype=bool) | np.asarray(truncateds, dtype=bool)
    next_values = np.append(values[1:], 0.0)
    delta = rewards + gamma * non_terminal * next_values - values
    # Chunk id of each row: a chunk ends at a row with `ends` (inclusive) or at the batch's end.
    chunk = np.concatenate([[0], np.cumsum(ends[:-1])])
    starts = np.flatnonzero(np.diff(chunk, prepend=-1))
    pos = np.arange(n) - starts[chunk]
    lens = np.diff(np.append(starts, n))
    grid = np.zeros((len(starts), int(lens.max())))
    grid[chunk, pos] = delta
    coeff = gamma * lambda_
    running = np.zeros(len(starts))
    out = np.zeros_like(grid)
    for t in range(grid.shape[1] - 1, -1, -1):
        running = grid[:, t] + coeff * running * (t < lens - 1)
        out[:, t] = running
    return out[chunk, pos].astype(np.float32)


def _episode_data(buffer, length: int):
    """Rows ``0 .. length - 1`` of a numpy-ized lookback buffer (past its lookback), as arrays."""
    data, start = buffer.data, buffer.lookback
    if isinstance(data, dict):
        return {k: _episode_data_leaf(v, start, length) for k, v in data.items()}
    return _episode_data_leaf(data, start, length)


def _episode_data_leaf(leaf, start: int, length: int):
    if isinstance(leaf, dict):
        return {k: _episode_data_leaf(v, start, length) for k, v in leaf.items()}
    return np.asarray(leaf)[start : start + length]


def _bootstrapped(rows, length: int):
    """Rows ``0 .. length - 1`` plus a copy of row ``length - 1`` (RLlib's phantom row)."""
    if isinstance(rows, dict):
        return {k: _bootstrapped(v, length) for k, v in rows.items()}
    return np.concatenate([rows[:length], rows[length - 1 : length]])


def _concat(parts: list):
    if isinstance(parts[0], dict):
        return {k: _concat([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)


def _to_tensor(x, device):
    if isinstance(x, dict):
        return {k: _to_tensor(v, device) for k, v in x.items()}
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


class TeamEpisodesToBatch(ConnectorV2):
    """Episodes -> per-module column batches of tensors (RLlib's learner pipeline up to GAE, in bulk)."""

    def __init__(
        self,
        input_observation_space=None,
        input_action_space=None,
        *,
        device=None,
        episode_columns: Mapping[str, Callable] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.device = device
        self.episode_columns = dict(episode_columns or {})

    def __call__(self, *, rl_module, batch, episodes, shared_data=None, **kwargs):
        parts: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for sa in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            if not sa.is_numpy:
                sa.to_numpy()
            length = len(sa)
            if length == 0:
                continue
            cols = parts[sa.module_id]
            # Observations 0..L (L + 1 rows: the last one is the bootstrap row).
            cols[Columns.OBS].append(_episode_data(sa.observations, length + 1))
            cols[Columns.ACTIONS].append(_bootstrapped(_episode_data(sa.actions, length), length))
            rewards = np.zeros(length + 1, np.float64)
            rewards[:length] = _episode_data(sa.rewards, length)
            cols[Columns.REWARDS].append(rewards)
            flags = np.zeros((3, length + 1), dtype=bool)
            flags[0, :length] = True
            flags[1, length - 1] = sa.is_terminated
            flags[2, length - 1] = sa.is_truncated or not sa.is_done  # a cut chunk bootstraps
            cols[Columns.LOSS_MASK].append(flags[0])
            cols[Columns.TERMINATEDS].append(flags[1])
            cols[Columns.TRUNCATEDS].append(flags[2])
            for key, buffer in sa.extra_model_outputs.items():
                if key in (Columns.STATE_IN, Columns.STATE_OUT):
                    continue
                cols[key].append(_bootstrapped(_episode_data(buffer, length), length))
            for key, fn in self.episode_columns.items():
                cols[key].append(np.full(length + 1, float(fn(sa)), np.float32))
        for module_id, cols in parts.items():
            device = self.device if self.device is not None else _module_device(rl_module[module_id])
            batch[module_id] = {k: _to_tensor(_concat(v), device) for k, v in cols.items()}
        if shared_data is not None:
            shared_data["_added_loss_mask_for_valid_episode_ts"] = True
        return batch


class TeamGAE(ConnectorV2):
    """RLlib's ``GeneralAdvantageEstimation`` on a bulk batch: values in one forward, GAE vectorised."""

    def __init__(self, input_observation_space=None, input_action_space=None, *, gamma, lambda_, **kwargs) -> None:
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.gamma = float(gamma)
        self.lambda_ = float(lambda_)

    def __call__(self, *, rl_module, batch, episodes, **kwargs):
        for module_id, module_batch in batch.items():
            module = rl_module[module_id]
            if not isinstance(module.unwrapped(), ValueFunctionAPI):
                continue
            with torch.no_grad():
                values_t = module.compute_values(module_batch)
            values = values_t.detach().cpu().numpy().astype(np.float32)
            advantages = gae(
                values,
                module_batch[Columns.REWARDS].cpu().numpy(),
                module_batch[Columns.TERMINATEDS].cpu().numpy(),
                module_batch[Columns.TRUNCATEDS].cpu().numpy(),
                self.gamma,
                self.lambda_,
            )
            targets = advantages + values
            advantages = (advantages - advantages.mean()) / max(1e-4, float(advantages.std()))
            module_batch[Postprocessing.ADVANTAGES] = torch.from_numpy(advantages).to(values_t.device)
            module_batch[Postprocessing.VALUE_TARGETS] = torch.from_numpy(targets).to(values_t.device)
        return batch


def _module_device(module) -> torch.device:
    try:
        return next(module.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def bulk_pipeline_blocker(learner) -> str | None:
    """Why the bulk pipeline cannot replace RLlib's for this learner (None: it can)."""
    config = learner.config
    if config._learner_connector is not None:
        return "a custom learner connector is configured"
    if not config.add_default_connectors_to_learner_pipeline:
        return "add_default_connectors_to_learner_pipeline is off"
    for module_id in learner.module.keys():  # noqa: SIM118 (MultiRLModule is not iterable by key)
        if learner.module[module_id].is_stateful():
            return f"module {module_id!r} is stateful (needs RLlib's time-dim padding)"
    return None


def use_bulk_pipeline(learner, *, episode_columns: Mapping[str, Callable] | None = None) -> bool:
    """Replaces the learner's PPO pipeline by ``[TeamEpisodesToBatch, TeamGAE]`` when it can (logs why not)."""
    reason = bulk_pipeline_blocker(learner)
    if reason is not None:
        logger.warning("learner: RLlib's per-episode learner connectors (slower) because %s", reason)
        return False
    pipeline = learner._learner_connector
    for connector in list(pipeline.connectors):
        pipeline.remove(type(connector).__name__)
    pipeline.append(TeamEpisodesToBatch(device=learner._device, episode_columns=episode_columns))
    pipeline.append(TeamGAE(gamma=learner.config.gamma, lambda_=learner.config.lambda_))
    return True

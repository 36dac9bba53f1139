"""MAPPO's RLModule: one actor shared by all agents, a centralised critic on the global state.

Per-agent observations are dicts (the contract in ``amal_rllib.envs.spec``): ``obs`` (local
observation + agent-id one-hot), ``state`` (global state + agent-id one-hot),
``action_mask`` and ``alive``. The actor reads ``obs`` only; the critic reads
``state`` only; invalid actions get probability 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.inference_only_api import InferenceOnlyAPI
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

from ..core.losses import mask_logits
from ..core.value_norm import ValueNormalizer
from ..envs.spec import ACTION_MASK_KEY, ALIVE_KEY, OBS_KEY, STATE_KEY

#: The module's defaults (``MAPPOConfig`` reads its own from here: one place for each).
DEFAULT_MODEL_CONFIG = {
    "actor_hidden": (128, 128),
    "critic_hidden": (128, 128),
    "use_layer_norm": False,
    "use_value_norm": True,
    "value_norm_beta": 0.99999,
}


def build_mlp(in_dim: int, hidden: Sequence[int], out_dim: int, layer_norm: bool, out_gain: float) -> nn.Sequential:
    """MAPPO's MLP: optional input LayerNorm, [Linear, ReLU, LayerNorm] blocks, linear head.

    Orthogonal init (gain sqrt(2) in the body, ``out_gain`` on the head), zero biases.
    """
    layers: list[nn.Module] = [nn.LayerNorm(in_dim)] if layer_norm else []
    last = in_dim
    for width in hidden:
        linear = nn.Linear(last, width)
        nn.init.orthogonal_(linear.weight, gain=math.sqrt(2.0))
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.ReLU()]
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        last = width
    head = nn.Linear(last, out_dim)
    nn.init.orthogonal_(head.weight, gain=out_gain)
    nn.init.zeros_(head.bias)
    layers.append(head)
    return nn.Sequential(*layers)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_threads_for_this_process() -> int:
    """Torch CPU threads for this process: the CPUs it was given.

    A Ray worker (an env runner, a Tune trial's main process, a remote learner) gets
    ``OMP_NUM_THREADS`` from Ray = the CPUs Ray reserved for it (``num_cpus_per_env_runner``,
    ``num_cpus_for_main_process``, ...), so processes that share a machine never ask for more
    threads than its cores (oversubscribed, 2 threads per process on 2 cores made iterations 2-5x
    slower here). A driver that builds the algorithm itself (a script, the benchmark) gets
    ``OMP_NUM_THREADS`` if the user set it, else every core it may run on: sampling and the
    learner's update take turns in that process (3m, 16,384-step batches, one process, 1 and 2
    threads alternating: the update 3.03 -> 1.95 s, the iteration 4.94 -> 3.90 s;
    ``docs/results/rl_throughput_3m/README.md``).
    """
    value = os.environ.get("OMP_NUM_THREADS")
    if value is None or not value.strip():
        return usable_cores()
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"OMP_NUM_THREADS={value!r}: must be a positive integer (CPU threads per process) or unset")
    return threads


def set_cpu_threads(num_threads: int | None = None) -> None:
    """Torch's intra-op threads on CPU: ``num_threads``, default :func:`cpu_threads_for_this_process`."""
    if torch.cuda.is_available():
        return
    num_threads = cpu_threads_for_this_process() if num_threads is None else num_threads
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)


class MAPPOTorchRLModule(TorchRLModule, ValueFunctionAPI, InferenceOnlyAPI):
    def setup(self) -> None:
        # Runs in every process that holds the module (learner, env runners).
        set_cpu_threads()
        cfg = {**DEFAULT_MODEL_CONFIG, **(self.model_config or {})}
        spaces = self.observation_space
        try:
            obs_dim = int(spaces[OBS_KEY].shape[0])
            state_dim = int(spaces[STATE_KEY].shape[0])
        except (KeyError, TypeError) as exc:
            raise ValueError(
                "MAPPOTorchRLModule needs a Dict observation space with keys "
                f"{[OBS_KEY, STATE_KEY, ACTION_MASK_KEY, ALIVE_KEY]} (see amal_rllib.envs); got {spaces}"
            ) from exc
        n_actions = int(self.action_space.n)
        self.use_value_norm = bool(cfg["use_value_norm"])
        self.actor = build_mlp(obs_dim, cfg["actor_hidden"], n_actions, cfg["use_layer_norm"], out_gain=0.01)
        if not self.inference_only:
            self.critic = build_mlp(state_dim, cfg["critic_hidden"], 1, cfg["use_layer_norm"], out_gain=1.0)
            self.value_norm = ValueNormalizer(beta=cfg["value_norm_beta"])

    def get_non_inference_attributes(self) -> list[str]:
        return ["critic", "value_norm"]

    def _forward(self, batch: dict, **kwargs) -> dict:
        obs = batch[Columns.OBS]
        logits = self.actor(obs[OBS_KEY])
        return {Columns.ACTION_DIST_INPUTS: mask_logits(logits, obs[ACTION_MASK_KEY])}

    def normalized_values(self, batch: dict) -> torch.Tensor:
        """Critic output ``[B]`` in normalised units (what the value loss trains)."""
        return self.critic(batch[Columns.OBS][STATE_KEY]).squeeze(-1)

    def compute_values(self, batch: dict, embeddings=None) -> torch.Tensor:
        """``V(s)`` ``[B]`` in reward units (what GAE needs)."""
        values = self.normalized_values(batch)
        return self.value_norm.denormalize(values) if self.use_value_norm else values

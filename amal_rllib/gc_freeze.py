"""Keep Python's cyclic garbage collector off the objects that live as long as the training process.

After the first training iteration a process holds ~750,000 objects that stay for the whole run (torch,
JAX's compiled env, Ray's and RLlib's internals, the modules). Every iteration builds ~10,000 agent
episodes; the allocations trigger CPython's full collections (generation 2), each of which walked all
of those objects: ~0.3 s per full collection, one every ~2 MAPPO iterations on SMAX 3m, ~0.19 s of
collector time per iteration. ``gc.freeze()`` moves the objects alive at that point into the permanent
generation, which the collector skips: ~0.03 s per iteration, MAPPO's mean iteration 6-7% shorter
(``benchmarks/rl_throughput.py --gc-freeze``, ``docs/results/rl_throughput_3m/README.md``).

Frozen objects are still freed by reference counting; only cyclic garbage among them waits until
:func:`unfreeze` (called when the algorithm stops), so a process never loses memory for good.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def freeze_long_lived(*_args, **_kwargs) -> int:
    """Collect the garbage there is, then freeze every object still alive; returns how many are frozen
    (any arguments ignored: usable as a ``foreach_env_runner`` / ``foreach_learner`` function)."""
    gc.collect()
    gc.freeze()
    count = gc.get_freeze_count()
    logger.debug("gc.freeze: %d long-lived objects moved to the permanent generation", count)
    return count


def unfreeze() -> None:
    """Give the frozen objects back to the collector (their cyclic garbage is collected again)."""
    gc.unfreeze()


def frozen_count(*_args, **_kwargs) -> int:
    """Objects in this process's permanent generation (any arguments ignored: usable with ``foreach_*``)."""
    return gc.get_freeze_count()

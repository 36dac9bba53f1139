"""The cross-entropy method over a flat parameter vector, as a small pure object.

``N(mean, diag(std^2))`` is the search distribution. ``ask()`` draws a
population, ``tell(candidates, fitness)`` refits ``mean``/``std`` to the elites
(the best ``ceil(elite_fraction * N)``), with ``std`` floored at ``sigma_floor``
so the search never collapses. The state (distribution, generation, RNG) is a
plain dict of numpy arrays and ints, for checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CEMStats:
    """What one ``tell`` did: fitness of the generation and the refitted spread."""

    generation: int
    best_fitness: float
    mean_fitness: float
    elite_mean_fitness: float
    sigma_norm: float


class CEMPopulation:
    def __init__(
        self,
        mean: np.ndarray,
        *,
        init_sigma: float,
        population_size: int,
        elite_fraction: float,
        sigma_floor: float,
        seed: int | None = None,
    ) -> None:
        mean = np.asarray(mean, dtype=np.float64).ravel()
        if mean.size == 0:
            raise ValueError("CEM needs a non-empty parameter vector")
        if population_size < 2:
            raise ValueError(f"population_size={population_size}: must be >= 2")
        if not 0.0 < elite_fraction <= 1.0:
            raise ValueError(f"elite_fraction={elite_fraction}: must be in (0, 1]")
        if not init_sigma > 0 or not sigma_floor >= 0:
            raise ValueError(f"init_sigma={init_sigma} must be > 0 and sigma_floor={sigma_floor} >= 0")
        self.mean = mean
        self.std = np.full_like(mean, float(init_sigma))
        self.population_size = int(population_size)
        self.elite_fraction = float(elite_fraction)
        self.sigma_floor = float(sigma_floor)
        self.generation = 0
        self._rng = np.random.default_rng(seed)

    @property
    def num_elites(self) -> int:
        return max(1, math.ceil(self.elite_fraction * self.population_size))

    @property
    def sigma_norm(self) -> float:
        return float(np.linalg.norm(self.std))

    def ask(self, n: int | None = None) -> np.ndarray:
        """``[n, P]`` candidates drawn from the current distribution (``n`` = population size)."""
        n = self.population_size if n is None else int(n)
        return self.mean + self.std * self._rng.standard_normal((n, self.mean.size))

    def tell(self, candidates: np.ndarray, fitness: np.ndarray) -> CEMStats:
        """Refit ``mean``/``std`` to the highest-fitness candidates; returns the generation's stats."""
        candidates = np.asarray(candidates, dtype=np.float64)
        fitness = np.asarray(fitness, dtype=np.float64).ravel()
        if candidates.ndim != 2 or candidates.shape[1] != self.mean.size or candidates.shape[0] != fitness.size:
            raise ValueError(
                f"tell() needs candidates [N, {self.mean.size}] and fitness [N]; got {candidates.shape}, {fitness.shape}"
            )
        if not np.all(np.isfinite(fitness)):
            raise ValueError(f"fitness must be finite; got {fitness[~np.isfinite(fitness)][:5]} ...")
        n_elite = max(1, math.ceil(self.elite_fraction * fitness.size))
        elite = candidates[np.argsort(-fitness, kind="stable")[:n_elite]]
        self.mean = elite.mean(axis=0)
        self.std = np.maximum(elite.std(axis=0), self.sigma_floor)
        self.generation += 1
        return CEMStats(
            generation=self.generation,
            best_fitness=float(fitness.max()),
            mean_fitness=float(fitness.mean()),
            elite_mean_fitness=float(np.sort(fitness)[-n_elite:].mean()),
            sigma_norm=self.sigma_norm,
        )

    def get_state(self) -> dict:
        return {
            "mean": self.mean.copy(),
            "std": self.std.copy(),
            "generation": self.generation,
            "rng": self._rng.bit_generator.state,
        }

    def set_state(self, state: dict) -> None:
        if np.shape(state["mean"]) != self.mean.shape:
            raise ValueError(f"CEM state has {np.size(state['mean'])} parameters, this population {self.mean.size}")
        self.mean = np.array(state["mean"], dtype=np.float64)
        self.std = np.array(state["std"], dtype=np.float64)
        self.generation = int(state["generation"])
        self._rng.bit_generator.state = state["rng"]


def distance_penalised_fitness(
    novelty: np.ndarray, candidates: np.ndarray, anchor: np.ndarray, beta: float
) -> np.ndarray:
    """AMAL's fitness: ``novelty - beta * ||candidate - anchor||`` (``[N]``, ``[N, P]``, ``[P]`` -> ``[N]``)."""
    return np.asarray(novelty, dtype=np.float64) - beta * np.linalg.norm(candidates - anchor[None, :], axis=1)


class GenerationLedger:
    """Where each candidate of the current CEM generation stands: queued, playing, scored.

    AMAL plays a generation over several iterations (``candidates_per_iteration``
    at a time, on the auxiliary runners) and tells CEM once every candidate has a
    fitness. A candidate whose runner failed is queued again (at the front), so a
    generation still completes; a checkpoint taken while candidates are playing
    queues them again on restore.

    - ``offsets`` ``[N, P]``: the deltas CEM asked for (``None`` before the first generation);
    - ``params`` ``[N, P]``: ``phi_t + delta`` as each candidate played (NaN until launched);
    - ``fitness``, ``novelty`` ``[N]``: NaN until scored;
    - ``queue``: not launched yet; ``in_flight``: launched, not collected.
    """

    def __init__(self) -> None:
        self.offsets: np.ndarray | None = None
        self.params: np.ndarray | None = None
        self.fitness: np.ndarray | None = None
        self.novelty: np.ndarray | None = None
        self.queue: list[int] = []
        self.in_flight: list[int] = []
        self.told = False

    def needs_generation(self) -> bool:
        """Nothing left to launch or collect: the next launch starts a new generation."""
        return not self.queue and not self.in_flight

    def unscored(self) -> int:
        """Candidates of the current generation without a fitness (a dropped generation when > 0 at its end)."""
        return 0 if self.fitness is None else int(np.isnan(self.fitness).sum())

    def new_generation(self, offsets: np.ndarray) -> None:
        if self.in_flight:
            raise RuntimeError(f"a new generation while candidates {self.in_flight} are still playing")
        self.offsets = np.asarray(offsets, dtype=np.float64)
        n = len(self.offsets)
        self.params = np.full_like(self.offsets, np.nan)
        self.fitness = np.full(n, np.nan)
        self.novelty = np.full(n, np.nan)
        self.queue = list(range(n))
        self.told = False

    def take(self, k: int) -> list[int]:
        """The next ``k`` queued candidates (fewer at the end of a generation), removed from the queue."""
        taken = self.queue[:k]
        del self.queue[: len(taken)]
        return taken

    def give_back(self, candidates: list[int]) -> None:
        """Candidates taken but not launched (no runner to play them): first in the queue again."""
        self.queue[:0] = list(candidates)

    def launch(self, candidates: list[int], params: np.ndarray) -> None:
        if self.in_flight:
            raise RuntimeError(f"candidates {self.in_flight} are still playing; collect them first")
        self.params[candidates] = params
        self.in_flight = list(candidates)

    def collect(self, returned: set[int] | list[int]) -> list[int]:
        """Ends the flight: returns the candidates that did not come back, queued again at the front."""
        returned = set(returned)
        lost = [c for c in self.in_flight if c not in returned]
        self.in_flight = []
        self.queue[:0] = lost
        return lost

    def score(self, candidates, fitness, novelty) -> None:
        self.fitness[candidates] = fitness
        self.novelty[candidates] = novelty

    def ready_to_tell(self) -> bool:
        """Every candidate scored and none told yet."""
        return (
            self.offsets is not None
            and not self.told
            and self.needs_generation()
            and not np.isnan(self.fitness).any()
        )

    def mark_told(self) -> None:
        self.told = True

    def get_state(self) -> dict:
        """Checkpoint state; candidates playing now are queued again (their results would be lost)."""

        def copy(a):
            return None if a is None else a.copy()

        return {
            "generation": copy(self.offsets),
            "candidate_params": copy(self.params),
            "generation_fitness": copy(self.fitness),
            "generation_novelty": copy(self.novelty),
            "generation_queue": list(self.in_flight) + list(self.queue),
            "generation_told": self.told,
        }

    def set_state(self, state: dict) -> None:
        self.offsets = state["generation"]
        self.params = state["candidate_params"]
        self.fitness = state["generation_fitness"]
        self.novelty = state["generation_novelty"]
        self.queue = list(state["generation_queue"])
        self.in_flight = []
        # Checkpoints written before this flag: a generation with every fitness set was already told.
        self.told = bool(state.get("generation_told", self.fitness is not None and not np.isnan(self.fitness).any()))

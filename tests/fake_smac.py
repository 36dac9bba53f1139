"""A fake ``smac.env.StarCraft2Env``: the same API over a tiny deterministic battle.

It stands in only for StarCraft II, which cannot be installed here. It speaks
SMAC's API exactly as ``SMACMultiAgentEnv`` uses it: ``reset()``, ``get_obs()``,
``get_state()``, ``get_avail_actions()``, ``step(actions) -> (reward,
terminated, info)`` with ``info["battle_won"]`` (and ``info["episode_limit"]`` on a
time-out when ``continuing_episode``), ``get_env_info()``, ``save_replay()``,
``get_stats()``, ``close()``; an unavailable action fails SMAC's assertion.

The battle: marines on a 32x32 map, allies on the left, enemies on the right.
Actions as in SMAC: 0 no-op (dead only), 1 stop, 2-5 move N/S/E/W by 2, 6+j
attack enemy j (within range 6). Each living enemy attacks the closest ally in
range, or else walks 1 towards the closest ally. Observation and state sizes
follow SMAC's formulas for maps without unit types or shields (3m: 30 and 48).
The seed sets the spawn jitter, so one seed gives one sequence of episodes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

# name: (n_agents, n_enemies, episode_limit), as in SMAC's map registry
FAKE_MAPS = {
    "3m": (3, 3, 60),
    "8m": (8, 8, 120),
    "5m_vs_6m": (5, 6, 70),
    "2m_vs_1z": (2, 1, 150),
}

MAP_SIZE = 32.0
SIGHT_RANGE = 9.0
SHOOT_RANGE = 6.0
MOVE_AMOUNT = 2.0
HEALTH_MAX = 45.0
N_ACTIONS_NO_ATTACK = 6


class FakeStarCraft2Env:
    def __init__(
        self,
        map_name: str = "8m",
        seed: int | None = None,
        replay_dir: str = "",
        replay_prefix: str = "",
        continuing_episode: bool = False,
        episode_limit: int | None = None,
        ally_damage: float = 9.0,
        enemy_damage: float = 4.0,
        reward_death_value: float = 10.0,
        reward_win: float = 200.0,
        reward_scale: bool = True,
        reward_scale_rate: float = 20.0,
        state_last_action: bool = True,
    ) -> None:
        if map_name not in FAKE_MAPS:
            raise KeyError(map_name)  # like SMAC's get_map_params
        self.map_name = map_name
        self.n_agents, self.n_enemies, limit = FAKE_MAPS[map_name]
        self.episode_limit = limit if episode_limit is None else episode_limit
        self._seed = seed
        self._rng = np.random.default_rng(seed)
        self.replay_dir = replay_dir
        self.replay_prefix = replay_prefix
        self.continuing_episode = continuing_episode
        self.ally_damage = ally_damage
        self.enemy_damage = enemy_damage
        self.reward_death_value = reward_death_value
        self.reward_win = reward_win
        self.reward_scale = reward_scale
        self.reward_scale_rate = reward_scale_rate
        self.state_last_action = state_last_action
        self.n_actions = N_ACTIONS_NO_ATTACK + self.n_enemies
        self.max_reward = self.n_enemies * (reward_death_value + HEALTH_MAX) + reward_win
        self.launched = False  # real SMAC launches StarCraft II on the first reset()
        self.closed = False
        self.step_calls = 0
        self.battles_won = self.battles_game = self.timeouts = 0
        self._replays = 0
        self._episode_steps = 0
        self._ally_pos = np.zeros((self.n_agents, 2))
        self._enemy_pos = np.zeros((self.n_enemies, 2))
        self._ally_health = np.zeros(self.n_agents)
        self._enemy_health = np.zeros(self.n_enemies)
        self.last_action = np.zeros((self.n_agents, self.n_actions))

    # --- SMAC API --------------------------------------------------------------
    def get_env_info(self) -> dict:
        return {
            "state_shape": self.get_state_size(),
            "obs_shape": self.get_obs_size(),
            "n_actions": self.n_actions,
            "n_agents": self.n_agents,
            "episode_limit": self.episode_limit,
        }

    def get_obs_size(self) -> int:
        return 4 + 5 * self.n_enemies + 5 * (self.n_agents - 1) + 1

    def get_state_size(self) -> int:
        size = 4 * self.n_agents + 3 * self.n_enemies
        return size + (self.n_agents * self.n_actions if self.state_last_action else 0)

    def reset(self):
        self.launched = True
        self._episode_steps = 0
        mid = MAP_SIZE / 2
        ys = mid + np.arange(self.n_agents) - self.n_agents / 2
        ye = mid + np.arange(self.n_enemies) - self.n_enemies / 2
        self._ally_pos = np.stack([np.full(self.n_agents, 9.0), ys], axis=1) + self._rng.uniform(
            -0.5, 0.5, (self.n_agents, 2)
        )
        self._enemy_pos = np.stack([np.full(self.n_enemies, 17.0), ye], axis=1) + self._rng.uniform(
            -0.5, 0.5, (self.n_enemies, 2)
        )
        self._ally_health = np.full(self.n_agents, HEALTH_MAX)
        self._enemy_health = np.full(self.n_enemies, HEALTH_MAX)
        self.last_action = np.zeros((self.n_agents, self.n_actions))
        return self.get_obs(), self.get_state()

    def step(self, actions):
        actions = [int(a) for a in actions]
        assert len(actions) == self.n_agents
        self.step_calls += 1
        self.last_action = np.eye(self.n_actions)[np.array(actions)]
        enemy_health_before = self._enemy_health.copy()
        enemy_alive_before = self._enemy_health > 0

        for a_id, action in enumerate(actions):
            avail = self.get_avail_agent_actions(a_id)
            assert avail[action] == 1, f"Agent {a_id} cannot perform action {action}"
            if action == 0:
                assert self._ally_health[a_id] == 0, "No-op only available for dead agents."
            elif 2 <= action <= 5:
                self._ally_pos[a_id] += MOVE_AMOUNT * np.array([(0, 1), (0, -1), (1, 0), (-1, 0)][action - 2])
            elif action >= N_ACTIONS_NO_ATTACK:
                target = action - N_ACTIONS_NO_ATTACK
                self._enemy_health[target] = max(0.0, self._enemy_health[target] - self.ally_damage)

        for e_id in range(self.n_enemies):
            if self._enemy_health[e_id] <= 0 or not enemy_alive_before[e_id]:
                continue
            alive = np.flatnonzero(self._ally_health > 0)
            if alive.size == 0:
                break
            dists = np.linalg.norm(self._ally_pos[alive] - self._enemy_pos[e_id], axis=1)
            closest = alive[int(np.argmin(dists))]
            if dists.min() <= SHOOT_RANGE:
                self._ally_health[closest] = max(0.0, self._ally_health[closest] - self.enemy_damage)
            else:
                direction = self._ally_pos[closest] - self._enemy_pos[e_id]
                self._enemy_pos[e_id] += direction / np.linalg.norm(direction)

        self._episode_steps += 1
        kills = np.sum(enemy_alive_before & (self._enemy_health <= 0))
        reward = float(np.sum(enemy_health_before - self._enemy_health) + self.reward_death_value * kills)
        info = {"battle_won": False}
        terminated = False
        allies_alive = bool(np.any(self._ally_health > 0))
        enemies_alive = bool(np.any(self._enemy_health > 0))
        if not allies_alive or not enemies_alive:
            terminated = True
            self.battles_game += 1
            if allies_alive:
                self.battles_won += 1
                info["battle_won"] = True
                reward += self.reward_win
        elif self._episode_steps >= self.episode_limit:
            terminated = True
            if self.continuing_episode:
                info["episode_limit"] = True
            self.battles_game += 1
            self.timeouts += 1
        if self.reward_scale:
            reward /= self.max_reward / self.reward_scale_rate
        return reward, terminated, info

    def get_avail_agent_actions(self, agent_id: int) -> list[int]:
        if self._ally_health[agent_id] <= 0:
            return [1] + [0] * (self.n_actions - 1)
        avail = [0] * self.n_actions
        avail[1] = 1
        x, y = self._ally_pos[agent_id]
        m = MOVE_AMOUNT
        for k, (nx, ny) in enumerate([(x, y + m), (x, y - m), (x + m, y), (x - m, y)]):
            if 0 <= nx < MAP_SIZE and 0 <= ny < MAP_SIZE:
                avail[2 + k] = 1
        for e_id in range(self.n_enemies):
            if self._enemy_health[e_id] > 0 and self._dist_ally_enemy(agent_id, e_id) <= SHOOT_RANGE:
                avail[N_ACTIONS_NO_ATTACK + e_id] = 1
        return avail

    def get_avail_actions(self) -> list[list[int]]:
        return [self.get_avail_agent_actions(i) for i in range(self.n_agents)]

    def get_obs_agent(self, agent_id: int) -> np.ndarray:
        move = np.zeros(4, np.float32)
        enemy = np.zeros((self.n_enemies, 5), np.float32)
        ally = np.zeros((self.n_agents - 1, 5), np.float32)
        own = np.zeros(1, np.float32)
        if self._ally_health[agent_id] > 0:
            avail = self.get_avail_agent_actions(agent_id)
            move[:] = avail[2:6]
            pos = self._ally_pos[agent_id]
            for e_id in range(self.n_enemies):
                d = self._dist_ally_enemy(agent_id, e_id)
                if d < SIGHT_RANGE and self._enemy_health[e_id] > 0:
                    rel = (self._enemy_pos[e_id] - pos) / SIGHT_RANGE
                    enemy[e_id] = [avail[N_ACTIONS_NO_ATTACK + e_id], d / SIGHT_RANGE, rel[0], rel[1],
                                   self._enemy_health[e_id] / HEALTH_MAX]  # fmt: skip
            others = [i for i in range(self.n_agents) if i != agent_id]
            for k, al_id in enumerate(others):
                d = float(np.linalg.norm(self._ally_pos[al_id] - pos))
                if d < SIGHT_RANGE and self._ally_health[al_id] > 0:
                    rel = (self._ally_pos[al_id] - pos) / SIGHT_RANGE
                    ally[k] = [1.0, d / SIGHT_RANGE, rel[0], rel[1], self._ally_health[al_id] / HEALTH_MAX]
            own[0] = self._ally_health[agent_id] / HEALTH_MAX
        return np.concatenate([move, enemy.ravel(), ally.ravel(), own])

    def get_obs(self) -> list[np.ndarray]:
        return [self.get_obs_agent(i) for i in range(self.n_agents)]

    def get_state(self) -> np.ndarray:
        center = MAP_SIZE / 2
        ally = np.zeros((self.n_agents, 4))
        for i in range(self.n_agents):
            if self._ally_health[i] > 0:
                ally[i] = [self._ally_health[i] / HEALTH_MAX, 0.0, *((self._ally_pos[i] - center) / MAP_SIZE)]
        enemy = np.zeros((self.n_enemies, 3))
        for j in range(self.n_enemies):
            if self._enemy_health[j] > 0:
                enemy[j] = [self._enemy_health[j] / HEALTH_MAX, *((self._enemy_pos[j] - center) / MAP_SIZE)]
        parts = [ally.ravel(), enemy.ravel()]
        if self.state_last_action:
            parts.append(self.last_action.ravel())
        return np.concatenate(parts).astype(np.float32)

    def save_replay(self) -> str:
        """Write a small stand-in replay file as ``{replay_dir}/{prefix or map}_{n}.SC2Replay``."""
        directory = Path(self.replay_dir or tempfile.gettempdir())
        directory.mkdir(parents=True, exist_ok=True)
        self._replays += 1
        path = directory / f"{self.replay_prefix or self.map_name}_{self._replays:04d}.SC2Replay"
        path.write_text(f"fake SC2 replay: map={self.map_name} seed={self._seed} games={self.battles_game}\n")
        return os.fspath(path)

    def get_stats(self) -> dict:
        return {
            "battles_won": self.battles_won,
            "battles_game": self.battles_game,
            "timeouts": self.timeouts,
            "win_rate": self.battles_won / max(self.battles_game, 1),
        }

    def seed(self):
        return self._seed

    def close(self) -> None:
        self.closed = True

    # --- test helpers (not SMAC API) -------------------------------------------
    def kill_ally(self, agent_id: int) -> None:
        self._ally_health[agent_id] = 0.0

    def _dist_ally_enemy(self, agent_id: int, enemy_id: int) -> float:
        return float(np.linalg.norm(self._enemy_pos[enemy_id] - self._ally_pos[agent_id]))

"""Play and record episodes of a trained MAPPO policy next to a uniformly random one.

``record_episodes`` plays ``episodes`` greedy episodes of the policy in an RLlib
checkpoint (if one is given) and ``episodes`` episodes of a policy that picks
uniformly among the valid actions, on SMAX or SMAC, and records each one:

- SMAX: a GIF per episode drawn with matplotlib from the JaxMARL state the adapter
  holds after every step (one frame per env step: unit positions, team colours,
  health as marker size, dead units as crosses, this step's attacks as lines),
  then ``index.html`` (trained and random episodes side by side) and
  ``episodes.csv``. JaxMARL's own ``SMAXVisualizer`` is not used: its renderer
  runs an un-jitted ``jax.lax.cond`` per unit per frame, which compiles each time
  (~1 s a frame here), and its frame buffer breaks when the saving dpi differs
  from the figure's.
- SMAC: one adapter (so one StarCraft II game) per episode, built with
  ``replay_dir=out_dir`` and ``replay_prefix="{scenario}_{policy}_ep{k:03d}"``;
  ``save_replay()`` after the episode writes the ``.SC2Replay``. A JSON sidecar
  per episode holds its metadata, and ``episodes.csv`` all of them.

Episode ``k`` of both policies uses the env seed ``seed + k``, so on SMAX the
trained and random episodes of one row start from the same positions.

CLI: ``amal-replay --scenario 3m --backend smax --checkpoint PATH --episodes 2 --out replays/3m``.
Exit codes: 0 success, 1 failure (bad checkpoint, missing backend, ...), 2 bad usage.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import pickle
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .envs.spec import ACTION_MASK_KEY, BACKENDS, BATTLE_WON_KEY, OBS_KEY, EnvSpec

logger = logging.getLogger(__name__)

SHARED_POLICY = "shared_policy"  # amal_rllib.mappo.config.SHARED_POLICY (not imported: keeps RLlib's PPO lazy)
TRAINED = "trained"
RANDOM = "random"
COLUMNS = ["policy", "episode", "seed", "return", "steps", "won", "file"]
# Where RLlib's Algorithm.save_to_path puts the learner's modules (Ray 2.60, one local learner).
ALGO_MODULES_SUBDIR = Path("learner_group", "learner", "rl_module")
_CKPT_FILES = ("class_and_ctor_args.pkl", "metadata.json")

GIF_FPS = 8
GIF_DPI = 72
GIF_INCHES = 3.2
GIF_HOLD_LAST = 6  # extra copies of the last frame, so the outcome stays on screen


# --- loading a policy ---------------------------------------------------------------


def _is_rllib_ckpt_dir(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in _CKPT_FILES)


def find_module_dir(checkpoint: str | os.PathLike, module_id: str = SHARED_POLICY) -> Path:
    """The RLModule directory inside ``checkpoint``.

    ``checkpoint`` may be an Algorithm checkpoint (``algo.save_to_path``; the module is
    ``learner_group/learner/rl_module/<module_id>``), a MultiRLModule directory holding
    ``<module_id>``, or an RLModule directory itself. ``FileNotFoundError`` otherwise.
    """
    path = Path(checkpoint).expanduser().resolve()
    expected = (
        f"expected an RLlib Algorithm checkpoint directory (from algo.save_to_path, holding "
        f"{ALGO_MODULES_SUBDIR / module_id}) or an RLModule checkpoint directory (holding {' and '.join(_CKPT_FILES)})"
    )
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint {path} does not exist: {expected}")
    if not path.is_dir():
        raise FileNotFoundError(f"Checkpoint {path} is a file, not a directory: {expected}")
    for candidate in (
        path / ALGO_MODULES_SUBDIR / module_id,
        path / "learner" / "rl_module" / module_id,  # a learner_group directory
        path / "rl_module" / module_id,  # a learner directory
        path / module_id,  # a MultiRLModule directory
        path,  # the module itself
    ):
        if _is_rllib_ckpt_dir(candidate):
            return candidate
    if (path / "rllib_checkpoint.json").is_file():
        raise FileNotFoundError(
            f"Checkpoint {path} is an RLlib checkpoint without the module {module_id!r} "
            f"({path / ALGO_MODULES_SUBDIR / module_id} is missing): {expected}"
        )
    raise FileNotFoundError(f"{path} is not an RLlib checkpoint: {expected}")


def load_policy(checkpoint: str | os.PathLike, module_id: str = SHARED_POLICY):
    """The torch RLModule ``module_id`` of ``checkpoint`` (see ``find_module_dir``), in eval mode."""
    module_dir = find_module_dir(checkpoint, module_id)
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
    from ray.rllib.core.rl_module.rl_module import RLModule

    with open(module_dir / _CKPT_FILES[0], "rb") as f:
        stored_class = pickle.load(f).get("class")
    if not (isinstance(stored_class, type) and issubclass(stored_class, RLModule)):
        raise FileNotFoundError(
            f"{module_dir} is an RLlib checkpoint of {getattr(stored_class, '__name__', stored_class)}, not of an "
            f"RLModule: expected an RLlib Algorithm checkpoint directory (holding {ALGO_MODULES_SUBDIR / module_id}) "
            "or an RLModule checkpoint directory"
        )
    module = RLModule.from_checkpoint(module_dir.as_posix())
    if isinstance(module, MultiRLModule):  # an RLModule directory that was a MultiRLModule after all
        if module_id not in module:
            raise FileNotFoundError(
                f"{module_dir} holds a MultiRLModule without the module {module_id!r} (has {sorted(module.keys())})"
            )
        module = module[module_id]
    if hasattr(module, "eval"):
        module.eval()
    logger.info("loaded %s from %s", type(module).__name__, module_dir)
    return module


def check_policy_fits(module, spec: EnvSpec) -> None:
    """``ValueError`` unless the module's spaces are the env's (e.g. a checkpoint of another map)."""
    try:
        obs_dim = int(module.observation_space[OBS_KEY].shape[0])
        n_actions = int(module.action_space.n)
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(
            f"The checkpoint's module has no Dict observation space with {OBS_KEY!r} and a Discrete action "
            f"space ({getattr(module, 'observation_space', None)}); it is not a MAPPO module of amal_rllib"
        ) from err
    if (obs_dim, n_actions) != (spec.obs_dim, spec.n_actions):
        raise ValueError(
            f"The checkpoint's policy does not fit {spec.backend} {spec.scenario}: it takes obs of size {obs_dim} "
            f"and has {n_actions} actions, the env has obs of size {spec.obs_dim} and {spec.n_actions} actions "
            "(was it trained on another scenario or backend?)"
        )


# --- policies ----------------------------------------------------------------------

Policy = Callable[[Mapping[str, Mapping[str, np.ndarray]]], dict[str, int]]


class GreedyPolicy:
    """Argmax of the module's masked logits, one forward pass for the whole team per step."""

    def __init__(self, module) -> None:
        self.module = module

    def __call__(self, obs: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, int]:
        import torch
        from ray.rllib.core.columns import Columns

        ids = list(obs)
        keys = obs[ids[0]].keys()
        batch = {k: torch.from_numpy(np.stack([np.asarray(obs[a][k], np.float32) for a in ids])) for k in keys}
        with torch.no_grad():
            out = self.module.forward_inference({Columns.OBS: batch})
        logits = out[Columns.ACTION_DIST_INPUTS].cpu().numpy()
        mask = batch[ACTION_MASK_KEY].numpy() > 0.5
        # Mask again here: never pick a masked action, whatever the module did.
        actions = np.where(mask, logits, -np.inf).argmax(axis=1)
        return {a: int(actions[i]) for i, a in enumerate(ids)}


class RandomPolicy:
    """Uniform among each agent's valid actions."""

    def __init__(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, int]:
        return {a: int(self.rng.choice(np.flatnonzero(np.asarray(o[ACTION_MASK_KEY]) > 0.5))) for a, o in obs.items()}


# --- playing an episode ---------------------------------------------------------------


@dataclass
class Episode:
    ret: float = 0.0
    steps: int = 0
    won: bool = False
    timed_out: bool = False
    rewards: list[float] = field(default_factory=list)
    frames: list[dict[str, np.ndarray]] = field(default_factory=list)  # SMAX snapshots, one per env step + 1


def play_episode(
    env, policy: Policy, seed: int, snapshot: Callable[[Any], dict[str, np.ndarray]] | None = None
) -> Episode:
    """One episode from ``env.reset(seed=seed)``; ``snapshot(env)`` is recorded after reset and every step."""
    obs, _ = env.reset(seed=seed)
    episode = Episode()
    if snapshot is not None:
        episode.frames.append(snapshot(env))
    while True:
        obs, rewards, terminateds, truncateds, infos = env.step(policy(obs))
        reward = float(next(iter(rewards.values())))  # the team reward, the same for every agent
        episode.rewards.append(reward)
        episode.ret += reward
        episode.steps += 1
        if snapshot is not None:
            episode.frames.append(snapshot(env))
        if terminateds["__all__"] or truncateds["__all__"]:
            info = next(iter(infos.values()), {}) if infos else {}
            episode.won = bool(info.get(BATTLE_WON_KEY, False))
            episode.timed_out = bool(truncateds["__all__"])
            return episode


# --- SMAX animation ------------------------------------------------------------------


def smax_snapshot(env) -> dict[str, np.ndarray]:
    """Positions, alive flags, health fractions and last attacks of every unit (allies first)."""
    import jax

    state = jax.device_get(env.jax_state.state)
    types = np.asarray(state.unit_types)
    health_max = np.asarray(env.jax_env.unit_type_health)[types]
    return {
        "pos": np.asarray(state.unit_positions, np.float32),
        "alive": np.asarray(state.unit_alive, bool),
        "health": np.clip(np.asarray(state.unit_health, np.float32) / health_max, 0.0, 1.0),
        "attack": np.asarray(state.prev_attack_actions, np.int32),
        "radius": np.asarray(env.jax_env.unit_type_radiuses)[types].astype(np.float32),
    }


def _attack_segments(frame: dict, prev: dict, n_allies: int, n_move: int) -> tuple[list, list]:
    """Lines shooter -> target for this step's attacks (JaxMARL's target indexing)."""
    segments, colors = [], []
    for i, action in enumerate(frame["attack"]):
        if action < n_move or not frame["alive"][i]:
            continue
        target = n_allies + action - n_move if i < n_allies else n_allies - 1 - (action - n_move)
        if not 0 <= target < len(frame["pos"]) or not prev["alive"][target]:
            continue
        segments.append([frame["pos"][i], frame["pos"][target]])
        colors.append("tab:blue" if i < n_allies else "tab:red")
    return segments, colors


def _view(positions: np.ndarray, width: float, height: float, margin: float = 3.0) -> tuple[tuple, tuple]:
    """A square window on the map around every position the units took (the map is mostly empty)."""
    lo = positions.reshape(-1, 2).min(axis=0) - margin
    hi = positions.reshape(-1, 2).max(axis=0) + margin
    side = min(max(float((hi - lo).max()), 8.0), width, height)
    center = (lo + hi) / 2
    x0 = float(np.clip(center[0] - side / 2, 0.0, width - side))
    y0 = float(np.clip(center[1] - side / 2, 0.0, height - side))
    return (x0, x0 + side), (y0, y0 + side)


def write_smax_gif(jax_env, episode: Episode, path: Path, title: str) -> Path:
    """Draw ``episode.frames`` into an animated GIF at ``path`` (matplotlib + pillow)."""
    from matplotlib.animation import PillowWriter
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    frames = episode.frames
    if not frames:
        raise ValueError("no frames to draw")
    n_allies = int(jax_env.num_allies)
    n_move = int(jax_env.num_movement_actions)
    (x0, x1), (y0, y1) = _view(
        np.stack([f["pos"] for f in frames]), float(jax_env.map_width), float(jax_env.map_height)
    )
    team_colors = np.array(["tab:blue"] * n_allies + ["tab:red"] * (len(frames[0]["pos"]) - n_allies))
    # Marker area (points^2) of a unit at full health: about its size on screen, at least a few points.
    points_per_unit = GIF_INCHES * 0.8 * 72 / (x1 - x0)
    full_size = np.maximum(np.pi * (frames[0]["radius"] * points_per_unit * 1.5) ** 2, 40.0)
    returns = np.concatenate([[0.0], np.cumsum(episode.rewards)])

    fig = Figure(figsize=(GIF_INCHES, GIF_INCHES + 0.25), dpi=GIF_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.1, 0.1, 0.8, 0.8))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("#f4f4f0")
    shots = LineCollection([], linewidths=1.0, alpha=0.7, zorder=1)
    ax.add_collection(shots)
    dead = ax.scatter(np.empty(0), np.empty(0), marker="x", s=25, c="0.55", linewidths=1.0, zorder=2)
    # Colours as strings (not values), so set_facecolors is not overridden by a colormap.
    alive = ax.scatter(*frames[0]["pos"].T, s=full_size, c=list(team_colors), edgecolors="k", linewidths=0.5, zorder=3)
    head = fig.text(0.5, 0.95, "", ha="center", va="center", fontsize=9)
    foot = fig.text(0.5, 0.04, "", ha="center", va="center", fontsize=9)
    outcome = "WON" if episode.won else ("time-out" if episode.timed_out else "lost")

    def draw(t: int) -> None:
        frame, prev = frames[t], frames[max(t - 1, 0)]
        live = frame["alive"]
        alive.set_offsets(frame["pos"][live] if live.any() else np.empty((0, 2)))
        alive.set_sizes(full_size[live] * (0.25 + 0.75 * frame["health"][live]))
        alive.set_facecolors(list(team_colors[live]))
        dead.set_offsets(frame["pos"][~live] if (~live).any() else np.empty((0, 2)))
        segments, colors = _attack_segments(frame, prev, n_allies, n_move) if t > 0 else ([], [])
        shots.set_segments(segments)
        shots.set_colors(colors)
        head.set_text(f"{title}  step {t}/{episode.steps}")
        last = t == len(frames) - 1
        foot.set_text(f"return {returns[t]:.2f}" + (f"  {outcome}" if last else ""))

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = PillowWriter(fps=GIF_FPS)
    with writer.saving(fig, os.fspath(path), GIF_DPI):
        for t in range(len(frames)):
            draw(t)
            writer.grab_frame()
        for _ in range(GIF_HOLD_LAST):
            writer.grab_frame()
    return path


# --- output files --------------------------------------------------------------------


def _episode_cell(row: Mapping[str, Any], out_dir: Path) -> str:
    src = html.escape(Path(os.path.relpath(row["file"], out_dir)).as_posix(), quote=True)
    caption = (
        f"return {row['return']:.3f} &middot; steps {row['steps']} &middot; "
        f"{'<b>won</b>' if row['won'] else 'lost'} &middot; seed {row['seed']}"
    )
    return f'<td><img src="{src}" alt="{html.escape(row["policy"])} episode {row["episode"]}"><br>{caption}</td>'


def write_index_html(df: pd.DataFrame, out_dir: Path, title: str) -> Path:
    """``index.html``: one row per episode number, trained and random side by side."""
    policies = [p for p in (TRAINED, RANDOM) if (df["policy"] == p).any()]
    rows = []
    for episode in sorted(df["episode"].unique()):
        cells = []
        for policy in policies:
            match = df[(df["policy"] == policy) & (df["episode"] == episode)]
            cells.append(_episode_cell(match.iloc[0], out_dir) if len(match) else "<td></td>")
        rows.append(f"<tr><th>ep {episode}</th>{''.join(cells)}</tr>")
    summary = []
    for policy in policies:
        part = df[df["policy"] == policy]
        summary.append(
            f"<li>{policy}: {len(part)} episodes, win rate {part['won'].mean():.2f}, "
            f"mean return {part['return'].mean():.3f}, mean steps {part['steps'].mean():.1f}</li>"
        )
    note = "" if TRAINED in policies else "<p>No checkpoint given: random-policy episodes only.</p>"
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: 6px 12px; text-align: center; vertical-align: top; font-size: 90%; }}
th {{ font-weight: normal; color: #555; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
{note}<ul>{"".join(summary)}</ul>
<table>
<tr><th></th>{"".join(f"<th><b>{p}</b></th>" for p in policies)}</tr>
{chr(10).join(rows)}
</table>
<p>Blue: our team; red: the heuristic enemies. Marker size is health; crosses are dead units; lines are this
step's attacks.</p>
</body></html>
"""
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _find_replay(out_dir: Path, prefix: str, returned: Any) -> str:
    """The replay ``save_replay`` wrote: its return value if a path (the fake's), else the newest match."""
    if isinstance(returned, (str, os.PathLike)) and Path(returned).is_file():
        return os.fspath(returned)
    matches = sorted(out_dir.glob(f"{prefix}*.SC2Replay"), key=lambda p: p.stat().st_mtime)
    if not matches:
        logger.warning("save_replay() wrote no %s*.SC2Replay into %s", prefix, out_dir)
        return ""
    return os.fspath(matches[-1])


# --- the whole recording -----------------------------------------------------------------


def record_episodes(
    scenario: str,
    backend: str = "smax",
    checkpoint: str | os.PathLike | None = None,
    episodes: int = 2,
    out_dir: str | os.PathLike = "replays",
    seed: int = 0,
    env_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Play and record ``episodes`` trained (if ``checkpoint``) and ``episodes`` random episodes.

    Returns one row per episode: policy ("trained"/"random"), episode, seed, return
    (team return), steps, won, file (the GIF on SMAX, the replay on SMAC). Also
    writes ``episodes.csv`` (and ``index.html`` on SMAX, a ``.json`` sidecar per
    episode on SMAC) into ``out_dir``. ``env_kwargs`` go to the adapter (SMAX:
    ``max_steps`` and JaxMARL options; SMAC: ``env_cls``, ``check_install`` and
    StarCraft2Env options).
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if int(episodes) < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    episodes = int(episodes)
    env_kwargs = dict(env_kwargs or {})
    out = Path(out_dir).expanduser().resolve()  # absolute: SMAC resolves relative replay dirs against SC2's
    module = load_policy(checkpoint) if checkpoint is not None else None  # fail early on a bad checkpoint
    if module is None:
        logger.info("no checkpoint given: recording random-policy episodes only")
    out.mkdir(parents=True, exist_ok=True)

    policies: list[tuple[str, Callable[[int], Policy]]] = []
    if module is not None:
        greedy = GreedyPolicy(module)
        policies.append((TRAINED, lambda k: greedy))
    policies.append((RANDOM, lambda k: RandomPolicy(seed + k)))

    record = _record_smax if backend == "smax" else _record_smac
    rows = record(scenario, module, policies, episodes, out, seed, env_kwargs)
    df = pd.DataFrame(rows, columns=COLUMNS).astype({"episode": int, "seed": int, "steps": int, "won": bool})
    # The table on disk names files relative to itself, so the folder can be moved or committed.
    df.assign(file=[Path(os.path.relpath(f, out)).as_posix() for f in df["file"]]).to_csv(
        out / "episodes.csv", index=False
    )
    if backend == "smax":
        write_index_html(df, out, f"{scenario} (SMAX): trained vs random")
    return df


def _row(policy: str, k: int, episode_seed: int, episode: Episode, file: str) -> dict[str, Any]:
    return {
        "policy": policy,
        "episode": k,
        "seed": episode_seed,
        "return": float(episode.ret),
        "steps": int(episode.steps),
        "won": bool(episode.won),
        "file": file,
    }


def _record_smax(scenario, module, policies, episodes, out, seed, env_kwargs) -> list[dict]:
    from .envs.registry import make_env

    env = make_env(scenario, "smax", **env_kwargs)
    try:
        if module is not None:
            check_policy_fits(module, env.get_env_info())
        rows = []
        for policy_name, make_policy in policies:
            for k in range(episodes):
                episode_seed = seed + k
                episode = play_episode(env, make_policy(k), episode_seed, snapshot=smax_snapshot)
                gif = write_smax_gif(
                    env.jax_env, episode, out / f"{scenario}_{policy_name}_ep{k:03d}.gif", f"{policy_name} ep{k}"
                )
                rows.append(_row(policy_name, k, episode_seed, episode, os.fspath(gif)))
                logger.info(
                    "%s ep%d: return %.3f, %d steps, won=%s -> %s",
                    policy_name, k, episode.ret, episode.steps, episode.won, gif,
                )  # fmt: skip
        return rows
    finally:
        env.close()


def _record_smac(scenario, module, policies, episodes, out, seed, env_kwargs) -> list[dict]:
    from .envs.registry import make_env

    for key in ("replay_dir", "replay_prefix", "seed"):
        if env_kwargs.pop(key, None) is not None:
            logger.warning("env_kwargs[%r] ignored: record_episodes sets it per episode", key)
    rows = []
    for policy_name, make_policy in policies:
        for k in range(episodes):
            episode_seed = seed + k
            prefix = f"{scenario}_{policy_name}_ep{k:03d}"
            # One env (one StarCraft II game) per episode: SMAC's replay holds every game since launch.
            env = make_env(scenario, "smac", replay_dir=out, replay_prefix=prefix, seed=episode_seed, **env_kwargs)
            try:
                if module is not None:
                    check_policy_fits(module, env.get_env_info())
                episode = play_episode(env, make_policy(k), episode_seed)
                replay = _find_replay(out, prefix, env.save_replay())
            finally:
                env.close()
            row = _row(policy_name, k, episode_seed, episode, replay)
            sidecar = {**row, "scenario": scenario, "backend": "smac", "replay_prefix": prefix}
            (out / f"{prefix}.json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
            rows.append(row)
            logger.info(
                "%s ep%d: return %.3f, %d steps, won=%s -> %s",
                policy_name, k, episode.ret, episode.steps, episode.won, replay or "(no replay)",
            )  # fmt: skip
    return rows


# --- CLI ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="amal-replay",
        description=(
            "Record episodes of a trained MAPPO policy (greedy) and of a uniformly random valid-action policy: "
            "GIFs + index.html on SMAX, StarCraft II replays + JSON sidecars on SMAC; episodes.csv on both."
        ),
    )
    p.add_argument("--scenario", default="3m", help="map name, e.g. 3m, 2s3z (default: %(default)s)")
    p.add_argument("--backend", default="smax", choices=BACKENDS, help="env backend (default: %(default)s)")
    p.add_argument(
        "--checkpoint",
        help="RLlib Algorithm checkpoint dir (algo.save_to_path) or RLModule dir; without it only random episodes",
    )
    p.add_argument("--episodes", type=int, default=2, help="episodes per policy (default: %(default)s)")
    p.add_argument("--out", help="output folder (default: replays/<scenario>)")
    p.add_argument("--seed", type=int, default=0, help="episode k uses env seed SEED+k (default: %(default)s)")
    p.add_argument("--max-steps", type=int, help="SMAX episode limit (default: JaxMARL's, 100)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    env_kwargs: dict[str, Any] = {}
    if args.max_steps is not None:
        if args.backend != "smax":
            parser.error("--max-steps applies to --backend smax only (SMAC maps have their own limits)")
        if args.max_steps < 1:
            parser.error(f"--max-steps must be >= 1, got {args.max_steps}")
        env_kwargs["max_steps"] = args.max_steps
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    out = Path(args.out or Path("replays") / args.scenario)
    if args.checkpoint is None:
        print("amal-replay: no --checkpoint given: recording random-policy episodes only", file=sys.stderr)
    try:
        df = record_episodes(args.scenario, args.backend, args.checkpoint, args.episodes, out, args.seed, env_kwargs)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as exc:
        print(f"amal-replay: error: {exc}", file=sys.stderr)
        return 1
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    summary = df.groupby("policy", sort=False).agg(win_rate=("won", "mean"), mean_return=("return", "mean"))
    for policy, stats in summary.iterrows():
        print(f"{policy}: win rate {stats['win_rate']:.2f}, mean return {stats['mean_return']:.3f}")
    print(f"wrote {out.resolve() / ('index.html' if args.backend == 'smax' else 'episodes.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``tune_jobs/amal_vs_mappo.py``: the AMAL-vs-MAPPO Tune study, on a laptop or a cluster.

    python tune_jobs/amal_vs_mappo.py                        # smoke preset on a local Ray
    ray job submit --working-dir . -- python tune_jobs/amal_vs_mappo.py
    ray submit cluster.yaml tune_jobs/amal_vs_mappo.py       # cluster preset on a multi-node cluster
    python tune_jobs/amal_vs_mappo.py --preset local --scenarios 3m
    python tune_jobs/amal_vs_mappo.py --resume               # continue the newest interrupted study

Settings: a preset (``--preset smoke|local|cluster``; without it, ``smoke`` on a
single-node Ray and ``cluster`` on a multi-node one), then ``--config FILE.yaml``,
then the flags. The report's path is printed last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shlex
import subprocess
import sys
from pathlib import Path

from .config import PRESETS, StudyConfig, StudyConfigError, from_mapping, load_preset, load_yaml, parse_count

logger = logging.getLogger(__name__)

#: flag -> StudyConfig field (every field is overridable).
FLAGS = {
    "--scenarios": "scenarios",
    "--backend": "backend",
    "--env-steps": "env_steps",
    "--search-env-steps": "search_env_steps",
    "--num-samples": "num_samples",
    "--search-seeds": "search_seeds",
    "--seeds": "seeds",
    "--asha-grace-env-steps": "asha_grace_env_steps",
    "--asha-reduction-factor": "asha_reduction_factor",
    "--max-concurrent-trials": "max_concurrent_trials",
    "--num-env-runners": "num_env_runners",
    "--num-envs-per-env-runner": "num_envs_per_env_runner",
    "--num-aux-env-runners": "num_aux_env_runners",
    "--train-batch-size": "train_batch_size",
    "--num-minibatches": "num_minibatches",
    "--evaluation-interval": "evaluation_interval",
    "--evaluation-episodes": "evaluation_episodes",
    "--num-gpus-per-learner": "num_gpus_per_learner",
    "--checkpoint-frequency": "checkpoint_frequency",
    "--storage-path": "storage_path",
    "--name": "name",
    "--bootstrap-samples": "bootstrap_samples",
    "--confidence": "confidence",
    "--num-cpus": "num_cpus",
    "--lambda-info-bounds": "search_bounds.lambda_info",
    "--perturbation-std-bounds": "search_bounds.perturbation_std",
}
_FIELD_TO_FLAG = {field: flag for flag, field in FLAGS.items()}


class UsageError(Exception):
    pass


def _count(text: str) -> int:
    """An env-step count or a number of seeds: ``2000000``, ``2e6`` or ``2_000_000``."""
    value = parse_count(text)
    if not isinstance(value, int):
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number")
    return value


def _gpus(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: give 'auto' or a number") from exc


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="amal_vs_mappo.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", help=f"one of {', '.join(PRESETS)} (default: smoke on one node, cluster on several)")
    p.add_argument("--config", type=Path, help="a YAML file of study fields, applied over the preset")
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="EXPERIMENT",
        help="continue an interrupted study: its folder, its --name, or (no value) the newest one",
    )
    p.add_argument("--report-only", type=Path, metavar="EXPERIMENT", help="(re)write the report of a study folder")
    p.add_argument("--dashboard-port", type=int, default=8265, help="dashboard port of a Ray this job starts")
    g = p.add_argument_group("study fields (override the preset and --config)")
    g.add_argument("--scenarios", nargs="+")
    g.add_argument("--backend")
    for flag in (
        "--env-steps",
        "--search-env-steps",
        "--num-samples",
        "--search-seeds",
        "--seeds",
        "--asha-grace-env-steps",
        "--asha-reduction-factor",
        "--max-concurrent-trials",
        "--num-env-runners",
        "--num-envs-per-env-runner",
        "--num-aux-env-runners",
        "--train-batch-size",
        "--num-minibatches",
        "--evaluation-interval",
        "--evaluation-episodes",
        "--checkpoint-frequency",
        "--bootstrap-samples",
        "--num-cpus",
    ):
        g.add_argument(flag, type=_count)
    g.add_argument("--num-gpus-per-learner", type=_gpus)
    g.add_argument("--confidence", type=float)
    g.add_argument("--storage-path")
    g.add_argument("--name")
    g.add_argument("--lambda-info-bounds", nargs=2, type=float, metavar=("LOW", "HIGH"))
    g.add_argument("--perturbation-std-bounds", nargs=2, type=float, metavar=("LOW", "HIGH"))
    return p


def overrides(args: argparse.Namespace) -> dict:
    out: dict = {}
    for flag, field in FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if field.startswith("search_bounds."):
            out.setdefault("search_bounds", {})[field.split(".", 1)[1]] = tuple(value)
        else:
            out[field] = value
    return out


def flag_errors(exc: StudyConfigError) -> str:
    """One line: each bad field with the flag that sets it."""
    parts = []
    for line in str(exc).splitlines():
        line = line.strip().removeprefix("- ")
        if not line or line.startswith("Invalid study config"):
            continue
        field = line.split("=", 1)[0].split(":", 1)[0].strip()
        flag = _FIELD_TO_FLAG.get(field)
        parts.append(f"{flag} ({line})" if flag else line)
    return "; ".join(parts)


def resolve_study(args: argparse.Namespace, preset: str) -> StudyConfig:
    study = load_preset(preset)
    if args.config is not None:
        study = load_yaml(args.config, base=study)
    changes = overrides(args)
    if "search_bounds" in changes:
        changes["search_bounds"] = {**study.search_bounds, **changes["search_bounds"]}
    return from_mapping(changes, base=study, source="flags").validate()


def check_backend(study: StudyConfig) -> None:
    if study.backend == "smac":
        from ..envs.smac import StarCraftUnavailableError, check_smac_installation

        try:
            for scenario in study.scenarios:
                check_smac_installation(scenario)
        except StarCraftUnavailableError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UsageError(
                f"--backend smac: {first} Install StarCraft II, the SMAC maps and the git smac (all in the image "
                "docker/Dockerfile.sc2; steps in the README), or use --backend smax"
            ) from None


def code_version() -> str:
    from importlib.metadata import version

    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return f"amal-umc {version('amal-umc')} (git {rev})"
    except (OSError, subprocess.SubprocessError):
        return f"amal-umc {version('amal-umc')} (no git checkout)"


def find_experiment(resume: str, storage_path: str) -> Path:
    storage = Path(storage_path).expanduser().resolve()
    if resume != "latest":
        path = Path(resume).expanduser()
        path = path if path.is_absolute() or path.exists() else storage / resume
        if not (path / "study.json").is_file():
            raise UsageError(
                f"--resume {resume}: no study there ({path / 'study.json'} missing); run without --resume to start one"
            )
        return path.resolve()
    candidates = sorted(storage.glob("amal_vs_mappo-*/study.json"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UsageError(
            f"--resume: no study under {storage}; run without --resume to start one "
            f"(or give --resume PATH / --storage-path)"
        )
    return candidates[-1].parent


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    try:
        return _main(args, argv)
    except (StudyConfigError, UsageError) as exc:
        message = flag_errors(exc) if isinstance(exc, StudyConfigError) else str(exc)
        print(f"amal_vs_mappo.py: error: {message}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    from .report import write_report
    from .runner import (
        StudyInterruptedError,
        StudyStateError,
        read_manifest,
        run_study,
        study_from_manifest,
        write_manifest,
    )

    if args.report_only is not None:
        try:
            manifest = read_manifest(args.report_only.resolve())
        except StudyStateError as exc:
            raise UsageError(str(exc).replace("--resume", "--report-only")) from None
        print(f"Report: {write_report(args.report_only.resolve(), manifest)}")
        return 0
    if args.preset is not None and args.preset not in PRESETS:
        raise UsageError(f"--preset {args.preset!r}: unknown preset; choose one of {', '.join(PRESETS)}")

    if args.resume is not None:
        if (overrides(args) and set(overrides(args)) - {"storage_path"}) or args.config or args.preset:
            raise UsageError(
                "--resume: a resumed study keeps the settings it started with; "
                "drop --preset/--config/study flags (only --storage-path may be given)"
            )
        exp_root = find_experiment(args.resume, args.storage_path or StudyConfig.storage_path)
        try:
            manifest = read_manifest(exp_root)
        except StudyStateError as exc:
            raise UsageError(str(exc)) from None
        study = study_from_manifest(manifest).validate()
        check_backend(study)
    else:
        # Validate what can be validated before starting Ray (an explicit preset).
        if args.preset:
            study = resolve_study(args, args.preset)
            check_backend(study)

    from .ray_session import connect

    num_cpus = study.num_cpus if args.resume is not None else _num_cpus_hint(args)
    session = connect(num_cpus=num_cpus, dashboard_port=args.dashboard_port)
    print(session.describe(), flush=True)

    if args.resume is None:
        preset = args.preset
        if preset is None:
            preset = "cluster" if session.multi_node else "smoke"
            why = (
                f"a multi-node cluster ({session.num_nodes} nodes)"
                if session.multi_node
                else "a single-node Ray (a laptop or one machine)"
            )
            print(f"[study] no --preset: picked '{preset}' because this is {why}", flush=True)
        study = resolve_study(args, preset)
        check_backend(study)
        name = study.name or f"amal_vs_mappo-{preset}-{dt.datetime.now():%Y%m%d-%H%M%S}"
        exp_root = Path(study.storage_path).expanduser().resolve() / name
        if (exp_root / "study.json").exists():
            raise UsageError(
                f"--name {name}: a study already exists in {exp_root}; "
                f"continue it with --resume {exp_root}, or choose another --name"
            )
        exp_root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "name": name,
            "preset": preset,
            "study": study.to_dict(),
            "phases": {},
            "best": {},
            "command": "python tune_jobs/amal_vs_mappo.py " + shlex.join(argv),
            "code_version": code_version(),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        write_manifest(exp_root, manifest)
    else:
        print(f"[study] resuming {exp_root}", flush=True)
        manifest.setdefault("resumed", []).append(
            {"at": dt.datetime.now(dt.timezone.utc).isoformat(), "code_version": code_version()}
        )

    from .runner import learner_gpus

    gpus = learner_gpus(study, session.gpus)
    print(f"[study] experiment: {exp_root} (learners on {'GPU' if gpus else 'CPU'})", flush=True)
    try:
        manifest = run_study(study, exp_root, gpus=gpus, manifest=manifest)
    except StudyInterruptedError as exc:
        print(f"amal_vs_mappo.py: {exc}", file=sys.stderr, flush=True)
        return 130  # the shell's code for "stopped by SIGINT"; no report of an unfinished study
    manifest["finished"] = dt.datetime.now(dt.timezone.utc).isoformat()
    write_manifest(exp_root, manifest)
    summary = write_report(exp_root, manifest)
    if session.dashboard_url:
        print(f"Ray dashboard: {session.dashboard_url}")
    print(f"Report: {summary}", flush=True)
    return 0


def _num_cpus_hint(args: argparse.Namespace) -> int | None:
    """CPUs of a Ray this job starts: ``--num-cpus``, else the ``--config`` file's or the preset's ``num_cpus``."""
    if args.num_cpus is not None:
        return args.num_cpus
    if args.config is not None and load_yaml(args.config).num_cpus is not None:
        return load_yaml(args.config).num_cpus
    return load_preset(args.preset).num_cpus if args.preset else None

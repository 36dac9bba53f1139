"""Copy a study's experiment folder into a leaner, committable one that ``--resume`` can continue from.

    python docs/results/study_two_core_full/save_state.py results/tune/two_core_full docs/results/study_two_core_full/tune_state

Keeps every file Tune and the report read (experiment and searcher state, ``study.json``, each trial's
``params.json``/``params.pkl``/``result.json``/``progress.csv``); drops TensorBoard event files and the
checkpoints of finished trials (a finished trial is never restored); keeps the checkpoints of a trial that
has not finished (Tune keeps two; its saved state may name either), so that ``--resume`` continues it from
there. Stop the study first (Ctrl-C, or SIGKILL on its driver and ``ray stop --force``); copying a running
study's folder can catch a half-written state. Replaces ``dst`` as a whole.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def finished(trial: Path) -> bool:
    result = trial / "result.json"
    if not result.exists() or result.stat().st_size == 0:
        return False
    last = result.read_text().rstrip("\n").rsplit("\n", 1)[-1]
    return bool(json.loads(last).get("done"))


def main(src: Path, dst: Path) -> None:
    if not (src / "study.json").exists():
        raise SystemExit(f"{src} is not a study's experiment folder (no study.json)")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("events.out.tfevents.*", "checkpoint_*"))
    for result in src.glob("*/*/result.json"):
        trial = result.parent
        if not finished(trial):
            for checkpoint in trial.glob("checkpoint_*"):
                shutil.copytree(checkpoint, tmp / trial.relative_to(src) / checkpoint.name)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    print(f"{dst}: {sum(f.stat().st_size for f in dst.rglob('*') if f.is_file()) / 1e6:.1f} MB")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))

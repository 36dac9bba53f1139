"""Running ``tune_jobs/amal_vs_mappo.py`` as a real subprocess, isolated from any other Ray on the machine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "tune_jobs" / "amal_vs_mappo.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(token_path: Path) -> dict[str, str]:
    """A private Ray temp dir (so ``address="auto"`` finds no other test's Ray) and an explicit token."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_job(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    fh = open(log, "w")
    return subprocess.Popen([sys.executable, str(JOB), *args], env=env, stdout=fh, stderr=subprocess.STDOUT,
                            cwd=REPO, start_new_session=True)


def kill_job_tree(proc: subprocess.Popen, env: dict[str, str]) -> None:
    """SIGKILL the driver's process group, then anything left of the Ray it started (found by its temp dir)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    subprocess.run(["pkill", "-9", "-f", env["RAY_TMPDIR"]], check=False)

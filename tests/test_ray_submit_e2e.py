"""``ray up`` / ``ray submit cluster tune_jobs/amal_vs_mappo.py --preset smoke`` / ``ray down``, for real.

Ray's ``local`` provider on 127.0.0.1, over a real sshd (Debian's openssh-server) and rsync. The
sshd runs in its own PID and mount namespaces with its own /root (the cluster's home: ~/.bashrc
puts this venv on PATH and sets RAY_AUTH_MODE=token and a Ray temp dir of its own;
~/.ray/auth_token), so the cluster's ``ray stop`` cannot see, let alone kill, any other Ray on
the machine; the head uses ports of its own. A throwaway key pair is made for the test. Needs root (namespaces), sshd, rsync, nc.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from study_helpers import REPO, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1200)]

TOOLS = ("/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync", "nc", "unshare")


def _missing_tools() -> list[str]:
    return [t for t in TOOLS if not (shutil.which(t) or os.path.exists(t))]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = _missing_tools()
    if missing or os.geteuid() != 0:
        pytest.fail(f"the ray-submit e2e needs root and {', '.join(missing) or 'nothing else'}: "
                    "apt-get install openssh-server rsync netcat-openbsd (bash .ci/run does)")
    base = Path(tmp_path_factory.mktemp("raysubmit"))
    home = base / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ray").mkdir()
    (home / "sshd").mkdir()
    key = base / "id_e2e"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / "sshd" / "host_key")], check=True)
    (home / ".ssh" / "authorized_keys").write_text((base / "id_e2e.pub").read_text())
    (home / ".ssh").chmod(0o700)
    (home / ".ssh" / "authorized_keys").chmod(0o600)
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    (home / ".ray" / "auth_token").write_text(generate_new_authentication_token())
    venv_bin = Path(sys.executable).parent
    # Its own Ray temp dir (short: Ray's socket paths have a length limit), so the head it records
    # (ray_current_cluster) is not one that other tests' `ray.init()` would join.
    ray_tmp = tempfile.mkdtemp(prefix="rte2e", dir="/tmp")
    (home / ".bashrc").write_text(
        f"export PATH={venv_bin}:$PATH\nexport RAY_AUTH_MODE=token\nexport RAY_TMPDIR={ray_tmp}\n"
        "export PYTHONUNBUFFERED=1\n"
    )
    ssh_port = free_port()
    # Paths as sshd sees them, inside the namespace where `home` is /root.
    (home / "sshd" / "sshd_config").write_text(
        f"Port {ssh_port}\nListenAddress 127.0.0.1\nHostKey /root/sshd/host_key\nPidFile /root/sshd/sshd.pid\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nAuthorizedKeysFile .ssh/authorized_keys\nSubsystem sftp internal-sftp\n"
        "MaxStartups 50\nMaxSessions 50\n"
    )
    ports = {name: free_port() for name in ("gcs_port", "dashboard_port", "client_port", "agent_port")}
    config = (REPO / "tests" / "e2e" / "local_cluster.yaml").read_text().format(
        ssh_private_key=key, ssh_port=ssh_port, **ports
    )
    config_path = base / "local_cluster.yaml"
    config_path.write_text(config)
    Path("/run/sshd").mkdir(exist_ok=True)
    # The private home hides the real /root: keep what the cluster runs visible in it (the repository,
    # the venv and its base interpreter, e.g. pyenv's, may live under /root).
    keep = ""
    for path in sorted({REPO, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}):
        if path.is_relative_to("/root") and not any(path.is_relative_to(p) for p in kept(keep)):
            (home / path.relative_to("/root")).mkdir(parents=True, exist_ok=True)
            keep += f"mount --bind {path} {home / path.relative_to('/root')} && "
    inner = f"{keep}mount --rbind {home} /root && exec /usr/sbin/sshd -D -e -f /root/sshd/sshd_config"
    sshd_log = open(base / "sshd.log", "w")
    sshd = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--mount", "--propagation", "private",
                             "sh", "-c", inner], stdout=sshd_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield from _serve(sshd, sshd_log, base, key, ssh_port, home, config_path, ports)
    finally:
        if sshd.poll() is None:
            os.killpg(sshd.pid, 9)  # the namespace's init: everything started in it ends with it
            sshd.wait(timeout=30)
        sshd_log.close()


def kept(keep: str) -> list[Path]:
    return [Path(part.split()[2]) for part in keep.split("&&") if part.strip()]


def _serve(sshd, sshd_log, base, key, ssh_port, home, config_path, ports):
    deadline = time.monotonic() + 30
    ssh = ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", f"ProxyCommand=nc 127.0.0.1 {ssh_port}", "root@127.0.0.1"]
    while subprocess.run([*ssh, "true"], capture_output=True).returncode != 0:
        if time.monotonic() > deadline or sshd.poll() is not None:
            raise AssertionError(f"sshd did not come up:\n{(base / 'sshd.log').read_text()}")
        time.sleep(0.5)
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = "token"
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    try:
        yield {"config": config_path, "home": home, "env": env, "ssh": ssh, "base": base, "ports": ports}
    finally:
        subprocess.run(["ray", "down", "-y", str(config_path)], env=env, capture_output=True, timeout=180)


def _ray(args, cluster, timeout):
    out = subprocess.run(["ray", *args], env=cluster["env"], capture_output=True, text=True, timeout=timeout,
                         cwd=REPO)
    return out.returncode, out.stdout + out.stderr


def test_ray_up_submit_smoke_study_and_down(cluster):
    rc, out = _ray(["up", "-y", "--no-config-cache", str(cluster["config"])], cluster, 600)
    assert rc == 0, out[-5000:]
    # The head runs in the namespace with token auth on, on the ports the config gave it.
    status = subprocess.run([*cluster["ssh"], "bash -lc 'source ~/.bashrc; ray status'"], capture_output=True,
                            text=True, timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    t0 = time.monotonic()
    rc, out = _ray(["submit", str(cluster["config"]), "tune_jobs/amal_vs_mappo.py", "--preset", "smoke",
                    "--name", "submitted"], cluster, 900)
    assert rc == 0, out[-6000:]
    assert "joined the running Ray cluster" in out
    assert f":{cluster['ports']['gcs_port']}" in out  # the e2e cluster, not a new local Ray
    report_line = [line for line in out.splitlines() if line.startswith("Report: ")][-1]
    inside = Path(report_line.removeprefix("Report: "))  # a path on the head, whose /root is `home`
    summary = cluster["home"] / inside.relative_to("/root")
    assert summary.is_file()
    root = summary.parent
    table = pd.read_parquet(root / "trials.parquet")
    assert set(table["variant"]) == {"amal_search", "amal_best", "amal_default", "mappo"}
    assert (table["total_env_steps"] > 0).all()
    assert all((root / png).is_file() for png in ("win_rate.png", "amal_internals.png", "search.png"))
    assert "## The claim" in summary.read_text()
    print(f"ray submit smoke study: {time.monotonic() - t0:.0f} s")
    rc, out = _ray(["down", "-y", str(cluster["config"])], cluster, 300)
    assert rc == 0, out[-3000:]
    check = subprocess.run([*cluster["ssh"], "bash -lc 'source ~/.bashrc; ray status'"], capture_output=True,
                           text=True, timeout=120)
    assert check.returncode != 0  # the cluster is down

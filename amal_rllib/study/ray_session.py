"""Join a running Ray cluster or start a local one, and say where its dashboard is and how to log in.

Ray 2.60 turns token authentication on for local clusters that ``ray.init()``
starts (``RAY_AUTH_MODE=token`` here makes it explicit). The token lives in
``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``; ``ray get-auth-token``
prints it. HTTP clients send ``Authorization: Bearer <token>``; the dashboard's
login page asks for the same token.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

DASHBOARD_HOST = "127.0.0.1"  # loopback only; on a cluster: `ray dashboard cluster.yaml` (an SSH tunnel)
DEFAULT_DASHBOARD_PORT = 8265


@dataclasses.dataclass(frozen=True)
class RaySession:
    joined: bool  # True: an existing cluster; False: this process started a local Ray
    address: str
    dashboard_url: str | None
    num_nodes: int
    cpus: float
    gpus: float
    token_path: Path | None

    @property
    def multi_node(self) -> bool:
        return self.num_nodes > 1

    def describe(self) -> str:
        where = "joined the running Ray cluster" if self.joined else "started a local Ray"
        lines = [f"Ray: {where} at {self.address} ({self.num_nodes} node(s), {self.cpus:g} CPUs, {self.gpus:g} GPUs)"]
        if self.dashboard_url:
            lines.append(f"Ray dashboard: {self.dashboard_url}")
        else:
            lines.append("Ray dashboard: not running (install ray[default])")
        if self.token_path is not None:
            lines.append(
                f"  token authentication is on: the token is in {self.token_path} (`ray get-auth-token` prints it); "
                "paste it into the dashboard's login page, or send `Authorization: Bearer <token>` over HTTP"
            )
        else:
            lines.append("  token authentication is off for this cluster")
        return "\n".join(lines)


def token_path() -> Path:
    configured = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(configured).expanduser() if configured else Path.home() / ".ray" / "auth_token"


def ensure_token() -> Path | None:
    """Make the token file (``ray get-auth-token --generate``'s) when neither it nor ``RAY_AUTH_TOKEN`` exists.

    With ``RAY_AUTH_MODE=token`` set explicitly, ``ray.init`` expects a token and does not create one.
    """
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = token_path()
    if not path.is_file():
        from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(generate_new_authentication_token())
        tmp.chmod(0o600)
        os.replace(tmp, path)
        logger.info("generated a Ray authentication token in %s", path)
    return path


def _token_auth_on() -> bool:
    from ray._raylet import AuthenticationMode, get_authentication_mode

    return get_authentication_mode() == AuthenticationMode.TOKEN


def running_cluster_address() -> str | None:
    """``RAY_ADDRESS`` (set by ``ray job submit`` for its jobs), else the head node that ``ray start --head``
    recorded on this machine (what ``ray.init()`` without an address joins), else None.

    Not ``address="auto"``: that also joins any other driver's ``ray.init()`` Ray found among the
    running processes, e.g. a second study started on the same laptop.
    """
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    from ray._private.services import find_bootstrap_address

    return find_bootstrap_address(None)


def connect(num_cpus: int | None = None, dashboard_port: int = DEFAULT_DASHBOARD_PORT) -> RaySession:
    """``RAY_ADDRESS`` or a head node on this machine when there is one, else a local Ray with its dashboard."""
    import ray

    if ray.is_initialized():
        joined = True
    elif (address := running_cluster_address()) is not None:
        ray.init(address=address, log_to_driver=True)
        joined = True
    else:
        # Ray 2.60's default for a local cluster is token authentication (it makes the token);
        # with RAY_AUTH_MODE=token set explicitly it expects the token to exist.
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            ensure_token()
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=True,
            dashboard_host=DASHBOARD_HOST,
            dashboard_port=dashboard_port,
            log_to_driver=True,
        )
        joined = False
    context = ray.get_runtime_context()
    resources = ray.cluster_resources()
    try:
        from ray._private.worker import get_dashboard_url

        dashboard = get_dashboard_url() or None
    except Exception:  # only a display hint
        dashboard = None
    if dashboard and not dashboard.startswith("http"):
        dashboard = "http://" + dashboard
    return RaySession(
        joined=joined,
        address=context.gcs_address,
        dashboard_url=dashboard,
        num_nodes=len([n for n in ray.nodes() if n.get("Alive")]),
        cpus=float(resources.get("CPU", 0)),
        gpus=float(resources.get("GPU", 0)),
        token_path=token_path() if _token_auth_on() else None,
    )

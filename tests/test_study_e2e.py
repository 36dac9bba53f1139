"""The main job end to end (real local Ray, real Tune, real SMAX): report, dashboard with token, SIGKILL + resume."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from study_helpers import free_port, job_env, kill_job_tree, start_job

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]


def _wait_for(predicate, timeout: float, what: str, proc=None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"job exited ({proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{log.read_text()[-4000:]}" if log else ""))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The README's main job (no --preset: it must pick smoke here), started once for the tests below."""
    tmp = tmp_path_factory.mktemp("smoke")
    env = job_env(tmp / "auth_token")
    port = free_port()
    log = tmp / "job.log"
    proc = start_job(["--storage-path", str(tmp / "results"), "--name", "smoke", "--dashboard-port", str(port)],
                     env, log)
    yield {"proc": proc, "log": log, "port": port, "env": env, "root": tmp / "results" / "smoke", "started": time.time()}
    if proc.poll() is None:
        kill_job_tree(proc, env)
    else:
        kill_job_tree(proc, env)  # leftovers of its Ray, if any


def _get(url: str, token: str | None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, None


def test_running_study_is_visible_on_the_dashboard_with_the_token_and_refused_without(smoke_run):
    log, proc = smoke_run["log"], smoke_run["proc"]
    url = _wait_for(lambda: re.search(r"Ray dashboard: (http://127\.0\.0\.1:\d+)", log.read_text()), 180,
                    "the dashboard address", proc, log).group(1)
    assert url.endswith(f":{smoke_run['port']}")
    assert "token authentication is on" in log.read_text()
    token = Path(smoke_run["env"]["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    assert str(smoke_run["env"]["RAY_AUTH_TOKEN_PATH"]) in log.read_text()  # the job says where the token is

    def trial_actors():
        status, body = _get(f"{url}/api/v0/actors?limit=1000&detail=false", token)
        if status != 200 or not body:
            return None
        actors = body["data"]["result"]["result"]
        names = {a.get("class_name") for a in actors if a.get("state") == "ALIVE"}
        return names if names & {"AMALTrial", "MAPPOTrial"} else None

    names = _wait_for(trial_actors, 240, "a trial actor on the dashboard", proc, log)
    assert names & {"AMALTrial", "MAPPOTrial"}
    assert proc.poll() is None  # seen while the study runs
    status, _ = _get(f"{url}/api/v0/actors?limit=10", None)
    assert status == 401
    status, _ = _get(f"{url}/api/v0/actors?limit=10", "not-the-token")
    assert status == 403


def test_main_job_picks_smoke_and_writes_a_complete_report(smoke_run):
    proc, log = smoke_run["proc"], smoke_run["log"]
    rc = proc.wait(timeout=600)
    text = log.read_text()
    assert rc == 0, text[-4000:]
    wall = time.time() - smoke_run["started"]
    assert "picked 'smoke'" in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("Report: ")  # the report's path is printed last
    summary = Path(last.removeprefix("Report: "))
    root = smoke_run["root"]
    assert summary == root / "report" / "summary.md"
    table = pd.read_parquet(root / "report" / "trials.parquet")
    assert pd.read_csv(root / "report" / "trials.csv").shape == table.shape
    manifest = json.loads((root / "study.json").read_text())
    study = manifest["study"]
    # One row per trial: the search's configurations, then 3 variants x the confirm seeds.
    assert (table["phase"] == "search").sum() == study["num_samples"] * study["search_seeds"]
    confirm = table[table["phase"] == "confirm"]
    assert sorted(confirm["variant"].unique()) == ["amal_best", "amal_default", "mappo"]
    assert (confirm.groupby("variant")["seed"].apply(sorted).apply(list) == [[1000]] * 3).all()
    assert (confirm["total_env_steps"] >= study["env_steps"]).all()  # one stop key: total env steps
    best = manifest["best"]["3m"]
    amal_best = confirm[confirm["variant"] == "amal_best"]
    assert amal_best["lambda_info"].iloc[0] == pytest.approx(best["lambda_info"])
    for column in ("final_greedy_win_rate", "best_greedy_win_rate", "env_steps_to_0.5", "env_steps_to_0.8",
                   "wall_time_s", "lambda_info", "perturbation_std", "seed", "scenario", "algorithm"):
        assert column in table.columns
    assert table["final_greedy_win_rate"].between(0, 1).all()
    assert len(pd.read_csv(root / "report" / "curves.csv")) == sum(table["iterations"])
    for png in ("win_rate.png", "amal_internals.png", "search.png"):
        assert (root / "report" / png).stat().st_size > 10_000
    md = summary.read_text()
    assert "python tune_jobs/amal_vs_mappo.py" in md and "amal-umc" in md  # command and code version
    claims = pd.read_csv(root / "report" / "claims.csv")
    assert claims["sentence"].iloc[0] in md
    assert "not separable with 1 seed" in claims["sentence"].iloc[0]  # smoke: one confirm seed per algorithm
    # Tune's own outputs stay usable: result.json, progress.csv, TensorBoard event files per trial.
    trial_dirs = [p for p in (root / "confirm-3m-mappo").iterdir() if p.is_dir()]
    assert trial_dirs and all((d / "progress.csv").is_file() for d in trial_dirs)
    assert all(list(d.glob("events.out.tfevents.*")) for d in trial_dirs)
    print(f"main job wall time: {wall:.0f} s")


def _checkpoint_iterations(trial_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[-1]) for p in trial_dir.glob("checkpoint_*"))


def _resume_to_the_end(root: Path, env: dict[str, str], log: Path) -> None:
    """``--resume root`` as a new driver; it must restore the search and finish the study (exit 0)."""
    resumed = start_job(["--resume", str(root), "--dashboard-port", str(free_port())], env, log)
    try:
        rc = resumed.wait(timeout=700)
    finally:
        kill_job_tree(resumed, env)
    text = log.read_text()
    assert rc == 0, text[-4000:]
    assert "resuming search-3m" in text


def test_sigkill_of_the_driver_then_resume_finishes_every_trial_from_its_checkpoint(tmp_path):
    env = job_env(tmp_path / "auth_token")
    args = ["--preset", "smoke", "--storage-path", str(tmp_path / "results"), "--name", "killed",
            "--num-samples", "2", "--search-env-steps", "2500", "--checkpoint-frequency", "1",
            "--dashboard-port", str(free_port())]
    log = tmp_path / "first.log"
    proc = start_job(args, env, log)
    search = tmp_path / "results" / "killed" / "search-3m"

    def two_checkpoints():
        if not search.is_dir() or not list(search.glob("experiment_state-*.json")):
            return None
        dirs = [d for d in search.iterdir() if d.is_dir() and len(_checkpoint_iterations(d)) >= 2]
        return dirs or None

    try:
        _wait_for(two_checkpoints, 400, "a search trial's second checkpoint", proc, log)
    finally:
        kill_job_tree(proc, env)  # SIGKILL: the driver and the local Ray it started
    before = {}  # trial folder -> (last iteration reported before the kill, checkpoints written)
    for d in search.iterdir():
        if d.is_dir() and (d / "result.json").is_file():
            # A trial Tune had just started has an empty result.json (opened, nothing reported yet): last
            # iteration 0. Tune logs a result before it asks for that iteration's checkpoint, so such a
            # trial has no checkpoint either and must restart from iteration 1.
            rows = [json.loads(x) for x in (d / "result.json").read_text().splitlines() if x.strip().endswith("}")]
            before[d.name] = (max((r["training_iteration"] for r in rows), default=0), len(_checkpoint_iterations(d)))
            assert rows or not _checkpoint_iterations(d), (d.name, "a checkpoint without a logged result")
    assert any(n_ckpt >= 2 for _, n_ckpt in before.values())

    _resume_to_the_end(tmp_path / "results" / "killed", env, tmp_path / "resume.log")
    table = pd.read_parquet(tmp_path / "results" / "killed" / "report" / "trials.parquet")
    search_rows = table[table["phase"] == "search"]
    assert len(search_rows) == 2 and (table["phase"] == "confirm").sum() == 3
    redone_total = 0
    for name, (last_iter, n_ckpt) in before.items():
        rows = [json.loads(x) for x in (search / name / "result.json").read_text().splitlines() if x.strip()]
        assert rows[-1]["env_steps_total_lifetime"] >= 2500  # finished its budget
        # The first result after the resume says where the trial restarted: its checkpoint's iteration + 1.
        after_kill = [r for r in rows if r["iterations_since_restore"] == 1 and r["training_iteration"] > 1]
        if n_ckpt:
            assert after_kill, (name, [r["training_iteration"] for r in rows])  # continued, not from iteration 1
            restored = after_kill[-1]["training_iteration"] - 1
            assert 1 <= restored <= last_iter
            assert last_iter - restored <= 1 + 1  # at most one checkpoint interval (1) plus the one in flight
            redone_total += last_iter - restored
            row = search_rows[search_rows["trial_id"] == rows[-1]["trial_id"]]
            assert int(row["redone_iterations"].iloc[0]) == last_iter - restored
        assert [r["training_iteration"] for r in rows].count(1) == 1, name  # never started from scratch
    print(f"iterations redone after the SIGKILL: {redone_total} (over {len(before)} trial(s))")


def test_ctrl_c_leaves_the_phase_unfinished_and_resume_finishes_it(tmp_path):
    """Ctrl-C makes Tune's ``fit()`` return normally with unfinished trials; the study must stop there
    (exit 130, the phase not ``done``, no confirm phase begun on an unfinished search), and ``--resume``
    must finish every trial from its checkpoint."""
    import os
    import signal

    env = job_env(tmp_path / "auth_token")
    root = tmp_path / "results" / "interrupted"
    args = ["--preset", "smoke", "--storage-path", str(tmp_path / "results"), "--name", "interrupted",
            "--num-samples", "2", "--search-env-steps", "3000", "--checkpoint-frequency", "1",
            "--dashboard-port", str(free_port())]
    log = tmp_path / "first.log"
    proc = start_job(args, env, log)
    search = root / "search-3m"

    def a_checkpoint():
        if not search.is_dir() or not list(search.glob("experiment_state-*.json")):
            return None
        return [d for d in search.iterdir() if d.is_dir() and _checkpoint_iterations(d)] or None

    try:
        _wait_for(a_checkpoint, 400, "a search trial's checkpoint", proc, log)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends: the whole foreground group
        rc = proc.wait(timeout=180)
    finally:
        kill_job_tree(proc, env)
    text = log.read_text()
    assert rc == 130, text[-4000:]
    assert "search-3m: interrupted before all 2 trials finished" in text and f"continue with --resume {root}" in text
    manifest = json.loads((root / "study.json").read_text())
    assert manifest["phases"]["search-3m"]["status"] == "interrupted"
    assert "3m" not in manifest["best"]  # no best configuration read off an unfinished search
    assert not [p for p in manifest["phases"] if p.startswith("confirm")]
    assert not list(root.glob("confirm-*"))
    assert "finished" not in manifest and not (root / "report").exists()
    unfinished = []
    for d in (d for d in search.iterdir() if d.is_dir() and (d / "result.json").is_file()):
        rows = [json.loads(x) for x in (d / "result.json").read_text().splitlines() if x.strip().endswith("}")]
        if rows[-1]["env_steps_total_lifetime"] < 3000:
            unfinished.append(d.name)
    assert unfinished, "every search trial had finished before the Ctrl-C: the test did not interrupt anything"

    _resume_to_the_end(root, env, tmp_path / "resume.log")
    manifest = json.loads((root / "study.json").read_text())
    assert all(state["status"] == "done" for state in manifest["phases"].values()) and "3m" in manifest["best"]
    table = pd.read_parquet(root / "report" / "trials.parquet")
    assert (table["phase"] == "search").sum() == 2 and (table["phase"] == "confirm").sum() == 3
    for name in unfinished:
        rows = [json.loads(x) for x in (search / name / "result.json").read_text().splitlines() if x.strip()]
        assert rows[-1]["env_steps_total_lifetime"] >= 3000  # finished its budget after the resume
        assert [r["training_iteration"] for r in rows].count(1) == 1, name  # from its checkpoint, not from scratch

"""The deployment's topology for real, without containers: PostgreSQL, ``mlflow server`` on it, a two-node Ray
cluster (``ray start --head`` + ``ray start --address``), the sweep and the analysis against them; and its faults.

One topology serves the whole module (each test uses its own experiment); the node-kill test runs last.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from tests.sweep_helpers import (
    FASHION_DIR,
    REPO,
    SweepProcess,
    finished_counts,
    run_sweep,
    trial_runs,
    trial_workers,
    wait_no_trial_workers,
    wait_together,
)
from tests.topology import free_port, full_topology

#: 2 scales x both arms x 2 seeds = 8 trials on the cluster's 2 CPUs (one per node).
GRID = ["--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--weight-scales", "0.1,0.01",
        "--seeds", "0-1", "--train-size", "1000", "--test-size", "200", "--workers", "2"]
SHORT = [*GRID, "--epochs", "3"]
#: Trials as long as a default one (about 0.6 s each), so that both nodes get some. Each sweep is a new Ray job and
#: needs new workers on both nodes; with 0.1 s trials the head's worker could run all 8 before node 2's had started.
SPREAD = [*GRID, "--epochs", "20"]
#: Trials that last a couple of seconds, to be caught in the middle.
LONG = [*GRID, "--epochs", "40", "--flush-seconds", "0.2"]


@pytest.fixture(scope="module")
def topo():
    """The topology, its MLflow server's admin login in this process's environment while the module runs: the
    sweeps and analyses it starts, and its own MlflowClient, log in as the deployment's do."""
    started = time.monotonic()
    with full_topology() as topology:
        topology.up_seconds = time.monotonic() - started
        print(f"\ntopology up in {topology.up_seconds:.1f} s", file=sys.stderr)
        saved = {k: os.environ.get(k) for k in topology.mlflow.login.env}
        os.environ.update(topology.mlflow.login.env)
        try:
            yield topology
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _sweep_args(topo, experiment: str, grid: list[str]) -> list[str]:
    return [*grid, "--address", topo.ray.address, "--tracking-uri", topo.mlflow.url, "--experiment", experiment]


def _assert_once_with_history(uri: str, experiment: str, n: int, epochs: int) -> list:
    counts = finished_counts(uri, experiment)
    assert len(counts) == n and set(counts.values()) == {1}, counts
    client = MlflowClient(uri)
    runs = trial_runs(uri, experiment, ("FINISHED",))
    for run in runs:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_acc"))
        assert steps == list(range(epochs + 1)), (run.info.run_name, steps)
    return runs


def test_sweep_and_analysis_on_the_cluster_and_server(topo, tmp_path):
    started = time.monotonic()
    out = run_sweep(*_sweep_args(topo, "topology", SPREAD), cwd=tmp_path, env=topo.ray.subprocess_env())
    assert out.returncode == 0, out.stderr
    runs = _assert_once_with_history(topo.mlflow.url, "topology", 8, 20)
    node_ids = {n["node_id"] for n in topo.ray.alive_nodes()}
    assert len(node_ids) == 2
    assert {r.data.tags["ray_node"] for r in runs} == node_ids, "trials must land on both nodes"

    analysis = subprocess.run(
        [sys.executable, "-m", "analysis", "--experiment", "topology", "--tracking-uri", topo.mlflow.url,
         "--out", str(tmp_path / "report")],
        cwd=REPO, env=topo.ray.subprocess_env(), capture_output=True, text=True, timeout=300)
    assert analysis.returncode == 0, analysis.stderr
    stored = {p.name for p in topo.mlflow.artifacts_dir.rglob("*") if p.is_file()}
    assert {"grid.png", "difference.png", "summary.csv", "comparison.csv", "report.md"} <= stored, stored
    print(f"\nsweep + analysis on the topology: {time.monotonic() - started:.1f} s", file=sys.stderr)


def _rest(url: str, path: str, auth: tuple[str, str] | None = None) -> int:
    """The HTTP status of a POST to the server's REST API (a search: it writes nothing)."""
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    request = urllib.request.Request(url + path, data=b'{"max_results": 1}', headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_server_lets_nobody_in_without_the_login(topo, tmp_path):
    url, login = topo.mlflow.url, topo.mlflow.login
    assert _rest(url, "/api/2.0/mlflow/experiments/search") == 401
    assert _rest(url, "/api/2.0/mlflow/runs/search", ("intruder", "not-a-password-at-all")) == 401
    assert _rest(url, "/api/2.0/mlflow/experiments/search", (login.username, "wrong-password-0")) == 401
    assert _rest(url, "/api/2.0/mlflow/experiments/search", (login.username, login.password)) == 200
    with urllib.request.urlopen(url + "/health", timeout=10) as reply:  # the health check needs no login
        assert reply.status == 200

    before = [e.experiment_id for e in MlflowClient(url).search_experiments()]
    wrong = {"MLFLOW_TRACKING_USERNAME": login.username, "MLFLOW_TRACKING_PASSWORD": "wrong-password-0"}
    cases = {"with a wrong password": topo.ray.subprocess_env(**wrong),
             "without a login": {k: v for k, v in topo.ray.subprocess_env().items() if k not in login.env}}
    for case, env in cases.items():
        sweep = run_sweep(*_sweep_args(topo, "refused", SHORT), cwd=tmp_path, env=env)
        analysis = subprocess.run([sys.executable, "-m", "analysis", "--experiment", "topology", "--tracking-uri",
                                   url, "--out", str(tmp_path / "refused"), "--no-log"],
                                  cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        for out in (sweep, analysis):
            assert out.returncode == 2, (case, out.stderr)
            (line,) = [ln for ln in out.stderr.splitlines() if ln.strip()]
            assert f"error: tracking server {url} refused " in line and "(HTTP 401: it asks for a login)" in line
            assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in line, line  # the fix
        assert "trials:" not in sweep.stderr, "no trial may start"
    assert [e.experiment_id for e in MlflowClient(url).search_experiments()] == before  # nothing written
    assert not (tmp_path / "refused").exists()


def test_tracking_server_stopped_mid_sweep_and_restarted_loses_nothing(topo, tmp_path):
    sweep = SweepProcess(*_sweep_args(topo, "server-restart", LONG), cwd=tmp_path, env=topo.ray.subprocess_env())
    try:
        sweep.wait_started()
        deadline = time.monotonic() + 180
        while not finished_counts(topo.mlflow.url, "server-restart"):
            assert time.monotonic() < deadline and sweep.proc.poll() is None, sweep.output
            time.sleep(0.2)
        topo.mlflow.stop(kill=True)  # a crash, mid-sweep
        time.sleep(8)
        topo.mlflow.start()
        code = sweep.wait(600)
    finally:
        sweep.kill()
        if not topo.mlflow.running:
            topo.mlflow.start()
    assert code == 0, sweep.output
    assert "MLflow calls retried" in sweep.output, sweep.output
    _assert_once_with_history(topo.mlflow.url, "server-restart", 8, 40)
    print(f"\nserver restart: lost 0, duplicated 0; {sweep.output.splitlines()[-2]}", file=sys.stderr)


def test_two_sweeps_started_at_once_finish_every_trial_exactly_once(topo, tmp_path):
    env = topo.ray.subprocess_env()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = SweepProcess(*_sweep_args(topo, "concurrent", SHORT), cwd=tmp_path / "a", env=env)
    second = SweepProcess(*_sweep_args(topo, "concurrent", SHORT), cwd=tmp_path / "b", env=env)
    codes = wait_together(first, second)
    assert codes == (0, 0), first.output + second.output
    _assert_once_with_history(topo.mlflow.url, "concurrent", 8, 3)
    assert len(trial_runs(topo.mlflow.url, "concurrent")) == 8, "losing claims are deleted, not left behind"


def test_unreachable_tracking_server_at_start_is_exit_2_before_any_training(topo, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    out = run_sweep(*SHORT, "--address", topo.ray.address, "--tracking-uri", dead, cwd=tmp_path,
                    env=topo.ray.subprocess_env())
    assert out.returncode == 2, out.stderr
    assert f"tracking server {dead} is unreachable" in out.stderr
    assert time.monotonic() - started < 60
    assert "trials:" not in out.stderr, "no trial may start"


def test_ctrl_c_on_the_cluster_stops_its_trials_on_both_nodes(topo, tmp_path):
    """The sweep cancels no task (ray.cancel races with a task's end in Ray 2.60 and can crash the driver): at
    Ctrl-C it ends its runs KILLED and leaves the cluster, and Ray ends the tasks of the driver's job on every node."""
    endless = [*GRID, "--epochs", "1000"]  # trials of half a minute: they must be stopped, not just end meanwhile
    sweep = SweepProcess(*_sweep_args(topo, "cluster-ctrl-c", endless), cwd=tmp_path, env=topo.ray.subprocess_env())
    try:
        sweep.wait_started()
        deadline = time.monotonic() + 180
        # one trial computing on each node, and their runs claimed
        while len(trial_workers()) < 2 or len(trial_runs(topo.mlflow.url, "cluster-ctrl-c", ("RUNNING",))) < 2:
            assert time.monotonic() < deadline and sweep.proc.poll() is None, sweep.output
            time.sleep(0.05)
        sweep.proc.send_signal(signal.SIGINT)
        code = sweep.wait(120)
    finally:
        sweep.kill()
    assert code == 130, sweep.output
    assert not wait_no_trial_workers(5), "the trials of an interrupted sweep must stop on the cluster"
    statuses = [r.info.status for r in trial_runs(topo.mlflow.url, "cluster-ctrl-c")]
    assert "KILLED" in statuses and "RUNNING" not in statuses, statuses
    assert len(topo.ray.alive_nodes()) == 2, "the cluster itself stays up"


def test_second_node_killed_mid_sweep_its_trials_are_rescheduled(topo, tmp_path):
    node2 = next(n["node_id"] for n in topo.ray.alive_nodes() if "node2" in n["resources"])
    sweep = SweepProcess(*_sweep_args(topo, "node-kill", LONG), cwd=tmp_path, env=topo.ray.subprocess_env())
    try:
        sweep.wait_started()
        deadline = time.monotonic() + 180
        while not any(r.data.tags.get("ray_node") == node2
                      for r in trial_runs(topo.mlflow.url, "node-kill", ("RUNNING",))):
            assert time.monotonic() < deadline and sweep.proc.poll() is None, sweep.output
            time.sleep(0.1)
        topo.ray.kill_node("node2")
        code = sweep.wait(600)
    finally:
        sweep.kill()
    assert code == 0, sweep.output
    runs = _assert_once_with_history(topo.mlflow.url, "node-kill", 8, 40)
    retried = [r for r in runs if "task_attempts" in r.data.tags]
    assert retried, "the trial running on the killed node must have been run again"
    assert all(r.data.tags["ray_node"] != node2 for r in retried)
    print(f"\nnode kill: lost 0, duplicated 0, retried {len(retried)}", file=sys.stderr)

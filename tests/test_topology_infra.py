"""The real-process topology of tests/topology.py works: PostgreSQL, MLflow on it, a two-node Ray cluster.

These are the fixtures the sweep-level topology and fault tests stand on, so each property they rely on is
checked here for real: logins, a run with an artifact through the served artifact store, a restart of the
tracking server on the same port and store, a task pinned to node 2, token authentication, losing node 2,
loopback-only listening sockets, and a teardown that leaves no process behind.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from tests.topology import (
    MlflowServer,
    PostgresServer,
    RayCluster,
    full_topology,
    is_running,
    marked_pids,
    mlflow_pg_server,  # noqa: F401 (fixture)
    pg_server,  # noqa: F401 (fixture)
    ray_cluster,
    snapshot,
    still_running,
)

pytestmark = pytest.mark.slow

#: A driver: run one task that needs the ``node2`` resource and print the id of the node it ran on.
NODE2_TASK = """
import sys, ray
ray.init(address=sys.argv[1], _node_ip_address="127.0.0.1")

@ray.remote(num_cpus=1, resources={"node2": 1})
def where():
    return ray.get_runtime_context().get_node_id()

print("RAN_ON", ray.get(where.remote(), timeout=120))
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    """One two-node cluster shared by the tests that leave it intact."""
    with ray_cluster() as c:
        yield c


def _node2_id(nodes: list[dict]) -> str:
    (node2,) = [n for n in nodes if "node2" in n["resources"]]
    return node2["node_id"]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _listening_addresses(pids: set[int]) -> list[str]:
    """``address:port`` of every listening TCP socket owned by one of ``pids`` (from ``ss``)."""
    if shutil.which("ss") is None:
        pytest.fail("ss is missing: apt-get install iproute2")
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            found.append(line.split()[3])
    return found


# ------------------------------------------------------------------------------------------------ PostgreSQL


def test_postgres_takes_a_password_login_on_loopback_and_refuses_a_wrong_password(pg_server: PostgresServer):  # noqa: F811
    with pg_server.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT current_database(), current_setting('listen_addresses')")
        assert cur.fetchone() == ("mlflow", "127.0.0.1")
    conn.close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=pg_server.port, user=pg_server.user, password="wrong",
                         dbname="mlflow", connect_timeout=5)


# ------------------------------------------------------------------------------------------------ MLflow


def test_mlflow_server_on_postgres_keeps_runs_and_served_artifacts_across_a_restart(
        pg_server: PostgresServer, mlflow_pg_server: MlflowServer, tmp_path: Path):  # noqa: F811
    client = MlflowClient(mlflow_pg_server.url)
    exp_id = client.create_experiment("infra")
    run = client.create_run(exp_id, run_name="probe")
    run_id = run.info.run_id
    client.log_param(run_id, "weight_scale", "0.01")
    for step, value in enumerate([0.1, 0.5, 0.9]):
        client.log_metric(run_id, "train_acc", value, step=step)
    payload = tmp_path / "history.json"
    payload.write_text('{"train_acc": [0.1, 0.5, 0.9]}')
    client.log_artifact(run_id, str(payload))
    client.set_terminated(run_id, "FINISHED")

    # The artifact went through the server into its artifact store; the run is a row in PostgreSQL.
    stored = list(mlflow_pg_server.artifacts_dir.rglob("history.json"))
    assert len(stored) == 1 and stored[0].read_text() == payload.read_text()
    assert run_id in str(stored[0])
    with pg_server.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,))
        assert cur.fetchone() == ("FINISHED",)
    conn.close()

    port = mlflow_pg_server.port
    mlflow_pg_server.stop()
    assert not mlflow_pg_server.healthy() and marked_pids(mlflow_pg_server.marker) == []
    mlflow_pg_server.start()
    assert mlflow_pg_server.port == port and mlflow_pg_server.healthy()

    client = MlflowClient(mlflow_pg_server.url)
    again = client.get_run(run_id)
    assert again.info.status == "FINISHED" and again.data.params == {"weight_scale": "0.01"}
    history = sorted(client.get_metric_history(run_id, "train_acc"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(0, 0.1), (1, 0.5), (2, 0.9)]
    fetched = Path(client.download_artifacts(run_id, "history.json", str(tmp_path / "back")))
    assert fetched.read_text() == payload.read_text()


# ------------------------------------------------------------------------------------------------ Ray


def test_ray_cluster_has_two_alive_nodes_and_runs_a_node2_task_on_node2(cluster: RayCluster):
    nodes = cluster.nodes_info()
    assert len(nodes) == 2 and all(n["alive"] and n["address"] == "127.0.0.1" for n in nodes)
    done = subprocess.run([sys.executable, "-c", NODE2_TASK, cluster.address], env=cluster.subprocess_env(),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"RAN_ON {_node2_id(nodes)}" in done.stdout


@pytest.mark.parametrize("auth_env", [{"RAY_AUTH_TOKEN": "0" * 64}, {"RAY_AUTH_MODE": "disabled"}],
                         ids=["wrong-token", "no-token"])
def test_ray_cluster_refuses_a_driver_without_its_token(cluster: RayCluster, auth_env: dict):
    env = cluster.subprocess_env(RAY_NUM_REDIS_GET_RETRIES="1", **auth_env)
    if auth_env.get("RAY_AUTH_MODE") == "disabled":
        env.pop("RAY_AUTH_TOKEN")
    done = subprocess.run([sys.executable, "-c", NODE2_TASK, cluster.address], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode != 0 and "RAN_ON" not in done.stdout
    assert "InvalidAuthToken" in done.stderr


# ------------------------------------------------------------------------------------------------ everything


def test_topology_listens_on_loopback_only_loses_node2_alone_and_tears_down_every_process():
    with full_topology() as topo:
        pids = set(topo.pids())
        started = snapshot(pids)
        assert topo.postgres.process.pid in pids and topo.mlflow.process.pid in pids
        listening = _listening_addresses(pids)
        ports = {int(a.rsplit(":", 1)[1]) for a in listening}
        assert {topo.postgres.port, topo.mlflow.port, topo.ray.port} <= ports
        assert all(a.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]") for a in listening), listening

        head, node2 = topo.ray.nodes["head"], topo.ray.nodes["node2"]
        head_core = {p for p in head.pids() if _comm(p) in ("gcs_server", "raylet")}
        assert len(head_core) == 2
        node2_raylet = {p for p in node2.pids() if _comm(p) == "raylet"}
        assert len(node2_raylet) == 1
        node2_processes = snapshot(node2.pids())
        killed = topo.ray.kill_node("node2")
        assert node2_raylet <= set(killed) and not set(killed) & head_core
        assert node2.pids() == [] and still_running(node2_processes) == [] and node2.process.poll() is not None
        (survivor,) = topo.ray.wait_for_alive_nodes(1)
        assert "node:__internal_head__" in survivor["resources"]
        assert head.process.poll() is None and all(is_running(p) for p in head_core)
        assert topo.mlflow.healthy()
        every_process = snapshot(topo.pids()) | started
        topology_id = topo.topology_id
    assert marked_pids(topology_id + "/") == []
    assert still_running(every_process) == []

"""docker-compose.yml, the Dockerfile and their helpers say what docs/deployment.md promises.

No container engine runs here, so the file is checked three ways: ``docker-compose config`` must accept it
(and must refuse it while a secret is missing), the rendered configuration must have the services, profiles,
healthchecks, loopback-only ports, named volumes, shared image and per-service secrets of the design, and the
commands the containers run -- the healthchecks and the sweep's ``ray-driver`` wrapper -- are run for real
against a real PostgreSQL, MLflow server and Ray cluster (tests/topology.py).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.utils import canonicalize_name

from tests.topology import (
    MARKER_ENV,
    MlflowServer,
    PostgresServer,
    RayCluster,
    marked_pids,
    mlflow_pg_server,  # noqa: F401 (fixture)
    pg_server,  # noqa: F401 (fixture)
    ray_cluster,
)

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
PROJECT_SERVICES = ("mlflow", "ray-head", "ray-worker", "sweep", "analysis")
RAY_SERVICES = ("ray-head", "ray-worker", "sweep")
SECRETS = ("POSTGRES_PASSWORD", "RAY_AUTH_TOKEN", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SECRET_KEY")


def docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed: apt-get install docker-compose")
    return exe


def compose(*args: str, env_file: Path) -> subprocess.CompletedProcess:
    """``docker-compose --env-file ENV_FILE ARGS`` on the repo's file, in a clean environment (no stray
    POSTGRES_PASSWORD etc. of this process can fill in what the env file lacks)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run([docker_compose(), "-f", str(COMPOSE_FILE), "--project-directory", str(REPO),
                           "--env-file", str(env_file), *args],
                          env=env, capture_output=True, text=True, timeout=120)


def filled_env_file(folder: Path) -> tuple[Path, dict[str, str]]:
    """.env.example with fresh values for its empty secrets, as a user would make .env."""
    values = {"POSTGRES_PASSWORD": secrets.token_urlsafe(24), "RAY_AUTH_TOKEN": secrets.token_hex(32),
              "MLFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(24), "MLFLOW_SECRET_KEY": secrets.token_hex(32)}
    lines = []
    for line in (REPO / ".env.example").read_text().splitlines():
        key = line.split("=", 1)[0]
        lines.append(f"{key}={values[key]}" if key in values else line)
    path = folder / "filled.env"
    path.write_text("\n".join(lines) + "\n")
    return path, values


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[dict, dict[str, str]]:
    """The configuration ``docker-compose config`` renders with a filled-in .env, and the secrets used."""
    env_file, values = filled_env_file(tmp_path_factory.mktemp("compose"))
    done = compose("config", env_file=env_file)
    assert done.returncode == 0, f"docker-compose config failed: {done.stderr}"
    return yaml.safe_load(done.stdout), values


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _published(service: dict) -> list[tuple[str, str, str]]:
    """(host_ip, published, target) of every published port, in either syntax docker-compose renders."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((str(port.get("host_ip", "")), str(port.get("published", "")), str(port["target"])))
        else:
            parts = str(port).split("/")[0].split(":")
            if len(parts) != 3:
                parts = ["", *parts] if len(parts) == 2 else ["", "", parts[0]]
            out.append((parts[0], parts[1], parts[2]))
    return out


def _words(service: dict, key: str) -> list[str]:
    value = service.get(key) or []
    return value.split() if isinstance(value, str) else [str(v) for v in value]


# ------------------------------------------------------------------------------------------------ config


def test_compose_config_accepts_the_file_with_every_profile(tmp_path: Path):
    env_file, _ = filled_env_file(tmp_path)
    done = compose("--profile", "sweep", "--profile", "analysis", "config", "--services", env_file=env_file)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {"postgres", *PROJECT_SERVICES}


def test_compose_refuses_to_run_while_a_secret_of_env_example_is_empty():
    done = compose("config", env_file=REPO / ".env.example")
    assert done.returncode != 0
    assert re.search(rf"set ({'|'.join(SECRETS)}) in \.env", done.stderr), done.stderr


def test_secrets_are_placeholders_in_env_example_and_variables_in_the_compose_file():
    example = dict(line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert all(example[name] == "" for name in SECRETS)
    raw = COMPOSE_FILE.read_text()
    for name in SECRETS:
        assert f"${{{name}:?" in raw
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_services_profiles_and_the_one_shared_project_image(rendered):
    config, _ = rendered
    services = config["services"]
    assert set(services) == {"postgres", *PROJECT_SERVICES}
    assert services["sweep"]["profiles"] == ["sweep"]
    assert services["analysis"]["profiles"] == ["analysis"]
    assert all("profiles" not in services[s] for s in ("postgres", "mlflow", "ray-head", "ray-worker"))
    assert services["postgres"]["image"].startswith("postgres:")
    images = {services[s]["image"] for s in PROJECT_SERVICES}
    contexts = {Path(services[s]["build"]["context"]).resolve() for s in PROJECT_SERVICES}
    assert len(images) == 1 and contexts == {REPO}
    assert {services[s]["build"].get("dockerfile", "Dockerfile") for s in PROJECT_SERVICES} == {"Dockerfile"}


def test_healthchecks_and_start_order(rendered):
    services = rendered[0]["services"]
    for name in ("postgres", "mlflow", "ray-head"):
        assert services[name]["healthcheck"]["test"], name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])
    expected = {"mlflow": {"postgres"}, "ray-worker": {"ray-head"}, "sweep": {"ray-head", "mlflow"},
                "analysis": {"mlflow"}}
    for name, deps in expected.items():
        depends = services[name]["depends_on"]
        assert set(depends) == deps and all(d["condition"] == "service_healthy" for d in depends.values())


def test_only_mlflow_and_the_ray_dashboard_are_published_and_only_on_loopback(rendered):
    services = rendered[0]["services"]
    published = {name: _published(svc) for name, svc in services.items() if _published(svc)}
    assert set(published) == {"mlflow", "ray-head"}
    assert [(p[0], p[2]) for p in published["mlflow"]] == [("127.0.0.1", "5000")]
    assert [(p[0], p[2]) for p in published["ray-head"]] == [("127.0.0.1", "8265")]


def test_postgres_is_reachable_only_from_mlflow(rendered):
    config = rendered[0]
    assert config["networks"]["db"].get("internal") is True
    members = {name for name, svc in config["services"].items() if "db" in (svc.get("networks") or {})}
    assert members == {"postgres", "mlflow"}


def test_named_volumes_hold_the_database_the_artifacts_and_the_data_cache(rendered):
    config = rendered[0]
    assert {"pgdata", "mlartifacts", "data-cache"} <= set(config["volumes"])
    mounts = {name: [str(v).split(":")[:2] for v in svc.get("volumes") or []]
              for name, svc in config["services"].items()}
    assert ["pgdata", "/var/lib/postgresql/data"] in mounts["postgres"]
    assert ["mlartifacts", "/mlartifacts"] in mounts["mlflow"]


def test_mlflow_serves_artifacts_from_postgres_without_the_password_in_its_command(rendered):
    config, values = rendered
    mlflow = config["services"]["mlflow"]
    command = _words(mlflow, "command")
    assert command[0] == "mlflow-server"  # docker/mlflow-server.sh: authentication on
    uri = command[command.index("--backend-store-uri") + 1]
    assert re.fullmatch(r"postgresql\+psycopg2://mlflow@postgres:5432/mlflow", uri)
    assert "--serve-artifacts" in command
    assert command[command.index("--artifacts-destination") + 1] == "/mlartifacts"
    assert values["POSTGRES_PASSWORD"] not in " ".join(command)
    assert _env(mlflow)["PGPASSWORD"] == values["POSTGRES_PASSWORD"]
    hosts = command[command.index("--allowed-hosts") + 1].split(",")
    assert "mlflow:5000" in hosts and "127.0.0.1:*" in hosts


def test_ray_nodes_and_the_driver_share_the_token_and_only_they_get_it(rendered):
    config, values = rendered
    services = config["services"]
    for name in RAY_SERVICES:
        env = _env(services[name])
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == values["RAY_AUTH_TOKEN"], name
        assert values["POSTGRES_PASSWORD"] not in str(services[name]), name
    for name in ("postgres", "mlflow", "analysis"):
        assert values["RAY_AUTH_TOKEN"] not in str(services[name]), name
    assert values["POSTGRES_PASSWORD"] not in str(services["analysis"])


def test_mlflow_asks_for_a_login_that_only_the_sweep_and_the_analysis_get(rendered):
    config, values = rendered
    services = config["services"]
    server = _env(services["mlflow"])
    assert server["MLFLOW_AUTH_ADMIN_USERNAME"] == "bnsweep"
    assert server["MLFLOW_AUTH_ADMIN_PASSWORD"] == values["MLFLOW_ADMIN_PASSWORD"]
    assert server["MLFLOW_FLASK_SERVER_SECRET_KEY"] == values["MLFLOW_SECRET_KEY"]
    assert server["BNSWEEP_AUTH_DATABASE_URI"] == "postgresql+psycopg2://mlflow@postgres:5432/mlflow"  # no password
    for name in ("sweep", "analysis"):
        env = _env(services[name])
        assert env["MLFLOW_TRACKING_USERNAME"] == "bnsweep", name
        assert env["MLFLOW_TRACKING_PASSWORD"] == values["MLFLOW_ADMIN_PASSWORD"], name
        assert values["MLFLOW_SECRET_KEY"] not in str(services[name]), name
    for name in ("postgres", "ray-head", "ray-worker"):  # the Ray nodes run task code: no MLflow login there
        assert values["MLFLOW_ADMIN_PASSWORD"] not in str(services[name]), name
        assert values["MLFLOW_SECRET_KEY"] not in str(services[name]), name


def test_ray_worker_scales_and_the_head_publishes_no_ray_port(rendered):
    services = rendered[0]["services"]
    worker = services["ray-worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert "--address=ray-head:6379" in _words(worker, "command")
    head = _words(services["ray-head"], "command")
    assert head[:3] == ["ray", "start", "--head"] and "--port=6379" in head
    assert [p[2] for p in _published(services["ray-head"])] == ["8265"]


def test_sweep_and_analysis_run_the_project_clis_against_the_compose_services(rendered):
    services = rendered[0]["services"]
    sweep = _words(services["sweep"], "entrypoint")
    assert sweep[:4] == ["ray-driver", "python", "-m", "pipeline.sweep"]
    assert sweep[sweep.index("--address") + 1] == "ray-head:6379"
    assert sweep[sweep.index("--tracking-uri") + 1] == "http://mlflow:5000"
    analysis = _words(services["analysis"], "entrypoint")
    assert analysis[:3] == ["python", "-m", "analysis"]
    assert analysis[analysis.index("--tracking-uri") + 1] == "http://mlflow:5000"
    assert "--experiment" in analysis


# ------------------------------------------------------------------------------------------------ image


def test_dockerfile_builds_one_non_root_image_from_the_lock():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", dockerfile, re.M)
    assert re.search(r"^RUN pip install .*-r requirements\.lock", dockerfile, re.M)
    assert re.search(r"pip install .*--no-deps \.", dockerfile)
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")


def test_dockerignore_is_an_allowlist_that_keeps_secrets_out_and_lets_every_copy_source_in():
    rules = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"
    included = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert not any(r.startswith(".env") or r.startswith(".git") for r in included)
    sources = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources += [s for s in line.split()[1:-1] if not s.startswith("--")]
    assert sources and set(sources) <= included, set(sources) - included
    for source in sources:
        assert (REPO / source).exists(), source


def test_the_image_copies_every_package_of_the_project():
    """pyproject.toml's packages (``include``) are each copied into the image, so the image runs this code."""
    include = re.search(r'include = \[([^\]]*)\]', (REPO / "pyproject.toml").read_text()).group(1)
    packages = {name.strip(' "*') for name in include.split(",")}
    copied = {line.split()[1] for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")}
    assert packages and packages <= copied, packages - copied


def test_requirements_lock_pins_exactly_the_tested_versions_of_the_runtime_dependencies():
    lock = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[canonicalize_name(name)] = version
    for name in ("ray", "mlflow", "numpy", "pandas", "matplotlib", "scipy", "tqdm", "threadpoolctl",
                 "psycopg2-binary"):
        assert lock.get(name) == metadata.version(name), name
    # ray[default] brings the dashboard and its agent: their dependencies are pinned too.
    assert {"aiohttp", "grpcio", "opencensus", "prometheus-client"} <= set(lock)


# ------------------------------------------------------------------------------------------------ for real


@pytest.fixture(scope="module")
def head_only() -> Iterator[RayCluster]:
    with ray_cluster(node2=False) as cluster:
        yield cluster


def _healthcheck(rendered_config: dict, service: str) -> list[str]:
    test = rendered_config["services"][service]["healthcheck"]["test"]
    if test[0] == "CMD-SHELL":
        return ["sh", "-c", test[1].replace("$$", "$")]
    assert test[0] == "CMD"
    return list(test[1:])


def test_postgres_and_mlflow_healthchecks_pass_on_real_servers_and_fail_once_they_stop(
        rendered, pg_server: PostgresServer, mlflow_pg_server: MlflowServer):  # noqa: F811
    config = rendered[0]
    pg_check = _healthcheck(config, "postgres")
    pg_env = {**os.environ, "POSTGRES_USER": pg_server.user, "POSTGRES_DB": pg_server.dbname,
              "PGPORT": str(pg_server.port)}
    mlflow_check = [w.replace("127.0.0.1:5000", f"127.0.0.1:{mlflow_pg_server.port}")
                    for w in _healthcheck(config, "mlflow")]
    assert mlflow_check[0] == "python"
    mlflow_check[0] = sys.executable

    assert subprocess.run(pg_check, env=pg_env, capture_output=True, timeout=30).returncode == 0
    assert subprocess.run(mlflow_check, capture_output=True, timeout=30).returncode == 0
    mlflow_pg_server.stop()
    pg_server.stop()
    assert subprocess.run(pg_check, env=pg_env, capture_output=True, timeout=30).returncode != 0
    assert subprocess.run(mlflow_check, capture_output=True, timeout=30).returncode != 0


def test_ray_head_healthcheck_passes_with_the_token_and_fails_without(rendered, head_only: RayCluster):
    check = [w.replace("ray-head:6379", head_only.address) for w in _healthcheck(rendered[0], "ray-head")]
    assert check[0] == "ray"
    check[0] = str(Path(sys.executable).with_name("ray"))
    assert subprocess.run(check, env=head_only.subprocess_env(), capture_output=True, timeout=120).returncode == 0
    wrong = head_only.subprocess_env(RAY_AUTH_TOKEN="f" * 64)
    assert subprocess.run(check, env=wrong, capture_output=True, timeout=120).returncode != 0


#: The driver run by ray-driver.sh: the wrapper's zero-CPU node must have joined, no task may run there, and
#: the command's exit status (7) must come back. (In a container the driver attaches to that node, the only
#: raylet of its host; here every node shares 127.0.0.1, so Ray attaches it to the head instead.)
DRIVER = """
import os, sys, ray
ray.init(address=os.environ["RAY_HEAD_ADDRESS"])
nodes = [n for n in ray.nodes() if n["Alive"]]
zero_cpu = [n["NodeID"] for n in nodes if n["Resources"].get("CPU", 0) == 0]
assert len(nodes) == 2 and len(zero_cpu) == 1, nodes
where = ray.remote(num_cpus=1)(lambda: ray.get_runtime_context().get_node_id())
ran_on = set(ray.get([where.remote() for _ in range(4)], timeout=120))
assert ran_on and zero_cpu[0] not in ran_on, ran_on
print("DRIVER_OK", flush=True)
sys.exit(7)
"""


def test_ray_driver_wrapper_joins_as_a_zero_cpu_node_runs_the_command_and_leaves(head_only: RayCluster):
    tmp = Path(f"/tmp/bnd-{secrets.token_hex(4)}")
    tmp.mkdir()
    marker = f"{head_only.topology_id}/ray-driver"
    env = head_only.subprocess_env(RAY_HEAD_ADDRESS=head_only.address, RAY_NODE_IP="127.0.0.1",
                                   RAY_TMPDIR=str(tmp), TMPDIR=str(tmp), **{MARKER_ENV: marker})
    try:
        done = subprocess.run(["sh", str(REPO / "docker" / "ray-driver.sh"), sys.executable, "-c", DRIVER],
                              env=env, capture_output=True, text=True, timeout=300)
        assert "DRIVER_OK" in done.stdout, done.stderr[-3000:]
        assert done.returncode == 7
        assert marked_pids(marker) == []
        (alive,) = head_only.wait_for_alive_nodes(1)
        assert "node:__internal_head__" in alive["resources"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: A long-running driver command that reports how it ends.
INTERRUPTIBLE = """
import sys, time
try:
    print("READY", flush=True)
    time.sleep(120)
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    sys.exit(130)
"""


def test_ray_driver_wrapper_turns_sigterm_into_sigint_for_the_command_and_leaves(head_only: RayCluster):
    tmp = Path(f"/tmp/bnd-{secrets.token_hex(4)}")
    tmp.mkdir()
    marker = f"{head_only.topology_id}/ray-driver-int"
    env = head_only.subprocess_env(RAY_HEAD_ADDRESS=head_only.address, RAY_NODE_IP="127.0.0.1",
                                   TMPDIR=str(tmp), **{MARKER_ENV: marker})
    proc = subprocess.Popen(["sh", str(REPO / "docker" / "ray-driver.sh"), sys.executable, "-c", INTERRUPTIBLE],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and out.strip() == "INTERRUPTED", err[-3000:]
        assert marked_pids(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def test_ray_driver_wrapper_without_arguments_is_a_usage_error():
    done = subprocess.run(["sh", str(REPO / "docker" / "ray-driver.sh")], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and "usage: ray-driver.sh" in done.stderr

"""The deployment's topology as real local processes: PostgreSQL, MLflow server on it, a two-node Ray cluster.

This is docker-compose.yml without containers, for the topology and fault tests. Every server binds to
127.0.0.1 on a free port and keeps its files in a fresh temp folder; every process started here carries an
environment marker (``BNSWEEP_TOPOLOGY_PROC=<id>/<part>``), so teardown -- and killing one Ray node -- finds
exactly this topology's processes (daemonized children included) and never touches another test's cluster.
Teardown always runs, also when a test fails; it ends with SIGKILL for anything still alive.

Context managers (usable with any scope)::

    with postgres_server() as pg, mlflow_server(pg.url()) as mlf, ray_cluster() as ray:
        subprocess.run([sys.executable, "-m", "pipeline.sweep", "--address", ray.address,
                        "--tracking-uri", mlf.url, ...], env=ray.subprocess_env(), ...)
        mlf.stop(); mlf.start()          # the tracking server goes away and comes back on the same port/store
        ray.kill_node("node2")           # node 2 dies (SIGKILL of all its processes)
        ray.wait_for_alive_nodes(1)

Pytest fixtures (function scope; import them into a test module or ``tests/conftest.py``):
``pg_server``, ``mlflow_pg_server`` (MLflow on a fresh PostgreSQL), ``ray_two_nodes``, ``topology``.

Ray 2.60 token authentication: a cluster started here runs with ``RAY_AUTH_MODE=token`` and a random
``RAY_AUTH_TOKEN``; a driver must get the same two variables (``RayCluster.env`` / ``subprocess_env()``),
an explicit ``--address`` never turns token mode on by itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"
#: Environment variable that tags every process of a topology: ``<topology id>/<part>``.
MARKER_ENV = "BNSWEEP_TOPOLOGY_PROC"
#: Temp folders live here (short paths: Ray's unix socket paths must stay under 107 bytes).
TMP_ROOT = Path(os.environ.get("BNSWEEP_TOPOLOGY_TMP", "/tmp"))

#: The environment every server process gets on top of this process's: no telemetry, no usage stats,
#: no proxy for loopback addresses.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    # MLflow 3 servers otherwise start a job runner with several worker processes (GenAI jobs; unused here).
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
    "PYTHONUNBUFFERED": "1",
}
#: Variables of this process that must not leak into a topology process (they would point it elsewhere).
_DROPPED_ENV = ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI", MARKER_ENV)


class TopologyError(RuntimeError):
    """A topology process did not start (the message names it and ends with the tail of its log)."""


# ------------------------------------------------------------------------------------------------ processes


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now and that this process has not handed out before.

    A command such as ``ray start`` gets several ports chosen before any is bound, and the kernel may offer the
    same free port twice in a row (Ray then refuses to start: "port ... used by other components").
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


def _new_topology_id() -> str:
    return uuid.uuid4().hex[:12]


def _process_env(marker: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(QUIET_ENV)
    env[MARKER_ENV] = marker
    env.update(extra or {})
    return env


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of ``pid``, or None if it does not exist."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def snapshot(pids) -> set[tuple[int, int]]:
    """(pid, start time) of each of ``pids`` that exists now: an identity that survives PID reuse
    (``pid_max`` is 32768 here, and parallel test suites spawn many processes)."""
    return {(pid, start) for pid in pids if (start := _start_time(pid)) is not None}


def still_running(processes: set[tuple[int, int]]) -> list[int]:
    """PIDs of the snapshotted ``processes`` that are still the same process and running."""
    return sorted(pid for pid, start in processes if _start_time(pid) == start and is_running(pid))


def marked_pids(prefix: str) -> list[int]:
    """PIDs of live processes whose marker starts with ``prefix`` (a topology id, or ``<id>/<part>``)."""
    wanted = f"{MARKER_ENV}={prefix}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        if any(var.startswith(wanted) for var in environ.split(b"\0")) and is_running(int(entry.name)):
            found.append(int(entry.name))
    return found


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs; return those still running after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if is_running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if is_running(p)]
    return alive


def kill_marked(prefix: str, timeout: float = 10.0) -> None:
    """SIGKILL every process marked ``prefix*`` (again, for children started meanwhile) until none is left."""
    deadline = time.monotonic() + timeout
    while pids := marked_pids(prefix):
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        wait_gone(pids, 1.0)
        if time.monotonic() > deadline:
            raise TopologyError(f"processes marked {prefix} survive SIGKILL: {marked_pids(prefix)}")


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:])


def _reap(proc: subprocess.Popen | None, timeout: float) -> None:
    """Wait for a child we started (so it leaves no zombie); SIGKILL it if it does not end in time."""
    if proc is None:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _stop_process(proc: subprocess.Popen | None, marker: str, sig: int, timeout: float, *,
                  group: bool = False, linger: float = 2.0) -> None:
    """Send ``sig`` to ``proc`` (its whole process group with ``group``) and wait up to ``timeout`` s for it;
    give what it started ``linger`` s to exit too, then SIGKILL every process still marked ``marker``."""
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    wait_gone(marked_pids(marker), linger)
    kill_marked(marker)
    _reap(proc, 5.0)


def _make_tmp(prefix: str) -> Path:
    TMP_ROOT.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=TMP_ROOT))


# ------------------------------------------------------------------------------------------------ PostgreSQL


def find_postgres_bin() -> Path:
    """The folder with ``initdb`` and ``postgres`` of one PostgreSQL version (PATH first, then Debian's)."""
    candidates = []
    if found := shutil.which("initdb"):
        candidates.append(Path(found).resolve().parent)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True)
    candidates.extend(versions)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "postgres").exists():
            return folder
    raise TopologyError("PostgreSQL server binaries (initdb, postgres) not found: apt-get install postgresql")


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged user PostgreSQL runs as when we are root (initdb refuses root); None if not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise TopologyError("running as root but neither user 'postgres' nor 'nobody' exists for PostgreSQL")


@dataclass
class PostgresServer:
    """A PostgreSQL server on 127.0.0.1 with password (scram-sha-256) authentication."""

    root: Path
    port: int
    marker: str
    user: str = "bnsweep"
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    dbname: str = "mlflow"
    process: subprocess.Popen | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, dbname: str | None = None) -> str:
        """SQLAlchemy/MLflow URI of a database (default: the ``mlflow`` database). The driver is named:
        SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, the project ships psycopg2."""
        return (f"postgresql+psycopg2://{self.user}:{self.password}@{LOOPBACK}:{self.port}/"
                f"{dbname or self.dbname}")

    def connect(self, dbname: str | None = None, timeout: int = 5):
        """A psycopg2 connection (TCP, password auth)."""
        import psycopg2

        return psycopg2.connect(host=LOOPBACK, port=self.port, user=self.user, password=self.password,
                                dbname=dbname or self.dbname, connect_timeout=timeout)

    def _spawn_kwargs(self) -> dict:
        user = _server_user()
        kwargs: dict = {"env": _process_env(self.marker, {"HOME": str(self.root), "LC_ALL": "C"}),
                        "cwd": self.root}
        if user is not None:
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        return kwargs

    def init(self) -> None:
        """Create the cluster (initdb) in ``root/data``, owned by the server user."""
        user = _server_user()
        self.socket_dir.mkdir()
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if user is not None:
            for path in (self.root, self.socket_dir, pwfile):
                os.chown(path, user.pw_uid, user.pw_gid)
        cmd = [str(find_postgres_bin() / "initdb"), "-D", str(self.data_dir), "-U", self.user,
               f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
               "--no-instructions"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **self._spawn_kwargs())
        pwfile.unlink()
        if done.returncode != 0:
            raise TopologyError(f"initdb failed ({done.returncode}): {done.stderr.strip()[-800:]}")

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it accepts a password login over TCP."""
        cmd = [str(find_postgres_bin() / "postgres"), "-D", str(self.data_dir), "-h", LOOPBACK,
               "-p", str(self.port), "-k", str(self.socket_dir), "-c", "fsync=off",
               "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            **self._spawn_kwargs())
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.connect("postgres", timeout=2).close()
                return
            except Exception as exc:  # psycopg2.OperationalError while it starts
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise TopologyError(f"PostgreSQL did not start on port {self.port} ({exc}): "
                                        f"{_log_tail(self.log_path)}") from None
                time.sleep(0.1)

    def create_database(self, name: str) -> None:
        conn = self.connect("postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def stop(self, timeout: float = 20.0) -> None:
        """Fast shutdown (SIGINT), then SIGKILL for anything of this server still alive."""
        _stop_process(self.process, self.marker, signal.SIGINT, timeout)


@contextlib.contextmanager
def postgres_server(dbname: str = "mlflow", topology_id: str | None = None) -> Iterator[PostgresServer]:
    """A fresh PostgreSQL server with an empty database ``dbname``; removed on exit."""
    root = _make_tmp("bns-pg-")
    marker = f"{topology_id or _new_topology_id()}/postgres"
    server = PostgresServer(root=root, port=free_port(), marker=marker, dbname=dbname)
    try:
        server.init()
        server.start()
        server.create_database(dbname)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------- MLflow server


@dataclass(frozen=True)
class MlflowLogin:
    """The admin of a server with authentication on: what the deployment's ``.env`` gives it."""

    username: str = "bnsweep-admin"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))

    @property
    def env(self) -> dict[str, str]:
        """What a client (the sweep, the analysis, MlflowClient) needs in its environment to be let in."""
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}


#: The deployment's MLflow server command (docker-compose.yml runs it too): MLflow's basic-auth app on.
MLFLOW_SERVER_SCRIPT = Path(__file__).resolve().parent.parent / "docker" / "mlflow-server.sh"


@dataclass
class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a backend store and served artifacts; can stop and start again. With
    ``login`` it runs as the deployment runs it (``docker/mlflow-server.sh``): authentication on, ``login`` its
    admin, the users kept in the backend store's database."""

    backend_store_uri: str
    root: Path
    port: int
    marker: str
    workers: int = 1
    process: subprocess.Popen | None = None
    login: MlflowLogin | None = None

    @property
    def url(self) -> str:
        """The tracking URI (``http://127.0.0.1:PORT``)."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def artifacts_dir(self) -> Path:
        """Where the server stores uploaded artifacts (``--artifacts-destination``)."""
        return self.root / "artifacts"

    @property
    def log_path(self) -> Path:
        return self.root / "mlflow-server.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self, timeout: float = 5.0) -> bool:
        """True if ``GET /health`` answers 200 (within ``timeout`` seconds)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.url}/health", timeout=timeout) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 120.0) -> None:
        """Start the server (same port and store as before, if restarted) and wait until /health answers."""
        if self.running:
            raise TopologyError(f"MLflow server on port {self.port} is already running")
        self.artifacts_dir.mkdir(exist_ok=True)
        args = ["--host", LOOPBACK, "--port", str(self.port), "--backend-store-uri", self.backend_store_uri,
                "--artifacts-destination", str(self.artifacts_dir), "--serve-artifacts", "--workers", str(self.workers)]
        extra: dict[str, str] = {}
        if self.login is None:
            cmd = [sys.executable, "-m", "mlflow", "server", *args]
        else:
            cmd = ["sh", str(MLFLOW_SERVER_SCRIPT), *args]
            extra = {"PYTHON": sys.executable, "TMPDIR": str(self.root),
                     "BNSWEEP_AUTH_DATABASE_URI": self.backend_store_uri,
                     "MLFLOW_AUTH_ADMIN_USERNAME": self.login.username,
                     "MLFLOW_AUTH_ADMIN_PASSWORD": self.login.password,
                     "MLFLOW_FLASK_SERVER_SECRET_KEY": self.login.secret_key}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                            env=_process_env(self.marker, extra), start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.healthy(timeout=2.0):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise TopologyError(f"MLflow server did not come up on port {self.port}: "
                                    f"{_log_tail(self.log_path)}")
            time.sleep(0.2)

    def stop(self, kill: bool = False, timeout: float = 20.0) -> None:
        """Stop the server: SIGTERM (graceful) or, with ``kill``, SIGKILL (a crash). The store stays."""
        sig = signal.SIGKILL if kill else signal.SIGTERM
        _stop_process(self.process, self.marker, sig, timeout, group=True)
        self.process = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, workers: int = 1, topology_id: str | None = None,
                  login: MlflowLogin | None = None) -> Iterator[MlflowServer]:
    """A running MLflow tracking server on ``backend_store_uri`` with artifacts in its temp folder (with ``login``:
    authentication on, see :class:`MlflowServer`)."""
    root = _make_tmp("bns-mlf-")
    server = MlflowServer(backend_store_uri=backend_store_uri, root=root, port=free_port(),
                          marker=f"{topology_id or _new_topology_id()}/mlflow", workers=workers, login=login)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ Ray cluster

#: Run by a subprocess with the cluster's auth env: join as a driver and print the cluster's nodes as JSON,
#: optionally after waiting until exactly N are alive.
_NODES_SCRIPT = textwrap.dedent("""
    import json, logging, sys, time
    import ray
    address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    ray.init(address=address, _node_ip_address="127.0.0.1", log_to_driver=False, logging_level=logging.ERROR)
    deadline = time.monotonic() + timeout
    while True:
        nodes = [{"node_id": node["NodeID"], "alive": node["Alive"], "address": node["NodeManagerAddress"],
                  "resources": node["Resources"]} for node in ray.nodes()]
        if want < 0 or sum(n["alive"] for n in nodes) == want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(json.dumps(nodes))
""")



@dataclass
class RayNode:
    """One ``ray start --block`` process (and everything it started, found by ``marker``)."""

    name: str
    temp_dir: Path
    marker: str
    log_path: Path
    process: subprocess.Popen | None = None

    def pids(self) -> list[int]:
        """Live processes of this node (raylet, agents, workers, ...)."""
        return marked_pids(self.marker)


@dataclass
class RayCluster:
    """A Ray cluster of a head node and ``node2`` on 127.0.0.1, with token authentication."""

    root: Path
    port: int
    topology_id: str
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    nodes: dict[str, RayNode] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """The GCS address, for ``--address`` / ``ray.init(address=...)``."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a driver (or any Ray client) needs in its environment to be let in."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def subprocess_env(self, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
        """``base`` (default: this process's environment) + auth env + ``extra``, for a driver subprocess."""
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if k not in ("RAY_AUTH_TOKEN_PATH", MARKER_ENV)}
        env.update(QUIET_ENV)
        env.update(self.env)
        env.update(extra)
        return env

    def _ray_start(self, name: str, args: list[str], resources: Mapping[str, float] | None,
                   num_cpus: int, timeout: float) -> RayNode:
        temp_dir = self.root / name
        node = RayNode(name=name, temp_dir=temp_dir, marker=f"{self.topology_id}/ray-{name}",
                       log_path=self.root / f"{name}.log")
        ports = ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                 "--dashboard-agent-listen-port", str(free_port()),
                 "--dashboard-agent-grpc-port", str(free_port()),
                 "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--block", *args,
               "--node-ip-address", LOOPBACK, "--num-cpus", str(num_cpus), "--temp-dir", str(temp_dir),
               *ports]
        if resources:
            cmd += ["--resources", json.dumps(dict(resources))]
        with open(node.log_path, "ab") as log:
            node.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                            env=_process_env(node.marker, {**self.env, **self.extra_env}),
                                            start_new_session=True)
        self.nodes[name] = node
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in node.log_path.read_text(errors="replace"):
            if node.process.poll() is not None or time.monotonic() > deadline:
                raise TopologyError(f"ray node {name} did not start: {_log_tail(node.log_path)}")
            time.sleep(0.1)
        return node

    def start_head(self, num_cpus: int = 1, timeout: float = 90.0) -> RayNode:
        # The head's autoscaler monitor and dashboard also export metrics on fixed ports (44217, 44227).
        self.extra_env.update({"AUTOSCALER_METRIC_PORT": str(free_port()),
                               "DASHBOARD_METRIC_PORT": str(free_port())})
        return self._ray_start("head", ["--head", "--port", str(self.port), "--include-dashboard", "false",
                                        "--dashboard-port", str(free_port()),
                                        "--ray-client-server-port", str(free_port()),
                                        "--disable-usage-stats"], None, num_cpus, timeout)

    def add_node(self, name: str = "node2", num_cpus: int = 1, resources: Mapping[str, float] | None = None,
                 timeout: float = 90.0) -> RayNode:
        """Start a worker node that joins the head (``resources`` default: ``{name: 1}``)."""
        return self._ray_start(name, ["--address", self.address],
                               {name: 1} if resources is None else resources, num_cpus, timeout)

    def nodes_info(self, wait_alive: int = -1, timeout: float = 60.0) -> list[dict]:
        """The cluster's nodes as the GCS sees them (``node_id``, ``alive``, ``address``, ``resources``);
        with ``wait_alive`` >= 0, first wait (up to ``timeout`` s) until exactly that many are alive."""
        cmd = [sys.executable, "-c", _NODES_SCRIPT, self.address, str(wait_alive), str(timeout)]
        done = subprocess.run(cmd, env=self.subprocess_env(), capture_output=True, text=True,
                              timeout=timeout + 60)
        if done.returncode != 0:
            raise TopologyError(f"cannot read the nodes of {self.address}: {done.stderr.strip()[-800:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.nodes_info() if n["alive"]]

    def wait_for_alive_nodes(self, count: int, timeout: float = 60.0) -> list[dict]:
        """Wait until exactly ``count`` nodes are alive and return them; TopologyError on timeout."""
        alive = [n for n in self.nodes_info(count, timeout) if n["alive"]]
        if len(alive) != count:
            raise TopologyError(f"want {count} alive Ray nodes, the GCS has {len(alive)} after {timeout}s")
        return alive

    def kill_node(self, name: str = "node2", graceful: bool = False, timeout: float = 40.0) -> list[int]:
        """Take a node down and return the PIDs it had. Default: SIGKILL every process of the node at once
        (a crashed machine); ``graceful``: SIGTERM to ``ray start`` (the node drains and leaves). Only this
        node's processes are touched."""
        node = self.nodes[name]
        pids = node.pids()
        if graceful:
            _stop_process(node.process, node.marker, signal.SIGTERM, timeout)
        else:
            kill_marked(node.marker)
            _reap(node.process, 5.0)
        return pids

    def stop(self) -> None:
        """Stop every node (workers first, the head last), then SIGKILL anything of this cluster left."""
        for name in [n for n in self.nodes if n != "head"] + (["head"] if "head" in self.nodes else []):
            node = self.nodes[name]
            _stop_process(node.process, node.marker, signal.SIGTERM, 40.0)
        kill_marked(f"{self.topology_id}/ray-")


@contextlib.contextmanager
def ray_cluster(node2: bool = True, head_cpus: int = 1, node2_cpus: int = 1,
                node2_resources: Mapping[str, float] | None = None, fast_failure_detection: bool = True,
                topology_id: str | None = None) -> Iterator[RayCluster]:
    """A running Ray cluster: a head and (``node2``) a second node with resource ``{"node2": 1}``.

    ``fast_failure_detection`` lowers the GCS health check to 0.5 s x 3 failures, so a killed node is reported
    dead within seconds instead of ~15 s (Ray's defaults).
    """
    root = _make_tmp("bnr-")
    cluster = RayCluster(root=root, port=free_port(), topology_id=topology_id or _new_topology_id())
    if fast_failure_detection:
        cluster.extra_env.update({"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
                                  "RAY_health_check_failure_threshold": "3",
                                  "RAY_health_check_initial_delay_ms": "0"})
    try:
        cluster.start_head(num_cpus=head_cpus)
        if node2:
            cluster.add_node("node2", num_cpus=node2_cpus, resources=node2_resources)
            cluster.wait_for_alive_nodes(2)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ all of it


@dataclass
class Topology:
    """The whole deployment: PostgreSQL, MLflow on it, a two-node Ray cluster (one topology id)."""

    topology_id: str
    postgres: PostgresServer
    mlflow: MlflowServer
    ray: RayCluster

    def pids(self) -> list[int]:
        """Every live process of this topology."""
        return marked_pids(self.topology_id + "/")


@contextlib.contextmanager
def full_topology(**ray_kwargs) -> Iterator[Topology]:
    """PostgreSQL + MLflow server (on it, authentication on: ``topology.mlflow.login``) + Ray cluster; everything
    is stopped and removed on exit.

    The Ray cluster starts in a thread while PostgreSQL and MLflow start in this one (it saves ~10 s).
    """
    topo_id = _new_topology_id()
    try:
        with contextlib.ExitStack() as stack:
            ray_cm = ray_cluster(topology_id=topo_id, **ray_kwargs)
            with ThreadPoolExecutor(max_workers=1) as pool:
                ray_started = pool.submit(ray_cm.__enter__)
                try:
                    pg = stack.enter_context(postgres_server(topology_id=topo_id))
                    mlf = stack.enter_context(mlflow_server(pg.url(), topology_id=topo_id, login=MlflowLogin()))
                finally:
                    ray = ray_started.result()  # a failed start has cleaned up after itself
                    stack.push(ray_cm.__exit__)
            yield Topology(topology_id=topo_id, postgres=pg, mlflow=mlf, ray=ray)
    finally:
        kill_marked(topo_id + "/")


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def pg_server() -> Iterator[PostgresServer]:
    """A fresh PostgreSQL server (127.0.0.1, free port) with an empty ``mlflow`` database."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def mlflow_pg_server(pg_server: PostgresServer) -> Iterator[MlflowServer]:
    """An MLflow tracking server on ``pg_server`` with served artifacts (``.url`` is the tracking URI)."""
    with mlflow_server(pg_server.url()) as server:
        yield server


@pytest.fixture
def ray_two_nodes() -> Iterator[RayCluster]:
    """A two-node Ray cluster (head + ``node2`` with resource ``{"node2": 1}``), one CPU each."""
    with ray_cluster() as cluster:
        yield cluster


@pytest.fixture
def topology() -> Iterator[Topology]:
    """The whole topology (see :func:`full_topology`)."""
    with full_topology() as topo:
        yield topo

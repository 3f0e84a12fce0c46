"""Starting or joining the Ray cluster that runs the trials."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

from pipeline.trials import UsageError

# Quiet, local-only defaults; an explicit environment setting wins.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")

import numpy as np  # noqa: E402
import ray  # noqa: E402

LOCAL_HOST = "127.0.0.1"


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast if a Ray head at ``host:port`` does not accept connections (``auto`` is left to Ray)."""
    if address == "auto":
        return
    if address.startswith("ray://"):
        raise UsageError(f"--address {address}: Ray Client (ray://) is not supported", "give the head's host:port")
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"--address {address!r} is not host:port", "e.g. --address 127.0.0.1:6379, or auto")
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout):
            pass
    except OSError as exc:
        raise UsageError(f"Ray cluster at {address} is unreachable: {exc.strerror or exc}",
                         "start it with `ray start --head`, or leave out --address for a local Ray") from None


def connect(address: str | None, workers: int | None, verbose: bool = False, timeout: float = 30.0) -> int:
    """Join the cluster at ``address``, or start a local Ray bound to 127.0.0.1; return the cluster's CPUs.

    A local instance gets ``workers`` CPUs (at least the machine's), so ``--workers`` trials really run at once.
    Joining waits at most ``timeout`` seconds: ``ray.init`` can wait for minutes inside Ray's C++ core for a cluster
    that is gone (``auto`` finding the address of a stopped one), where no Python signal handler runs, so a timer
    then ends the process with the one-line error (exit 2); the sweep joins before anything is written. Ray's own
    start-up messages (its warnings, what its processes write to the terminal) are hidden unless ``verbose``.
    """
    common = {"include_dashboard": False, "log_to_driver": False,
              "logging_level": logging.INFO if verbose else logging.ERROR}
    terminal = os.dup(2) if address else -1  # the timeout's error line goes here while Ray's messages are hidden
    with quiet_stderr(not verbose):
        if address:
            watchdog = threading.Timer(timeout, _give_up, args=(address, timeout, terminal))
            watchdog.daemon = True
            watchdog.start()
            try:
                ray.init(address=address, **common)
            except Exception as exc:  # noqa: BLE001 - any failure to join is a one-line usage error
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UsageError(f"cannot join the Ray cluster at {address}: {first}",
                                 "check --address with `ray status`, or leave it out for a local Ray") from None
            finally:
                watchdog.cancel()
                os.close(terminal)
        else:
            cpus = max(workers or 0, os.cpu_count() or 1)
            with _lean_local_ray():
                ray.init(num_cpus=cpus, _node_ip_address=LOCAL_HOST, _system_config=SOCKET_RETRY, **common)
    return int(ray.cluster_resources().get("CPU", 1))


def _give_up(address: str, timeout: float, terminal: int) -> None:
    """The join timed out: say so on the terminal and end the process (nothing of the sweep has started)."""
    os.write(terminal, (f"python -m pipeline.sweep: error: the Ray cluster at {address} did not answer within "
                        f"{timeout:g} s (start it with `ray start --head`, check --address, or raise "
                        "--connect-timeout)\n").encode())
    os._exit(2)


@contextlib.contextmanager
def quiet_stderr(quiet: bool) -> Iterator[None]:
    """While ``quiet``: what this process and the processes it starts write to stderr (file descriptor 2) goes to an
    unnamed temporary file instead of the terminal. Ray's C++ core writes there directly (the 8.8.8.8 probe's
    warning, its log-level line), past Python's logging, and its daemons keep the file as their stderr."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


#: How Ray's processes retry connecting to a local socket that is not listening yet: every 10 ms for up to 10 s
#: (``raylet_client_*``, Ray 2.60), where Ray's defaults are every 1 s for up to 10 s. The raylet connects to its
#: own object store right after starting the store's thread; when the machine is busy (the sweep loads its data and
#: imports MLflow meanwhile) the store is not listening yet about every other time, and the raylet then slept a
#: whole second: ``ray.init`` took 2.5-2.8 s instead of 1.6 s.
SOCKET_RETRY = {"raylet_client_connect_timeout_milliseconds": 10, "raylet_client_num_connect_attempts": 1000}

#: The daemons a local instance of the sweep does without (the names of their ``RayParams`` switches).
SKIPPED_DAEMONS = {"no_monitor": True, "include_log_monitor": False}


@contextlib.contextmanager
def _lean_local_ray() -> Iterator[None]:
    """While a local Ray starts: no autoscaler monitor, no log monitor, no dashboard (API) server, a minimal
    dashboard agent, and no idle second waiting for the raylet.

    None of them has work on the sweep's own one-machine instance, which lives as long as the sweep:

    - the autoscaler monitor: its size is fixed, so it would scale nothing;
    - the log monitor: the driver does not take its workers' output (``log_to_driver=False``), so it would stream
      worker logs to nobody (they stay in Ray's session logs);
    - the dashboard server: ``include_dashboard=False`` only drops its web UI; the process still starts, to serve
      Ray's job and state APIs over HTTP, which nothing asks of a sweep's private instance (its progress is in the
      terminal and in MLflow). Ray's GCS, raylet, agents and workers do not need it; each node's dashboard agent,
      which looks for it to forward Ray's own events, logs once a second that it found none.

    Without them Ray starts sooner (three Python processes fewer to start while Ray's start-up keeps both cores
    busy) and stops 1 s sooner: the monitor does not act on SIGTERM, and ``ray.shutdown`` waits a full second before
    it kills it. Ray alone from start to stop, one trivial task per worker (what ``ray_fixed`` in
    ``benchmarks/bench_sweep.py`` times), medians of interleaved pairs: without the monitors 5.2 s instead of 7.6 s
    (5 pairs); without the dashboard server too, 5.0 s instead of 6.1 s (6 pairs, a day later; about 1 CPU-second
    less).

    ``ray.init`` has no option for this (``ray start`` has ``--no-monitor``): the monitors' switches are set on the
    node parameters ``ray.init`` builds (``ray._private.parameter.RayParams``, Ray 2.60), and the head node's
    ``start_api_server`` is skipped, only while the sweep's own ``ray.init`` runs. A Ray whose internals lack these
    names starts its usual daemons.

    And shorter waits, with the same switches' scope:

    - the dashboard agent starts as Ray's minimal installation starts it (``--minimal``: no HTTP server for Ray's
      job and log APIs, no reporter of node stats for a dashboard): the raylet registers only once its agent is up,
      and the full one imports for 0.7 s;
    - having started its processes, ``ray.init`` asks the GCS for its raylet 0.1 s later
      (``ray._private.services.get_node``). The raylet is never registered that soon, and the GCS client's
      ``GetNode`` then sleeps a whole second before it asks again. :func:`_when_registered` asks every 10 ms
      first, so the first ``GetNode`` finds it.

    ``ray.init`` alone, 6 runs each: 1.75 s, 1.40 s with the shorter wait, 1.30 s with the minimal agent too.
    """
    try:
        from ray._private import services
        from ray._private import utils as ray_utils
        from ray._private.node import Node
        from ray._private.parameter import RayParams
    except ImportError:  # another Ray layout: start as usual
        yield
        return
    original_params, original_api_server = RayParams.__init__, Node.__dict__.get("start_api_server")
    original_get_node, original_dependency_error = services.get_node, ray_utils.get_dashboard_dependency_error

    def lean_params(self, *args, **kwargs) -> None:
        original_params(self, *args, **kwargs)
        for name, value in SKIPPED_DAEMONS.items():
            if hasattr(self, name):
                setattr(self, name, value)

    def no_api_server(self, **kwargs) -> None:  # noqa: ARG001 - Node.start_api_server's keywords
        """The dashboard server is not started (see above)."""

    def get_node(gcs_address: str, node_id: str):
        _when_registered(gcs_address, node_id)
        return original_get_node(gcs_address, node_id)

    def minimal_agent() -> str:
        return "the sweep's own Ray runs a minimal dashboard agent"

    RayParams.__init__ = lean_params
    if original_api_server is not None:
        Node.start_api_server = no_api_server
    services.get_node = get_node
    ray_utils.get_dashboard_dependency_error = minimal_agent
    try:
        yield
    finally:
        RayParams.__init__ = original_params
        if original_api_server is not None:
            Node.start_api_server = original_api_server
        services.get_node = original_get_node
        ray_utils.get_dashboard_dependency_error = original_dependency_error


def _when_registered(gcs_address: str, node_id: str, timeout: float = 30.0, every: float = 0.01) -> bool:
    """Wait until the GCS at ``gcs_address`` lists node ``node_id`` (hex), asking every ``every`` seconds: True then,
    False after ``timeout`` or at once on any error (Ray's own wait, which follows, then decides)."""
    deadline = time.monotonic() + timeout
    try:
        host, _, port = gcs_address.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=1):  # a GCS client to nothing waits for ages
            pass
        client = ray._raylet.GcsClient(address=gcs_address)
        while time.monotonic() < deadline:
            if any(node.hex() == node_id for node in client.get_all_node_info(timeout=1)):
                return True
            time.sleep(every)
    except Exception:  # noqa: BLE001 - only a shortcut: Ray's own GetNode waits and reports
        return False
    return False


def single_node() -> dict[str, str]:
    """Where every task will run, when the cluster has exactly one alive node (as the sweep's own local Ray has):
    the ``ray_node``, ``ray_node_ip`` and ``numpy_version`` tags a task reports (``pipeline.tasks``), else ``{}``.

    The driver's numpy stands for the workers' (on one node they run the driver's Python); a task that reports
    anything else is tagged with what it reports."""
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) != 1:
        return {}
    return {"ray_node": nodes[0]["NodeID"], "ray_node_ip": nodes[0]["NodeManagerAddress"],
            "numpy_version": np.__version__}


def disconnect() -> None:
    """Leave the cluster (and stop a local instance we started)."""
    if ray.is_initialized():
        ray.shutdown()

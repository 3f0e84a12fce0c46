"""Starting or joining the Ray cluster that runs the trials."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
import threading
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
            # _node_ip_address: listed in ray.init's documentation, and no public option binds a local Ray to loopback
            ray.init(num_cpus=cpus, _node_ip_address=LOCAL_HOST, **common)
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

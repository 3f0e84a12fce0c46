"""Helpers for the sweep tests: run the real CLI in a subprocess and read back what MLflow holds."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from tests.topology import MARKER_ENV, marked_pids

REPO = Path(__file__).resolve().parent.parent
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

#: A small real sweep: 2 scales x both arms x 2 seeds, 2 epochs, 200 Fashion-MNIST samples.
SMALL = [
    "--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR),
    "--weight-scales", "0.1,0.01", "--batchnorm", "both", "--seeds", "0-1",
    "--epochs", "2", "--train-size", "200", "--test-size", "100", "--workers", "2",
]


def sweep_env(**extra: str) -> dict[str, str]:
    """The environment of a sweep subprocess: this one, without a tracking URI that could leak in."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.sweep", *args]


def run_sweep(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m pipeline.sweep ARGS`` to completion and return its result (text output)."""
    return subprocess.run(sweep_cmd(*args), cwd=cwd, env=env or sweep_env(), capture_output=True, text=True,
                          timeout=timeout)


def trial_runs(uri: str, experiment: str, statuses: tuple[str, ...] | None = None) -> list:
    """Every active trial run of the experiment (optionally of some statuses)."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], "tags.run_kind = 'trial'", ViewType.ACTIVE_ONLY,
                              max_results=10000)
    return [r for r in runs if statuses is None or r.info.status in statuses]


def finished_counts(uri: str, experiment: str) -> collections.Counter:
    """How many FINISHED runs each trial_key has."""
    return collections.Counter(r.data.tags["trial_key"] for r in trial_runs(uri, experiment, ("FINISHED",)))


class SweepProcess:
    """A sweep running in the background; its stderr is collected line by line as it comes."""

    def __init__(self, *args: str, cwd: Path, env: dict | None = None):
        self.proc = subprocess.Popen(sweep_cmd(*args), cwd=cwd, env=env or sweep_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_started(self, timeout: float = 120) -> None:
        """Wait until the sweep has planned (its store exists and is migrated: safe to open from a test)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "trials in the grid" in self.output:
                return
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"sweep exited with {self.proc.returncode} before starting:\n{self.output}")
            time.sleep(0.05)
        raise AssertionError(f"sweep did not start in {timeout}s:\n{self.output}")

    def wait(self, timeout: float = 600) -> int:
        """The exit code; if the sweep is still running after ``timeout``, fail with its output and stacks."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)  # the sweep prints every thread's stack (faulthandler)
            time.sleep(2)
            raise AssertionError(f"sweep still running after {timeout}s; its output, then its stacks:\n"
                                 f"{self.output}") from None
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def wait_together(*sweeps: SweepProcess, timeout: float = 600) -> tuple[int, ...]:
    """The exit codes of sweeps started together; whatever still runs is killed, pass or fail."""
    try:
        return tuple(sweep.wait(timeout) for sweep in sweeps)
    finally:
        for sweep in sweeps:
            sweep.kill()


def trial_workers() -> list[psutil.Process]:
    """Ray worker processes on this machine executing a trial right now (Ray titles them after the running task)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if cmd.startswith("ray::train_trial"):
            found.append(proc)
    return found


def wait_no_trial_workers(timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` s until no Ray worker executes a trial; those still at it then (empty: none)."""
    deadline = time.monotonic() + timeout
    while (left := trial_workers()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


_PROBE_RUN = """
import json as _json, runpy as _runpy, sys as _sys
_sys.argv = ["pipeline.sweep", *_sys.argv[1:]]
try:
    _runpy.run_module("pipeline.sweep", run_name="__main__")
finally:
    print("PROBE_RESULT", _json.dumps({report}), file=_sys.stderr)
"""


def run_probed_sweep(setup: str, report: str, *args: str, cwd: Path,
                     env: dict | None = None) -> tuple[subprocess.CompletedProcess, object]:
    """Run ``python -m pipeline.sweep ARGS`` in a process that first runs ``setup`` (Python code that wraps what it
    watches) and at the end prints the value of the expression ``report`` as JSON; the result and that value."""
    probe = cwd / "sweep_probe.py"
    probe.write_text(setup + _PROBE_RUN.format(report=report))
    out = subprocess.run([sys.executable, str(probe), *args], cwd=cwd, env=env or sweep_env(), capture_output=True,
                         text=True, timeout=600)
    found = [line for line in out.stderr.splitlines() if line.startswith("PROBE_RESULT ")]
    assert found, out.stderr
    return out, json.loads(found[-1].split(" ", 1)[1])


def _ray_workers_marked(mark: str) -> bool:
    """Whether a Ray worker process (titled ``ray::...``) of the sweep marked ``mark`` runs."""
    for pid in marked_pids(mark):
        try:
            if (psutil.Process(pid).cmdline() or [""])[0].startswith("ray::"):
                return True
        except psutil.Error:
            continue
    return False


@contextlib.contextmanager
def plan_delayed(store: Path, after: float = 1.0, timeout: float = 180) -> Iterator[dict[str, str]]:
    """An environment for one sweep, whose plan waits until its Ray workers have been up ``after`` seconds.

    The test holds the lock a sweep takes to open the SQLite store ``store`` (``pipeline.tracker``; the file is
    created empty if missing, which a sweep takes for a new store), as another sweep making the store would hold it:
    the sweep's workers start their first trials meanwhile, before any plan, however fast Ray and MLflow start."""
    mark = uuid.uuid4().hex
    with open(store, "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        released = threading.Event()

        def release() -> None:
            deadline = time.monotonic() + timeout
            while not released.is_set() and not _ray_workers_marked(mark) and time.monotonic() < deadline:
                time.sleep(0.05)
            released.wait(after)
            fcntl.flock(handle, fcntl.LOCK_UN)

        holder = threading.Thread(target=release, daemon=True)
        holder.start()
        try:
            yield sweep_env(**{MARKER_ENV: mark})
        finally:
            released.set()
            holder.join(30)


def file_tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and the sha256 of its bytes: what a bad input must leave as it was."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def on_read_only_folder(folder: Path, *command: str) -> list[str]:
    """``command`` run with ``folder`` mounted read-only, in a user and mount namespace of its own (root or not)."""
    remount = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", remount, "sh", str(folder), *command]

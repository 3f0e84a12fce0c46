"""Log synthetic trial runs with known histories into a real MLflow store, exactly per docs/design.md.

Used by the analysis tests and the analysis benchmark (and reusable by the pipeline tests): every run
written here looks like one the sweep writes -- the same params (as strings), metrics (step = epoch),
tags (``run_kind``, ``trial_key``, ...) and status -- but its history is chosen by the caller, so a
test knows every value it will read back.

Also here: :func:`log_grid` (a whole synthetic sweep), :func:`synthetic_history` (plausible curves), and
:func:`start_mlflow_server` / :func:`stop_mlflow_server` (a real ``mlflow server`` on 127.0.0.1 over a store;
start it only inside a loopback-only network namespace).

Typical use::

    uri, client = make_store(tmp_path)
    exp_id = create_experiment(client, "exp", tmp_path / "artifacts")
    cfg = trial_config(0.01, True, seed=3, epochs=4)
    run_id = log_trial_run(client, exp_id, cfg, {"train_acc": [...5 values...], ...})
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from model.trial import DEFAULT_CONFIG
from pipeline.trials import cell_tags, params_of, run_name, trial_key
from tests.topology import free_port

#: The 16 weight scales of the book's Figure 6-19: ``np.logspace(0, -4, num=16)``.
BOOK_WEIGHT_SCALES: tuple[float, ...] = tuple(float(w) for w in np.logspace(0, -4, num=16))

#: A named scale's std at the first layer (784 inputs): what :func:`synthetic_history` reads it as.
FIRST_LAYER_STD = {"he": (2 / 784) ** 0.5, "xavier": (1 / 784) ** 0.5}


def trial_config(weight_scale: float | str, use_batchnorm: bool, seed: int, **overrides) -> dict:
    """A trial config dict (design.md keys) with the design defaults, overridden by ``overrides``; ``weight_scale``
    a number or a name (``he``, ``xavier``)."""
    unknown = set(overrides) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    w = weight_scale if isinstance(weight_scale, str) else float(weight_scale)
    cfg = {"weight_scale": w, "use_batchnorm": bool(use_batchnorm), "seed": int(seed)}
    cfg.update(DEFAULT_CONFIG)
    cfg.update(overrides)
    return cfg


#: The sweep's own identity, name and params of a trial: runs logged here are indistinguishable from its runs.
config_params = params_of


def make_store(root: Path | str) -> tuple[str, MlflowClient]:
    """A fresh SQLite tracking store ``root/mlflow.db``; returns (tracking_uri, client)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri)


def create_experiment(client: MlflowClient, name: str, artifact_root: Path | str | None = None) -> str:
    """Create experiment ``name`` (artifacts under ``artifact_root`` if given); returns its id."""
    location = None
    if artifact_root is not None:
        artifact_root = Path(artifact_root)
        artifact_root.mkdir(parents=True, exist_ok=True)
        location = artifact_root.resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def trial_tags(config: Mapping, *, run_kind: str = "trial", sweep_id: str = "synthetic-sweep",
               failure_reason: str | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The tags the sweep sets on a trial run (design.md)."""
    tags = {
        "run_kind": run_kind,
        "trial_key": trial_key(config),
        **cell_tags(config),
        "sweep_id": sweep_id,
        "dataset": str(config["dataset"]),
        "dataset_sha256": hashlib.sha256(str(config["dataset"]).encode()).hexdigest(),
        "code_version": "synthetic",
        "numpy_version": np.__version__,
        "ray_node": "synthetic-node",
        "driver": f"localhost:{os.getpid()}:0",
        "heartbeat": str(int(time.time())),
    }
    if failure_reason is not None:
        tags["failure_reason"] = failure_reason
    if extra:
        tags.update(extra)
    return tags


def log_trial_run(
    client: MlflowClient,
    experiment_id: str,
    config: Mapping,
    history: Mapping[str, Sequence[float]],
    *,
    status: str = "FINISHED",
    start_time_ms: int | None = None,
    run_kind: str = "trial",
    sweep_id: str = "synthetic-sweep",
    failure_reason: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
) -> str:
    """Log one trial run: params, the metric histories (step = index = epoch), tags, final status.

    ``history`` maps metric name -> values for epochs 0..k (NaN allowed, logged as NaN).
    ``status`` is FINISHED, FAILED, KILLED or RUNNING (RUNNING: the run is left open).
    All params, metrics and tags go in one ``log_batch`` call. Returns the run id.
    """
    start = int(time.time() * 1000) if start_time_ms is None else int(start_time_ms)
    tags = trial_tags(config, run_kind=run_kind, sweep_id=sweep_id, failure_reason=failure_reason,
                      extra=extra_tags)
    run = client.create_run(experiment_id, start_time=start, tags=tags, run_name=run_name(config))
    run_id = run.info.run_id
    metrics = [
        Metric(key, float(value), start + 1000 * step, step)
        for key, values in history.items()
        for step, value in enumerate(values)
    ]
    params = [Param(k, v) for k, v in config_params(config).items()]
    for i in range(0, max(len(metrics), 1), 1000):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=metrics[i:i + 1000], params=params if i == 0 else [])
    if status != "RUNNING":
        end = start + 1000 * max((len(v) for v in history.values()), default=0)
        client.set_terminated(run_id, status=status, end_time=end)
    return run_id


def synthetic_history(config: Mapping, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Plausible accuracy curves for a trial: BN learns at every scale, plain only at middling ones.

    Deterministic given ``rng``; the values are what a test reads back, not what training would give.
    """
    epochs = int(config["epochs"])
    w = FIRST_LAYER_STD.get(config["weight_scale"], config["weight_scale"])
    t = np.arange(epochs + 1) / max(epochs, 1)
    if config["use_batchnorm"]:
        ceiling = 0.93
        rate = 4.0
    else:
        # plain learns well only near w ~ 0.05 (the He scale for 100 units is ~0.14), and not at all
        # for tiny or large w
        quality = np.exp(-(np.log10(w) + 1.3) ** 2 / 0.5)
        ceiling = 0.1 + 0.8 * quality
        rate = 1.0 + 2.0 * quality
    curve = 0.1 + (ceiling - 0.1) * (1 - np.exp(-rate * t))
    train_acc = np.clip(curve + rng.normal(0, 0.02, size=t.size), 0, 1)
    test_acc = np.clip(curve - 0.05 * t + rng.normal(0, 0.02, size=t.size), 0, 1)
    train_acc[0] = test_acc[0] = 0.1 + rng.normal(0, 0.01)
    train_loss = -np.log(np.clip(train_acc, 1e-3, 1)) + rng.normal(0, 0.01, size=t.size) ** 2
    return {"train_acc": train_acc, "test_acc": test_acc, "train_loss": train_loss}


@dataclass
class LoggedTrial:
    """One run logged by :func:`log_grid`: its config, run id and the exact history logged."""

    config: dict
    run_id: str
    history: dict[str, np.ndarray] = field(repr=False)
    status: str = "FINISHED"


def log_grid(
    client: MlflowClient,
    experiment_id: str,
    weight_scales: Iterable[float],
    seeds: Iterable[int],
    *,
    arms: Iterable[bool] = (True, False),
    history_fn: Callable[[dict, np.random.Generator], Mapping[str, Sequence[float]]] = synthetic_history,
    rng_seed: int = 0,
    start_time_ms: int | None = None,
    **config_overrides,
) -> list[LoggedTrial]:
    """Log one FINISHED trial run per (weight_scale, arm, seed); returns what was logged.

    Start times increase by 1 s per run from ``start_time_ms`` (default: now).
    """
    rng = np.random.default_rng(rng_seed)
    start = int(time.time() * 1000) if start_time_ms is None else int(start_time_ms)
    logged = []
    seeds = list(seeds)
    arms = list(arms)
    for w in weight_scales:
        for bn in arms:
            for seed in seeds:
                cfg = trial_config(w, bn, seed, **config_overrides)
                hist = {k: np.asarray(v, dtype=float) for k, v in history_fn(cfg, rng).items()}
                run_id = log_trial_run(client, experiment_id, cfg, hist, start_time_ms=start)
                start += 1000
                logged.append(LoggedTrial(cfg, run_id, hist))
    return logged


def start_mlflow_server(store_uri: str, root: Path | str, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow server`` on 127.0.0.1:<free port> over ``store_uri``; returns (process, url).

    Artifacts are served from ``root/server-artifacts``; the log goes to ``root/server.log``. The server
    runs in its own process group; stop it with :func:`stop_mlflow_server`. Start it only inside a
    loopback-only network namespace (house rule).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 - the server process writes it until stopped
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri,
         "--artifacts-destination", str(root / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}; see {root / 'server.log'}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.25)
    stop_mlflow_server(proc)
    raise RuntimeError(f"mlflow server did not answer within {timeout:.0f} s; see {root / 'server.log'}")


def stop_mlflow_server(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Stop a server from :func:`start_mlflow_server` and its workers (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:  # workers that outlived the parent
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

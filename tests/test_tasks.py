"""The Ray task on a real local Ray: how it groups epochs into streamed items, and a retry after its worker dies."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import psutil
import pytest
import ray
from threadpoolctl import threadpool_limits

from model.trial import iter_trial
from pipeline import cluster
from pipeline.tasks import train_trial

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _data(n_train: int = 300, n_test: int = 100, seed: int = 0) -> tuple:
    """Synthetic 784-pixel images with a learnable label (the brightest of 10 pixel blocks)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n_train + n_test, 784))
    t = x[:, :780].reshape(-1, 10, 78).sum(axis=2).argmax(axis=1)
    return x[:n_train], t[:n_train], x[n_train:], t[n_train:]


def _config(**overrides) -> dict:
    return {"weight_scale": 0.05, "use_batchnorm": True, "seed": 3, "train_size": 300, "test_size": 100,
            "epochs": 10, "batch_size": 50, "hidden_size_list": [30, 30], **overrides}


@pytest.fixture(scope="module")
def local_ray():
    cluster.connect(None, 2)
    yield
    cluster.disconnect()


def _ray_daemons() -> list[str]:
    """The command lines of the processes of this driver's Ray session (its session folder is in each)."""
    session = os.path.basename(ray._private.worker._global_node.get_session_dir_path())
    out = []
    for proc in psutil.process_iter():
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if session in cmdline:
            out.append(cmdline)
    return out


def test_the_local_ray_runs_without_the_monitors_and_the_dashboard_server(local_ray):
    daemons = _ray_daemons()
    # the instance is really up (GCS, raylet), and it has neither monitor nor the dashboard (API) server
    for daemon in ("gcs_server", "raylet"):
        assert any(daemon in d for d in daemons), (daemon, daemons)
    skipped = ("autoscaler/_private/monitor.py", "log_monitor.py", "dashboard/dashboard.py")
    assert not any(name in d for d in daemons for name in skipped), daemons
    assert ray.get(ray.remote(num_cpus=1)(lambda: os.getpid()).remote()) != os.getpid()  # and runs a task
    # the switches are scoped to the start of our instance: Ray's own code is in place afterwards
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    assert RayParams(no_monitor=False).no_monitor is False and RayParams().include_log_monitor is None
    assert Node.start_api_server.__module__ == "ray._private.node"
    # its dashboard agent is the minimal one (no HTTP server, no reporter), and Ray's checks are its own again
    agents = [d for d in daemons if "dashboard/agent.py" in d]
    assert agents and all(" --minimal" in d for d in agents), daemons
    from ray._private import services
    from ray._private import utils as ray_utils

    assert services.get_node.__module__ == "ray._private.services"
    assert ray_utils.get_dashboard_dependency_error.__module__ == "ray._private.utils"


def test_the_local_ray_retries_its_local_sockets_every_10_ms(local_ray):
    # Ray refuses a _system_config key it does not know (its processes would not start), so this also checks that
    # Ray 2.60 still has these settings
    config = ray._private.worker._global_node._config
    assert {k: config.get(k) for k in cluster.SOCKET_RETRY} == cluster.SOCKET_RETRY
    budget_ms = cluster.SOCKET_RETRY["raylet_client_connect_timeout_milliseconds"] * cluster.SOCKET_RETRY[
        "raylet_client_num_connect_attempts"]
    assert budget_ms == 10_000  # as long as Ray's default (10 x 1 s) before it gives up


def test_the_wait_for_the_raylet_sees_a_registered_node_and_gives_up_on_an_unknown_one(local_ray):
    ctx = ray.get_runtime_context()
    assert cluster._when_registered(ctx.gcs_address, ctx.get_node_id()) is True
    assert cluster._when_registered(ctx.gcs_address, "ff" * 28, timeout=0.3) is False  # then Ray's own wait decides
    assert cluster._when_registered("127.0.0.1:1", ctx.get_node_id()) is False  # no GCS there: at once, no error


def _in_process(config: dict, data: tuple) -> list[dict]:
    """The trial trained here, with one BLAS thread as a task has (more threads sum in another order)."""
    with threadpool_limits(limits=1):
        return [record for _, record in iter_trial(config, *data)]


def _items(config: dict, data: tuple, epochs_per_item: int) -> list[dict]:
    return [ray.get(ref) for ref in train_trial.remote(config, ray.put(data), epochs_per_item)]


def test_a_one_node_cluster_is_where_every_task_reports_it_runs(local_ray):
    # the sweep creates each run with these tags (its epochs' log_batch then carries none): they must be what a
    # task on this node reports, or every trial would be tagged twice
    expected = cluster.single_node()
    assert set(expected) == {"ray_node", "ray_node_ip", "numpy_version"}
    items = list(train_trial.remote(_config(epochs=1), _data(), 2))
    reported = {k: v for k, v in ray.get(items[-1])["node"].items() if k != "pid"}
    assert reported == expected


@pytest.mark.parametrize("per_item", [1, 3, 4, 11, 50])
def test_items_group_the_epochs_as_asked_and_carry_the_in_process_results(local_ray, per_item):
    config, data = _config(), _data()
    items = _items(config, data, per_item)
    groups = [[epoch for epoch, _, _ in item["epochs"]] for item in items]
    epochs = list(range(config["epochs"] + 1))
    # where it runs as it starts, then full groups of per_item while epochs last, the rest (possibly none) with the
    # final "done" item
    expected = [[], *(epochs[i : i + per_item] for i in range(0, len(epochs) - len(epochs) % per_item, per_item))]
    expected.append(epochs[len(epochs) - len(epochs) % per_item :])
    assert groups == expected
    assert items[0] == {"epochs": [], "node": items[-1]["node"]}
    assert ["done" in item for item in items] == [False] * (len(items) - 1) + [True]
    assert items[-1]["diverged_at"] is None and items[-1]["seconds"] > 0
    measured = [record for item in items for _, record, _ in item["epochs"]]
    assert measured == _in_process(config, data)  # bit-identical to training here
    stamps = [time_ms for item in items for _, _, time_ms in item["epochs"]]
    assert stamps == sorted(stamps)


def test_a_diverging_trial_ends_with_the_non_finite_epoch(local_ray):
    config = _config(use_batchnorm=False, weight_scale=1.0, epochs=30, hidden_size_list=[100] * 5)
    items = _items(config, _data(), 4)
    last = items[-1]
    assert last["done"] and last["diverged_at"] is not None
    epochs = [epoch for item in items for epoch, _, _ in item["epochs"]]
    assert epochs == list(range(last["diverged_at"] + 1)) and last["diverged_at"] < config["epochs"]
    assert not np.isfinite(last["epochs"][-1][1]["train_loss"])


def test_a_worker_keeps_the_memory_its_trials_free_so_a_trial_barely_faults(local_ray):
    """A Ray worker is a fresh process, whose glibc malloc gave the top of its heap back to the OS whenever a trial
    freed its 1000-sample evaluation arrays, and took it back (page by page, each a fault) at the next epoch: about
    1,000 page faults per epoch of a default-sized trial. The worker keeps that memory (pipeline.malloc), so a trial
    after the worker's first faults a few dozen pages, and computes the same numbers."""
    config = _config(train_size=1000, test_size=1000, batch_size=100, hidden_size_list=[100] * 5, epochs=10)
    data = ray.put(_data(1000, 1000))
    faults: dict[str, list[int]] = {}
    for _ in range(12):
        last = ray.get(list(train_trial.remote(config, data, 20))[-1])
        assert last["cpu_seconds"] > 0 and last["minor_faults"] >= 0
        faults.setdefault(last["node"]["pid"], []).append(last["minor_faults"])
        if sum(len(v) - 1 for v in faults.values()) >= 3:
            break
    later = [n for per_worker in faults.values() for n in per_worker[1:]]  # the first trial faults its heap in
    assert len(later) >= 3, faults
    assert max(later) < 500, f"page faults per trial, by worker: {faults}"


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_a_bad_group_size_is_refused(local_ray, bad):
    with pytest.raises(ray.exceptions.RayTaskError, match="epochs_per_item must be a positive integer"):
        _items(_config(), _data(), bad)


def test_a_worker_killed_mid_trial_is_retried_and_every_epoch_arrives_once(local_ray):
    """Ray drops the items a retried generator yields again; that is only right if the retry groups its epochs
    exactly as the first attempt did, which the argument guarantees."""
    config, data = _config(epochs=150, train_size=300), _data()
    gen = train_trial.remote(config, ray.put(data), 4)
    first = ray.get(next(gen))
    os.kill(int(first["node"]["pid"]), signal.SIGKILL)  # the trial has ~145 epochs to go
    items = [first] + [ray.get(ref) for ref in gen]
    assert len({item["node"]["pid"] for item in items}) == 2, "the task was not retried on a new worker"
    epochs = [epoch for item in items for epoch, _, _ in item["epochs"]]
    assert epochs == list(range(config["epochs"] + 1))
    measured = [record for item in items for _, record, _ in item["epochs"]]
    assert measured == _in_process(config, data)


def test_a_worker_killed_before_it_sent_an_epoch_shows_as_a_retry(local_ray):
    """The first item says where the task runs before it trains: a retry is seen even when the first worker had
    measured epochs but sent none of them (here the whole trial is one group)."""
    config, data = _config(epochs=150, train_size=300), _data()
    gen = train_trial.remote(config, ray.put(data), 1000)
    first = ray.get(next(gen))
    assert first["epochs"] == []
    time.sleep(0.3)  # epochs measured, none sent
    os.kill(int(first["node"]["pid"]), signal.SIGKILL)
    items = [first] + [ray.get(ref) for ref in gen]
    assert len(items) == 2 and items[-1]["done"]
    assert items[-1]["node"]["pid"] != first["node"]["pid"]  # the driver sees two workers: the task was retried
    assert [epoch for epoch, _, _ in items[-1]["epochs"]] == list(range(config["epochs"] + 1))

"""The Ray task: train one trial and stream its epochs back to the driver.

The task is a Ray generator that yields its epochs' metrics in groups of ``epochs_per_item`` as soon as a group
is measured, so the driver can show progress in the MLflow UI while the trial trains. If its worker dies, Ray runs
it again; training is deterministic and the grouping is an argument of the task, so the retry yields the very same
items and Ray drops the ones the driver already has: the driver sees every epoch exactly once.

Why groups: every streamed item is an object Ray stores, reports and hands to the driver (about 0.4 ms of CPU on
the two sides). A default trial measures an epoch every 30 ms, so one item per epoch would cost more than its
logging is worth; the driver picks the group size so that an item comes about once per ``--flush-seconds``.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Iterator

import numpy as np
import ray
from threadpoolctl import ThreadpoolController

from model.trial import iter_trial

#: A task whose worker process dies is run again this many times before its trial is marked FAILED.
MAX_RETRIES = 3


@functools.cache
def _blas() -> ThreadpoolController:
    """This worker's BLAS (and OpenMP) thread pools, found once per worker process: ``threadpool_limits`` looks
    for them among the loaded libraries on every call (about 1.5 ms; 0.02 ms through the cached controller)."""
    return ThreadpoolController()


@functools.lru_cache(maxsize=1)
def _own_copy(data_ref: ray.ObjectRef) -> tuple:
    """The data of ``data_ref``, copied once per worker process into the process's own memory.

    Ray hands a task the arrays zero-copy: views of the object store's shared memory. The kernel backs those with
    4 KB pages, while numpy asks it for huge pages for a large array of its own (``madvise``), and every evaluation
    of a trial multiplies the data: a 1000x784 float64 product from shared memory took 3.08-3.14 ms here, against
    2.91 ms from the process's own (about a fifth of a trial's products, so about 1.5 % of a trial;
    ``benchmarks.bench_trial.time_data_memory`` times whole trials both ways). The copy costs a few milliseconds
    and the data's size (12.5 MB for the default trial) once per worker, which then trains all its trials from it."""
    return tuple(np.array(array) for array in ray.get(data_ref))


def _node() -> dict[str, str]:
    """Where the trial runs (logged as tags): the Ray node, its address, and the numpy that computes."""
    ctx = ray.get_runtime_context()
    return {
        "ray_node": ctx.get_node_id(),
        "ray_node_ip": ray.util.get_node_ip_address(),
        "numpy_version": np.__version__,
        "pid": str(os.getpid()),
    }


@ray.remote(num_cpus=1, max_retries=MAX_RETRIES)
def train_trial(config: dict, data: list[ray.ObjectRef], epochs_per_item: int = 1) -> Iterator[dict]:
    """Train ``config`` on ``data`` = [the object ref of (x_train, t_train, x_test, t_test)] and yield its progress.

    (The reference comes in a list, so that Ray hands it over as it is rather than the arrays it refers to: the
    task trains on its worker's own copy of them, :func:`_own_copy`.)

    Yields ``{"epochs": [(epoch, metrics, time_ms), ...], "node": {...}}`` each time ``epochs_per_item`` epochs
    (of 0..epochs) are measured, and last ``{"epochs": [the rest], "done": True, "seconds": compute_seconds,
    "diverged_at": epoch or None, "node": {...}}``. Which epochs go in which item depends only on the arguments,
    so the items of a retried task line up with the first attempt's (``time_ms`` is when the epoch was measured).
    """
    if isinstance(epochs_per_item, bool) or not isinstance(epochs_per_item, int) or epochs_per_item < 1:
        raise ValueError(f"epochs_per_item must be a positive integer, got {epochs_per_item!r}")
    if not (isinstance(data, list) and len(data) == 1 and isinstance(data[0], ray.ObjectRef)):
        raise TypeError(f"data must be [ray.put((x_train, t_train, x_test, t_test))], got {type(data).__name__}")
    arrays = _own_copy(data[0])
    node = _node()
    diverged_at = None
    pending: list[tuple[int, dict, int]] = []
    start = time.perf_counter()
    # One BLAS thread per task: N workers then use N cores instead of fighting over them.
    with _blas().limit(limits=1):
        for epoch, record in iter_trial(config, *arrays):
            pending.append((epoch, record, int(time.time() * 1000)))
            if not math.isfinite(record["train_loss"]):
                diverged_at = epoch
                break
            if len(pending) == epochs_per_item:
                yield {"epochs": pending, "node": node}
                pending = []
    yield {"epochs": pending, "done": True, "seconds": time.perf_counter() - start, "diverged_at": diverged_at,
           "node": node}

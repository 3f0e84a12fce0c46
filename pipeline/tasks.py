"""The Ray task: train one trial and stream its epochs back to the driver.

The task is a Ray generator that yields each epoch's metrics as soon as they are measured, so the driver can
show progress in the MLflow UI while the trial trains. If its worker dies, Ray runs it again; training is
deterministic and Ray drops the items a retry yields again, so the driver sees every epoch exactly once.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator

import numpy as np
import ray
from threadpoolctl import threadpool_limits

from model.trial import iter_trial

#: A task whose worker process dies is run again this many times before its trial is marked FAILED.
MAX_RETRIES = 3


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
def train_trial(config: dict, data: tuple) -> Iterator[dict]:
    """Train ``config`` on ``data`` = (x_train, t_train, x_test, t_test) and yield its progress.

    Yields ``{"epoch": e, "metrics": {...}, "time_ms": t, "node": {...}}`` once per epoch (0..epochs), then
    ``{"done": True, "seconds": compute_seconds, "diverged_at": epoch or None, "node": {...}}``. One item per
    epoch keeps the items of a retried task identical to the first attempt's, which is what lets Ray drop the
    ones the driver already has; the driver batches them into MLflow.
    """
    node = _node()
    diverged_at = None
    start = time.perf_counter()
    # One BLAS thread per task: N workers then use N cores instead of fighting over them.
    with threadpool_limits(limits=1):
        for epoch, record in iter_trial(config, *data):
            yield {"epoch": epoch, "metrics": record, "time_ms": int(time.time() * 1000), "node": node}
            if not math.isfinite(record["train_loss"]):
                diverged_at = epoch
                break
    yield {"done": True, "seconds": time.perf_counter() - start, "diverged_at": diverged_at, "node": node}

"""A new SQLite store is made beside its file and put in place whole: an interruption never leaves it half-made.

MLflow makes a store's tables in some 70 committed steps. Made in place, a sweep killed (or out of space) between two
of them left a store at an in-between schema that every later sweep crashed on ("table spans already exists").
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading

from mlflow.tracking import MlflowClient

from pipeline.tracker import MAKING_SUFFIX, Tracker
from tests.sweep_helpers import SMALL, finished_counts, run_sweep, sweep_env
from tracking.uri import check_store

#: Makes a store in child processes, each killed (SIGKILL) a moment into the making, and reports what the store's file
#: holds after each: the parent times one whole making first, then kills its children at evenly spread moments of
#: it; it forks a child per kill, so MLflow is imported once.
KILL_DURING_MAKING = textwrap.dedent("""
    import json, os, signal, sys, time
    from pathlib import Path
    from pipeline.tracker import MAKING_SUFFIX, Tracker

    path, spare, parts = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])

    def make(where, kill_after):
        \"\"\"Make the store ``where`` in a child killed ``kill_after`` s after it starts (None: not killed); returns
        (the signal that ended it, the seconds it ran).\"\"\"
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            Tracker(f"sqlite:///{where}")
            os._exit(0)
        if kill_after is not None:
            time.sleep(kill_after)
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        return (os.WTERMSIG(status) if os.WIFSIGNALED(status) else None), time.monotonic() - started

    _, whole = make(spare, None)  # how long making a store takes
    for i in range(1, parts + 1):
        killed, _ = make(path, whole * i / (parts + 1))
        left = [p.name for p in path.parent.iterdir() if MAKING_SUFFIX in p.name]
        size = path.stat().st_size if path.exists() else None
        print(json.dumps({"at": i / (parts + 1), "signal": killed, "size": size, "making_left": bool(left)}),
              flush=True)
""")


def test_while_a_store_is_made_its_file_stays_empty_then_is_whole_at_once(tmp_path):
    """Watched from another thread the whole time MLflow makes it: the store's file is empty until it is a whole
    store, never anything in between, and the connections to the file beside it leave nothing behind."""
    path = tmp_path / "mlflow.db"
    seen: list[tuple[int | None, bool]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():  # the size first: the making file is gone once the store is in place
            size = path.stat().st_size if path.exists() else None
            seen.append((size, any(MAKING_SUFFIX in p.name for p in tmp_path.iterdir())))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        Tracker(f"sqlite:///{path}")
    finally:
        done.set()
        watcher.join(10)
    whole = path.stat().st_size
    assert sum(making for _, making in seen) >= 20  # the watcher looked many times while the store was being made
    assert {size for size, making in seen if making} <= {0, None}  # empty (or not yet there) while it was made
    assert {size for size, _ in seen} <= {0, None, whole}  # then whole at once
    assert check_store(f"sqlite:///{path}", write=True).exists
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("mlflow.db")) == []  # nothing beside it
    assert MlflowClient(f"sqlite:///{path}").get_experiment("0").name == "Default"


def test_a_store_killed_at_any_step_of_its_making_is_made_again_and_the_sweep_completes(fashion_mnist_dir, tmp_path):
    (tmp_path / "spare").mkdir()
    path = tmp_path / "mlflow.db"
    uri = f"sqlite:///{path}"
    out = subprocess.run([sys.executable, "-c", KILL_DURING_MAKING, str(path), str(tmp_path / "spare" / "m.db"),
                          "6"], env=sweep_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    seen = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(seen) == 6 and all(s["signal"] == signal.SIGKILL for s in seen), seen
    assert sum(s["making_left"] for s in seen) >= 3, seen  # half the kills or more came while it was being made
    for s in seen:  # killed then: the store's file is still empty
        assert not s["making_left"] or s["size"] == 0, s
    assert list(tmp_path.glob(f".mlflow.db{MAKING_SUFFIX}-*"))  # what the last kill left beside it

    done = run_sweep(*SMALL, "--tracking-uri", uri, "--experiment", "made", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    counts = finished_counts(uri, "made")
    assert len(counts) == 8 and set(counts.values()) == {1}
    assert not any(p.name.startswith(".mlflow.db") for p in tmp_path.iterdir())  # the leftover was made again

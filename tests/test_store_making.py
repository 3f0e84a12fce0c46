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

from mlflow.tracking import MlflowClient
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

from pipeline.tracker import MAKING_SUFFIX, Tracker
from tests.sweep_helpers import SMALL, finished_counts, run_sweep, sweep_env
from tracking.uri import check_store

#: Makes a store in child processes, each killed (SIGKILL) just before one commit of the making, and reports what the
#: store's file holds after each: the parent forks a child per step, so MLflow is imported once.
KILL_AT_STEPS = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from pipeline.tracker import MAKING_SUFFIX, Tracker

    path, spare, parts = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])

    def make(where, kill_at):
        \"\"\"Make the store ``where`` in a child process killed just before its making's commit ``kill_at``;
        returns (the signal that ended it, the commits of its making).\"\"\"
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            commits = [0]

            @event.listens_for(Engine, "commit")
            def _count(conn):
                if MAKING_SUFFIX in str(conn.engine.url.database):
                    commits[0] += 1
                    os.write(write, b".")
                    if commits[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)

            Tracker(f"sqlite:///{where}")
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            commits = len(pipe.read())
        _, status = os.waitpid(pid, 0)
        return (os.WTERMSIG(status) if os.WIFSIGNALED(status) else None), commits

    _, steps = make(spare, 0)  # how many commits making a store takes
    for step in sorted({1, 2, *(1 + (steps - 1) * i // parts for i in range(parts + 1))}):
        killed, commits = make(path, step)
        size = path.stat().st_size if path.exists() else None
        print(json.dumps({"step": step, "of": steps, "commits": commits, "signal": killed, "size": size}), flush=True)
""")


def test_at_every_step_of_making_a_store_its_file_is_still_empty(tmp_path):
    path = tmp_path / "mlflow.db"
    sizes = []
    opened, closed = set(), {}

    def size() -> int | None:
        return path.stat().st_size if path.exists() else None

    def look(conn):
        if MAKING_SUFFIX in str(conn.engine.url.database):  # a step of making it (then it is opened)
            sizes.append(size())

    def on_connect(dbapi_connection, record):  # noqa: ARG001 - SQLAlchemy's signature
        if MAKING_SUFFIX in dbapi_connection.execute("PRAGMA database_list").fetchone()[2]:
            opened.add(id(dbapi_connection))

    def on_close(dbapi_connection, record):  # noqa: ARG001
        if id(dbapi_connection) in opened:
            closed[id(dbapi_connection)] = size()

    listeners = [(Engine, "commit", look), (Pool, "connect", on_connect), (Pool, "close", on_close)]
    for target, name, fn in listeners:
        event.listen(target, name, fn)
    try:
        Tracker(f"sqlite:///{path}")
    finally:
        for target, name, fn in listeners:
            event.remove(target, name, fn)
    assert len(sizes) >= 50  # MLflow's schema steps, each committed
    assert set(sizes) == {0}  # a kill at any of them leaves the store's file empty: not yet a store
    # every connection to the file being made was closed before it took the store's place
    assert opened and set(closed) == opened and set(closed.values()) == {0}
    assert check_store(f"sqlite:///{path}", write=True).exists
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("mlflow.db")) == []  # nothing beside it
    assert MlflowClient(f"sqlite:///{path}").get_experiment("0").name == "Default"


def test_a_store_killed_at_any_step_of_its_making_is_made_again_and_the_sweep_completes(fashion_mnist_dir, tmp_path):
    (tmp_path / "spare").mkdir()
    path = tmp_path / "mlflow.db"
    uri = f"sqlite:///{path}"
    out = subprocess.run([sys.executable, "-c", KILL_AT_STEPS, str(path), str(tmp_path / "spare" / "m.db"), "8"],
                         env=sweep_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    seen = [json.loads(line) for line in out.stdout.splitlines()]
    steps = seen[0]["of"]
    assert steps >= 50 and [s["step"] for s in seen][:2] == [1, 2] and seen[-1]["step"] == steps
    assert len(seen) >= 9
    for s in seen:  # killed at that step, and the store's file still empty
        assert s["signal"] == signal.SIGKILL and s["commits"] == s["step"] and s["size"] == 0, s
    assert list(tmp_path.glob(f".mlflow.db{MAKING_SUFFIX}-*"))  # what the last kill left beside it

    done = run_sweep(*SMALL, "--tracking-uri", uri, "--experiment", "made", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    counts = finished_counts(uri, "made")
    assert len(counts) == 8 and set(counts.values()) == {1}
    assert not any(p.name.startswith(".mlflow.db") for p in tmp_path.iterdir())  # the leftover was made again

"""A full disk is an error at once, not an outage to wait out: one line, the exact count, a store that stays whole.

Each test mounts a tiny tmpfs in a mount namespace of its own (as root in the tests' namespace, or in a user
namespace of its own), runs real sweeps on a store there, and looks at the store before the namespace (and the
tmpfs) goes away.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import sqlite3
import subprocess
import textwrap

from tests.sweep_helpers import FASHION_DIR, sweep_cmd, sweep_env

GRID = ["--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--weight-scales", "0.1,0.01", "--seeds", "0-7",
        "--epochs", "20", "--train-size", "300", "--test-size", "200", "--workers", "2", "--experiment", "full"]
N_TRIALS = 32

#: What the store holds, printed as one JSON line: SQLite's integrity check and the runs per status.
LOOK = textwrap.dedent("""
    import json, sqlite3, sys
    con = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    statuses = dict(con.execute("SELECT status, count(*) FROM runs GROUP BY status")) if "runs" in tables else {}
    print("LOOK " + json.dumps({"integrity": con.execute("PRAGMA integrity_check").fetchone()[0],
                               "tables": len(tables), "statuses": statuses}))
""")


def in_tmpfs(tmp_path, size: str, body: str) -> str:
    """Run the shell ``body`` with a tmpfs of ``size`` mounted at ``tmp_path/disk`` (``$DISK``); its output."""
    disk = tmp_path / "disk"
    disk.mkdir()
    (tmp_path / "look.py").write_text(LOOK)
    namespace = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    script = f"set -u\nmount -t tmpfs -o size={size} none {shlex.quote(str(disk))}\nDISK={shlex.quote(str(disk))}\n"
    out = subprocess.run([*namespace, "sh", "-c", script + body], env=sweep_env(), cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def looks(output: str) -> list[dict]:
    return [json.loads(line.removeprefix("LOOK ")) for line in output.splitlines() if line.startswith("LOOK ")]


def sweep_line(uri: str) -> str:
    return " ".join(shlex.quote(a) for a in sweep_cmd(*GRID, "--tracking-uri", uri))


def test_a_disk_too_small_to_make_the_store_is_one_line_exit_2_and_leaves_nothing_half_made(tmp_path):
    uri = f"sqlite:///{tmp_path}/disk/mlflow.db"
    out = in_tmpfs(tmp_path, "500k", f"""
{sweep_line(uri)} 2>err; echo "EXIT $?"; grep -v '^trials' err
ls -A "$DISK" | sed 's/^/FILE /'
""")
    assert "EXIT 2" in out, out
    errors = [ln for ln in out.splitlines() if "error" in ln.lower()]
    assert errors == [f"python -m pipeline.sweep: error: MLflow at {uri} cannot open or make its store: its disk is "
                      "full (OperationalError: (sqlite3.OperationalError) database or disk is full) (free space "
                      "where the store is, then rerun the same command)"], out
    assert "Traceback" not in out and "retrying" not in out
    # the store's file is as the sweep found it (created empty, under its lock): no half-made schema, nothing beside
    assert [ln for ln in out.splitlines() if ln.startswith("FILE ")] == ["FILE mlflow.db"]


def test_a_disk_filling_up_mid_sweep_is_one_line_at_once_with_the_exact_count_and_the_rerun_finishes(tmp_path):
    uri = f"sqlite:///{tmp_path}/disk/mlflow.db"
    out = in_tmpfs(tmp_path, "4000k", f"""
{sweep_line(uri)} 2>err; echo "EXIT $?"; grep -v '^trials' err
python look.py "$DISK/mlflow.db"
mount -o remount,size=64m none "$DISK"
{sweep_line(uri)} 2>err; echo "EXIT $?"; grep -v '^trials' err
python look.py "$DISK/mlflow.db"
""")
    first, second = out.split("EXIT ", 2)[1:]
    assert first.startswith("1\n"), out
    assert "Traceback" not in first and "retrying" not in first  # the store said it is full: no waiting it out
    # the call that finds the disk full is a log_batch or a create_run, as the writes fall
    error = re.search(r"error: MLflow at (\S+) cannot [a-z ]+: its disk is full .* (\d+) trial\(s\) were recorded; "
                      r"(\d+) were not .* To finish them: free space where the store is, then rerun the same command: "
                      r"python -m pipeline.sweep", first)
    assert error, first
    recorded, not_recorded = int(error.group(2)), int(error.group(3))
    after_full, after_rerun = looks(out)
    assert after_full["integrity"] == "ok"  # the store stays whole
    assert after_full["statuses"].get("FINISHED", 0) == recorded  # exactly what is in it
    assert recorded + not_recorded == N_TRIALS and not_recorded > 0
    assert second.startswith("0\n"), out
    assert f"{N_TRIALS - recorded} run, {recorded} skipped as already FINISHED" in second
    assert after_rerun["integrity"] == "ok" and after_rerun["statuses"]["FINISHED"] == N_TRIALS


def test_what_no_retry_can_fix_is_told_apart_from_an_outage(tmp_path):
    from mlflow.exceptions import MlflowException

    from pipeline.tracker import StoreRefused, Tracker, refusal

    full = ("its disk is full", "free space where the store is, then rerun the same command")
    assert refusal(OSError(errno.ENOSPC, "No space left on device")) == full
    assert refusal(MlflowException("(sqlite3.OperationalError) database or disk is full")) == full
    assert refusal(OSError(errno.EDQUOT, "Disk quota exceeded"))[0] == "its disk quota is used up"
    assert refusal(OSError(errno.EROFS, "Read-only file system"))[0] == "it is read-only"
    assert refusal(MlflowException("attempt to write a readonly database"))[0] == "it is read-only"
    assert refusal(sqlite3.DatabaseError("file is not a database"))[0] == "it is not a whole database"
    for outage in (ConnectionError("Connection refused"), TimeoutError(), MlflowException("API request failed: 503"),
                   sqlite3.OperationalError("database is locked"), OSError(errno.ECONNRESET, "reset")):
        assert refusal(outage) is None, outage

    tracker = Tracker(f"sqlite:///{tmp_path}/m.db", retry_seconds=600)
    calls = []

    def fails():
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        tracker.call("log batch", fails)
    except StoreRefused as exc:
        assert exc.what.endswith("cannot log batch: its disk is full (OSError: [Errno 28] No space left on device)")
    else:
        raise AssertionError("not refused")
    assert calls == [1] and tracker.retries == 0  # told at once, within a retry budget of 600 s

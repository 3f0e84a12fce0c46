"""Bad input to ``python -m analysis``: one line ``python -m analysis: error: <what> (<fix>)``, exit 2, and nothing
written: the store and every file beside it byte for byte as they were, no output folder made.

Table-driven (the real CLI, each case forked from one process that imported it: tests/forked_cli.py), on a copy of
a real store (a small synthetic sweep, an experiment without finished trials and a deleted one) for each case.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.forked_cli import ForkedCli
from tests.mlflow_fixtures import create_experiment, log_grid, make_store
from tests.sweep_helpers import file_tree, on_read_only_folder, sweep_env
from tests.topology import free_port

PREFIX = "python -m analysis: error: "

#: (the options, words the error line holds). ``{store}`` is the copied store's URI, ``{port}`` a closed port,
#: ``{file}`` a file, ``{empty}`` an empty folder, ``{other}``/``{random}`` another application's SQLite database
#: and random bytes, all in the case's folder.
CASES = [
    (["--experiment", ""], "--experiment is empty (name the experiment"),
    (["--experiment", "x" * 5000], "--experiment is 5,000 characters long (give a name of at most 256 characters)"),
    (["--experiment", "tab\there"], "--experiment holds a control character"),
    (["--experiment", "nope"], "experiment 'nope' not found at"),
    (["--experiment", "empty"], "has no FINISHED trial runs (tag run_kind=trial) (run the sweep first"),
    (["--experiment", "gone"], "is deleted (restore it with `mlflow experiments restore`"),
    (["--tracking-uri", ""], "--tracking-uri is empty"),
    (["--tracking-uri", "sqlite:///"], "is an in-memory SQLite store (name a file"),
    (["--tracking-uri", "sqlite:///{empty}/absent.db"], "no MLflow store at"),
    (["--tracking-uri", "sqlite:///{empty}"], "names the folder"),
    (["--tracking-uri", "sqlite:///{other}"], "is a SQLite database of another application, not an MLflow store"),
    (["--tracking-uri", "sqlite:///{random}"], "is not a SQLite database"),
    (["--tracking-uri", "ftp://example.invalid/x"], "has an unsupported scheme"),
    (["--tracking-uri", "mlruns"], "is a path, not a URI"),
    (["--tracking-uri", "http://127.0.0.1:{port}"], "tracking server http://127.0.0.1:{port} is unreachable"),
    (["--tracking-uri", "postgresql+psycopg2://u@127.0.0.1:{port}/db"], "cannot reach the database at"),
    (["--out", "{file}"], "exists and is not a folder (name a folder, or remove the file)"),
    (["--out", "{file}/inside"], "is not a folder (name a folder whose parents are folders)"),
    (["--out", ""], "--out is empty"),
    (["--cache-dir", "{file}"], "a-file exists and is not a folder (name a folder, or remove the file)"),
    (["--cache-dir", "{file}/inside"], "is not a folder (name a folder whose parents are folders)"),
    (["--cache-dir", ""], "--cache-dir is empty"),
    (["--cache-dir", "{empty}", "--no-cache"], "argument --no-cache: not allowed with argument --cache-dir"),
    (["--scale", "0"], "argument --scale: must be a positive number: '0' (see python -m analysis --help)"),
    (["--scale", "x"], "argument --scale: not a number: 'x'"),
    (["--width", "-1"], "argument --width: must be a positive number"),
    (["--width", "inf"], "argument --width: must be a positive number"),
    (["--alpha", "1.5"], "argument --alpha: must be between 0 and 1"),
    (["--metric", "loss"], "argument --metric: invalid choice: 'loss'"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
]



@pytest.fixture(scope="module")
def store_file(tmp_path_factory) -> Path:
    """A store holding a small synthetic sweep, an experiment without finished trials and a deleted one."""
    root = tmp_path_factory.mktemp("analysis-store")
    uri, client = make_store(root)
    log_grid(client, create_experiment(client, "batchnorm-weight-scale", root / "artifacts"), [0.1, 0.01], [0, 1],
             epochs=2)
    create_experiment(client, "empty", root / "artifacts")
    client.delete_experiment(create_experiment(client, "gone", root / "artifacts"))
    # A self-contained copy (SQLite's backup: whatever a write-ahead log still holds is in it too), in the default
    # rollback-journal mode, so that reading it makes no -wal or -shm file beside it.
    copy = tmp_path_factory.mktemp("analysis-store-copy") / "mlflow.db"
    with sqlite3.connect(root / "mlflow.db") as source, sqlite3.connect(copy) as target:
        source.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")
    source.close()
    target.close()
    return copy


@pytest.fixture(scope="module")
def analysis_cli():
    """``python -m analysis``, each case forked from one process that has imported it (tests/forked_cli.py)."""
    with ForkedCli("analysis", warm=("analysis.cli", "mlflow.tracking")) as cli:
        yield cli


@pytest.mark.parametrize(("options", "message"), CASES, ids=[" ".join(c[0])[:50] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(store_file, analysis_cli, tmp_path, options, message):
    shutil.copy(store_file, tmp_path / "mlflow.db")
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "empty").mkdir()
    with sqlite3.connect(tmp_path / "app.sqlite") as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    db.close()
    (tmp_path / "noise.db").write_bytes(random.Random(3).randbytes(4096))
    port = str(free_port())
    values = {"{port}": port, "{file}": str(tmp_path / "a-file"), "{empty}": str(tmp_path / "empty"),
              "{other}": str(tmp_path / "app.sqlite"), "{random}": str(tmp_path / "noise.db")}
    args = []
    for option in options:
        for key, text in values.items():
            option = option.replace(key, text)
        args.append(option)
    if "--tracking-uri" not in args:
        args += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    before = file_tree(tmp_path)
    out = analysis_cli.run(*args, cwd=tmp_path)
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert out.stdout == "" and "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and lines[0].endswith(")"), out.stderr
    assert message.replace("{port}", port) in lines[0], lines[0]
    assert file_tree(tmp_path) == before and not (tmp_path / "out").exists()


def test_an_output_folder_on_a_read_only_filesystem_is_refused_before_anything_is_written(store_file, tmp_path):
    """--out inside a folder mounted read-only (a mount namespace of our own, so root or not)."""
    shutil.copy(store_file, tmp_path / "mlflow.db")
    (tmp_path / "ro").mkdir()
    before = file_tree(tmp_path)
    command = on_read_only_folder(tmp_path / "ro", sys.executable, "-m", "analysis", "--tracking-uri",
                                  f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(tmp_path / "ro" / "out"))
    out = subprocess.run(command, cwd=tmp_path, env=sweep_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [f"{PREFIX}--out {tmp_path / 'ro' / 'out'}: {tmp_path / 'ro'} is not writable "
                                       "(name a folder you can write, or fix its permissions)"]
    assert file_tree(tmp_path) == before

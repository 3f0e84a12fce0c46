"""Bad input: a one-line error that names the problem and its fix, exit code 2, and the store untouched.

Table-driven: each case replaces one option of a small valid sweep (or adds one) and runs the real CLI (forked from
one process that imported it: tests/forked_cli.py) on a copy of an MLflow store that already holds a finished sweep.
It asserts exit 2, stderr a single line ``python -m pipeline.sweep: error: <what> (<fix>)`` holding the expected
words, no traceback, and every file of the store's folder byte for byte as it was (no file added, none changed).
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.forked_cli import ForkedCli
from tests.sweep_helpers import FASHION_DIR, file_tree, on_read_only_folder, run_sweep, sweep_cmd, sweep_env
from tests.topology import free_port

SMALL = ["--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--weight-scales", "0.1",
         "--seeds", "0", "--epochs", "1", "--train-size", "100", "--test-size", "100"]
PREFIX = "python -m pipeline.sweep: error: "

#: (what replaces or joins the small sweep's options, words the error line holds). ``{port}`` is a closed port,
#: ``{file}`` a file in the case's folder, ``{empty}`` an empty folder there; ``--data-dir None`` leaves it out.
CASES = [
    # sizes, rates and times: type and range
    (["--workers", "0"], "--workers 0 is out of range (give --workers from 1 to 4096)"),
    (["--workers", "5000"], "--workers 5000 is out of range"),
    (["--workers", "x"], "argument --workers: invalid int value: 'x' (see python -m pipeline.sweep --help)"),
    (["--epochs", "0"], "--epochs 0 is out of range (give --epochs a whole number of at least 1)"),
    (["--epochs", "-3"], "--epochs -3 is out of range"),
    (["--epochs", "two"], "--epochs: 'two' is not a whole number (give --epochs whole numbers of at least 1"),
    (["--epochs", "1.5"], "--epochs: '1.5' is not a whole number"),
    (["--epochs", "5,0"], "--epochs 0 is out of range"),  # every value of a list is checked
    (["--epochs", "5,,10"], "--epochs '5,,10' has an empty value (give --epochs a ,-separated list"),
    (["--batch-size", "0"], "--batch-size 0 is out of range"),
    (["--train-size", "0"], "--train-size 0 is out of range"),
    (["--test-size", "-1"], "--test-size -1 is out of range"),
    (["--lr", "0"], "--lr 0 is out of range (give --lr a number above 0)"),
    (["--lr", "-0.5"], "--lr -0.5 is out of range"),
    (["--lr", "nan"], "--lr nan is out of range"),
    (["--lr", "inf"], "--lr inf is out of range"),
    (["--lr", "fast"], "--lr: 'fast' is not a number (give --lr numbers, e.g. --lr 0.01,0.1)"),
    (["--lr", "0.01,0.1,-1"], "--lr -1 is out of range"),
    (["--weight-decay", "-0.1"], "--weight-decay -0.1 is out of range (give --weight-decay a number of at least 0)"),
    (["--weight-decay", "inf"], "--weight-decay inf is out of range"),
    (["--dropout", "1"], "--dropout 1 is out of range (give --dropout a ratio from 0 up to (not including) 1)"),
    (["--dropout", "0.5,-0.1"], "--dropout -0.1 is out of range"),
    (["--activation", "tanh"], "--activation 'tanh' is not a choice (choose from relu, sigmoid)"),
    (["--flush-seconds", "0"], "--flush-seconds 0 is out of range (give --flush-seconds a number above 0 and at "
                               "most 3600)"),
    (["--flush-seconds", "1e9"], "--flush-seconds 1e+09 is out of range"),
    (["--tracking-retry", "-1"], "--tracking-retry -1 is out of range (give --tracking-retry seconds from 0 to"),
    (["--orphan-timeout", "0"], "--orphan-timeout 0 is out of range"),
    # the grid: empty values, bad values, a grid too large
    (["--weight-scales", ""], "--weight-scales '' has an empty value (give --weight-scales a ,-separated list"),
    (["--weight-scales", "0.1,,0.01"], "--weight-scales '0.1,,0.01' has an empty value"),
    (["--weight-scales", "-0.1"], "'-0.1' must be a positive finite number"),
    (["--weight-scales", "0"], "'0' must be a positive finite number"),
    (["--weight-scales", "inf"], "'inf' must be a positive finite number"),
    (["--weight-scales", "nan"], "'nan' must be a positive finite number"),
    (["--weight-scales", "abc"], "'abc' is not a number (give standard deviations like 0.1,0.01, or he or xavier)"),
    (["--seeds", ""], "--seeds '' has an empty value (give --seeds a ,-separated list, e.g. --seeds 0-4,9)"),
    (["--seeds", "0,,1"], "--seeds '0,,1' has an empty value"),
    (["--seeds", "5-2"], "range '5-2' is empty (give a range as start-end, start <= end)"),
    (["--seeds", "x"], "'x' is not a seed or a range"),
    (["--seeds", "1.5"], "'1.5' is not a seed or a range"),
    (["--seeds", "0-100000000"], "--seeds 0-100000000 gives 100,000,001 seeds; at most 500,000 fit in one sweep"),
    (["--seeds", "0-100000000", "--dry-run"], "gives 100,000,001 seeds"),
    # seeds until clear: a rule that can be met, by a grid of both arms, within the seeds an experiment holds
    (["--max-seeds", "20"], "--max-seeds bounds the rounds of --until-width or --until-decided, and neither is "
                            "given (add --until-width W or --until-decided, or leave --max-seeds out)"),
    (["--until-width", "0"], "--until-width 0 is out of range (give --until-width a number above 0 and at most 2)"),
    (["--until-width", "3"], "--until-width 3 is out of range"),
    (["--until-width", "nan"], "--until-width nan is out of range"),
    (["--until-width", "wide"], "argument --until-width: invalid float value: 'wide'"),
    (["--until-decided", "--batchnorm", "on"], "--until-decided compares BN with plain, and --batchnorm on runs one "
                                               "arm (use --batchnorm both (the default))"),
    (["--until-width", "0.1", "--seeds", "0-4", "--max-seeds", "3"],
     "--max-seeds 3 is fewer than the 5 seeds of --seeds 0-4 (give --max-seeds at least 5, or fewer --seeds)"),
    (["--until-decided", "--max-seeds", "0"], "--max-seeds 0 is fewer than the 1 seeds of --seeds 0"),
    (["--until-decided", "--max-seeds", "600000"], "--max-seeds 600000 allows 1,200,000 trials; at most 1,000,000"),
    (["--batchnorm", "maybe"], "argument --batchnorm: invalid choice: 'maybe'"),
    (["--dataset", "cifar"], "argument --dataset: invalid choice: 'cifar'"),
    (["--optimizer", "rmsprop"], "--optimizer 'rmsprop' is not a choice (choose from sgd, momentum, adagrad, adam)"),
    (["--optimizer", "sgd,Adam"], "--optimizer 'Adam' is not a choice"),
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["--no-such-option", "1"], "unrecognized arguments: --no-such-option 1"),
    # the net: bad widths, a net or a number of workers that cannot fit in memory
    (["--hidden-sizes", ""], "--hidden-sizes '' has an empty value"),
    (["--hidden-sizes", "100;"], "--hidden-sizes '100;' has an empty value (give --hidden-sizes a ;-separated list"),
    (["--hidden-sizes", "100,;50"], "--hidden-sizes '100,' has an empty width"),
    (["--hidden-sizes", "100,abc"], "--hidden-sizes '100,abc' is not a list of whole numbers"),
    (["--hidden-sizes", "100,0"], "--hidden-sizes '100,0' has a width below 1"),
    (["--hidden-sizes", "100000000"], "a trial with hidden sizes 100000000 needs about"),
    (["--hidden-sizes", "100000,100000"], "GiB; this machine has"),
    (["--hidden-sizes", "10;100000,100000"], "a trial with hidden sizes 100000,100000 needs about"),  # the largest
    (["--workers", "1000"], "--workers 1000 need about"),
    # the experiment's name
    (["--experiment", ""], "--experiment is empty (name the experiment"),
    (["--experiment", "   "], "--experiment is empty"),
    (["--experiment", "x" * 5000], "--experiment is 5,000 characters long (give a name of at most 256 characters)"),
    (["--experiment", "a\nb"], "--experiment holds a control character"),
    # the data
    (["--data-dir", "/nonexistent/folder"], "--data-dir /nonexistent/folder is not a folder"),
    (["--data-dir", "{file}"], "is not a folder (name the folder that holds the IDX files)"),
    (["--data-dir", "{empty}"], "does not hold the fashion-mnist files"),
    (["--dataset", "idx", "--data-dir", "None"], "--dataset idx reads your own IDX files (name their folder"),
    (["--test-size", "20000"], "--test-size 20000 is larger than the fashion-mnist test split (10000 samples) (give "
                               "--test-size 10000 or less)"),
    (["--train-size", "70000"], "--train-size 70000 is larger than the fashion-mnist training split"),
    (["--train-size", "100,70000"], "--train-size 70000 is larger than the fashion-mnist training split"),
    (["--dataset", "mnist"], "is not the official mnist train-images-idx3-ubyte"),
    # where it runs and what records it
    (["--address", "127.0.0.1:{port}"], "Ray cluster at 127.0.0.1:{port} is unreachable"),
    (["--address", "ray://127.0.0.1:10001"], "Ray Client (ray://) is not supported"),
    (["--address", "nowhere"], "--address 'nowhere' is not host:port"),
    (["--tracking-uri", "http://127.0.0.1:{port}"], "tracking server http://127.0.0.1:{port} is unreachable"),
    (["--connect-timeout", "0"], "--connect-timeout 0 is out of range"),
    (["--address", "auto", "--connect-timeout", "2"], "the Ray cluster at auto did not answer within 2 s (start it",
     {"RAY_ADDRESS": "127.0.0.1:{port}"}),
    # what the tracking URI really is
    (["--tracking-uri", ""], "--tracking-uri is empty (give sqlite:///path.db"),
    (["--tracking-uri", "ftp://example.invalid/store"], "has an unsupported scheme"),
    (["--tracking-uri", "sqlite:///"], "tracking URI sqlite:/// is an in-memory SQLite store (name a file"),
    (["--tracking-uri", "sqlite://"], "is an in-memory SQLite store"),
    (["--tracking-uri", "sqlite:///{empty}"], "names the folder"),
    (["--tracking-uri", "sqlite:///{empty}/no/such/mlflow.db"], "of the tracking store does not exist (create it"),
    (["--tracking-uri", "mlflow.db"], "tracking URI mlflow.db is a path, not a URI"),
    (["--tracking-uri", "file:///tmp/mlruns"], "is a path, not a URI"),
    (["--tracking-uri", "sqlite:///{other}"], "is a SQLite database of another application, not an MLflow store"),
    (["--tracking-uri", "sqlite:///{random}"], "is not a SQLite database"),
    (["--tracking-uri", "sqlite:///{incomplete}"], "is an incomplete MLflow store (tables missing: alembic_version"),
    (["--tracking-uri", "postgresql+psycopg2://u:p@127.0.0.1:{port}/mlflow"],
     "cannot reach the database at 127.0.0.1:{port}: Connection refused (start it"),
    (["--tracking-uri", "postgresql+pg8000://u@127.0.0.1:{port}/mlflow"], "the database driver pg8000 of "
     "postgresql+pg8000://u@127.0.0.1:{port}/mlflow is not installed (pip install pg8000"),
    (["--tracking-uri", "mysql://u@127.0.0.1:{port}/mlflow"], "mysql"),
    (["--tracking-uri", "postgresql+nodriver://u@127.0.0.1/mlflow"], "is not a database URL SQLAlchemy knows"),
]



@pytest.fixture(scope="module")
def filled_store(tmp_path_factory) -> Path:
    """A store that holds one finished small sweep, made by the real CLI: copied into each case."""
    folder = tmp_path_factory.mktemp("filled")
    uri = f"sqlite:///{folder}/mlflow.db"
    out = run_sweep(*SMALL, "--tracking-uri", uri, cwd=folder, timeout=300)
    assert out.returncode == 0, out.stderr
    return folder / "mlflow.db"


FLAGS = {"--dry-run", "--until-decided"}


def _args(bad: list[str], values: dict[str, str]) -> list[str]:
    """The small sweep's options with ``bad`` put in: a value replaces the option's own (``None`` drops it)."""
    args, i = list(SMALL), 0
    while i < len(bad):
        option = bad[i]
        if option in FLAGS:
            args.append(option)
            i += 1
            continue
        value = bad[i + 1]
        for key, text in values.items():
            value = value.replace(key, text)
        i += 2
        if option not in args:
            args += [option, value]
        elif value == "None":
            del args[args.index(option):args.index(option) + 2]
        else:
            args[args.index(option) + 1] = value
    return args


def _other_files(folder: Path) -> dict[str, str]:
    """Files a store URI may name that are no MLflow store: another application's SQLite database, random bytes,
    and an MLflow store whose making stopped before its last tables."""
    files = {"{other}": folder / "app.sqlite", "{random}": folder / "noise.db", "{incomplete}": folder / "half.db"}
    with sqlite3.connect(files["{other}"]) as db:
        db.execute("CREATE TABLE contacts (name TEXT, phone TEXT)")
        db.execute("INSERT INTO contacts VALUES ('Ada', '555')")
    db.close()
    files["{random}"].write_bytes(random.Random(7).randbytes(8192))
    with sqlite3.connect(files["{incomplete}"]) as db:
        db.execute("CREATE TABLE experiments (experiment_id INTEGER, name TEXT)")
    db.close()
    return {key: str(path) for key, path in files.items()}


CASE_IDS = [" ".join(c[0])[:60] for c in CASES]


@pytest.fixture(scope="module")
def sweep_cli():
    """``python -m pipeline.sweep``, each case forked from one process that has imported it (tests/forked_cli.py)."""
    with ForkedCli("pipeline.sweep") as cli:
        yield cli


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(fashion_mnist_dir, filled_store, sweep_cli, tmp_path, case):
    bad, message, env = case if len(case) == 3 else (*case, {})
    port = free_port()
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(filled_store, store / "mlflow.db")
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "empty").mkdir()
    values = {"{port}": str(port), "{file}": str(tmp_path / "a-file"), "{empty}": str(tmp_path / "empty"),
              **_other_files(tmp_path)}
    before = file_tree(tmp_path)
    args = _args(bad, values)
    if "--tracking-uri" not in args:
        args += ["--tracking-uri", f"sqlite:///{store}/mlflow.db"]
    extra = {name: value.replace("{port}", str(port)) for name, value in env.items()}
    out = sweep_cli.run(*args, cwd=tmp_path, env=sweep_env(**extra))
    message = message.replace("{port}", str(port))
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert out.stdout == "" and "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and lines[0].endswith(")"), out.stderr
    assert message in lines[0], lines[0]
    assert file_tree(tmp_path) == before, "a bad input must not create or change a file"


def test_the_forked_cli_answers_as_a_fresh_process(sweep_cli, tmp_path):
    """The table's runner (tests/forked_cli.py) gives what ``python -m pipeline.sweep`` itself gives."""
    for args in (["--workers", "0"], ["--seeds", "x", "--dry-run"], ["--tracking-uri", "sqlite:///", "--dry-run"]):
        forked, fresh = sweep_cli.run(*args, cwd=tmp_path), run_sweep(*args, cwd=tmp_path)
        assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
        assert fresh.returncode == 2


def test_help_gives_each_option_one_default(tmp_path):
    """``--help`` exits 0 and shows each option's default once: the fixed ones as argparse prints them, the others
    (found at run time: the cluster's CPUs, the tracking URI...) in their own words, never as "None"."""
    out = run_sweep("--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split("options:", 1)[1].split())  # after the usage; argparse wraps lines
    assert "(default: None)" not in text and "(default: False)" not in text
    for option in ("--weight-scales", "--workers", "--tracking-uri", "--epochs", "--flush-seconds"):
        shown = text[text.index(f"{option} "):].split(" --", 1)[0]
        assert shown.count("(default:") == 1, shown


@pytest.mark.parametrize("name", ["mlflow.db", "new.db"], ids=["store", "folder"])
def test_a_store_on_a_read_only_filesystem_is_refused_and_left_as_it_was(fashion_mnist_dir, filled_store, tmp_path,
                                                                         name):
    """The store's folder mounted read-only (a mount namespace of our own, so root or not): the store that is there
    and a new store in that folder are both refused before anything starts."""
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(filled_store, folder / "mlflow.db")
    before = file_tree(tmp_path)
    command = on_read_only_folder(folder, *sweep_cmd(*SMALL, "--tracking-uri", f"sqlite:///{folder / name}"))
    out = subprocess.run(command, cwd=tmp_path, env=sweep_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    what = f"SQLite store {folder / name} is read-only" if name == "mlflow.db" else \
        f"folder {folder} of the tracking store is read-only"
    assert out.stderr.splitlines() == [f"{PREFIX}{what} (make it writable, or pass another --tracking-uri)"]
    assert file_tree(tmp_path) == before

"""Bad input: a one-line error naming the problem, exit code 2, and nothing written to MLflow."""

from __future__ import annotations

import pytest

from tests.sweep_helpers import FASHION_DIR, run_sweep
from tests.topology import free_port

SMALL = ["--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--weight-scales", "0.1",
         "--seeds", "0", "--epochs", "1", "--train-size", "100", "--test-size", "100"]

CASES = [
    (["--workers", "0"], "--workers must be at least 1"),
    (["--seeds", "5-2"], "range '5-2' is empty"),
    (["--seeds", "x"], "'x' is not a seed"),
    (["--weight-scales", "-0.1"], "'-0.1' must be a positive"),
    (["--weight-scales", "0"], "'0' must be a positive"),
    (["--weight-scales", "abc"], "'abc' is not a number"),
    (["--dataset", "cifar"], "invalid choice: 'cifar'"),
    (["--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--epochs", "two"], "invalid int value: 'two'"),
    (["--test-size", "20000"], "--test-size 20000 is larger than the fashion-mnist split"),
    (["--data-dir", "/nonexistent/folder"], "/nonexistent/folder"),
    (["--address", "127.0.0.1:{port}"], "Ray cluster at 127.0.0.1:{port} is unreachable"),
    (["--tracking-uri", "http://127.0.0.1:{port}"], "tracking server http://127.0.0.1:{port} is unreachable"),
]


@pytest.mark.parametrize(("bad", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(fashion_mnist_dir, tmp_path, bad, message):
    port = free_port()
    bad = [a.format(port=port) for a in bad]
    message = message.format(port=port)
    args = list(SMALL)
    for i in range(0, len(bad), 2):  # the bad value replaces the good one
        if bad[i] in args:
            args[args.index(bad[i]) + 1] = bad[i + 1]
        else:
            args += bad[i : i + 2]
    if "--tracking-uri" not in args:
        args += ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    out = run_sweep(*args, cwd=tmp_path, timeout=120)
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines == errors, out.stderr  # the error line alone: no start-up messages around it
    assert message in errors[0], out.stderr
    assert not (tmp_path / "mlflow.db").exists(), "a bad input must not create or touch the store"
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


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

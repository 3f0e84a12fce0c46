"""Ctrl-C at random moments while Ray starts, many times over: a race hunter, not part of the test suite.

Each round starts a small sweep (tests/test_sweep_faults.py's SLOW grid) into a fresh SQLite store, sends SIGINT
0 to 1.5 s after Ray's first process appears, and checks that the sweep exits 130 within 60 s without a
traceback. Prints one line per round, the output of any round that went wrong, and exits 1 if one did.

    tests/loopback-only python -m tests.ctrl_c_stress 25
"""

from __future__ import annotations

import random
import signal
import sys
import tempfile
import time

import psutil

from tests.sweep_helpers import SweepProcess
from tests.test_sweep_faults import SLOW, _wait_for


def one_round(delay: float) -> tuple[object, str]:
    """``(exit code or "hang", the sweep's output)`` of one sweep interrupted ``delay`` s after Ray starts."""
    with tempfile.TemporaryDirectory(prefix="bns-ctrl-c-") as tmp:
        sweep = SweepProcess(*SLOW, "--seeds", "0", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db",
                             "--experiment", "ctrl-c-stress", cwd=tmp)
        try:
            _wait_for(lambda: psutil.Process(sweep.proc.pid).children(recursive=True), 60, "Ray to start")
            time.sleep(delay)
            sweep.proc.send_signal(signal.SIGINT)
            try:
                return sweep.wait(60), sweep.output
            except AssertionError as exc:  # SweepProcess.wait: no exit in time; the message holds the stacks
                return "hang", str(exc)
        finally:
            sweep.kill()


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv else 20
    bad = 0
    for i in range(rounds):
        delay = random.uniform(0.0, 1.5)
        code, output = one_round(delay)
        wrong = code != 130 or "Traceback" in output
        bad += wrong
        print(f"round {i + 1}/{rounds}: SIGINT after {delay:.2f} s -> exit {code}"
              + (" WRONG" if wrong else ""), flush=True)
        if wrong:
            print(output, flush=True)
    print(f"{bad} of {rounds} rounds went wrong")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

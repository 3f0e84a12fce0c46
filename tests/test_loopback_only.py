"""tests/loopback-only: the README's way to run the tests (and the benchmarks) with only loopback, root or not."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "loopback-only"


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_the_command_sees_loopback_alone_as_the_same_user_with_its_arguments_and_exit_code():
    links = run(str(SCRIPT), "ip", "-o", "link")
    assert links.returncode == 0, links.stderr
    assert [line.split(":")[1].strip() for line in links.stdout.splitlines()] == ["lo"]
    assert "UP" in links.stdout.split("<", 1)[1].split(">", 1)[0]
    who = run(str(SCRIPT), "sh", "-c", 'id -u; id -g; printf "%s|" "$@"; exit 7', "sh", "a b", "c")
    assert who.returncode == 7
    assert who.stdout.splitlines() == [str(os.getuid()), str(os.getgid()), "a b|c|"]


def test_an_ordinary_user_where_the_kernel_allows_no_user_namespace_gets_one_error_line():
    """Inside a user namespace of our own, its limit of nested user namespaces is lowered to one: the ordinary user
    made there with it (uid 1000) is then refused the namespace the script asks for."""
    limited = ("echo 1 > /proc/sys/user/max_user_namespaces && "
               f"exec unshare --user --map-user=1000 --map-group=1000 {SCRIPT} true")
    out = run("unshare", "--user", "--map-root-user", "sh", "-c", limited)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == "" and len(out.stderr.splitlines()) == 1
    assert out.stderr.startswith("error: this kernel does not let an ordinary user make a user namespace")
    assert "kernel.unprivileged_userns_clone=1" in out.stderr and "or run them as root" in out.stderr

"""``python -m MODULE ARGS`` run many times fast: each run in a child forked from one process that has imported
the module, so a run costs no interpreter start and no imports (about 1-2 s each for the sweep and the analysis).

The child runs the module as ``python -m`` does (:func:`runpy.run_module` as ``__main__``) in its own working folder
and environment, with its standard output and error in files of its own, and its exit code is what ``python -m``
would give: the same code, the same result, for the bad-input tables, whose cases end before Ray or MLflow start.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.sweep_helpers import REPO, sweep_env

#: The server: imports the module once, then for each request (a JSON line on stdin) forks, runs it, and answers a
#: JSON line with the exit code and the outputs.
_SERVER = textwrap.dedent("""
    import importlib, importlib.util, json, os, runpy, sys, tempfile, traceback

    module, warm = sys.argv[1], json.loads(sys.argv[2])
    for name in warm:
        importlib.import_module(name)  # what every run imports, once
    # what python -m runs (a package's __main__) runs in each child as __main__, its own body anew
    is_package = importlib.util.find_spec(module).submodule_search_locations is not None
    sys.modules.pop(module + ".__main__" if is_package else module, None)
    for line in sys.stdin:
        request = json.loads(line)
        out_path, err_path = (tempfile.mkstemp(prefix="forked-cli-") for _ in range(2))
        for fd, _ in (out_path, err_path):
            os.close(fd)
        out_path, err_path = out_path[1], err_path[1]
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.chdir(request["cwd"])
                os.environ.clear()
                os.environ.update(request["env"])
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # not the requests' pipe
                for fd, path in ((1, out_path), (2, err_path)):
                    os.dup2(os.open(path, os.O_WRONLY | os.O_TRUNC), fd)
                sys.argv = [module, *request["args"]]
                try:
                    runpy.run_module(module, run_name="__main__", alter_sys=True)
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                    if not isinstance(exc.code, int | None):
                        print(exc.code, file=sys.stderr)
                except BaseException:
                    traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        outputs = []
        for path in (out_path, err_path):
            with open(path, encoding="utf-8", errors="replace") as f:
                outputs.append(f.read())
            os.unlink(path)
        print(json.dumps({"returncode": code, "stdout": outputs[0], "stderr": outputs[1]}), flush=True)
""")


class ForkedCli:
    """Runs ``python -m module`` (see the module doc); use as a context manager, one per test module."""

    def __init__(self, module: str, warm: tuple[str, ...] = ()):
        """``warm``: the modules to import once (default: ``module`` itself)."""
        self.module = module
        self.server = subprocess.Popen([sys.executable, "-c", _SERVER, module, json.dumps(list(warm or (module,)))],
                                       cwd=REPO, env=sweep_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True)

    def run(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """What ``subprocess.run([python, "-m", module, *args], cwd=cwd, env=env, capture_output=True)`` gives."""
        request = {"args": list(args), "cwd": str(cwd), "env": env or sweep_env()}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        answer = self.server.stdout.readline()
        if not answer:
            raise RuntimeError(f"the forked {self.module} runner ended (exit {self.server.wait()})")
        reply = json.loads(answer)
        return subprocess.CompletedProcess([sys.executable, "-m", self.module, *args], reply["returncode"],
                                           reply["stdout"], reply["stderr"])

    def __enter__(self) -> ForkedCli:
        return self

    def __exit__(self, *exc) -> None:
        self.server.stdin.close()
        self.server.wait(30)

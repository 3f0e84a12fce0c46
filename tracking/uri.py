"""The tracking URI: which store it names, and whether that store can be used, checked before MLflow touches it.

Shared by the sweep and the analysis; imports neither MLflow nor Ray (the sweep checks its store before Ray starts,
and MLflow's import takes a second). MLflow creates what it does not find (a SQLite URI to a missing file, or to
another application's database, gets MLflow's tables) and retries a dead server for minutes, so the checks here
never write and never wait longer than their timeout.

- :func:`resolve_tracking_uri`: the option, else ``MLFLOW_TRACKING_URI``, else :data:`DEFAULT_TRACKING_URI`.
- :func:`check_store`: what the URI is (:class:`Store`), or a :class:`StoreError` saying what is wrong and the fix.
- :func:`runs_view_url`, :func:`mlflow_ui_command`: where a person sees the runs.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import socket
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

#: The sweep's default store, used when neither --tracking-uri nor MLFLOW_TRACKING_URI is given.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: Tables every MLflow SQLite store has.
MLFLOW_TABLES = frozenset({"experiments", "runs", "metrics", "params", "tags", "alembic_version"})
#: Database servers MLflow can use directly (SQLAlchemy backends) and their default ports.
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
#: The pip package of each SQLAlchemy database driver.
DRIVER_PACKAGES = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "pg8000": "pg8000",
                   "mysqldb": "mysqlclient", "pymysql": "PyMySQL", "pyodbc": "pyodbc", "pymssql": "pymssql"}
USE = "give sqlite:///path.db, http://host:port (an MLflow server) or postgresql://user@host/db"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


class StoreError(ValueError):
    """A tracking store that cannot be used as asked: ``<what> (<fix>)``, one line."""

    def __init__(self, what: str, fix: str) -> None:
        self.what, self.fix = what, fix
        super().__init__(f"{what} ({fix})")


@dataclass(frozen=True)
class Store:
    """A usable tracking store: ``kind`` is ``sqlite``, ``server`` or ``database``; a SQLite store has its absolute
    ``path``, and ``exists`` says whether it holds MLflow's tables yet (False: absent or an empty file, which MLflow
    makes into a store)."""

    uri: str
    kind: str
    path: Path | None = None
    exists: bool = True


def resolve_tracking_uri(option: str | None) -> str:
    """``option`` if given, else env ``MLFLOW_TRACKING_URI``, else :data:`DEFAULT_TRACKING_URI`. A blank option
    (``--tracking-uri ''``) is a :class:`StoreError`."""
    if option is not None:
        if not option.strip():
            raise StoreError("--tracking-uri is empty", f"{USE}, or leave the option out")
        return option.strip()
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip() or DEFAULT_TRACKING_URI


def _scheme(uri: str) -> str:
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else ""


def is_server(uri: str) -> bool:
    """Whether ``uri`` names an MLflow tracking server (``http://`` or ``https://``), not a database."""
    return _scheme(uri) in ("http", "https")


def sqlite_path(uri: str) -> Path | None:
    """The absolute file of a ``sqlite:///`` URI (three slashes: relative to the current folder, four: absolute; ``~``
    expanded, a query left out); None for any other URI and for an in-memory SQLite URI."""
    if _scheme(uri) != "sqlite" or not uri[len("sqlite:"):].startswith("///"):
        return None
    raw = uri[len("sqlite:///"):].split("?", 1)[0]
    if raw in ("", ":memory:") or raw.startswith("file:"):
        return None
    return Path(os.path.abspath(os.path.expanduser(raw)))


def check_store(uri: str, *, write: bool, timeout: float = 5.0) -> Store:
    """What ``uri`` names, checked for use (``write``: the caller will write to it), or a :class:`StoreError`.

    Accepted: ``sqlite:///`` files (absent or empty only when ``write``: the sweep makes them), ``http(s)://`` MLflow
    servers that answer ``/health`` and let the credentials of the environment (MLflow's ``MLFLOW_TRACKING_USERNAME``
    and ``MLFLOW_TRACKING_PASSWORD``, or ``MLFLOW_TRACKING_TOKEN``) search their experiments, and
    ``postgresql``/``mysql``/``mssql`` databases whose driver is installed and whose host accepts a connection.
    Refused: in-memory SQLite, a folder, another application's SQLite database, a file that is not SQLite, a read-only
    store or folder when writing, bare paths and ``file:`` (MLflow 3 deprecates file stores), and every other scheme.
    Never writes; bounded by ``timeout`` seconds.
    """
    scheme = _scheme(uri)
    if scheme == "sqlite":
        return _check_sqlite(uri, write, timeout)
    if scheme in ("http", "https"):
        _check_server(uri, timeout)
        return Store(uri, "server")
    if scheme.split("+", 1)[0] in DATABASE_PORTS:
        _check_database(uri, timeout)
        return Store(uri, "database")
    if scheme in ("", "file"):
        raise StoreError(f"tracking URI {uri} is a path, not a URI (MLflow would keep a folder of files there, a "
                         "store MLflow 3 deprecates)", USE)
    raise StoreError(f"tracking URI {uri} has an unsupported scheme", USE)


def _check_sqlite(uri: str, write: bool, timeout: float) -> Store:
    path = sqlite_path(uri)
    if path is None:
        raise StoreError(f"tracking URI {uri} is an in-memory SQLite store", "name a file: sqlite:///path.db")
    if path.is_dir():
        raise StoreError(f"tracking URI {uri} names the folder {path}", f"name a file in it: sqlite:///{path}/mlflow.db")
    size = path.stat().st_size if path.exists() else None
    if not size:  # absent, or empty: MLflow makes its tables there
        if not write:
            raise StoreError(f"no MLflow store at {path}", "run the sweep first, or pass --tracking-uri")
        _check_folder(path.parent)
        return Store(f"sqlite:///{path}", "sqlite", path, exists=False)
    tables = _sqlite_tables(path, timeout)
    if not tables & {"experiments", "alembic_version"}:
        raise StoreError(f"{path} is a SQLite database of another application, not an MLflow store",
                         "name another file with --tracking-uri")
    if not MLFLOW_TABLES <= tables:
        raise StoreError(f"{path} is an incomplete MLflow store (tables missing: "
                         f"{', '.join(sorted(MLFLOW_TABLES - tables))})",
                         "repair it with `mlflow db upgrade sqlite:///...`, or name another file")
    if write:
        if not os.access(path, os.W_OK) or _read_only_filesystem(path):
            raise StoreError(f"SQLite store {path} is read-only", "make it writable, or pass another --tracking-uri")
        _check_folder(path.parent)  # SQLite writes its -wal and -shm files beside the store
    return Store(f"sqlite:///{path}", "sqlite", path)


def _read_only_filesystem(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise StoreError(f"folder {folder} of the tracking store does not exist",
                         "create it, or pass another --tracking-uri")
    if not os.access(folder, os.W_OK | os.X_OK) or _read_only_filesystem(folder):
        raise StoreError(f"folder {folder} of the tracking store is read-only",
                         "make it writable, or pass another --tracking-uri")


def _sqlite_tables(path: Path, timeout: float) -> set[str]:
    """The tables of a SQLite file opened read-only, leaving every file as it was.

    A store in WAL mode that no process has open has no ``-wal`` file (its last connection wrote everything back
    into the store): it is read as immutable, which makes SQLite create no ``-wal`` and ``-shm`` beside it. With a
    ``-wal`` file there (a sweep writing now), SQLite reads the store through it, read-only."""
    if not os.access(path, os.R_OK):
        raise StoreError(f"cannot read the SQLite store {path}", "make it readable, or pass another --tracking-uri")
    mode = "mode=ro" if Path(f"{path}-wal").exists() else "immutable=1"
    try:
        con = sqlite3.connect(f"{path.as_uri()}?{mode}", uri=True, timeout=timeout)
        try:
            return {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc):
            raise StoreError(f"SQLite store {path} stayed locked for {timeout:g} s",
                             "stop the process holding it, or retry") from None
        raise StoreError(f"{path} is not a SQLite database ({exc})", "name another file with --tracking-uri") from None


def _status(request: urllib.request.Request | str, timeout: float, unreachable: StoreError) -> int:
    """The HTTP status a server answers ``request`` with; ``unreachable`` raised when it answers none."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise StoreError(f"{unreachable.what}: {reason}", unreachable.fix) from None


def _check_server(uri: str, timeout: float) -> None:
    status = _status(uri.rstrip("/") + "/health", timeout,
                     StoreError(f"tracking server {uri} is unreachable",
                                "start it, or check --tracking-uri / MLFLOW_TRACKING_URI"))
    if status != 200:
        raise StoreError(f"tracking server {uri} is not healthy: GET /health returned {status}",
                         "check the server, or --tracking-uri")
    _check_credentials(uri, timeout)


#: MLflow's environment variables for a server's credentials (HTTP basic auth, or a bearer token).
USERNAME, PASSWORD, TOKEN = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"


def _credentials() -> tuple[str | None, str]:
    """(the Authorization header MLflow's client sends, as its environment gives it; who it names)."""
    user, password, token = (os.environ.get(n) for n in (USERNAME, PASSWORD, TOKEN))
    if user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        return f"Basic {basic}", f"the user {user} ({USERNAME} and {PASSWORD})"
    if token:
        return f"Bearer {token}", f"the token of {TOKEN}"
    return None, "no credentials"


def _check_credentials(uri: str, timeout: float) -> None:
    """A server with authentication on (``mlflow server --app-name basic-auth``) lets the credentials of the
    environment read experiments: one search of MLflow's REST API, which writes nothing."""
    header, who = _credentials()
    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search",
                                     data=json.dumps({"max_results": 1}).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": header} if header else {})})
    status = _status(request, timeout, StoreError(f"tracking server {uri} did not answer a search of its experiments",
                                                  "check the server, or --tracking-uri"))
    if status == 200:
        return
    if status == 401:
        fix = (f"set {USERNAME} and {PASSWORD} to a user of that server" if header is None else
               f"check {USERNAME} and {PASSWORD} (or {TOKEN}): they name no user of that server with that password")
        raise StoreError(f"tracking server {uri} refused {who} (HTTP 401: it asks for a login)", fix)
    if status == 403:
        raise StoreError(f"tracking server {uri} does not let {who} read its experiments (HTTP 403)",
                         "ask its admin for access, or use another user")
    raise StoreError(f"tracking server {uri} failed a search of its experiments (HTTP {status})",
                     "check the server, or --tracking-uri")


def _check_database(uri: str, timeout: float) -> None:
    """The SQLAlchemy driver is installed, and the database's host accepts a connection within ``timeout``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(uri)
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise StoreError(f"tracking URI {uri} is not a database URL SQLAlchemy knows ({exc})", USE) from None
    try:
        dialect.import_dbapi()
    except ImportError:
        driver = url.get_driver_name()
        raise StoreError(f"the database driver {driver} of {url.render_as_string()} is not installed",
                         f"pip install {DRIVER_PACKAGES.get(driver, driver)}, or name an installed driver in the "
                         "URI, e.g. postgresql+psycopg2://") from None
    if not url.host:
        return  # a local socket: MLflow's first query tells
    port = url.port or DATABASE_PORTS[url.get_backend_name()]
    try:
        socket.create_connection((url.host, port), timeout=timeout).close()
    except OSError as exc:
        raise StoreError(f"cannot reach the database at {url.host}:{port}: {exc.strerror or exc}",
                         "start it, or check --tracking-uri") from None


#: The longest experiment name every MLflow tracking store keeps (its SQL column holds 256 characters).
MAX_EXPERIMENT_NAME = 256


def check_experiment_name(name: str) -> None:
    """An MLflow experiment name: not blank, at most 256 characters, one line of printable characters."""
    if not name.strip():
        raise StoreError("--experiment is empty", "name the experiment, e.g. --experiment batchnorm-weight-scale")
    if len(name) > MAX_EXPERIMENT_NAME:
        raise StoreError(f"--experiment is {len(name):,} characters long",
                         f"give a name of at most {MAX_EXPERIMENT_NAME} characters")
    if not name.isprintable():
        raise StoreError("--experiment holds a control character (a line break, tab or NUL)", "give it on one line")


def runs_view_url(server: str, experiment_id: str | None) -> str:
    """The address of an experiment's runs in MLflow's UI (the server's root when there is no experiment yet).

    ``?workflowType=machine_learning`` opens MLflow 3's "Model training" view (the runs table and their charts);
    without it MLflow 3.17 opens an experiment on its GenAI overview of traces, whatever the experiment's tags.
    """
    url = server.rstrip("/")
    return f"{url}/#/experiments/{experiment_id}?workflowType=machine_learning" if experiment_id else url


def mlflow_ui_command(uri: str, experiment_id: str | None) -> str:
    """What opens these runs: a server's runs address, else ``mlflow ui`` over the store and that address on it.

    A SQLite store is named by its absolute path, so the command works from any folder.
    """
    if uri.startswith(("http://", "https://")):
        return f"open {runs_view_url(uri, experiment_id)}"
    command = f"mlflow ui --backend-store-uri {shlex.quote(display_store(uri))} --host 127.0.0.1 --port 5000"
    return f"{command}, then open {runs_view_url('http://127.0.0.1:5000', experiment_id)}"


def display_store(uri: str) -> str:
    """The tracking store for a reader: a SQLite store by its absolute path, any other URI as it is."""
    path = sqlite_path(uri)
    return f"sqlite:///{path}" if path is not None else uri

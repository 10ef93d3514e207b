"""A PostgreSQL server for MLflow's backend store, from the binaries of the ``pgserver`` wheel.

Only pgserver's binaries are used (``initdb``, ``pg_ctl``, ``postgres``): its Python helper
listens on a Unix socket only and trusts every local user, while a tracking server wants TCP on
127.0.0.1 with a password. Here the cluster is made with SCRAM-SHA-256 password auth for every
connection, its one role ``mlflow`` gets a generated password, and the server listens on
127.0.0.1 only (no Unix socket). PostgreSQL refuses to run as root: under root the cluster is
owned by, and the server runs as, the unprivileged user ``nobody``.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.local_servers import detached as services

ROLE = "mlflow"
DATABASE = "mlflow"
#: MLflow's user store (accounts and permissions), apart from the tracking data.
AUTH_DATABASE = "mlflow_auth"
UNPRIVILEGED_USER = "nobody"


@dataclass(frozen=True)
class Postgres:
    data_dir: Path
    host: str
    port: int

    @property
    def log(self) -> Path:
        # Inside the cluster folder: the server's user (``nobody`` under root) can write there.
        return self.data_dir / "postgres.log"

    def uri(self, database: str = DATABASE) -> str:
        """SQLAlchemy URI without the password (libpq reads it from ``PGPASSWORD``)."""
        return f"postgresql://{ROLE}@{self.host}:{self.port}/{database}"


def binaries() -> Path:
    """The folder of the PostgreSQL binaries shipped in the ``pgserver`` wheel."""
    spec = importlib.util.find_spec("pgserver")  # not imported: its module code makes runtime folders
    if spec is None or spec.origin is None:
        raise PipelineError("team mode needs the pgserver wheel (PostgreSQL binaries): run `make venv`")
    folder = Path(spec.origin).parent / "pginstall" / "bin"
    if not (folder / "postgres").is_file():
        raise PipelineError(f"no PostgreSQL binaries in {folder}")
    return folder


def _run_as() -> dict:
    """subprocess arguments that drop root to ``nobody`` (PostgreSQL will not run as root)."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(UNPRIVILEGED_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _owner_uid() -> int:
    return pwd.getpwnam(UNPRIVILEGED_USER).pw_uid if os.geteuid() == 0 else os.geteuid()


def _blocked_parent(path: Path) -> Path | None:
    """The first parent of ``path`` that other users cannot traverse, if any."""
    return next((parent for parent in path.resolve().parents if not os.stat(parent).st_mode & 0o001), None)


def _check_reachable(folder: Path) -> None:
    """Under root, ``nobody`` must be able to traverse every parent of the data folder."""
    if os.geteuid() != 0:
        return
    blocked = _blocked_parent(folder)
    if blocked is not None:
        raise PipelineError(
            f"PostgreSQL runs as '{UNPRIVILEGED_USER}' (it refuses root) and cannot traverse {blocked}: "
            "chmod o+x it, or put the team folder elsewhere (TEAM_DIR)"
        )


def _tool(server: Postgres, name: str) -> str:
    """A PostgreSQL binary the server's user can run: under root, when the environment's folder
    is private (a virtual environment under /root), a copy of the wheel's installation (34 MB,
    relocatable) next to the data folder."""
    folder = binaries()
    if os.geteuid() == 0 and _blocked_parent(folder / name) is not None:
        # The binaries find their libraries at $ORIGIN/../../../pgserver.libs: copy both.
        site = folder.parents[2]
        copy = server.data_dir.parent / "pgserver-binaries"
        if not (copy / "pgserver" / "pginstall" / "bin" / name).is_file():
            shutil.copytree(site / "pgserver" / "pginstall", copy / "pgserver" / "pginstall", dirs_exist_ok=True)
            if (site / "pgserver.libs").is_dir():
                shutil.copytree(site / "pgserver.libs", copy / "pgserver.libs", dirs_exist_ok=True)
        folder = copy / "pgserver" / "pginstall" / "bin"
    return str(folder / name)


def _pg(server: Postgres, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "LC_ALL": "C"}
    return subprocess.run(
        [_tool(server, tool), *args], capture_output=True, text=True, env=env, timeout=timeout, **_run_as()
    )


def _fail(what: str, result: subprocess.CompletedProcess) -> PipelineError:
    return PipelineError(
        f"PostgreSQL: {what} failed: {services.cause(result.stderr + result.stdout, f'status {result.returncode}')}"
    )


def initialised(server: Postgres) -> bool:
    return (server.data_dir / "PG_VERSION").is_file()


def init(server: Postgres, password: str) -> None:
    """Make the cluster: role ``mlflow`` (superuser of this private cluster) with ``password``,
    password auth (SCRAM-SHA-256) for every connection."""
    server.data_dir.parent.mkdir(parents=True, exist_ok=True)
    _check_reachable(server.data_dir)
    server.data_dir.mkdir(mode=0o700)
    os.chown(server.data_dir, _owner_uid(), -1)
    # initdb reads the password from a file: one only its user can read, removed at once.
    handle, pwfile = tempfile.mkstemp(prefix="pw", dir=server.data_dir.parent)
    try:
        os.write(handle, password.encode())
        os.close(handle)
        os.chown(pwfile, _owner_uid(), -1)
        result = _pg(
            server,
            "initdb",
            "-D",
            str(server.data_dir),
            "-U",
            ROLE,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-instructions",
        )
    finally:
        os.unlink(pwfile)
    if result.returncode != 0:
        raise _fail("initdb", result)


def running(server: Postgres) -> bool:
    return _pg(server, "pg_ctl", "status", "-D", str(server.data_dir)).returncode == 0


def start(server: Postgres) -> None:
    """Start the server (TCP on ``host:port`` only, no Unix socket) and wait until it accepts."""
    if running(server):
        return
    result = _pg(
        server,
        "pg_ctl",
        "start",
        "-w",
        "-t",
        "60",
        "-D",
        str(server.data_dir),
        "-l",
        str(server.log),
        "-o",
        f"-h {server.host} -p {server.port} -k ''",
    )
    if result.returncode != 0:
        log = server.log.read_text(errors="replace") if server.log.is_file() else ""
        raise PipelineError(
            f"PostgreSQL did not start on {server.host}:{server.port}: {services.cause(log, services.cause(result.stderr))}"
        )


def stop(server: Postgres) -> bool:
    """Stop the server (fast shutdown); return whether it was running."""
    if not initialised(server) or not running(server):
        return False
    result = _pg(server, "pg_ctl", "stop", "-w", "-m", "fast", "-D", str(server.data_dir))
    if result.returncode != 0:
        raise _fail("pg_ctl stop", result)
    return True


def ensure_database(server: Postgres, password: str, name: str = DATABASE) -> None:
    """Create the database ``name`` (default ``mlflow``) unless it exists (checks the password on the way)."""
    import psycopg

    try:
        connection = psycopg.connect(
            host=server.host,
            port=server.port,
            user=ROLE,
            password=password,
            dbname="postgres",
            connect_timeout=10,
            autocommit=True,
        )
    except psycopg.OperationalError as error:
        raise PipelineError(f"PostgreSQL at {server.host}:{server.port}: {first_line(error)}") from None
    with connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            connection.execute(f'CREATE DATABASE "{name}"')


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(error).__name__

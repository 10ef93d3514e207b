"""Team mode's settings: where the local servers live, and the two env files.

``<team dir>/client.env`` is what a team member needs (the tracking URI, the DVC remote and its
endpoint, S3 keys for DVC); ``<team dir>/server.env`` only what the servers need (the database
password, the MLflow server's S3 keys). Both are written with mode 0600 in a git-ignored folder
and read as environment variables: secrets are generated, never written in the repository.
A lab with its own servers writes a ``client.env`` from ``team.env.example`` and points
``TEAM_ENV`` at it.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError

#: Keys a client env file must set (it may set any other environment variable too, e.g.
#: ``TEAM_S3_ENDPOINT_URL`` for MinIO, ``AWS_DEFAULT_REGION``, ``MLFLOW_TRACKING_TOKEN``).
REQUIRED_CLIENT_KEYS = ("MLFLOW_TRACKING_URI", "TEAM_DVC_REMOTE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
#: The DVC remote's name in ``.dvc/config.local``.
REMOTE_NAME = "team"


@dataclass(frozen=True)
class TeamConfig:
    """Where the local team servers listen and keep their state (all on 127.0.0.1)."""

    folder: Path = Path(".team")
    host: str = "127.0.0.1"
    mlflow_port: int = 5010
    s3_port: int = 9010
    postgres_port: int = 5433
    dvc_bucket: str = "ham10000-dvc"
    artifacts_bucket: str = "ham10000-mlflow"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def client_env(self) -> Path:
        return self.folder / "client.env"

    @property
    def server_env(self) -> Path:
        return self.folder / "server.env"


def new_password() -> str:
    return secrets.token_urlsafe(24)


def read_env(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, optional quotes, optional ``export``)."""
    if not path.is_file():
        raise PipelineError(
            f"no team settings at {path}: `make team-up` starts local team servers and writes it; "
            "for your own servers copy team.env.example there (or set TEAM_ENV)"
        )
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip().isidentifier():
            raise PipelineError(f"{path}, line {number}: expected KEY=VALUE")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def write_env(path: Path, values: dict[str, str], header: str) -> None:
    """Write an env file readable by its owner only (atomically: a reader never sees half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(handle, "w") as out:
        out.write("".join(f"# {line}\n" for line in header.splitlines()))
        out.write("".join(f"{key}={value}\n" for key, value in values.items()))
    os.chmod(partial, 0o600)
    os.replace(partial, path)


def client_values(path: Path) -> dict[str, str]:
    """A client env file, checked for the keys team mode needs."""
    values = read_env(path)
    missing = [key for key in REQUIRED_CLIENT_KEYS if not values.get(key)]
    if missing:
        raise PipelineError(f"{path} lacks {', '.join(missing)} (see team.env.example)")
    if not values["TEAM_DVC_REMOTE_URL"].startswith("s3://"):
        raise PipelineError(f"{path}: TEAM_DVC_REMOTE_URL must be an s3:// URL, not {values['TEAM_DVC_REMOTE_URL']!r}")
    return values


def bucket_of(url: str) -> str:
    """``s3://bucket/prefix`` -> ``bucket``."""
    return url.removeprefix("s3://").split("/", 1)[0]

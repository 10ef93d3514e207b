"""Team members' MLflow accounts: one user per person (or machine), with READ or EDIT permission.

The team's MLflow server runs MLflow's own accounts app (``--app-name basic-auth``), its user
store in a PostgreSQL database of its own. Every account may read everything (the store's
``default_permission``); ``edit`` accounts also get EDIT on the project's experiment and on its
registered models, which :func:`add` makes (as the admin) when they do not exist yet, so that
every member's runs land in the one experiment and every member may register model versions
and move their aliases. Nobody but the admin and an experiment's creator holds MANAGE, the
permission that deletes runs and changes permissions.

    python -m pipeline.team user add alice --role edit    # make team-user NAME=alice ROLE=edit

writes ``<team dir>/users/alice.env`` (0600): the client settings plus the account's
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, which MLflow's client (and so every
stage) sends with each request, and the DVC key of the role: read-write for ``edit``, read-only
(the ``dvc-read`` identity: fetch and list) for ``read``. When the servers speak TLS the team's CA certificate is copied
beside it (``users/team-ca.pem``) and the env file names it by that relative path: the member
gets both files and keeps them in one folder.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest.mock import patch

from pipeline.errors import PipelineError
from pipeline.io import read_yaml
from pipeline.team import guard
from pipeline.team.settings import CA_KEYS, DVC_READER, TeamConfig, new_password, read_env, s3_key_names, write_env

#: ``make team-user ROLE=...`` -> MLflow's permission on the project's experiment and models.
ROLES = {"read": "READ", "edit": "EDIT"}
#: ``make team-user ROLE=...`` -> the S3 identity whose DVC key the env file holds: a READ member
#: may only fetch and list the remote, an EDIT member pushes too.
S3_IDENTITIES = {"read": DVC_READER, "edit": "dvc"}
ADMIN = "admin"
USER_ENV_HEADER = (
    "One team member's settings (MLflow account, DVC remote and keys), written by `make team-user`.\n"
    "Holds a password and S3 keys: give it to that member only, never commit it."
)
#: The team's CA certificate beside the members' env files (no secret in it).
TEAM_CA = "team-ca.pem"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def project_resources(params_file: Path) -> tuple[str, list[str]]:
    """The experiment and the registered model names the pipeline writes to (from ``params.yaml``)."""
    params = read_yaml(params_file, "the pipeline's params")
    models = sorted(
        {
            section["registered_model_name"]
            for section in params.values()
            if isinstance(section, dict) and section.get("registered_model_name")
        }
    )
    return params["base"]["experiment_name"], models


@contextmanager
def as_admin(config: TeamConfig) -> Iterator[None]:
    """MLflow's clients authenticated as the admin (credentials from the server env file),
    trusting the team's CA when the servers speak TLS."""
    password = read_env(config.server_env).get("MLFLOW_AUTH_ADMIN_PASSWORD")
    if not password:
        raise PipelineError(
            f"{config.server_env} has no MLFLOW_AUTH_ADMIN_PASSWORD: start the servers with `make team-up`"
        )
    guard.refuse_foreign_listener(config.host, config.mlflow_port, config.secure, "the admin password")
    admin = {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": password}
    if config.trusted_ca:
        admin["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(config.trusted_ca)
    with patch.dict(os.environ, admin):
        yield


def _ensure_resources(tracking: Any, experiment: str, models: list[str]) -> str:
    """The experiment's id, and every registered model, made if missing (as the admin)."""
    from mlflow.exceptions import MlflowException

    found = tracking.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else tracking.create_experiment(experiment)
    for name in models:
        try:
            tracking.get_registered_model(name)
        except MlflowException:
            tracking.create_registered_model(name)
    return experiment_id


def member_values(config: TeamConfig, role: str) -> dict[str, str]:
    """A member's settings but the account: ``client.env`` with the DVC key of ``role``'s S3
    identity (:data:`S3_IDENTITIES`, from the server env file)."""
    key_id, secret = s3_key_names(S3_IDENTITIES[role])
    secrets = read_env(config.server_env)
    if not secrets.get(key_id) or not secrets.get(secret):
        raise PipelineError(f"{config.server_env} has no {key_id}: `make team-up` makes it")
    key = {"AWS_ACCESS_KEY_ID": secrets[key_id], "AWS_SECRET_ACCESS_KEY": secrets[secret]}
    return {**read_env(config.client_env), **key}


def write_member_env(config: TeamConfig, name: str, values: dict[str, str], password: str) -> Path:
    """``users/<name>.env`` (0600): ``values`` and the account; the team's CA copied beside it
    when the servers speak TLS. Returns its path."""
    path = config.folder / "users" / f"{name}.env"
    trust = {}
    if config.trusted_ca:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(config.trusted_ca, path.parent / TEAM_CA)
        trust = {key: TEAM_CA for key in CA_KEYS}
    write_env(
        path,
        {**values, **trust, "MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": password},
        USER_ENV_HEADER,
    )
    return path


def add(config: TeamConfig, name: str, role: str, params_file: Path = Path("params.yaml")) -> Path:
    """Make the account ``name`` with ``role`` and write its env file; return the file's path."""
    import warnings

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with warnings.catch_warnings():  # its import of MLflow's server app warns about Starlette's WSGI shim
        warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")
        from mlflow.server.auth.client import AuthServiceClient

    if not _NAME.fullmatch(name) or name == ADMIN:
        raise PipelineError(f"user name {name!r}: use letters, digits, '.', '_' or '-' (up to 64), not '{ADMIN}'")
    if role not in ROLES:
        raise PipelineError(f"role {role!r}: one of {', '.join(ROLES)}")
    settings = member_values(config, role)  # before the account is made: a missing key is one line
    experiment, models = project_resources(params_file)
    password = new_password()
    with as_admin(config):
        auth = AuthServiceClient(config.tracking_uri)
        try:
            auth.create_user(name, password)
        except MlflowException as error:
            if error.error_code == "RESOURCE_ALREADY_EXISTS":
                raise PipelineError(
                    f"MLflow at {config.tracking_uri} has a user '{name}' already (choose another name)"
                ) from None
            raise PipelineError(
                f"MLflow at {config.tracking_uri}: cannot create user '{name}' ({error.error_code})"
            ) from None
        experiment_id = _ensure_resources(MlflowClient(config.tracking_uri), experiment, models)
        permission = ROLES[role]
        auth.grant_user_permission(name, "experiment", experiment_id, permission)
        for model in models:
            auth.grant_user_permission(name, "registered_model", model, permission)
    path = write_member_env(config, name, settings, password)
    trust = config.trusted_ca is not None
    handout = f" and {path.parent / TEAM_CA} (keep them in one folder)" if trust else ""
    s3_rights = "read-only" if S3_IDENTITIES[role] == DVC_READER else "read-write"
    print(
        f"user '{name}' ({permission} on experiment '{experiment}' and models {', '.join(models)}, "
        f"{s3_rights} DVC key): settings in {path}{handout}"
    )
    return path

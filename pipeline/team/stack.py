"""Start, check and stop the local team servers: PostgreSQL (MLflow's backend store), an S3
server (the DVC remote and MLflow's artifact store) and an MLflow server on both, with its
artifacts proxied so that clients need no bucket credentials. Everything on 127.0.0.1.

``up`` is idempotent: servers that answer are reused, the database schema is migrated
(``mlflow db upgrade``) before the tracking server starts.

MLflow and S3 listen on the configured host: 127.0.0.1 by default, or an address other machines
reach (``make team-up TEAM_HOST=...``), which is served over TLS only (a certificate made for it
by :mod:`pipeline.team.certificates`, or the lab's own). PostgreSQL stays on 127.0.0.1.
"""

from __future__ import annotations

from pipeline.errors import PipelineError
from pipeline.io import write_private
from pipeline.local_servers import detached as services
from pipeline.local_servers import mlflow_server as server
from pipeline.team import certificates, guard, postgres, s3
from pipeline.team.settings import CA_KEYS, DVC_READER, TeamConfig, new_password, read_env, s3_key_names, write_env

SERVER_ENV_HEADER = "Secrets of the local team servers, written by `make team-up`. Never commit or share this file."
#: SeaweedFS' S3 identities (each role's key and bucket), written from the server env file.
S3_IDENTITIES = "s3-identities.json"
CLIENT_ENV_HEADER = (
    "Team mode settings for this project's commands (make run/push/pull TEAM=1), written by `make team-up`.\n"
    "Holds S3 keys: share it like a password, never commit it."
)


def database(config: TeamConfig) -> postgres.Postgres:
    return postgres.Postgres(config.folder.resolve() / "postgres", "127.0.0.1", config.postgres_port)


#: The accounts app's settings (user store, default permission), written at team-up.
AUTH_CONFIG = "basic_auth.ini"
ADMIN = "admin"


def _server_secrets(config: TeamConfig) -> dict[str, str]:
    """The servers' secrets: kept in the server env file, each made once when it is missing."""
    secrets = read_env(config.server_env) if config.server_env.is_file() else {}
    secrets.setdefault("TEAM_PG_PASSWORD", new_password())
    secrets.setdefault("MLFLOW_AUTH_ADMIN_PASSWORD", new_password())  # MLflow wants 12+ characters
    secrets.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", new_password())
    for key in s3.JWT_KEYS:  # SeaweedFS' internal ports take only requests signed with these
        secrets.setdefault(key, new_password())
    return secrets


def tls_files(config: TeamConfig) -> certificates.TLSFiles | None:
    """The servers' certificate and key (made for the host when the lab gave none), or None for
    plain HTTP, which only loopback may serve: anything else is refused in one line."""
    import ipaddress

    try:
        unspecified = ipaddress.ip_address(config.host).is_unspecified
    except ValueError:
        unspecified = False  # a host name
    if unspecified:
        raise PipelineError(
            f"TEAM_HOST={config.host} binds every interface: give the one address clients use "
            "(its certificate names it)"
        )
    if not config.secure:
        if not certificates.is_loopback(config.host):
            raise PipelineError(
                f"plain HTTP on {config.host}, which other machines reach, would carry passwords and S3 keys "
                "in the clear: leave TLS on (team-up makes a certificate) or give the lab's with --cert/--key"
            )
        return None
    if config.cert or config.key:
        if not (config.cert and config.key):
            raise PipelineError("a lab's own certificate needs both --cert and --key")
        return certificates.given(config.cert, config.key, config.ca)
    guard.private_folder(config.folder)  # before the key is written in it
    return certificates.ensure(config.folder / "tls", config.host)


def up(config: TeamConfig) -> None:
    """Start (or reuse) the three servers and write the env files."""
    tls = tls_files(config)  # refuses a bad address before anything is written
    guard.private_folder(config.folder)  # before anything is written in it
    secrets = _server_secrets(config)
    db = database(config)
    fresh_database = _start_postgres(config, db, secrets)
    mlflow_keys = _start_s3(config, secrets, fresh_database, tls)
    _start_mlflow(config, db, secrets, mlflow_keys, tls)
    print(f"Team settings for clients: {config.client_env} (TEAM_ENV); try `make run TEAM=1`")
    if tls:
        trust = f"they trust {config.trusted_ca}" if config.trusted_ca else "the system's CA store vouches for it"
        print(f"TLS: {tls.cert} for {config.host}; {trust}")


def _start_postgres(config: TeamConfig, db: postgres.Postgres, secrets: dict[str, str]) -> bool:
    """Make the cluster if there is none (return True then), start it, make the database."""
    fresh = not postgres.initialised(db)
    if fresh:
        postgres.init(db, secrets["TEAM_PG_PASSWORD"])
        write_env(config.server_env, secrets, SERVER_ENV_HEADER)
    postgres.start(db)
    postgres.ensure_database(db, secrets["TEAM_PG_PASSWORD"])
    postgres.ensure_database(db, secrets["TEAM_PG_PASSWORD"], postgres.AUTH_DATABASE)
    write_env(config.server_env, secrets, SERVER_ENV_HEADER)
    print(f"PostgreSQL on 127.0.0.1:{config.postgres_port} (data {db.data_dir})")
    return fresh


def _client_trust(config: TeamConfig) -> dict[str, str]:
    """The client env file's CA settings: relative to the team folder (where the file is) when
    team-up made the CA, as the lab gave it otherwise."""
    ca = config.trusted_ca
    if ca is None:
        return {}
    try:
        value = str(ca.relative_to(config.folder.resolve()))
    except ValueError:
        value = str(ca)
    return {key: value for key in CA_KEYS}


def _start_s3(
    config: TeamConfig, secrets: dict[str, str], fresh_database: bool, tls: certificates.TLSFiles | None
) -> s3.Credentials:
    """Start SeaweedFS (or reuse it) with one key per role, each allowed only its bucket, and a
    read-only key of the DVC bucket (READ members'); make the buckets that are missing; write the
    client env file (the read-write DVC key: it pushes). Each key is made once, when missing, and
    kept in the server env file, the objects on disk: a restart keeps both. A running gateway
    reads its identities at start only: it is restarted when the file changes. Returns the MLflow
    server's keys."""
    buckets = {"dvc": config.dvc_bucket, "mlflow": config.artifacts_bucket}
    readers = {DVC_READER: config.dvc_bucket}
    missing = [role for role in (*buckets, *readers) if not all(secrets.get(name) for name in s3_key_names(role))]
    for role in missing:  # an earlier version's server.env lacks the read key: only it is made
        made = s3.new_credentials(role)
        secrets.update(dict(zip(s3_key_names(role), (made.key_id, made.secret), strict=True)))
    if missing:
        write_env(config.server_env, secrets, SERVER_ENV_HEADER)
    keys = {role: s3.Credentials(*(secrets[name] for name in s3_key_names(role))) for role in (*buckets, *readers)}
    identities = config.folder / S3_IDENTITIES
    before = identities.read_bytes() if identities.is_file() else None
    s3.write_identities(identities, keys, buckets, readers)
    if before not in (None, identities.read_bytes()) and services.stop(s3.SERVICE, config.folder):
        print("S3 gateway stopped to take the new identities file (it reads it at start only)")
    ca = config.trusted_ca
    started = s3.start(
        config.host,
        config.s3_port,
        config.folder,
        identities,
        (tls.cert, tls.key) if tls else None,
        ca,
        certificates.internal(config.folder / "tls") if tls else None,
        jwt={key: secrets[key] for key in s3.JWT_KEYS},
    )
    if not started:  # something answers there already: it must take our keys (one line if not)
        s3.check(config.s3_endpoint, config.dvc_bucket, keys["dvc"], ca)
    made = s3.ensure_buckets(config.s3_endpoint, buckets, keys, ca)
    write_env(
        config.client_env,
        {
            "MLFLOW_TRACKING_URI": config.tracking_uri,
            "TEAM_DVC_REMOTE_URL": f"s3://{config.dvc_bucket}/cache",
            "TEAM_S3_ENDPOINT_URL": config.s3_endpoint,
            "AWS_ACCESS_KEY_ID": keys["dvc"].key_id,
            "AWS_SECRET_ACCESS_KEY": keys["dvc"].secret,
            "AWS_DEFAULT_REGION": s3.REGION,
            # Artifacts through the server only, also for tools other than the pipeline's stages
            # (which default to it, see pipeline.tracking.mlflow_runs): no presigned URLs to the bucket.
            "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false",
            "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
            **_client_trust(config),
        },
        CLIENT_ENV_HEADER,
    )
    state = "started" if started else "already running: reusing it"
    new = f"; new buckets {', '.join(made)}" if made else ""
    print(
        f"S3 (SeaweedFS) on {config.s3_endpoint}, {state}: objects in {config.folder / 's3'}{new}; keys in {config.client_env}"
    )
    s3.check(config.s3_endpoint, config.artifacts_bucket, keys["mlflow"], ca)
    try:
        s3.check(config.s3_endpoint, config.dvc_bucket, keys[DVC_READER], ca)
    except PipelineError as error:
        raise PipelineError(
            f"{error} (the S3 gateway there does not take {identities}: `make team-down team-up` restarts it)"
        ) from None
    return keys["mlflow"]


def _write_auth_config(config: TeamConfig, db: postgres.Postgres) -> None:
    """MLflow's accounts app: its user store in its own database (the password from
    ``PGPASSWORD``), new users may read everything and write nothing until granted."""
    write_private(
        config.folder / AUTH_CONFIG,
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {db.uri(postgres.AUTH_DATABASE)}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Checking a password is a PBKDF2 hash, per request: a training run's ~100 requests
        # took 31.6 s instead of 1.4 (make bench). Cached for a minute per user and password;
        # the server has one worker, so a password change through the API applies at once.
        "auth_cache_ttl_seconds = 60\n",
    )


def _start_mlflow(
    config: TeamConfig,
    db: postgres.Postgres,
    secrets: dict[str, str],
    keys: s3.Credentials,
    tls: certificates.TLSFiles | None,
) -> None:
    """Migrate the schema, then start (or reuse) the tracking server with accounts; the secrets
    reach it through its environment only."""
    _write_auth_config(config, db)
    environment = {
        "PGPASSWORD": secrets["TEAM_PG_PASSWORD"],
        "AWS_ACCESS_KEY_ID": keys.key_id,
        "AWS_SECRET_ACCESS_KEY": keys.secret,
        "AWS_DEFAULT_REGION": s3.REGION,
        "MLFLOW_S3_ENDPOINT_URL": config.s3_endpoint,
        "MLFLOW_AUTH_CONFIG_PATH": str((config.folder / AUTH_CONFIG).resolve()),
        "MLFLOW_AUTH_ADMIN_PASSWORD": secrets["MLFLOW_AUTH_ADMIN_PASSWORD"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets["MLFLOW_FLASK_SERVER_SECRET_KEY"],
        # The S3 gateway's certificate, for the server's own artifact uploads.
        **({"AWS_CA_BUNDLE": str(config.trusted_ca)} if config.trusted_ca else {}),
    }
    server.upgrade_schema(db.uri(), environment)
    server.start(
        config.host,
        config.mlflow_port,
        config.folder.resolve(),
        backend=db.uri(),
        artifacts=f"s3://{config.artifacts_bucket}/artifacts",
        env=environment,
        app_name="basic-auth",
        tls=(tls.cert, tls.key) if tls else None,
        ca=config.trusted_ca,
    )
    guard.refuse_foreign_listener(config.host, config.mlflow_port, config.secure, "the admin password")
    problem = server.backend_problem(
        config.tracking_uri,
        headers=server.basic_auth(ADMIN, secrets["MLFLOW_AUTH_ADMIN_PASSWORD"]),
        ca=config.trusted_ca,
    )
    if problem == server.NEEDS_ACCOUNT:
        raise PipelineError(
            f"MLflow server at {config.tracking_uri} refused the admin password of {config.server_env} "
            "(a server of another team folder on this port?)"
        )
    if problem:
        raise PipelineError(f"MLflow server at {config.tracking_uri} cannot use PostgreSQL: {problem}")
    print(
        f"MLflow on {config.tracking_uri}: backend {db.uri()}, artifacts s3://{config.artifacts_bucket}/artifacts (proxied), "
        f"accounts in {db.uri(postgres.AUTH_DATABASE)} (admin: `{ADMIN}`, password in {config.server_env})"
    )


def down(config: TeamConfig) -> None:
    """Stop the MLflow server, the S3 server and PostgreSQL (the database and the objects stay on disk)."""
    print(
        "MLflow server " + ("stopped" if services.stop(server.SERVICE, config.folder.resolve()) else "was not running")
    )
    print(
        "S3 server "
        + (f"stopped (its objects stay in {config.folder / 's3'})" if s3.stop(config.folder) else "was not running")
    )
    print("PostgreSQL " + ("stopped" if postgres.stop(database(config)) else "was not running"))


def status(config: TeamConfig) -> bool:
    """Print whether each server answers; return whether all do."""
    db = database(config)
    states = {
        f"PostgreSQL 127.0.0.1:{config.postgres_port}": postgres.initialised(db) and postgres.running(db),
        f"S3 {config.s3_endpoint}": s3.up(config.s3_endpoint, config.trusted_ca),
        f"MLflow {config.tracking_uri}": server.is_up(config.tracking_uri, ca=config.trusted_ca),
    }
    for name, ok in states.items():
        print(f"{name}: {'up' if ok else 'down'}")
    return all(states.values())

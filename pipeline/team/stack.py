"""Start, check and stop the local team servers: PostgreSQL (MLflow's backend store), an S3
server (the DVC remote and MLflow's artifact store) and an MLflow server on both, with its
artifacts proxied so that clients need no bucket credentials. Everything on 127.0.0.1.

``up`` is idempotent: servers that answer are reused, the database schema is migrated
(``mlflow db upgrade``) before the tracking server starts.
"""

from __future__ import annotations

from pipeline.services import mlflow_server as server
from pipeline.services import detached as services
from pipeline.errors import PipelineError
from pipeline.team import postgres, s3
from pipeline.team.settings import TeamConfig, new_password, read_env, write_env

SERVER_ENV_HEADER = "Secrets of the local team servers, written by `make team-up`. Never commit or share this file."
CLIENT_ENV_HEADER = (
    "Team mode settings for this project's commands (make run/push/pull TEAM=1), written by `make team-up`.\n"
    "Holds S3 keys: share it like a password, never commit it."
)


def database(config: TeamConfig) -> postgres.Postgres:
    return postgres.Postgres(config.folder.resolve() / "postgres", config.host, config.postgres_port)


def _server_secrets(config: TeamConfig) -> dict[str, str]:
    if config.server_env.is_file():
        return read_env(config.server_env)
    return {"TEAM_PG_PASSWORD": new_password()}


def up(config: TeamConfig) -> None:
    """Start (or reuse) the three servers and write the env files."""
    config.folder.mkdir(parents=True, exist_ok=True)
    secrets = _server_secrets(config)
    db = database(config)
    fresh_database = _start_postgres(config, db, secrets)
    mlflow_keys = _start_s3(config, secrets, fresh_database)
    _start_mlflow(config, db, secrets["TEAM_PG_PASSWORD"], mlflow_keys)
    print(f"Team settings for clients: {config.client_env} (TEAM_ENV); try `make run TEAM=1`")


def _start_postgres(config: TeamConfig, db: postgres.Postgres, secrets: dict[str, str]) -> bool:
    """Make the cluster if there is none (return True then), start it, make the database."""
    fresh = not postgres.initialised(db)
    if fresh:
        postgres.init(db, secrets["TEAM_PG_PASSWORD"])
        write_env(config.server_env, secrets, SERVER_ENV_HEADER)
    postgres.start(db)
    postgres.ensure_database(db, secrets["TEAM_PG_PASSWORD"])
    print(f"PostgreSQL on {config.host}:{config.postgres_port} (data {db.data_dir})")
    return fresh


def _start_s3(config: TeamConfig, secrets: dict[str, str], fresh_database: bool) -> s3.Credentials:
    """Start S3 (new users, keys and buckets, written to the env files) or reuse it; return
    the MLflow server's keys, checked against its bucket."""
    if s3.start(config.host, config.s3_port, config.folder, roles=2):
        keys = s3.bootstrap(config.s3_endpoint, {"dvc": config.dvc_bucket, "mlflow": config.artifacts_bucket})
        secrets.update({"TEAM_MLFLOW_S3_KEY_ID": keys["mlflow"].key_id, "TEAM_MLFLOW_S3_SECRET": keys["mlflow"].secret})
        write_env(config.server_env, secrets, SERVER_ENV_HEADER)
        write_env(config.client_env, {
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
        }, CLIENT_ENV_HEADER)
        print(f"S3 (moto) on {config.s3_endpoint}: buckets {config.dvc_bucket}, {config.artifacts_bucket}; new keys in {config.client_env}")
        if not fresh_database:
            print("note: the local S3 server starts empty (moto keeps objects in memory): artifacts of runs logged "
                  "before it stopped are gone; `make push TEAM=1` refills the DVC remote")
    elif "TEAM_MLFLOW_S3_KEY_ID" not in secrets:
        raise PipelineError(f"an S3 server already answers at {config.s3_endpoint} but {config.folder} has no keys for it: "
                            "stop it or choose another TEAM_S3_PORT")
    else:
        print(f"S3 (moto) already running at {config.s3_endpoint}: reusing it")
    keys = s3.Credentials(secrets["TEAM_MLFLOW_S3_KEY_ID"], secrets["TEAM_MLFLOW_S3_SECRET"])
    s3.check(config.s3_endpoint, config.artifacts_bucket, keys)
    return keys


def _start_mlflow(config: TeamConfig, db: postgres.Postgres, password: str, keys: s3.Credentials) -> None:
    """Migrate the schema, then start (or reuse) the tracking server; the secrets reach both
    through their environment only."""
    environment = {
        "PGPASSWORD": password,
        "AWS_ACCESS_KEY_ID": keys.key_id,
        "AWS_SECRET_ACCESS_KEY": keys.secret,
        "AWS_DEFAULT_REGION": s3.REGION,
        "MLFLOW_S3_ENDPOINT_URL": config.s3_endpoint,
    }
    server.upgrade_schema(db.uri(), environment)
    server.start(config.host, config.mlflow_port, config.folder.resolve(), backend=db.uri(),
                 artifacts=f"s3://{config.artifacts_bucket}/artifacts", env=environment)
    problem = server.backend_problem(config.tracking_uri)
    if problem:
        raise PipelineError(f"MLflow server at {config.tracking_uri} cannot use PostgreSQL: {problem}")
    print(f"MLflow on {config.tracking_uri}: backend {db.uri()}, artifacts s3://{config.artifacts_bucket}/artifacts (proxied)")


def down(config: TeamConfig) -> None:
    """Stop the MLflow server, the S3 server and PostgreSQL (the database stays on disk)."""
    print("MLflow server " + ("stopped" if services.stop(server.SERVICE, config.folder.resolve()) else "was not running"))
    print("S3 server " + ("stopped (its objects are gone: moto keeps them in memory)" if s3.stop(config.folder) else "was not running"))
    print("PostgreSQL " + ("stopped" if postgres.stop(database(config)) else "was not running"))


def status(config: TeamConfig) -> bool:
    """Print whether each server answers; return whether all do."""
    db = database(config)
    states = {
        f"PostgreSQL {config.host}:{config.postgres_port}": postgres.initialised(db) and postgres.running(db),
        f"S3 {config.s3_endpoint}": s3.up(config.s3_endpoint),
        f"MLflow {config.tracking_uri}": server.is_up(config.tracking_uri),
    }
    for name, ok in states.items():
        print(f"{name}: {'up' if ok else 'down'}")
    return all(states.values())

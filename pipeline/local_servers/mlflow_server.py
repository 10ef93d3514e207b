"""Start, reuse, check and stop the project's MLflow tracking server.

The server binds to 127.0.0.1 by default, keeps its sqlite backend store and its artifacts
under one git-ignored folder of the repository, and runs detached with its PID and log in
that folder. ``start`` reuses a server that already answers on the port, so a second
``make run`` never starts a duplicate.

    python -m pipeline.local_servers.mlflow_server start --host 127.0.0.1 --port 5000 --store mlflow
    python -m pipeline.local_servers.mlflow_server stop --store mlflow
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.errors import PipelineError, redact, run_cli
from pipeline.local_servers import detached as services

#: Name of the PID and log files (``server.pid``, ``server.log``) in the store folder.
SERVICE = "server"


def is_up(url: str, timeout_s: float = 2.0, ca: str | Path | None = None) -> bool:
    """Whether an MLflow server answers ``/health`` at ``url`` (``https://``: with a certificate
    that ``ca`` or the system store vouches for)."""
    return services.answers(url.rstrip("/") + "/health", timeout_s, ca)


def _trust(env: Mapping[str, str]) -> tuple[str | None, bool]:
    """The CA file and the no-verification switch MLflow's client reads from ``env``."""
    return env.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None, env.get(
        "MLFLOW_TRACKING_INSECURE_TLS", ""
    ).lower() == "true"


def basic_auth(username: str | None = None, password: str | None = None) -> dict[str, str]:
    """The HTTP Basic ``Authorization`` header of these credentials (default: MLflow's own
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``), or none."""
    import base64

    username = username if username is not None else os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = password if password is not None else os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if not username:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


#: What :func:`backend_problem` says of a server that wants credentials it did not get.
NEEDS_ACCOUNT = "HTTP 401"


def backend_problem(
    url: str,
    timeout_s: float = 15.0,
    headers: Mapping[str, str] | None = None,
    ca: str | Path | None = None,
    insecure: bool = False,
) -> str | None:
    """Why the server at ``url`` cannot read its backend store, or None when it can.

    ``/health`` answers without touching the store, so a server whose database is down looks
    healthy: one cheap search (no client retries) shows it in seconds. The search carries the
    caller's MLflow credentials (``headers``, default from the environment), so a server with
    accounts answers it too, or refuses them (HTTP 401). ``ca``/``insecure``: as MLflow's
    ``MLFLOW_TRACKING_SERVER_CERT_PATH`` / ``MLFLOW_TRACKING_INSECURE_TLS``.
    """
    request = urllib.request.Request(
        url.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1",
        headers=dict(headers if headers is not None else basic_auth()),
    )
    try:
        context = services.tls_context(ca, insecure) if url.startswith("https://") else None
        with urllib.request.urlopen(request, timeout=timeout_s, context=context):
            return None
    except urllib.error.HTTPError as error:
        if error.code == 401:
            return NEEDS_ACCOUNT
        try:
            message = json.loads(error.read() or b"{}").get("message", "")
        except ValueError:
            message = ""
        first = " ".join(message.strip().splitlines()[0].split()) if message.strip() else error.reason
        return redact(f"HTTP {error.code}: {first}")[:400]
    except (urllib.error.URLError, OSError) as error:
        return f"no answer ({error})"


#: What :func:`unavailable` says of a server that does not answer at all.
NOT_REACHABLE = "is not reachable"


def unavailable(url: str, timeout_s: float = 5.0, env: Mapping[str, str] | None = None) -> str | None:
    """Why the MLflow server at ``url`` cannot take a run (:data:`NOT_REACHABLE`, an account it
    wants or refuses, a TLS certificate not trusted, or that its backend store fails), or None
    when it can. The credentials are MLflow's ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` of
    ``env`` (default: this process'), the CA its ``MLFLOW_TRACKING_SERVER_CERT_PATH``."""
    env = os.environ if env is None else env
    ca, insecure = _trust(env)
    health = services.failure(url.rstrip("/") + "/health", timeout_s, ca, insecure)
    if health and health.startswith(services.BAD_CA):
        return f"is out of reach: {health}, named by MLFLOW_TRACKING_SERVER_CERT_PATH"
    if health and health.startswith(services.UNTRUSTED):
        trusted = f"the CA file {ca}" if ca else "this machine's CA store"
        return (
            f"serves a TLS certificate that {trusted} does not vouch for {health.removeprefix(services.UNTRUSTED).strip()}: "
            "set MLFLOW_TRACKING_SERVER_CERT_PATH to the team's ca.pem"
        )
    if health:
        return NOT_REACHABLE
    problem = backend_problem(
        url,
        headers=basic_auth(env.get("MLFLOW_TRACKING_USERNAME") or "", env.get("MLFLOW_TRACKING_PASSWORD", "")),
        ca=ca,
        insecure=insecure,
    )
    if problem == NEEDS_ACCOUNT:
        user = env.get("MLFLOW_TRACKING_USERNAME")
        if user:
            return f"refused the password of user '{user}' (HTTP 401): check MLFLOW_TRACKING_PASSWORD"
        return (
            "wants an account (HTTP 401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
            "(a team admin makes one with `make team-user NAME=<you> ROLE=edit`)"
        )
    return f"answers but cannot use its backend store ({problem})" if problem else None


def store_uris(store: Path) -> tuple[str, str]:
    """(backend store URI, artifacts destination) inside ``store``."""
    store = store.resolve()
    return f"sqlite:///{store / 'mlflow.db'}", str(store / "artifacts")


def start(
    host: str,
    port: int,
    store: Path,
    wait_s: float = 90.0,
    backend: str | None = None,
    artifacts: str | None = None,
    env: Mapping[str, str] | None = None,
    app_name: str | None = None,
    tls: tuple[Path, Path] | None = None,
    ca: Path | None = None,
) -> str:
    """Start the server unless one answers already; return its URL.

    ``app_name="basic-auth"`` serves MLflow's accounts app (its settings in ``env``:
    ``MLFLOW_AUTH_CONFIG_PATH``, ``MLFLOW_AUTH_ADMIN_PASSWORD``, ``MLFLOW_FLASK_SERVER_SECRET_KEY``).

    By default the backend store (sqlite) and the artifacts live in ``store``; team mode
    passes a PostgreSQL ``backend`` URI, an ``s3://`` ``artifacts`` destination and the
    secrets both need in ``env`` (never on the command line). Artifacts are proxied through
    the server either way, so clients need no storage credentials.

    ``tls=(certificate, key)`` serves HTTPS (uvicorn's SSL options), ``ca`` being what the
    certificate's issuer is to this machine's checks; the server then answers only requests
    addressed to ``host`` (``--allowed-hosts``), which blocks DNS rebinding from a browser.
    """
    url = f"{'https' if tls else 'http'}://{host}:{port}"
    if is_up(url, ca=ca):
        print(f"MLflow server already running at {url}: reusing it")
        return url
    store.mkdir(parents=True, exist_ok=True)
    default_backend, default_artifacts = store_uris(store)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--backend-store-uri",
        backend or default_backend,
        "--artifacts-destination",
        artifacts or default_artifacts,
        "--workers",
        "1",
        *(["--app-name", app_name] if app_name else []),
    ]
    if tls:
        import shlex

        certificate, key = tls
        command += [
            "--uvicorn-opts",
            f"--ssl-certfile {shlex.quote(str(certificate))} --ssl-keyfile {shlex.quote(str(key))}",
            "--allowed-hosts",
            f"{host}:{port},{host}",
        ]
    try:
        services.spawn(SERVICE, command, store, lambda: is_up(url, ca=ca), env=env, wait_s=wait_s)
    except PipelineError as error:
        raise PipelineError(f"MLflow server at {url}: {error}") from error
    print(f"MLflow server started at {url} (store {store.resolve()}, log {store.resolve() / (SERVICE + '.log')})")
    return url


def upgrade_schema(backend: str, env: Mapping[str, str] | None = None) -> None:
    """``mlflow db upgrade``: migrate a SQL backend store to this MLflow's schema (idempotent)."""
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "db", "upgrade", backend],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if result.returncode != 0:
        raise PipelineError(
            f"mlflow db upgrade failed: {services.cause(result.stderr + result.stdout, f'status {result.returncode}')}"
        )


def stop(store: Path) -> None:
    """Stop the server started by :func:`start` (its whole process group)."""
    if not (store / f"{SERVICE}.pid").is_file():
        print("no MLflow server started by this project is recorded")
    elif services.stop(SERVICE, store):
        print("MLflow server stopped")
    else:
        print("MLflow server was not running")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Manage the project's MLflow tracking server.")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--store", type=Path, default=Path("mlflow"), help="folder for the sqlite store and artifacts")
    args = parser.parse_args(argv)
    if args.action == "start":
        start(args.host, args.port, args.store)
    elif args.action == "stop":
        stop(args.store)
    else:
        url = f"http://{args.host}:{args.port}"
        if not is_up(url):
            raise PipelineError(f"no MLflow server answers at {url}")
        print(f"MLflow server up at {url}")


if __name__ == "__main__":
    sys.exit(run_cli(main))

"""Start, reuse, check and stop the project's MLflow tracking server.

The server binds to 127.0.0.1 by default, keeps its sqlite backend store and its artifacts
under one git-ignored folder of the repository, and runs detached with its PID and log in
that folder. ``start`` reuses a server that already answers on the port, so a second
``make run`` never starts a duplicate.

    python -m pipeline.server start --host 127.0.0.1 --port 5000 --store mlflow
    python -m pipeline.server stop --store mlflow
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import PipelineError, run_cli

PID_FILE = "server.pid"
LOG_FILE = "server.log"


def is_up(url: str, timeout_s: float = 2.0) -> bool:
    """Whether an MLflow server answers ``/health`` at ``url``."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def store_uris(store: Path) -> tuple[str, str]:
    """(backend store URI, artifacts destination) inside ``store``."""
    store = store.resolve()
    return f"sqlite:///{store / 'mlflow.db'}", str(store / "artifacts")


def start(host: str, port: int, store: Path, wait_s: float = 90.0) -> str:
    """Start the server unless one answers already; return its URL."""
    url = f"http://{host}:{port}"
    if is_up(url):
        print(f"MLflow server already running at {url}: reusing it")
        return url
    store.mkdir(parents=True, exist_ok=True)
    backend, artifacts = store_uris(store)
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", host, "--port", str(port),
        "--backend-store-uri", backend,
        "--artifacts-destination", artifacts,
        "--workers", "1",
    ]
    log = open(store / LOG_FILE, "ab")
    # A new session detaches the server from make, so it outlives the command that started it.
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    (store / PID_FILE).write_text(str(process.pid))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (store / LOG_FILE).read_text(errors="replace").strip().splitlines()[-5:]
            raise PipelineError(f"MLflow server exited with status {process.returncode}: " + " | ".join(tail))
        if is_up(url):
            print(f"MLflow server started at {url} (store {store}, log {store / LOG_FILE})")
            return url
        time.sleep(0.5)
    process.terminate()
    raise PipelineError(f"MLflow server did not answer at {url} within {wait_s:.0f} s; see {store / LOG_FILE}")


def stop(store: Path) -> None:
    """Stop the server started by :func:`start` (its whole process group)."""
    pid_file = store / PID_FILE
    if not pid_file.is_file():
        print("no MLflow server started by this project is recorded")
        return
    pid = int(pid_file.read_text().strip())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"MLflow server (pid {pid}) was not running")
    else:
        for _ in range(50):
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        print(f"MLflow server (pid {pid}) stopped")
    pid_file.unlink(missing_ok=True)


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

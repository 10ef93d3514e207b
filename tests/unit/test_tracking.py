"""MLflow plumbing: fast failure when the server is down, and the real server's lifecycle."""

import subprocess
import sys
import time

import pytest

from pipeline.errors import TrackingError
from pipeline.local_servers import mlflow_server as server
from pipeline.tracking import mlflow_runs as tracking
from pipeline.tracking import provenance
from tests.conftest import free_port


def test_connect_fails_fast_with_a_fix_when_nothing_listens(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(TrackingError, match="is not reachable; start it with `make server`"):
        tracking.connect("anything")
    assert time.monotonic() - started < 10


def test_fingerprint_depends_on_content(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("x")
    first = provenance.fingerprint({"a": 1}, files=(path,))
    assert first == provenance.fingerprint({"a": 1}, files=(path,)) and len(first) == 16
    path.write_text("y")
    assert provenance.fingerprint({"a": 1}, files=(path,)) != first
    assert provenance.fingerprint({"a": 2}) != provenance.fingerprint({"a": 1})


@pytest.mark.slow
def test_server_starts_is_reused_and_stops(tmp_path):
    port = free_port()
    store = tmp_path / "store"
    command = [sys.executable, "-m", "pipeline.local_servers.mlflow_server"]
    started = subprocess.run(
        command + ["start", "--port", str(port), "--store", str(store)], capture_output=True, text=True, timeout=180
    )
    try:
        assert started.returncode == 0, started.stderr
        assert "started at http://127.0.0.1:" in started.stdout
        assert server.is_up(f"http://127.0.0.1:{port}")
        assert (store / "mlflow.db").is_file()
        again = subprocess.run(
            command + ["start", "--port", str(port), "--store", str(store)], capture_output=True, text=True, timeout=60
        )
        assert again.returncode == 0 and "reusing it" in again.stdout
    finally:
        stopped = subprocess.run(command + ["stop", "--store", str(store)], capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not server.is_up(f"http://127.0.0.1:{port}")
    status = subprocess.run(command + ["status", "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and status.stderr.startswith("error: no MLflow server answers")


def test_an_unusable_ca_file_is_named_not_taken_for_a_stopped_server(tmp_path):
    from pipeline.local_servers import mlflow_server as server

    missing = tmp_path / "team-ca.pem"
    problem = server.unavailable("https://127.0.0.1:9", env={"MLFLOW_TRACKING_SERVER_CERT_PATH": str(missing)})
    assert problem == (
        f"is out of reach: cannot use the CA file {missing} (No such file or directory), "
        "named by MLFLOW_TRACKING_SERVER_CERT_PATH"
    )
    assert server.unavailable("https://127.0.0.1:9", env={}) == server.NOT_REACHABLE  # nothing listens there

"""Team mode on a shared machine (no servers started: the calls that would start them are
caught): SeaweedFS gets a clean environment and no telemetry, the team folder and the store's
data are private, an env file cannot set what loads code, ``stop`` signals only the process it
started, and the admin password goes only to a server run by this user."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.local_servers import detached as services
from pipeline.team import s3, stack
from pipeline.team.settings import TeamConfig, client_values, read_env, write_env
from tests.conftest import free_port

#: What ``team up`` makes its folder: private; under root ``nobody`` (PostgreSQL) must traverse it.
PRIVATE = 0o711 if os.geteuid() == 0 else 0o700


@pytest.fixture
def spawned(monkeypatch):
    """``services.spawn`` caught: each call's command and the environment its process would get."""
    calls = []

    def spawn(name, command, folder, ready, env=None, wait_s=90.0, inherit_env=True):
        calls.append((name, list(command), dict(env or {}) if not inherit_env else {**os.environ, **(env or {})}))
        return 1

    monkeypatch.setattr(services, "spawn", spawn)
    monkeypatch.setattr(services, "answers", lambda *args, **kwargs: False)
    monkeypatch.setattr(s3, "weed", lambda: Path("/opt/weed"))
    return calls


def test_seaweedfs_gets_a_clean_environment_without_the_callers_keys(tmp_path, monkeypatch, spawned):
    for key, value in {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "AWS_SESSION_TOKEN": "t",
        "LD_PRELOAD": "/tmp/evil.so",
        "PYTHONPATH": "/tmp",
        "WEED_MASTER_VOLUME_GROWTH_COPY_1": "7",
    }.items():
        monkeypatch.setenv(key, value)
    s3.start("127.0.0.1", free_port(), tmp_path / ".team", tmp_path / ".team" / "ids.json")
    assert [name for name, _, _ in spawned] == [s3.STORE_SERVICE, s3.SERVICE]
    for name, _, env in spawned:
        assert not [key for key in env if key.startswith(("AWS_", "LD_", "PYTHON", "WEED_"))], (name, sorted(env))
        assert env["PATH"] == os.environ["PATH"]


def test_both_seaweedfs_processes_get_the_same_signing_keys(tmp_path, spawned):
    keys = {key: f"key-{number}" for number, key in enumerate(s3.JWT_KEYS)}
    s3.start(
        "127.0.0.1", free_port(), tmp_path / ".team", tmp_path / ".team" / "ids.json", jwt={**keys, "LD_PRELOAD": "x"}
    )
    for _, _, env in spawned:
        assert {key: env.get(key) for key in s3.JWT_KEYS} == keys and "LD_PRELOAD" not in env


def test_seaweedfs_telemetry_is_off(tmp_path, spawned):
    s3.start("127.0.0.1", free_port(), tmp_path / ".team", tmp_path / ".team" / "ids.json")
    store = spawned[0][1]
    assert store[:2] == ["/opt/weed", "mini"] and "-master.telemetry=false" in store


def test_the_stores_data_folder_and_ports_file_are_private(tmp_path, spawned):
    s3.start("127.0.0.1", free_port(), tmp_path / ".team", tmp_path / ".team" / "ids.json")
    data = tmp_path / ".team" / "s3"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "ports.json").stat().st_mode) == 0o600


def test_team_up_makes_its_folder_private_and_tightens_an_open_one(tmp_path, monkeypatch):
    class Reached(Exception):
        pass

    def stop_here(config):
        raise Reached

    monkeypatch.setattr(stack, "_server_secrets", stop_here)  # the first step after the folder is made
    folder = tmp_path / ".team"
    for make_open_first in (False, True):
        if make_open_first:
            folder.chmod(0o755)
        with pytest.raises(Reached):
            stack.up(TeamConfig(folder=folder))
        assert stat.S_IMODE(folder.stat().st_mode) == PRIVATE


@pytest.mark.parametrize(
    "key", ["LD_PRELOAD", "LD_LIBRARY_PATH", "PATH", "PYTHONPATH", "PYTHONSTARTUP", "BASH_ENV", "DYLD_INSERT_LIBRARIES"]
)
def test_an_env_file_may_not_set_what_loads_code(tmp_path, key):
    path = tmp_path / "member.env"
    path.write_text(
        "MLFLOW_TRACKING_URI=http://127.0.0.1:5010\nTEAM_DVC_REMOTE_URL=s3://b/cache\n"
        f"AWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACCESS_KEY=b\nexport {key}=/tmp/evil\n"
    )
    with pytest.raises(PipelineError) as raised:
        client_values(path)
    assert str(raised.value) == (
        f"{path}, line 5: {key} may not be set by an env file (it changes what every command it wraps loads or runs)"
    )


def _victim() -> subprocess.Popen:
    """A process of this user that is not the recorded service: its own session, as a daemon's."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)


@pytest.mark.parametrize("record", ["plain_pid", "other_start_time", "other_command"])
def test_stop_leaves_alone_a_process_that_is_not_the_one_started(tmp_path, record):
    victim = _victim()
    try:
        start = getattr(services, "start_time", lambda pid: None)(victim.pid)
        entry = {"pid": victim.pid, "start": start, "command": [sys.executable, "-c", "import time; time.sleep(60)"]}
        if record == "plain_pid":  # the PID file of an earlier version, naming a reused PID
            text = str(victim.pid)
        elif record == "other_start_time":
            text = json.dumps({**entry, "start": "1"})
        else:
            text = json.dumps({**entry, "command": ["/opt/weed", "mini"]})
        (tmp_path / "s3.pid").write_text(text)
        assert services.stop("s3", tmp_path, wait_s=1) is False
        time.sleep(0.2)
        assert victim.poll() is None, "the process was signalled"
        assert not (tmp_path / "s3.pid").exists()
    finally:
        victim.kill()
        victim.wait()


def test_stop_still_stops_the_process_it_started(tmp_path):
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    pid = services.spawn("svc", command, tmp_path, lambda: True)
    assert json.loads((tmp_path / "svc.pid").read_text())["command"] == command
    assert stat.S_IMODE((tmp_path / "svc.log").stat().st_mode) == 0o600
    assert services.stop("svc", tmp_path) is True
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_admin_password_is_not_sent_to_a_server_another_user_runs(tmp_path, monkeypatch):
    from pipeline.local_servers import mlflow_server as server
    from pipeline.team import guard

    port = free_port()
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        f"   0: 0100007F:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000  4242        0 1 1\n"
    )
    monkeypatch.setattr(guard, "TCP_TABLES", (table,))
    sent = []
    monkeypatch.setattr(server, "upgrade_schema", lambda *args, **kwargs: None)
    monkeypatch.setattr(server, "start", lambda *args, **kwargs: f"http://127.0.0.1:{port}")
    monkeypatch.setattr(server, "backend_problem", lambda url, headers=None, **kwargs: sent.append(headers))
    config = TeamConfig(folder=tmp_path / ".team", mlflow_port=port)
    config.folder.mkdir()
    secrets = {
        "TEAM_PG_PASSWORD": "p",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-secret",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "k",
    }
    with pytest.raises(
        PipelineError, match=rf"uid 4242\) listens on 127.0.0.1:{port}: the admin password is not sent to it"
    ):
        stack._start_mlflow(config, stack.database(config), secrets, s3.Credentials("a", "b"), None)
    assert sent == []


def test_a_listener_of_this_user_is_recognised(tmp_path):
    import socket

    from pipeline.team import guard

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert guard.listener_uids("127.0.0.1", port) == {os.geteuid()}
    assert guard.listener_uids("127.0.0.1", port) == set()


# Per-role S3 keys: a READ member's DVC key may only fetch and list, and pulls re-hash what they fetch.


def _team_up_s3(config: TeamConfig, monkeypatch, restarted: list) -> None:
    """``team up``'s S3 step (keys, identities file, client.env) with the servers caught."""
    monkeypatch.setattr(s3, "start", lambda *args, **kwargs: True)
    monkeypatch.setattr(s3, "ensure_buckets", lambda *args, **kwargs: [])
    monkeypatch.setattr(s3, "check", lambda *args, **kwargs: None)
    monkeypatch.setattr(services, "stop", lambda name, folder, **kwargs: restarted.append(name) or True)
    config.folder.mkdir(parents=True, exist_ok=True)
    stack._start_s3(config, stack._server_secrets(config), False, None)


def _identities(config: TeamConfig) -> dict[str, dict]:
    return {
        entry["name"]: entry for entry in json.loads((config.folder / stack.S3_IDENTITIES).read_text())["identities"]
    }


def test_a_read_member_gets_a_dvc_key_that_may_only_read_and_list_an_edit_member_the_write_key(tmp_path, monkeypatch):
    from pipeline.team import accounts

    config = TeamConfig(folder=tmp_path / ".team")
    _team_up_s3(config, monkeypatch, [])
    identities, secrets = _identities(config), read_env(config.server_env)
    print({name: entry["actions"] for name, entry in identities.items()})
    assert identities["dvc-read"]["actions"] == ["Read:ham10000-dvc", "List:ham10000-dvc"]  # nothing on ham10000-mlflow
    assert identities["dvc"]["actions"] == [f"{action}:ham10000-dvc" for action in s3.ACTIONS]
    read_key = (secrets["TEAM_DVC_READ_S3_KEY_ID"], secrets["TEAM_DVC_READ_S3_SECRET"])
    write_key = (secrets["TEAM_DVC_S3_KEY_ID"], secrets["TEAM_DVC_S3_SECRET"])
    assert identities["dvc-read"]["credentials"] == [{"accessKey": read_key[0], "secretKey": read_key[1]}]
    assert read_key[0] != write_key[0] and read_key[1] != write_key[1]
    team = read_env(config.client_env)  # `make run TEAM=1` and CI push with it
    assert (team["AWS_ACCESS_KEY_ID"], team["AWS_SECRET_ACCESS_KEY"]) == write_key
    for name, role, key in (("ci", "read", read_key), ("alice", "edit", write_key)):
        path = accounts.write_member_env(config, name, accounts.member_values(config, role), "password-of-" + name)
        member = read_env(path)
        assert (member["AWS_ACCESS_KEY_ID"], member["AWS_SECRET_ACCESS_KEY"]) == key, (name, role)
        assert member["MLFLOW_TRACKING_USERNAME"] == name and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_team_up_adds_the_read_key_to_an_existing_team_keeping_its_keys_and_restarts_the_gateway(tmp_path, monkeypatch):
    config = TeamConfig(folder=tmp_path / ".team")
    config.folder.mkdir()
    old = {
        "TEAM_DVC_S3_KEY_ID": "DVCOLD",
        "TEAM_DVC_S3_SECRET": "old-dvc-secret",
        "TEAM_MLFLOW_S3_KEY_ID": "MLFLOWOLD",
        "TEAM_MLFLOW_S3_SECRET": "old-mlflow-secret",
    }
    write_env(config.server_env, old, "an earlier version's server.env")
    s3.write_identities(
        config.folder / stack.S3_IDENTITIES,
        {"dvc": s3.Credentials("DVCOLD", "old-dvc-secret"), "mlflow": s3.Credentials("MLFLOWOLD", "old-mlflow-secret")},
        {"dvc": "ham10000-dvc", "mlflow": "ham10000-mlflow"},
    )
    restarted = []
    _team_up_s3(config, monkeypatch, restarted)
    secrets = read_env(config.server_env)
    print(sorted(secrets), restarted)
    assert {key: secrets[key] for key in old} == old and secrets["TEAM_DVC_READ_S3_KEY_ID"].startswith("DVCREAD")
    assert set(_identities(config)) == {"dvc", "mlflow", "dvc-read"}
    assert _identities(config)["dvc"]["credentials"] == [{"accessKey": "DVCOLD", "secretKey": "old-dvc-secret"}]
    assert restarted == [s3.SERVICE]  # the gateway reads its identities at start only
    _team_up_s3(config, monkeypatch, restarted)  # nothing new: same keys, no restart
    assert read_env(config.server_env) == secrets and restarted == [s3.SERVICE]


def test_the_team_remote_verifies_what_it_pulls(tmp_path, monkeypatch):
    from pipeline.team import client

    calls = []
    monkeypatch.setattr(
        client.subprocess,
        "run",
        lambda command, **kwargs: calls.append(command[4:]) or subprocess.CompletedProcess(command, 0),
    )
    client.configure_remote(
        {"TEAM_DVC_REMOTE_URL": "s3://ham10000-dvc/cache", "TEAM_S3_ENDPOINT_URL": "http://127.0.0.1:9010"}, tmp_path
    )
    print(calls)
    assert calls[-1] == ["modify", "--local", "team", "verify", "true"]

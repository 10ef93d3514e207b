"""Team mode against real servers on 127.0.0.1: PostgreSQL (pgserver's binaries), SeaweedFS'
S3 with one key per bucket enforced and objects on disk, and MLflow on both; DVC pushes to and
pulls from the bucket.

One stack is started for the module (``pipeline.team up``, as ``make team-up`` does) in a
temporary folder on free ports, and stopped at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.team import client as team_client
from pipeline.team import postgres, s3, stack
from pipeline.team.settings import TeamConfig, read_env, write_env
from tests.conftest import REPO_ROOT, free_port
from tests.model.conftest import make_paths, tiny_artifacts, tiny_cnn  # noqa: F401 (fixture)
from tests.team.conftest import child_env as _env
from tests.team.conftest import copy_project
from tests.team.conftest import git as _git

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def team():
    """The team servers, started by the project's own command, in a folder PostgreSQL's user can reach."""
    folder = Path(tempfile.mkdtemp(prefix="team-"))
    folder.chmod(0o711)  # under root, PostgreSQL runs as `nobody`: it must traverse this folder
    config = TeamConfig(
        folder=folder / ".team", mlflow_port=free_port(), s3_port=free_port(), postgres_port=free_port()
    )
    command = [sys.executable, "-m", "pipeline.team"]
    ports = [
        "--dir",
        str(config.folder),
        "--mlflow-port",
        str(config.mlflow_port),
        "--s3-port",
        str(config.s3_port),
        "--postgres-port",
        str(config.postgres_port),
    ]
    started = subprocess.run(command + ["up", *ports], capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stderr
        yield config
    finally:
        subprocess.run(command + ["down", *ports], capture_output=True, text=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def _team_command(team: TeamConfig, *action: str) -> subprocess.CompletedProcess:
    ports = [
        "--dir",
        str(team.folder),
        "--mlflow-port",
        str(team.mlflow_port),
        "--s3-port",
        str(team.s3_port),
        "--postgres-port",
        str(team.postgres_port),
    ]
    return subprocess.run(
        [sys.executable, "-m", "pipeline.team", *action, *ports],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )


def _team_exec(workspace: Path, env_file: Path, *command: str, tracking: bool = False) -> subprocess.CompletedProcess:
    flags = [] if tracking else ["--no-tracking"]
    return subprocess.run(
        [sys.executable, "-m", "pipeline.team", "exec", "--env", str(env_file), *flags, "--", *command],
        cwd=workspace,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )


@pytest.fixture(scope="module")
def pushed_workspace(team, tmp_path_factory):
    """A copy of the project (tracked files) that ran ingest + split on the demo data and pushed them."""
    workspace = copy_project(tmp_path_factory.mktemp("member-a"))
    repro = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "split"],
        cwd=workspace,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert repro.returncode == 0, repro.stderr
    pushed = _team_exec(workspace, team.client_env, sys.executable, "-m", "dvc", "push", "--with-deps", "split")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    _git(workspace, "add", "-A")
    _git(workspace, "commit", "-qm", "ingest + split", "--allow-empty")
    return workspace


def _remote_objects(config: TeamConfig) -> list[str]:
    keys = read_env(config.client_env)
    listing = s3.client(config.s3_endpoint, s3.Credentials(keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"]))
    pages = listing.get_paginator("list_objects_v2").paginate(Bucket=config.dvc_bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_a_fresh_clone_pulls_everything_and_reruns_nothing(team, pushed_workspace, tmp_path):
    clone = tmp_path / "member-b"
    _git(tmp_path, "clone", "-q", str(pushed_workspace), str(clone))
    assert not (clone / "data" / "split").exists()
    pulled = _team_exec(clone, team.client_env, sys.executable, "-m", "dvc", "pull", "--with-deps", "split")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    # The remote is configured in the clone's local config only: nothing to commit.
    local = (clone / ".dvc" / "config.local").read_text()
    assert "remote = team" in local and f"endpointurl = {team.s3_endpoint}" in local
    assert _git(clone, "status", "--porcelain") == ""

    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "split"], cwd=clone, capture_output=True, text=True, env=_env()
    )
    assert "up to date" in status.stdout, status.stdout
    repro = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "split"], cwd=clone, capture_output=True, text=True, env=_env()
    )
    assert repro.returncode == 0 and "Running stage" not in repro.stdout, repro.stdout
    for name in ("metrics/ingest.json", "metrics/split.json", "data/split/train.csv"):
        assert (clone / name).read_bytes() == (pushed_workspace / name).read_bytes(), name


def test_a_half_written_remote_is_not_called_clean_and_a_push_completes_it(team, pushed_workspace):
    keys = read_env(team.client_env)
    bucket = s3.client(team.s3_endpoint, s3.Credentials(keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"]))
    objects = _remote_objects(team)
    assert objects, "the push stored objects"
    # As if the push had been cut off: DVC uploads a directory's listing (`.dir`) after its
    # files, so an interrupted push leaves some files and no listing.
    listings = [key for key in objects if key.endswith(".dir")]
    assert len(listings) == 2, objects  # data/ingested and data/split
    for key in listings + [next(key for key in objects if not key.endswith(".dir"))]:
        bucket.delete_object(Bucket=team.dvc_bucket, Key=key)
    status = _team_exec(
        pushed_workspace, team.client_env, sys.executable, "-m", "dvc", "status", "--cloud", "--with-deps", "split"
    )
    assert status.returncode == 0 and "new:" in status.stdout, status.stdout
    again = _team_exec(pushed_workspace, team.client_env, sys.executable, "-m", "dvc", "push", "--with-deps", "split")
    assert again.returncode == 0 and "3 files pushed" in again.stdout, again.stdout
    status = _team_exec(
        pushed_workspace, team.client_env, sys.executable, "-m", "dvc", "status", "--cloud", "--with-deps", "split"
    )
    assert "are in sync" in status.stdout, status.stdout


def test_push_with_s3_down_fails_in_one_line_and_writes_nothing(team, pushed_workspace, tmp_path):
    down = tmp_path / "down.env"
    write_env(down, {**read_env(team.client_env), "TEAM_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}, "test")
    before = _remote_objects(team)
    pushed = _team_exec(pushed_workspace, down, sys.executable, "-m", "dvc", "push", "--with-deps", "split")
    assert pushed.returncode == 1
    assert pushed.stderr.strip().count("\n") == 0 and pushed.stderr.startswith("error: S3 endpoint http://127.0.0.1:")
    assert "is not reachable" in pushed.stderr
    # The check came first: the clone's remote still points where it did.
    assert f"endpointurl = {team.s3_endpoint}" in (pushed_workspace / ".dvc" / "config.local").read_text()
    # DVC itself, pointed there without the check first, also fails (non-zero), and the real remote is untouched.
    team_client.configure_remote(read_env(down), pushed_workspace)
    raw = subprocess.run(
        [sys.executable, "-m", "dvc", "push", "--with-deps", "split"],
        cwd=pushed_workspace,
        capture_output=True,
        text=True,
        env=_env(**read_env(down)),
        timeout=300,
    )
    assert raw.returncode != 0
    assert _remote_objects(team) == before


def test_wrong_s3_credentials_fail_clearly_without_printing_a_secret(team, pushed_workspace, tmp_path):
    right = read_env(team.client_env)
    wrong = tmp_path / "wrong.env"
    write_env(wrong, {**right, "AWS_SECRET_ACCESS_KEY": "not-the-secret-0123456789"}, "test")
    pushed = _team_exec(pushed_workspace, wrong, sys.executable, "-m", "dvc", "push", "--with-deps", "split")
    assert pushed.returncode == 1 and pushed.stderr.strip().count("\n") == 0
    assert f"refused the credentials of access key {right['AWS_ACCESS_KEY_ID']}" in pushed.stderr
    assert "SignatureDoesNotMatch" in pushed.stderr
    # DVC alone: refused too, and neither the wrong nor the right secret appears anywhere.
    raw = subprocess.run(
        [sys.executable, "-m", "dvc", "push", "--with-deps", "split"],
        cwd=pushed_workspace,
        capture_output=True,
        text=True,
        env=_env(**read_env(wrong)),
        timeout=300,
    )
    assert raw.returncode != 0
    for output in (pushed.stdout + pushed.stderr, raw.stdout + raw.stderr):
        assert "not-the-secret-0123456789" not in output and right["AWS_SECRET_ACCESS_KEY"] not in output


def _rest(config: TeamConfig, reader: dict[str, str], path: str, **query: str) -> dict:
    from pipeline.local_servers.mlflow_server import basic_auth

    request = urllib.request.Request(
        f"{config.tracking_uri}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}",
        headers=basic_auth(reader["MLFLOW_TRACKING_USERNAME"], reader["MLFLOW_TRACKING_PASSWORD"]),
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def _add_user(team: TeamConfig, name: str, role: str) -> dict[str, str]:
    """``python -m pipeline.team user add`` (``make team-user``): the account's env file, read back."""
    made = _team_command(team, "user", "add", name, "--role", role)
    assert made.returncode == 0, made.stderr
    path = team.folder / "users" / f"{name}.env"
    assert oct(path.stat().st_mode & 0o777) == "0o600" and str(path) in made.stdout
    values = read_env(path)
    assert (
        values["MLFLOW_TRACKING_USERNAME"] == name
        and values["MLFLOW_TRACKING_PASSWORD"] not in made.stdout + made.stderr
    )
    return values


@pytest.fixture(scope="module")
def users(team):
    """Three accounts: alice and carol may edit the project's experiment and models, bob only read."""
    return {
        "alice": _add_user(team, "alice", "edit"),
        "bob": _add_user(team, "bob", "read"),
        "carol": _add_user(team, "carol", "edit"),
    }


def _as(user: dict[str, str]) -> dict[str, str]:
    return {key: user[key] for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}


@pytest.fixture(scope="module")
def champion(team, users, tiny_artifacts):  # noqa: F811
    """The tiny CNN trained once against the team servers (as alice): its training summary."""
    import mlflow

    from pipeline.training.train import train_cnn_focal

    with pytest.MonkeyPatch.context() as patch:
        for key, value in _as(users["alice"]).items():
            patch.setenv(key, value)
        patch.setenv("MLFLOW_TRACKING_URI", team.tracking_uri)
        patch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")
        mlflow.set_tracking_uri(team.tracking_uri)
        base, root = tiny_artifacts
        paths = dataclasses.replace(make_paths(root, "cnn_team"), source=root / "ham")
        return train_cnn_focal(base, tiny_cnn(registered_model_name="tests-team-cnn"), paths)


def _load_champion(team: TeamConfig, reader: dict[str, str]) -> subprocess.CompletedProcess:
    """``models:/tests-team-cnn@champion`` loaded by a second process with no storage credentials,
    as a user who may only read."""
    environment = {key: value for key, value in _env().items() if not key.startswith("AWS_")}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import mlflow; m = mlflow.keras.load_model('models:/tests-team-cnn@champion'); print(m.output_shape)",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **environment,
            **_as(reader),
            "MLFLOW_TRACKING_URI": team.tracking_uri,
            "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
        },
    )


def test_training_logs_to_postgres_and_s3_and_loads_by_alias_elsewhere(team, users, champion):
    summary = champion
    # Read back through the server's REST API.
    run = _rest(team, users["bob"], "runs/get", run_id=summary["run_id"])["run"]
    assert run["info"]["status"] == "FINISHED"
    assert {"key": "train_cnn_focal.epochs", "value": "3"} in run["data"]["params"]
    assert {"key": "host", "value": socket.gethostname()} in run["data"]["tags"]
    history = _rest(
        team, users["bob"], "metrics/get-history", run_id=summary["run_id"], metric_key="val_balanced_accuracy"
    )["metrics"]
    assert [int(point["step"]) for point in history] == [0, 1, 2]  # one point per epoch
    alias = _rest(team, users["bob"], "registered-models/alias", name="tests-team-cnn", alias="champion")[
        "model_version"
    ]
    assert alias["version"] == "1" and alias["run_id"] == summary["run_id"]

    # The run is a row in PostgreSQL; the model's files are objects in the artifacts bucket.
    secrets = read_env(team.server_env)
    import psycopg

    with psycopg.connect(
        host=team.host, port=team.postgres_port, user="mlflow", password=secrets["TEAM_PG_PASSWORD"], dbname="mlflow"
    ) as connection:
        assert connection.execute("SELECT status FROM runs WHERE run_uuid = %s", (summary["run_id"],)).fetchone() == (
            "FINISHED",
        )
    artifacts = s3.client(
        team.s3_endpoint, s3.Credentials(secrets["TEAM_MLFLOW_S3_KEY_ID"], secrets["TEAM_MLFLOW_S3_SECRET"])
    )
    keys = [item["Key"] for item in artifacts.list_objects_v2(Bucket=team.artifacts_bucket)["Contents"]]
    assert any(key.endswith("/MLmodel") for key in keys) and any(key.endswith(".keras") for key in keys), keys

    # A second process with no storage credentials at all loads the champion through the server.
    loaded = _load_champion(team, users["bob"])
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip().splitlines()[-1] == "(None, 7)"


def test_a_stage_stops_in_one_line_before_training_when_postgres_is_down(team, users, tiny_artifacts, tmp_path):  # noqa: F811
    _, root = tiny_artifacts
    database = stack.database(team)
    assert postgres.stop(database)
    try:
        started = time.monotonic()
        result = _stage(root, tmp_path, MLFLOW_TRACKING_URI=team.tracking_uri, **_as(users["alice"]))
        elapsed = time.monotonic() - started
    finally:
        postgres.start(database)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-2000:]
    assert "answers but cannot use its backend store" in errors[0] and "Connection refused" in errors[0], errors[0]
    assert read_env(team.server_env)["TEAM_PG_PASSWORD"] not in result.stderr
    assert not (tmp_path / "model").exists() and not (tmp_path / "metrics.json").exists()
    assert elapsed < 120


def test_a_wrong_database_password_stops_team_up_in_one_line(team):
    secrets = read_env(team.server_env)
    write_env(team.server_env, {**secrets, "TEAM_PG_PASSWORD": "wrong-password-0123456789"}, "test")
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.team",
                "up",
                "--dir",
                str(team.folder),
                "--mlflow-port",
                str(team.mlflow_port),
                "--s3-port",
                str(team.s3_port),
                "--postgres-port",
                str(team.postgres_port),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        write_env(team.server_env, secrets, "test")
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0, result.stderr
    assert 'password authentication failed for user "mlflow"' in result.stderr
    assert "wrong-password-0123456789" not in result.stdout + result.stderr
    assert secrets["TEAM_PG_PASSWORD"] not in result.stdout + result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_postgres_runs_from_a_private_environment_under_root(monkeypatch):
    """A virtual environment under /root is out of `nobody`'s reach: the binaries are copied."""
    private = Path(tempfile.mkdtemp(prefix="venv-"))  # mode 0700
    reachable = Path(tempfile.mkdtemp(prefix="team-"))
    reachable.chmod(0o711)
    try:
        site = postgres.binaries().parents[2]
        shutil.copytree(site / "pgserver" / "pginstall", private / "pgserver" / "pginstall")
        shutil.copytree(site / "pgserver.libs", private / "pgserver.libs")
        monkeypatch.setattr(postgres, "binaries", lambda: private / "pgserver" / "pginstall" / "bin")
        server = postgres.Postgres(reachable / "postgres", "127.0.0.1", free_port())
        password = "p" * 32
        postgres.init(server, password)
        postgres.start(server)
        try:
            postgres.ensure_database(server, password)
            assert (reachable / "pgserver-binaries" / "pgserver" / "pginstall" / "bin" / "postgres").is_file()
        finally:
            assert postgres.stop(server)
    finally:
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(reachable, ignore_errors=True)


def test_team_down_and_up_keeps_the_remote_the_artifacts_and_the_champion(
    team, users, pushed_workspace, champion, tmp_path, monkeypatch
):
    """Objects past the multipart thresholds (DVC's s3fs: 100 MiB, in 50 MiB parts; MLflow's
    boto3 on the server: 8 MB) round-trip, and a restart of the servers loses nothing."""
    import mlflow

    # DVC: a 110 MiB output, pushed in parts.
    big = os.urandom(110 * 2**20 + 123)
    (pushed_workspace / "big.bin").write_bytes(big)
    subprocess.run(
        [sys.executable, "-m", "dvc", "add", "big.bin"],
        cwd=pushed_workspace,
        check=True,
        capture_output=True,
        env=_env(),
    )
    pushed = _team_exec(pushed_workspace, team.client_env, sys.executable, "-m", "dvc", "push", "big.bin.dvc")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    _git(pushed_workspace, "add", "-A")
    _git(pushed_workspace, "commit", "-qm", "big")
    # MLflow: a 20 MB artifact through the server (proxied), which stores it in parts.
    for key, value in _as(users["carol"]).items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(team.tracking_uri)
    mlflow.set_experiment("ham10000-skin-lesions")
    artifact = tmp_path / "weights.bin"
    artifact.write_bytes(os.urandom(20 * 2**20))
    with mlflow.start_run(run_name="big-artifact") as run:
        mlflow.log_artifact(str(artifact))
    secrets = read_env(team.server_env)
    bucket = s3.client(
        team.s3_endpoint, s3.Credentials(secrets["TEAM_MLFLOW_S3_KEY_ID"], secrets["TEAM_MLFLOW_S3_SECRET"])
    )
    stored = [
        item
        for item in bucket.list_objects_v2(Bucket=team.artifacts_bucket)["Contents"]
        if item["Key"].endswith("/weights.bin")
    ]
    assert len(stored) == 1 and stored[0]["Size"] == artifact.stat().st_size
    assert "-" in stored[0]["ETag"], stored[0]  # a multipart upload's ETag: <md5 of the parts>-<count>
    before = sorted(_remote_objects(team))
    dvc_big = next(
        item
        for item in s3.client(
            team.s3_endpoint,
            s3.Credentials(*(read_env(team.client_env)[key] for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))),
        ).list_objects_v2(Bucket=team.dvc_bucket)["Contents"]
        if item["Size"] == len(big)
    )
    assert "-" in dvc_big["ETag"], dvc_big

    down = _team_command(team, "down")
    assert down.returncode == 0 and "objects stay in" in down.stdout, down.stdout + down.stderr
    assert not s3.up(team.s3_endpoint)
    again = _team_command(team, "up")
    assert again.returncode == 0, again.stderr
    assert "S3 (SeaweedFS)" in again.stdout and "new buckets" not in again.stdout, again.stdout

    assert sorted(_remote_objects(team)) == before
    clone = tmp_path / "member-c"
    _git(tmp_path, "clone", "-q", str(pushed_workspace), str(clone))
    pulled = _team_exec(
        clone, team.client_env, sys.executable, "-m", "dvc", "pull", "--with-deps", "split", "big.bin.dvc"
    )
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert (clone / "big.bin").read_bytes() == big
    assert (clone / "data" / "split" / "train.csv").read_bytes() == (
        pushed_workspace / "data" / "split" / "train.csv"
    ).read_bytes()
    downloaded = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="weights.bin", dst_path=str(tmp_path / "back")
    )
    assert Path(downloaded).read_bytes() == artifact.read_bytes()
    loaded = _load_champion(team, users["bob"])
    assert loaded.returncode == 0 and loaded.stdout.strip().splitlines()[-1] == "(None, 7)", loaded.stderr[-2000:]


def test_each_s3_key_reaches_only_its_own_bucket(team):
    client_keys, server_keys = read_env(team.client_env), read_env(team.server_env)
    dvc_key = s3.Credentials(client_keys["AWS_ACCESS_KEY_ID"], client_keys["AWS_SECRET_ACCESS_KEY"])
    mlflow_key = s3.Credentials(server_keys["TEAM_MLFLOW_S3_KEY_ID"], server_keys["TEAM_MLFLOW_S3_SECRET"])
    s3.check(team.s3_endpoint, team.dvc_bucket, dvc_key)
    s3.check(team.s3_endpoint, team.artifacts_bucket, mlflow_key)
    for key, bucket in ((dvc_key, team.artifacts_bucket), (mlflow_key, team.dvc_bucket)):
        with pytest.raises(PipelineError, match=f"refused the credentials of access key {key.key_id} .*AccessDenied"):
            s3.check(team.s3_endpoint, bucket, key)
    identities = team.folder / stack.S3_IDENTITIES
    assert identities.stat().st_mode & 0o777 == 0o600


def _keys(env_file: Path) -> s3.Credentials:
    values = read_env(env_file)
    return s3.Credentials(values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"])


def test_a_read_members_dvc_key_lists_and_fetches_and_may_write_nothing(team, users, pushed_workspace, tmp_path):
    """bob (READ) holds the read-only DVC key: he lists, fetches and pulls the remote; a put, an
    overwrite or a delete is AccessDenied, his `dvc push` fails, the MLflow bucket refuses him."""
    from botocore.exceptions import ClientError

    bob_env = team.folder / "users" / "bob.env"
    reader = s3.client(team.s3_endpoint, _keys(bob_env))
    stored = _remote_objects(team)[0]
    original = reader.get_object(Bucket=team.dvc_bucket, Key=stored)["Body"].read()
    for attempt in (
        lambda: reader.put_object(Bucket=team.dvc_bucket, Key="planted", Body=b"planted"),
        lambda: reader.put_object(Bucket=team.dvc_bucket, Key=stored, Body=b"replaced"),
        lambda: reader.delete_object(Bucket=team.dvc_bucket, Key=stored),
    ):
        with pytest.raises(ClientError) as refused:
            attempt()
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert reader.get_object(Bucket=team.dvc_bucket, Key=stored)["Body"].read() == original
    with pytest.raises(PipelineError, match="AccessDenied"):
        s3.check(team.s3_endpoint, team.artifacts_bucket, _keys(bob_env))
    read_key = read_env(team.server_env)["TEAM_DVC_READ_S3_KEY_ID"]
    assert _keys(bob_env).key_id == read_key != _keys(team.client_env).key_id

    clone = tmp_path / "bob"
    _git(tmp_path, "clone", "-q", str(pushed_workspace), str(clone))
    pulled = _team_exec(clone, bob_env, sys.executable, "-m", "dvc", "pull", "--with-deps", "split")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    train = Path("data") / "split" / "train.csv"
    assert (clone / train).read_bytes() == (pushed_workspace / train).read_bytes()
    (clone / "notes.txt").write_text("bob's notes\n")
    subprocess.run(
        [sys.executable, "-m", "dvc", "add", "notes.txt"], cwd=clone, check=True, capture_output=True, env=_env()
    )
    before = _remote_objects(team)
    pushed = _team_exec(clone, bob_env, sys.executable, "-m", "dvc", "push", "notes.txt.dvc")
    assert pushed.returncode != 0 and _remote_objects(team) == before, pushed.stdout + pushed.stderr


def test_a_pull_rehashes_what_it_fetches_and_refuses_a_replaced_object(team, users, pushed_workspace, tmp_path):
    """The team remote has `verify = true`: an object replaced in the bucket (by whoever holds the
    write key) is refused by the pull, not checked out."""
    work = tmp_path / "work"
    _git(tmp_path, "clone", "-q", str(pushed_workspace), str(work))
    (work / "victim.txt").write_text("the content that was pushed\n")
    subprocess.run(
        [sys.executable, "-m", "dvc", "add", "victim.txt"], cwd=work, check=True, capture_output=True, env=_env()
    )
    pushed = _team_exec(work, team.client_env, sys.executable, "-m", "dvc", "push", "victim.txt.dvc")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", "victim")
    digest = (work / "victim.txt.dvc").read_text().split("md5: ", 1)[1].split()[0]
    stored = next(key for key in _remote_objects(team) if key.endswith(f"{digest[:2]}/{digest[2:]}"))
    writer = s3.client(team.s3_endpoint, _keys(team.client_env))
    writer.put_object(Bucket=team.dvc_bucket, Key=stored, Body=b"planted by a holder of the write key\n")
    try:
        clone = tmp_path / "bob"
        _git(tmp_path, "clone", "-q", str(work), str(clone))
        bob_env = team.folder / "users" / "bob.env"
        pulled = _team_exec(clone, bob_env, sys.executable, "-m", "dvc", "pull", "victim.txt.dvc")
        print(pulled.returncode, (pulled.stdout + pulled.stderr)[-1500:])
        assert pulled.returncode != 0, pulled.stdout + pulled.stderr
        assert not (clone / "victim.txt").exists() or b"planted" not in (clone / "victim.txt").read_bytes()
        assert "verify = true" in (clone / ".dvc" / "config.local").read_text()
    finally:
        writer.delete_object(Bucket=team.dvc_bucket, Key=stored)


def test_the_stores_internal_ports_refuse_anyone_without_its_signing_key(team):
    """SeaweedFS' filer and volume ports on 127.0.0.1 answer only requests signed with the keys of
    server.env (the gateway signs its own); the team folder and the objects on disk are private."""
    keys = read_env(team.client_env)
    storage = s3.client(team.s3_endpoint, s3.Credentials(keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"]))
    storage.put_object(Bucket=team.dvc_bucket, Key="probe/internal", Body=b"through the gateway")
    try:
        assert storage.get_object(Bucket=team.dvc_bucket, Key="probe/internal")["Body"].read() == b"through the gateway"
        filer = f"http://127.0.0.1:{json.loads((team.folder / 's3' / 'ports.json').read_text())['filer.port']}"
        for method, path, body in (
            ("GET", f"/buckets/{team.dvc_bucket}/probe/internal", None),
            ("GET", f"/buckets/{team.dvc_bucket}/", None),
            ("PUT", f"/buckets/{team.artifacts_bucket}/planted.txt", b"planted"),
        ):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(filer + path, data=body, method=method), timeout=10)
            assert refused.value.code == 401, (method, path)
    finally:
        storage.delete_object(Bucket=team.dvc_bucket, Key="probe/internal")
    assert team.folder.stat().st_mode & 0o777 == (0o711 if os.geteuid() == 0 else 0o700)
    assert (team.folder / "s3").stat().st_mode & 0o777 == 0o700


def _stage(root: Path, out: Path, **env: str) -> subprocess.CompletedProcess:
    """The CNN training stage on the tiny artifacts, with these settings."""
    return subprocess.run(
        [
            sys.executable,
            "stages/train_cnn_focal.py",
            "--params",
            "params.yaml",
            "--ingested",
            str(root / "ingested"),
            "--split",
            str(root / "split"),
            "--augmented",
            str(root / "augmented"),
            "--out",
            str(out / "model"),
            "--metrics",
            str(out / "metrics.json"),
            "--checkpoints",
            str(out / "checkpoints"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(**env),
    )


def _runs(team: TeamConfig, reader: dict[str, str]) -> list[dict]:
    import mlflow

    with pytest.MonkeyPatch.context() as patch:
        for key, value in _as(reader).items():
            patch.setenv(key, value)
        client = mlflow.MlflowClient(team.tracking_uri)
        experiment = client.get_experiment_by_name("ham10000-skin-lesions")
        return [run.to_dictionary()["info"] for run in client.search_runs([experiment.experiment_id], max_results=1000)]


def test_the_permission_matrix_each_refusal_one_line_before_training(team, users, tiny_artifacts, tmp_path):  # noqa: F811
    """No account (401), a wrong password (401), a read-only account (403): one `error:` line
    each, before any training, no secret printed, nothing written to the server."""
    _, root = tiny_artifacts
    before = _runs(team, users["bob"])
    bob = users["bob"]
    cases = {
        "none": ({}, "wants an account (HTTP 401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
        "wrong": (
            {**_as(bob), "MLFLOW_TRACKING_PASSWORD": "not-the-password-0123456789"},
            "refused the password of user 'bob' (HTTP 401)",
        ),
        "read": (
            _as(bob),
            "user 'bob' may only read experiment 'ham10000-skin-lesions' (HTTP 403: logging runs needs EDIT",
        ),
    }
    for case, (credentials, expected) in cases.items():
        out = tmp_path / case
        result = _stage(root, out, MLFLOW_TRACKING_URI=team.tracking_uri, **credentials)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 1 and len(errors) == 1, (case, result.stderr[-2000:])
        assert expected in errors[0], (case, errors[0])
        assert "Traceback" not in result.stderr and "epoch 1" not in result.stdout, case
        assert bob["MLFLOW_TRACKING_PASSWORD"] not in result.stdout + result.stderr
        assert "not-the-password-0123456789" not in result.stdout + result.stderr
        assert not (out / "model").exists() and not (out / "metrics.json").exists()
    assert _runs(team, users["bob"]) == before


def _client_as(team: TeamConfig, user: dict[str, str]):
    """An MLflow client that sends ``user``'s credentials (MLflow reads them from the environment)."""
    import mlflow

    patch = pytest.MonkeyPatch()
    for key, value in _as(user).items():
        patch.setenv(key, value)
    return mlflow.MlflowClient(team.tracking_uri), patch


def test_members_share_the_experiment_and_only_manage_deletes_runs(team, users):
    """alice's and carol's runs land side by side in the one experiment. EDIT lets a member log
    and register, not delete: MLflow's permissions are per experiment (MANAGE deletes runs), so
    carol can delete neither alice's run nor her own; the admin can."""
    from mlflow.exceptions import MlflowException

    made = {}
    for name in ("alice", "carol"):
        client, patch = _client_as(team, users[name])
        try:
            experiment = client.get_experiment_by_name("ham10000-skin-lesions")
            made[name] = client.create_run(experiment.experiment_id, run_name=f"{name}'s run").info.run_id
            client.set_terminated(made[name])
        finally:
            patch.undo()
    client, patch = _client_as(team, users["carol"])
    try:
        for run_id in made.values():
            with pytest.raises(MlflowException) as refused:
                client.delete_run(run_id)
            assert refused.value.error_code == "PERMISSION_DENIED"
    finally:
        patch.undo()
    assert set(made.values()) <= {run["run_id"] for run in _runs(team, users["bob"])}
    admin = {
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": read_env(team.server_env)["MLFLOW_AUTH_ADMIN_PASSWORD"],
    }
    client, patch = _client_as(team, admin)
    try:
        client.delete_run(made["carol"])
    finally:
        patch.undo()
    active = {run["run_id"] for run in _runs(team, users["bob"]) if run["lifecycle_stage"] == "active"}
    assert made["alice"] in active and made["carol"] not in active


def test_a_user_name_taken_or_a_bad_role_is_one_line(team, users):
    again = _team_command(team, "user", "add", "alice", "--role", "edit")
    assert again.returncode == 1 and again.stderr.strip() == (
        f"error: MLflow at {team.tracking_uri} has a user 'alice' already (choose another name)"
    )
    bad = _team_command(team, "user", "add", "admin", "--role", "edit")
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "not 'admin'" in bad.stderr

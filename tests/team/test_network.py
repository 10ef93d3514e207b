"""Team mode across a network boundary: the servers on one "machine", a member on another.

Two network namespaces joined by a veth pair stand for the lab's server (192.0.2.10) and a
member's laptop (192.0.2.20), addresses from the documentation range; nothing leaves this
machine. ``make team-up TEAM_HOST=192.0.2.10`` runs in the server's namespace, so MLflow and S3
listen there over TLS with a certificate made for that address; the member's commands run in
the other namespace with only the files ``make team-user`` hands out. Making namespaces needs
root: elsewhere these tests are skipped, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.team import certificates
from pipeline.team.settings import read_env, write_env
from tests.conftest import REPO_ROOT
from tests.model.conftest import tiny_artifacts, train_stage_command  # noqa: F401 (fixture)
from tests.team.conftest import child_env, copy_project, git

pytestmark = pytest.mark.slow

SERVER, MEMBER = "192.0.2.10", "192.0.2.20"
EXPERIMENT, MODEL = "tests-lab", "tests-lab-cnn"
#: The tiny CNN stage's params: its own experiment and registered model (the members' grants).
PARAMS = (
    "base: {seed: 3, image_size: 32, experiment_name: %s}\n"
    "ingest: {data_dir: %s}\n"
    "train_cnn_focal: {input_size: 32, filters: [16, 32], blocks_per_stage: 1, epochs: 2, batch_size: 32, "
    "learning_rate: 0.003, warmup_epochs: 1, registered_model_name: %s}\n"
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def namespaces():
    """(server namespace, member namespace), joined by a veth pair; removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (`ip netns add`): run as root to test team mode across a network")
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) to make network namespaces")
    server, member = f"ham-lab-{os.getpid()}", f"ham-member-{os.getpid()}"
    link = f"hl{os.getpid() % 100000}"
    try:
        _ip("netns", "add", server)
        _ip("netns", "add", member)
        _ip("link", "add", f"{link}a", "type", "veth", "peer", "name", f"{link}b")
        _ip("link", "set", f"{link}a", "netns", server)
        _ip("link", "set", f"{link}b", "netns", member)
        for name, device, address in ((server, f"{link}a", SERVER), (member, f"{link}b", MEMBER)):
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", device)
            _ip("-n", name, "link", "set", device, "up")
            _ip("-n", name, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as error:
        for name in (server, member):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        pytest.skip(f"cannot make network namespaces here: {error.stderr.strip()}")
    try:
        yield server, member
    finally:
        for name in (server, member):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)  # takes the veth pair with it


def _in(namespace: str, command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``command`` run inside ``namespace`` (``ip netns exec``), its output captured."""
    kwargs.setdefault("timeout", 600)
    return subprocess.run(["ip", "netns", "exec", namespace, *command], capture_output=True, text=True, **kwargs)


def _team(namespace: str, folder: Path, *action: str, cwd: Path = REPO_ROOT, **kwargs) -> subprocess.CompletedProcess:
    """``python -m pipeline.team ACTION`` (``make team-up TEAM_HOST=...`` etc.) in the server namespace."""
    return _in(
        namespace,
        [sys.executable, "-m", "pipeline.team", *action, "--dir", str(folder), "--host", SERVER],
        cwd=cwd,
        **kwargs,
    )


@pytest.fixture(scope="module")
def lab(namespaces, tmp_path_factory):
    """The team servers on 192.0.2.10 over TLS and two members' handouts (env file + CA)."""
    server, member = namespaces
    root = Path(tempfile.mkdtemp(prefix="lab-"))
    root.chmod(0o711)  # under root, PostgreSQL runs as `nobody`: it must traverse this folder
    folder = root / ".team"
    params = root / "params.yaml"
    params.write_text(PARAMS % (EXPERIMENT, root / "ham", MODEL))
    try:
        started = _team(server, folder, "up")
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"TLS: {folder}/tls/server.pem for {SERVER}" in started.stdout, started.stdout
        handouts = {}
        for name, role in (("alice", "edit"), ("bob", "read")):
            made = _team(server, folder, "user", "add", name, "--role", role, "--params", str(params))
            assert made.returncode == 0, made.stderr
            # What the member gets: the env file and the CA, in a folder of their own.
            handout = tmp_path_factory.mktemp(f"{name}-laptop")
            shutil.copy2(folder / "users" / f"{name}.env", handout / f"{name}.env")
            shutil.copy2(folder / "users" / "team-ca.pem", handout / "team-ca.pem")
            handouts[name] = handout / f"{name}.env"
        yield {"server": server, "member": member, "folder": folder, "params": params, **handouts}
    finally:
        _team(server, folder, "down", timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def _member(lab, command: list[str], env_file: Path | None = None, cwd: Path = REPO_ROOT, **extra: str):
    """``command`` on the member's machine: with ``env_file``'s settings applied by the project's
    own wrapper (``pipeline.team exec``, what ``make ... TEAM=1`` runs), else plain."""
    if env_file is not None:
        command = [sys.executable, "-m", "pipeline.team", "exec", "--env", str(env_file), "--", *command]
    return _in(lab["member"], command, cwd=cwd, env=child_env(**extra))


def test_a_member_on_another_machine_pulls_trains_over_tls_and_loads_the_champion(lab, tiny_artifacts, tmp_path):  # noqa: F811
    alice, bob = lab["alice"], lab["bob"]
    timings = {}
    settings = read_env(alice)
    assert (
        settings["MLFLOW_TRACKING_URI"] == f"https://{SERVER}:5010"
        and settings["TEAM_S3_ENDPOINT_URL"] == f"https://{SERVER}:9010"
    )
    assert settings["MLFLOW_TRACKING_SERVER_CERT_PATH"] == settings["AWS_CA_BUNDLE"] == "team-ca.pem"

    # alice computes ingest + split on her machine and pushes them to the lab's remote over TLS.
    workspace = copy_project(tmp_path / "alice-work")
    repro = _member(lab, [sys.executable, "-m", "dvc", "repro", "split"], cwd=workspace)
    assert repro.returncode == 0, repro.stderr
    started = time.monotonic()
    pushed = _member(lab, [sys.executable, "-m", "dvc", "push", "--with-deps", "split"], alice, cwd=workspace)
    timings["dvc push (ingest + split)"] = time.monotonic() - started
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    git(workspace, "add", "-A")
    git(workspace, "commit", "-qm", "ingest + split", "--allow-empty")

    # A fresh clone on the member's machine: `make pull TEAM=1` gets every output, nothing to rerun.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(workspace), str(clone))
    stamp = tmp_path / "installed"
    stamp.touch()  # this interpreter's environment stands in for the clone's own `make venv`
    started = time.monotonic()
    pulled = _member(
        lab,
        [
            "make",
            "--no-print-directory",
            "pull",
            "TEAM=1",
            "TARGETS=split",
            f"TEAM_ENV={alice}",
            f"VENV={Path(sys.executable).parent.parent}",
            f"STAMP={stamp}",
        ],
        cwd=clone,
    )
    timings["make pull"] = time.monotonic() - started
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    status = _member(lab, [sys.executable, "-m", "dvc", "status", "split"], cwd=clone)
    assert "up to date" in status.stdout, status.stdout
    for name in ("metrics/split.json", "data/split/train.csv"):
        assert (clone / name).read_bytes() == (workspace / name).read_bytes(), name

    # One training stage on the tiny fixture, logged over TLS as alice.
    _, root = tiny_artifacts
    out = tmp_path / "stage"
    out.mkdir()
    started = time.monotonic()
    # (From the clone: the wrapper points the clone's DVC at the team remote, never this repository's.)
    trained = _member(
        lab, [sys.executable, *train_stage_command(REPO_ROOT, root, out, lab["params"])], alice, cwd=clone
    )
    timings["training stage (tiny CNN, 2 epochs) logged"] = time.monotonic() - started
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
    summary = json.loads((out / "model" / "mlflow_run.json").read_text())
    assert summary["tracking_uri"] == f"https://{SERVER}:5010", summary

    # bob, who may only read, loads the champion on his machine with no storage keys at all.
    bob_settings = {key: value for key, value in read_env(bob).items() if not key.startswith("AWS_")}
    bob_settings["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(bob.parent / "team-ca.pem")
    loaded = _member(
        lab,
        [
            sys.executable,
            "-c",
            f"import mlflow; m = mlflow.keras.load_model('models:/{MODEL}@champion'); print(m.output_shape)",
        ],
        **bob_settings,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip().splitlines()[-1] == "(None, 7)"
    found = _member(
        lab,
        [
            sys.executable,
            "-c",
            "import mlflow; v = mlflow.MlflowClient().get_model_version_by_alias("
            f"'{MODEL}', 'champion'); print(v.run_id)",
        ],
        **bob_settings,
    )
    assert found.stdout.strip().splitlines()[-1] == summary["run_id"], found.stderr[-2000:]
    print(
        "over TLS across the namespaces: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
    )


def _one_error(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return errors[0]


def test_a_client_that_does_not_trust_the_ca_and_plain_http_are_refused_in_one_line(lab, tiny_artifacts, tmp_path):  # noqa: F811
    alice = lab["alice"]
    password = read_env(alice)["MLFLOW_TRACKING_PASSWORD"]
    stranger = certificates.ensure(tmp_path / "elsewhere", SERVER)  # a CA of another team folder
    distrust = tmp_path / "alice.env"
    write_env(
        distrust,
        {**read_env(alice), "MLFLOW_TRACKING_SERVER_CERT_PATH": str(stranger.ca), "AWS_CA_BUNDLE": str(stranger.ca)},
        "test",
    )
    checked = _member(lab, ["true"], distrust, cwd=tmp_path)
    line = _one_error(checked)
    assert line.startswith(
        f"error: S3 at https://{SERVER}:9010 serves a TLS certificate that the CA file {stranger.ca} "
        "does not vouch for (certificate verify failed): set AWS_CA_BUNDLE"
    ), line

    # MLflow's side alone (a stage run without the wrapper), with the stranger's CA, then with none.
    _, root = tiny_artifacts
    credentials = {key: read_env(alice)[key] for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    for ca, trusted in ((str(stranger.ca), f"the CA file {stranger.ca}"), ("", "this machine's CA store")):
        out = tmp_path / f"stage-{bool(ca)}"
        result = _member(
            lab,
            [sys.executable, *train_stage_command(REPO_ROOT, root, out, lab["params"])],
            MLFLOW_TRACKING_URI=f"https://{SERVER}:5010",
            MLFLOW_TRACKING_SERVER_CERT_PATH=ca,
            **credentials,
        )
        line = _one_error(result)
        assert f"serves a TLS certificate that {trusted} does not vouch for" in line, line
        assert "MLFLOW_TRACKING_SERVER_CERT_PATH" in line and password not in result.stdout + result.stderr
        assert not out.exists()

    # The servers speak TLS only: a plain-HTTP request gets no answer from either.
    for port, path in ((5010, "/health"), (9010, "/healthz")):
        probe = _member(
            lab,
            [
                sys.executable,
                "-c",
                "import sys, urllib.request\ntry:\n urllib.request.urlopen(sys.argv[1], timeout=5)\n"
                "except Exception as error: print(type(error).__name__)\nelse: print('answered')",
                f"http://{SERVER}:{port}{path}",
            ],
        )
        assert probe.stdout.strip() not in ("", "answered"), (port, probe.stdout, probe.stderr)


def test_team_up_refuses_plain_http_off_loopback_in_one_line(lab, tmp_path):
    folder = tmp_path / ".team"
    refused = _team(lab["server"], folder, "up", "--no-tls")
    line = _one_error(refused)
    assert line == (
        f"error: plain HTTP on {SERVER}, which other machines reach, would carry passwords and S3 keys in the clear: "
        "leave TLS on (team-up makes a certificate) or give the lab's with --cert/--key"
    )
    assert not folder.exists()


def test_off_loopback_the_s3_gateways_grpc_takes_only_the_servers_own_certificate(lab):
    """SeaweedFS' gateway binds its gRPC port (whose ``Configure`` call replaces the S3 keys)
    to the gateway's address too: from another machine it must refuse anyone without the
    servers' internal certificate, and let that certificate through."""
    tls = lab["folder"] / "tls"
    listening = _in(lab["server"], ["ss", "-Hltn"]).stdout.split()
    ports = {int(address.rsplit(":", 1)[1]) for address in listening if address.startswith(f"{SERVER}:")}
    assert ports - {5010, 9010}, listening  # the gateway's gRPC port
    probe = (
        "import sys, grpc\n"
        "def call(credentials):\n"
        "    options = [('grpc.ssl_target_name_override', '127.0.0.1')]\n"
        "    channel = grpc.secure_channel(sys.argv[1], credentials, options) if credentials else grpc.insecure_channel(sys.argv[1])\n"
        "    try:\n"
        "        channel.unary_unary('/probe.Probe/Call')(b'', timeout=5)\n"
        "    except grpc.RpcError as error:\n"
        "        return error.code().name\n"
        "ca, folder = open(sys.argv[2] + '/internal-ca.pem', 'rb').read(), sys.argv[2]\n"
        "def own(stem):\n"
        "    return grpc.ssl_channel_credentials(ca, open(f'{folder}/{stem}.key', 'rb').read(), open(f'{folder}/{stem}.pem', 'rb').read())\n"
        "print(call(None), call(grpc.ssl_channel_credentials(ca)), call(own('server')), call(own('internal')))\n"
    )
    for port in ports - {5010, 9010}:
        result = _member(lab, [sys.executable, "-c", probe, f"{SERVER}:{port}", str(tls)])
        # plain, TLS without a certificate, the public server certificate: no connection; the
        # internal certificate: connected (the probe's made-up method is then unknown).
        assert result.stdout.split() == ["UNAVAILABLE", "UNAVAILABLE", "UNAVAILABLE", "UNIMPLEMENTED"], (
            port,
            result.stdout,
            result.stderr[-1000:],
        )

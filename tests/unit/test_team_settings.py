"""Team mode's settings files and secret hygiene (no servers: see tests/team for those)."""

import stat
import subprocess
import sys

import pytest

from pipeline.errors import PipelineError, redact
from pipeline.team.s3 import Credentials
from pipeline.team.settings import bucket_of, client_values, new_password, read_env, write_env


def test_env_files_are_private_and_read_back(tmp_path):
    path = tmp_path / "team" / "client.env"
    values = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5010", "AWS_SECRET_ACCESS_KEY": "a/b+c=d"}
    write_env(path, values, "two\nlines")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("# two\n# lines\n")
    assert read_env(path) == values
    assert not (tmp_path / "team" / "client.env.partial").exists()


def test_env_files_accept_export_quotes_and_comments(tmp_path):
    path = tmp_path / "x.env"
    path.write_text("# c\n\nexport A='1'\nB=\"two words\"\n")
    assert read_env(path) == {"A": "1", "B": "two words"}
    path.write_text("A=1\nnot a line\n")
    with pytest.raises(PipelineError, match="line 2: expected KEY=VALUE"):
        read_env(path)


def test_a_missing_or_incomplete_client_file_says_what_to_do(tmp_path):
    with pytest.raises(PipelineError, match="make team-up.*team.env.example"):
        read_env(tmp_path / "none.env")
    path = tmp_path / "c.env"
    path.write_text("MLFLOW_TRACKING_URI=http://x\nTEAM_DVC_REMOTE_URL=s3://b/p\n")
    with pytest.raises(PipelineError, match="lacks AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY"):
        client_values(path)
    path.write_text(
        "MLFLOW_TRACKING_URI=http://x\nTEAM_DVC_REMOTE_URL=/tmp/remote\nAWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACCESS_KEY=b\n"
    )
    with pytest.raises(PipelineError, match="must be an s3:// URL"):
        client_values(path)
    assert bucket_of("s3://lab-bucket/ham10000/dvc") == "lab-bucket"


def test_secrets_never_show_in_reprs_or_error_lines():
    secret = new_password()
    assert len(secret) >= 32 and secret != new_password()
    assert secret not in repr(Credentials("AKIA1", secret))
    line = redact(f"cannot connect to postgresql://mlflow:{secret}@127.0.0.1:5433/mlflow")
    assert secret not in line and "postgresql://mlflow:***@127.0.0.1:5433/mlflow" in line
    assert redact("s3://bucket/key http://127.0.0.1:5000") == "s3://bucket/key http://127.0.0.1:5000"


def test_exec_refuses_a_missing_settings_file_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.team", "exec", "--env", str(tmp_path / "none.env"), "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: no team settings at")


def test_s3_identities_give_each_role_its_own_bucket_only_in_a_private_file(tmp_path):
    import json

    from pipeline.team import s3

    keys = {"dvc": s3.new_credentials("dvc"), "mlflow": s3.new_credentials("mlflow")}
    assert keys["dvc"].key_id.startswith("DVC") and keys["dvc"] != keys["mlflow"] and len(keys["dvc"].secret) >= 30
    path = tmp_path / "team" / "s3-identities.json"
    s3.write_identities(path, keys, {"dvc": "ham10000-dvc", "mlflow": "ham10000-mlflow"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    identities = {entry["name"]: entry for entry in json.loads(path.read_text())["identities"]}
    assert identities["dvc"]["credentials"] == [{"accessKey": keys["dvc"].key_id, "secretKey": keys["dvc"].secret}]
    assert identities["dvc"]["actions"] == [
        f"{action}:ham10000-dvc" for action in ("Read", "Write", "List", "Tagging", "Admin")
    ]
    assert all(action.endswith(":ham10000-mlflow") for action in identities["mlflow"]["actions"])
    # The internal servers' ports are picked once and kept: a restart finds the same volume server.
    data = tmp_path / "s3"
    data.mkdir()
    first = s3._internal_ports(data)
    assert len(set(first.values())) == 9 and s3._internal_ports(data) == first


# TLS: certificates, which binds need it, and the CA file a client env file names.


def _verified(files, host: str) -> bool:
    """Whether a TLS client that trusts only ``files.ca`` accepts ``files.cert`` for ``host``
    (a real handshake over a socket pair, as MLflow's and boto3's clients would do it)."""
    import socket
    import ssl
    import threading

    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(files.cert, files.key)
    client_side = ssl.create_default_context(cafile=str(files.ca))
    left, right = socket.socketpair()
    done = threading.Thread(target=lambda: _quiet_accept(server_side, right))
    done.start()
    try:
        with client_side.wrap_socket(left, server_hostname=host):
            return True
    except ssl.SSLCertVerificationError:
        return False
    finally:
        done.join(5)


def _quiet_accept(context, sock) -> None:
    import ssl

    try:
        context.wrap_socket(sock, server_side=True).close()
    except (ssl.SSLError, OSError):
        sock.close()


def test_team_up_makes_a_ca_and_a_certificate_for_the_address_and_keeps_them(tmp_path):
    from pipeline.team import certificates

    files = certificates.ensure(tmp_path / "tls", "192.0.2.10")
    assert _verified(files, "192.0.2.10") and _verified(files, "127.0.0.1")
    assert not _verified(files, "192.0.2.11")  # another address: refused by the client
    for key in (files.key, tmp_path / "tls" / "ca.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = files.cert.read_bytes()
    assert certificates.ensure(tmp_path / "tls", "192.0.2.10").cert.read_bytes() == first  # reused
    moved = certificates.ensure(tmp_path / "tls", "lab-server.example")  # a new address: a new certificate, same CA
    assert moved.cert.read_bytes() != first and moved.ca == files.ca and _verified(moved, "lab-server.example")
    # Another team folder's CA does not vouch for this certificate.
    other = certificates.ensure(tmp_path / "other", "192.0.2.10")
    assert not _verified(certificates.TLSFiles(moved.cert, moved.key, other.ca), "lab-server.example")


def test_tls_is_on_exactly_off_loopback_and_plain_http_there_is_refused(tmp_path):
    from pipeline.team import stack
    from pipeline.team.settings import TeamConfig

    assert TeamConfig().tracking_uri == "http://127.0.0.1:5010" and TeamConfig().trusted_ca is None
    lab = TeamConfig(folder=tmp_path / ".team", host="192.0.2.10")
    assert lab.tracking_uri == "https://192.0.2.10:5010" and lab.s3_endpoint == "https://192.0.2.10:9010"
    assert lab.trusted_ca == (tmp_path / ".team" / "tls" / "ca.pem").resolve()
    with pytest.raises(PipelineError, match="plain HTTP on 192.0.2.10, which other machines reach"):
        stack.tls_files(TeamConfig(folder=tmp_path / ".team", host="192.0.2.10", tls=False))
    with pytest.raises(PipelineError, match="binds every interface"):
        stack.tls_files(TeamConfig(folder=tmp_path / ".team", host="0.0.0.0"))
    with pytest.raises(PipelineError, match="needs both --cert and --key"):
        stack.tls_files(TeamConfig(folder=tmp_path / ".team", host="192.0.2.10", cert=tmp_path / "c.pem"))
    assert not (tmp_path / ".team").exists()  # refused before anything is made
    assert stack.tls_files(TeamConfig(folder=tmp_path / ".team")) is None  # loopback: plain HTTP


def test_a_labs_own_certificate_is_used_as_given(tmp_path):
    from pipeline.team import certificates, stack
    from pipeline.team.settings import TeamConfig

    made = certificates.ensure(tmp_path / "lab", "192.0.2.10")
    config = TeamConfig(folder=tmp_path / ".team", host="192.0.2.10", cert=made.cert, key=made.key, ca=made.ca)
    files = stack.tls_files(config)
    assert (files.cert, files.key) == (
        made.cert.resolve(),
        made.key.resolve(),
    ) and config.trusted_ca == made.ca.resolve()
    assert not (tmp_path / ".team" / "tls").exists()
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(PipelineError, match="not a PEM certificate"):
        stack.tls_files(
            TeamConfig(folder=tmp_path / ".team", host="192.0.2.10", cert=tmp_path / "bad.pem", key=made.key)
        )


def test_a_client_file_names_its_ca_relative_to_itself(tmp_path):
    path = tmp_path / "member" / "alice.env"
    path.parent.mkdir()
    keys = "MLFLOW_TRACKING_URI=https://192.0.2.10:5010\nTEAM_DVC_REMOTE_URL=s3://b/p\nAWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACCESS_KEY=b\n"
    path.write_text(keys + "MLFLOW_TRACKING_SERVER_CERT_PATH=team-ca.pem\nAWS_CA_BUNDLE=team-ca.pem\n")
    with pytest.raises(
        PipelineError, match=r"MLFLOW_TRACKING_SERVER_CERT_PATH names .*team-ca.pem, which does not exist"
    ):
        client_values(path)
    (path.parent / "team-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    values = client_values(path)
    assert (
        values["MLFLOW_TRACKING_SERVER_CERT_PATH"]
        == values["AWS_CA_BUNDLE"]
        == str((path.parent / "team-ca.pem").resolve())
    )

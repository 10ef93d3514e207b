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
    path.write_text("MLFLOW_TRACKING_URI=http://x\nTEAM_DVC_REMOTE_URL=/tmp/remote\nAWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACCESS_KEY=b\n")
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
    result = subprocess.run([sys.executable, "-m", "pipeline.team", "exec", "--env", str(tmp_path / "none.env"), "--", "true"],
                            capture_output=True, text=True, timeout=60)
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
    assert identities["dvc"]["actions"] == [f"{action}:ham10000-dvc" for action in ("Read", "Write", "List", "Tagging", "Admin")]
    assert all(action.endswith(":ham10000-mlflow") for action in identities["mlflow"]["actions"])
    # The internal servers' ports are picked once and kept: a restart finds the same volume server.
    data = tmp_path / "s3"
    data.mkdir()
    first = s3._internal_ports(data)
    assert len(set(first.values())) == 9 and s3._internal_ports(data) == first

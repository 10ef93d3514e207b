"""predict: single image, folder, CSV, registry URI, TTA, a corrupt file in a batch, Grad-CAM."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline.serving.predict import main as predict_main
from pipeline.tracking.recorder import MODEL_FILE
from pipeline.training.train import train_cnn_focal
from tests.model.conftest import make_paths, tiny_cnn

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tiny_artifacts, tmp_path_factory):
    """A tiny trained CNN, registered in a throwaway MLflow store."""
    import mlflow

    base, root = tiny_artifacts
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        paths = make_paths(root, "predict_model")
        train_cnn_focal(base, tiny_cnn(epochs=2, registered_model_name="tests-predict"), paths)
    return paths.out_dir / MODEL_FILE, uri, root / "ham"


@pytest.fixture
def images(tmp_path, trained):
    folder = tmp_path / "images" / "nested"
    folder.mkdir(parents=True)
    sources = sorted((trained[2] / "HAM10000_images_part_1").glob("*.jpg"))[:5]
    for source in sources:
        Image.open(source).save(folder / source.name)
    Image.new("RGB", (700, 300), (150, 90, 60)).save(tmp_path / "images" / "wide_photo.png")
    return tmp_path / "images"


def _run(argv, capsys):
    status = 0
    try:
        predict_main(argv)
    except Exception as error:  # PipelineError: what run_cli turns into exit 1
        status = 1
        message = str(error)
    captured = capsys.readouterr()
    return status, captured.out, captured.err + (message if status else "")


def test_single_image_gives_one_json_line(trained, images, capsys):
    status, out, _ = _run(["--model", str(trained[0]), str(images / "wide_photo.png")], capsys)
    [line] = out.strip().splitlines()
    result = json.loads(line)
    assert status == 0 and result["image"].endswith("wide_photo.png")
    assert set(result["probabilities"]) == {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
    assert result["dx"] == max(result["probabilities"], key=result["probabilities"].get)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_folder_is_walked_and_written_as_csv(trained, images, tmp_path, capsys):
    output = tmp_path / "out" / "predictions.csv"
    status, out, err = _run(
        ["--model", str(trained[0].parent), "--batch-size", "2", "--output", str(output), str(images)], capsys
    )
    rows = list(csv.DictReader(output.open()))
    assert status == 0 and out == "" and "classified 6 image(s), 0 failed" in err
    assert len(rows) == 6 and {"image", "dx", "p_mel", "p_nv"} <= set(rows[0])


def test_a_corrupt_file_is_reported_and_the_rest_completes(trained, images, capsys):
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    status, out, err = _run(["--model", str(trained[0]), str(images)], capsys)
    assert status == 1
    assert "error: " in err and "broken.jpg" in err
    assert len(out.strip().splitlines()) == 6


def test_tta_changes_nothing_structural_and_stays_a_distribution(trained, images, capsys):
    _, plain, _ = _run(["--model", str(trained[0]), str(images)], capsys)
    _, tta, _ = _run(["--model", str(trained[0]), "--tta", str(images)], capsys)
    plain_rows = [json.loads(line) for line in plain.splitlines()]
    tta_rows = [json.loads(line) for line in tta.splitlines()]
    assert [r["image"] for r in plain_rows] == [r["image"] for r in tta_rows]
    for row in tta_rows:
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert any(
        not np.allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-6)
        for a, b in zip(plain_rows, tta_rows)
    )


def test_registry_uri_predicts_like_the_file(trained, images, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained[1])
    _, from_file, _ = _run(["--model", str(trained[0]), str(images)], capsys)
    status, from_registry, _ = _run(["--model", "models:/tests-predict@champion", str(images)], capsys)
    assert status == 0
    for a, b in zip(from_file.splitlines(), from_registry.splitlines()):
        a, b = json.loads(a), json.loads(b)
        assert a["dx"] == b["dx"]
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-5)


def test_grad_cam_overlays_are_written(trained, images, tmp_path, capsys):
    explain = tmp_path / "gradcam"
    status, _, _ = _run(["--model", str(trained[0]), "--explain", str(explain), str(images / "wide_photo.png")], capsys)
    overlay = explain / "wide_photo_gradcam.png"
    assert status == 0 and overlay.is_file()
    picture = np.asarray(Image.open(overlay))
    assert picture.shape[1] == 2 * picture.shape[0] and picture.shape[2] == 3  # original | overlay


def test_command_line_exit_status_and_one_line_error(trained, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.serving.predict", "--model", str(tmp_path / "nope.keras"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nope.keras'}: model file not found"

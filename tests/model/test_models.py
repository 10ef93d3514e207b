"""Model builders: class order in the file, EfficientNetB7 weights handling."""

import numpy as np
import pytest

from pipeline.config import HAM10000_CLASSES, BaseParams, EffNetParams
from pipeline.errors import PipelineError
from pipeline.models.builders import (
    EFFNETB7_WEIGHTS_FILE,
    build_cnn,
    build_effnetb7,
    keras_cache_weights_path,
    model_class_names,
    model_input_size,
    resolve_effnet_weights,
    unfreeze_top_layers,
)
from tests.model.conftest import tiny_cnn


def _effnet(**changes):
    values = dict(input_size=32, epochs=1, batch_size=4, learning_rate=0.001, weights="none", registered_model_name="t")
    values.update(changes)
    return EffNetParams(**values)


def test_cnn_outputs_probabilities_and_carries_its_classes():
    model = build_cnn(tiny_cnn(input_size=40), HAM10000_CLASSES)
    assert model_class_names(model) == list(HAM10000_CLASSES)
    assert model_input_size(model) == 40
    probabilities = model.predict(np.random.default_rng(0).uniform(0, 255, (3, 40, 40, 3)).astype("float32"), verbose=0)
    assert probabilities.shape == (3, 7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(("block", "convolution"), [("separable", "SeparableConv2D"), ("conv", "Conv2D")])
def test_cnn_block_type_and_first_stage_stride_shape_the_network(block, convolution):
    params = tiny_cnn(input_size=64, filters=(16, 32), block=block, first_stage_stride=2)
    model = build_cnn(params, HAM10000_CLASSES)
    block_convolutions = {type(layer).__name__ for layer in model.layers if layer.name.endswith(("_conv1", "_conv2"))}
    assert block_convolutions == {convolution}
    # stem /2, first stage /2, second stage /2: 64 -> 8 before pooling
    assert model.get_layer("pool").input.shape[1:3] == (8, 8)
    unstrided = build_cnn(tiny_cnn(input_size=64, filters=(16, 32), block=block), HAM10000_CLASSES)
    assert unstrided.get_layer("pool").input.shape[1:3] == (16, 16)


def test_cnn_batch_norm_momentum_reaches_every_batch_norm_layer():
    model = build_cnn(tiny_cnn(batch_norm_momentum=0.99), HAM10000_CLASSES)
    momenta = [layer.momentum for layer in model.layers if type(layer).__name__ == "BatchNormalization"]
    assert len(momenta) >= 5 and set(momenta) == {0.99}


def test_missing_imagenet_weights_say_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    expected = tmp_path / "keras" / "models" / EFFNETB7_WEIGHTS_FILE
    assert keras_cache_weights_path() == expected
    with pytest.raises(
        PipelineError, match=f"not found at {expected}: download .*{EFFNETB7_WEIGHTS_FILE} to that path"
    ):
        resolve_effnet_weights("imagenet")
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"weights")
    assert resolve_effnet_weights("imagenet") == "imagenet"


def test_weights_path_and_none(tmp_path):
    assert resolve_effnet_weights("none") is None
    with pytest.raises(PipelineError, match="train_effnetb7.weights: file .*absent.h5 not found"):
        resolve_effnet_weights(str(tmp_path / "absent.h5"))
    local = tmp_path / "b7.h5"
    local.write_bytes(b"x")
    assert resolve_effnet_weights(str(local)) == str(local)


@pytest.mark.slow
def test_effnetb7_from_scratch_builds_a_trainable_b7_with_our_head(tmp_path):
    model, backbone = build_effnetb7(_effnet(), HAM10000_CLASSES)
    assert backbone.name == "efficientnetb7" and backbone.trainable
    assert model_class_names(model) == list(HAM10000_CLASSES) and model_input_size(model) == 32
    assert model.count_params() > 60_000_000  # B7, not a smaller variant
    # Fine-tuning keeps BatchNorm frozen while opening the top layers.
    unfreeze_top_layers(backbone, 20)
    top = backbone.layers[-20:]
    assert any(layer.trainable for layer in top)
    assert not any(layer.trainable for layer in top if layer.__class__.__name__ == "BatchNormalization")
    assert not any(layer.trainable for layer in backbone.layers[:-20])


@pytest.mark.slow
def test_effnetb7_stage_with_a_weights_file_in_keras_layout_loads_it_and_plans_both_phases(tmp_path):
    """A file in the exact layout of Keras' efficientnetb7_notop.h5 (legacy HDF5, one group per
    layer, written by Keras' own legacy writer from a B7 notop) reaches the stage's backbone, and
    the stage plans head training then fine-tuning that keeps the layers below the top frozen.
    (The phases' training itself is the shared loop, run end to end by the Lite stage test.)"""
    import h5py
    import keras
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    from pipeline.training.train import train_effnetb7
    from tests.model.conftest import built_by, make_paths

    source = keras.applications.EfficientNetB7(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    rng = np.random.default_rng(3)
    source.get_layer("stem_conv").set_weights(
        [rng.normal(0, 0.1, w.shape).astype("float32") for w in source.get_layer("stem_conv").get_weights()]
    )
    weights_file = tmp_path / EFFNETB7_WEIGHTS_FILE
    with h5py.File(weights_file, "w") as handle:
        save_weights_to_hdf5_group(handle, source)
    with h5py.File(weights_file, "r") as handle:  # the layout Keras publishes: layer groups by name
        assert "stem_conv" in [
            name.decode() if isinstance(name, bytes) else name for name in handle.attrs["layer_names"]
        ]

    params = _effnet(weights=str(weights_file), epochs=1, fine_tune_epochs=1, fine_tune_layers=20)
    base = BaseParams(seed=1, classes=HAM10000_CLASSES, image_size=32, experiment_name="t")
    model, phases = built_by(train_effnetb7, base, params, make_paths(tmp_path, "b7"))

    assert [(phase.name, phase.epochs) for phase in phases] == [("head", 1), ("fine_tune", 1)]
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    assert backbone.name == "efficientnetb7" and not backbone.trainable  # the head phase: frozen
    np.testing.assert_array_equal(
        backbone.get_layer("stem_conv").get_weights()[0], source.get_layer("stem_conv").get_weights()[0]
    )
    phases[1].prepare(model)
    assert any(layer.trainable for layer in backbone.layers[-20:])
    assert not any(layer.trainable for layer in backbone.layers[:-20])  # the stem keeps the file's weights
    # Without a file (weights: none) the same stage is one phase from scratch.
    _, scratch = built_by(train_effnetb7, base, _effnet(fine_tune_epochs=1), make_paths(tmp_path, "b7s"))
    assert [phase.name for phase in scratch] == ["train"]

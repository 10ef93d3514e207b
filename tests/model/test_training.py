"""Training: the loss goes down, models save and reload exactly, runs are tracked and resumable."""

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline.io import read_json
from pipeline.models.builders import build_cnn, model_class_names, model_input_size
from pipeline.serving.inference import load_model, predict_probabilities
from pipeline.tracking import mlflow_runs as tracking
from pipeline.tracking.recorder import HISTORY_FILE, MODEL_FILE, RUN_FILE
from pipeline.training.callbacks import EpochLogger
from pipeline.training.console import kept
from pipeline.training.train import train_cnn_focal
from tests.model.conftest import make_paths, tiny_cnn

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seed_runs(tiny_artifacts, tmp_path_factory, migrated_mlflow_db):
    """Two-epoch stage runs shared by the tests that compare runs: seed 42 twice, seed 43 once."""
    from unittest.mock import patch

    import mlflow

    base, root = tiny_artifacts
    store = tmp_path_factory.mktemp("seed_runs") / "mlflow.db"
    shutil.copyfile(migrated_mlflow_db, store)
    uri = f"sqlite:///{store}"
    runs = {}
    with patch.dict("os.environ", {"MLFLOW_TRACKING_URI": uri}):
        mlflow.set_tracking_uri(uri)
        for name, seed in (("42", 42), ("42 again", 42), ("43", 43)):
            paths = make_paths(root, f"cnn_seed_{name.replace(' ', '_')}")
            train_cnn_focal(base, tiny_cnn(epochs=2, seed=seed), paths)
            runs[name] = paths.out_dir
    return runs


def test_a_tiny_training_run_lowers_the_loss(base_params):
    import keras

    from pipeline.data.datasets import make_dataset
    from pipeline.training.backend import configure
    from pipeline.training.recipe import build_loss, build_optimizer

    configure(base_params.seed)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 96).astype(np.int32)
    # Each class has its own mean colour, so a CNN can separate them.
    images = np.clip(rng.normal(30 + labels[:, None, None, None] * 30, 20, (96, 32, 32, 3)), 0, 255).astype(np.uint8)
    params = tiny_cnn(epochs=8)
    model = build_cnn(params, base_params.classes)
    model.compile(optimizer=build_optimizer(params, 0.003, 3, 8), loss=build_loss(params, None))
    dataset = make_dataset(images, labels, 7, 32, training=True, seed=1)
    history = model.fit(dataset, epochs=8, verbose=0).history["loss"]
    assert history[-1] < 0.6 * history[0]
    assert isinstance(model.optimizer, keras.optimizers.AdamW)


def test_train_stage_saves_tracks_and_registers(tiny_artifacts, mlflow_store, capsys):
    import mlflow

    base, root = tiny_artifacts
    paths = dataclasses.replace(make_paths(root, "cnn_once"), source=root / "ham")
    summary = train_cnn_focal(base, tiny_cnn(), paths)
    # One line per epoch in the stage log (the project's, with its timing); no Keras progress lines.
    log = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in log if line.lower().startswith("epoch")] == ["epoch 1", "epoch 2", "epoch 3"]

    assert (paths.out_dir / MODEL_FILE).is_file()
    history = pd.read_csv(paths.out_dir / HISTORY_FILE)
    assert history["epoch"].tolist() == [1, 2, 3]
    assert {"loss", "val_balanced_accuracy", "val_macro_f1", "val_melanoma_recall"} <= set(history.columns)
    assert read_json(paths.metrics)["best_val_balanced_accuracy"] == pytest.approx(
        history["val_balanced_accuracy"].max()
    )
    assert not any(paths.checkpoints.iterdir()), "checkpoints are removed once a run completes"

    client = mlflow.MlflowClient()
    run = client.get_run(summary["run_id"])
    assert run.data.params["train_cnn_focal.epochs"] == "3"
    assert run.data.tags["stage"] == "train_cnn_focal" and len(run.data.tags["params_hash"]) == 16
    # The UI tells approaches and data sets apart: run name, dataset input, experiment kind.
    assert run.info.run_name == "cnn_focal-ham"
    inputs = run.inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("ham", run.data.tags["data_hash"])]
    assert str(root / "ham") in inputs[0].dataset.source and inputs[0].tags[0].value == "training"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert len(client.get_metric_history(run.info.run_id, "val_balanced_accuracy")) == 3
    champion = client.get_model_version_by_alias("tests-cnn", tracking.CHAMPION_ALIAS)
    assert str(champion.version) == summary["version"] == "1"
    assert read_json(paths.out_dir / RUN_FILE)["run_id"] == run.info.run_id
    assert read_json(paths.out_dir / RUN_FILE)["smoke_run"] is False and run.data.tags["smoke_run"] == "false"
    assert run.data.params["train_cnn_focal.seed"] == str(tiny_cnn().seed)

    reloaded = mlflow.keras.load_model("models:/tests-cnn@champion")
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0), load_model(paths.out_dir).predict(images, verbose=0), atol=1e-6
    )


def test_saved_model_reloads_in_safe_mode_and_predicts_identically(tiny_artifacts, seed_runs):
    base, _ = tiny_artifacts
    model = load_model(seed_runs["42"] / MODEL_FILE)
    assert model_class_names(model) == list(base.classes) and model_input_size(model) == 32
    images = np.random.default_rng(1).integers(0, 255, (9, 32, 32, 3), dtype=np.uint8)
    first = predict_probabilities(model, images)
    second = predict_probabilities(load_model(seed_runs["42"] / MODEL_FILE), images)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first.sum(axis=1), 1.0, rtol=1e-5)


def test_same_seed_same_weights_on_cpu(seed_runs):
    weights = [load_model(seed_runs[name]).get_weights() for name in ("42", "42 again")]
    for first, second in zip(*weights):
        np.testing.assert_array_equal(first, second)
    # Another training seed (the split and the data unchanged): another model.
    assert any((a != b).any() for a, b in zip(weights[0], load_model(seed_runs["43"]).get_weights()))


def test_an_interrupted_run_resumes_from_its_checkpoint(tiny_artifacts, mlflow_store, monkeypatch):
    base, root = tiny_artifacts
    paths = make_paths(root, "cnn_resume")
    original = EpochLogger.on_epoch_end

    def interrupt_after_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(EpochLogger, "on_epoch_end", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_cnn_focal(base, tiny_cnn(epochs=4), paths)
    assert not (paths.out_dir / MODEL_FILE).exists()
    checkpoint = next(paths.checkpoints.iterdir())
    interrupted_run = read_json(checkpoint / RUN_FILE)["run_id"]

    monkeypatch.setattr(EpochLogger, "on_epoch_end", original)
    summary = train_cnn_focal(base, tiny_cnn(epochs=4), paths)
    history = pd.read_csv(paths.out_dir / HISTORY_FILE)
    # Epoch 1 was backed up; epoch 2 was interrupted before its backup, so it reruns.
    assert history["epoch"].tolist() == [2, 3, 4]
    assert summary["run_id"] == interrupted_run, "a resumed stage continues its MLflow run"


def test_a_crash_while_weights_are_written_leaves_the_last_record_whole_and_the_run_resumes(
    tiny_artifacts, mlflow_store, monkeypatch
):
    """Weights go to a file of their own, then the record that names them (best.json): killed in
    the middle of a write, the checkpoint folder still holds a record whose weights load."""
    import keras

    from pipeline.training.checkpoints import BEST_FILE

    base, root = tiny_artifacts
    paths = make_paths(root, "cnn_killed")
    real_save = keras.Model.save_weights
    ours = []

    def killed_in_the_second_write(self, filepath, *args, **kwargs):
        if ".partial." in str(filepath):
            ours.append(filepath)
            if len(ours) == 2:  # the second of our writes (a better epoch, or the phase's end)
                with open(filepath, "wb") as half:
                    half.write(b"\x89HDF\r\n half a file")
                raise KeyboardInterrupt("killed mid-write")
        return real_save(self, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", killed_in_the_second_write)
    with pytest.raises(KeyboardInterrupt):
        train_cnn_focal(base, tiny_cnn(epochs=3), paths)
    checkpoint = next(paths.checkpoints.iterdir())
    record = read_json(checkpoint / BEST_FILE)
    assert not list(checkpoint.glob("*partial*")), "no half-written file is left where the record could point"
    build_cnn(tiny_cnn(), base.classes).load_weights(checkpoint / record["weights"])  # the record's weights are whole

    monkeypatch.setattr(keras.Model, "save_weights", real_save)
    summary = train_cnn_focal(base, tiny_cnn(epochs=3), paths)
    assert summary["best_epoch"] >= record["epoch"] + 1
    assert load_model(paths.out_dir).predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0).shape == (1, 7)


def test_mlflow_down_fails_fast_before_training(tiny_artifacts, monkeypatch):
    import time

    base, root = tiny_artifacts
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    paths = make_paths(root, "cnn_no_server")
    started = time.monotonic()
    with pytest.raises(tracking.TrackingError, match="not reachable.*make server"):
        train_cnn_focal(base, tiny_cnn(), paths)
    assert time.monotonic() - started < 30
    assert not paths.out_dir.exists()


def test_a_mixed_precision_model_is_saved_for_full_precision_inference(base_params, tmp_path):
    import keras

    from pipeline.training.export import save_for_inference

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_cnn(tiny_cnn(), base_params.classes)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("stem_conv").dtype_policy.name == "mixed_bfloat16"
    save_for_inference(model, tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert {layer.dtype_policy.name for layer in loaded.layers} == {"float32"}
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=0.05)


def test_a_diverged_run_fails_in_one_line_and_keeps_no_model(tiny_artifacts, mlflow_store, monkeypatch):
    import keras
    import mlflow

    from pipeline.errors import PipelineError
    from pipeline.training import train

    base, root = tiny_artifacts
    paths = make_paths(root, "diverged")
    monkeypatch.setattr(
        train, "build_loss", lambda params, alpha: lambda y_true, y_pred: keras.ops.mean(y_pred) * float("nan")
    )
    with pytest.raises(PipelineError, match=r"training diverged: the loss is nan in epoch 1 \(precision float32\)"):
        train_cnn_focal(base, tiny_cnn(epochs=2), paths)
    assert not paths.out_dir.exists()
    runs = mlflow.search_runs(experiment_names=[base.experiment_name], output_format="list")
    assert [run.info.status for run in runs if run.data.tags.get("stage") == "train_cnn_focal"][:1] == ["FAILED"]


def test_an_unknown_precision_is_refused_in_one_line_naming_the_key():
    from pipeline.config import CnnParams, parse_section
    from pipeline.errors import ParamsError

    raw = {key: value for key, value in dataclasses.asdict(tiny_cnn()).items()}
    raw["filters"] = list(raw["filters"])
    with pytest.raises(
        ParamsError, match=r"train_cnn_focal.precision: must be one of \['float32', 'mixed'\], got 'half'"
    ):
        parse_section({**raw, "precision": "half"}, CnnParams, "params.yaml: train_cnn_focal")


@pytest.mark.parametrize("variable", ["PIPELINE_PRECISION", "PIPELINE_MAX_TRAIN_MINUTES"])
def test_an_environment_variable_that_once_changed_the_model_is_refused_naming_its_parameter(
    variable, tiny_artifacts, monkeypatch
):
    from pipeline.errors import PipelineError

    base, root = tiny_artifacts
    paths = make_paths(root, "moved_setting")
    monkeypatch.setenv(variable, "1")
    with pytest.raises(
        PipelineError, match=rf"{variable} is no longer read: set the parameter train_cnn_focal\.\w+ instead"
    ):
        train_cnn_focal(base, tiny_cnn(), paths)
    assert not paths.out_dir.exists()


def test_a_time_limit_stops_after_the_epoch_and_keeps_the_best(tiny_artifacts, mlflow_store, monkeypatch):
    import mlflow

    base, root = tiny_artifacts
    paths = make_paths(root, "time_limited")
    summary = train_cnn_focal(
        base, tiny_cnn(epochs=3, max_train_minutes=0.0001), paths
    )  # passed during the first epoch
    assert pd.read_csv(paths.out_dir / HISTORY_FILE)["epoch"].tolist() == [1]
    assert summary["best_epoch"] == 1 and (paths.out_dir / MODEL_FILE).is_file()
    assert mlflow.MlflowClient().get_run(summary["run_id"]).data.tags["time_limit_minutes"] == "0.0001"


def test_weight_averaging_judges_and_keeps_the_averaged_model_and_trains_on(base_params, tmp_path):
    """With ``ema_momentum`` each epoch is scored and kept as the optimizer's moving average,
    while training goes on from the raw weights (the averages are swapped back after scoring)."""
    import keras

    from pipeline.data.datasets import LabelledImages, make_dataset
    from pipeline.training.backend import configure
    from pipeline.training.callbacks import ValidationMetrics
    from pipeline.training.recipe import build_loss, build_optimizer

    configure(base_params.seed)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 96).astype(np.int32)
    images = np.clip(rng.normal(30 + labels[:, None, None, None] * 30, 20, (96, 32, 32, 3)), 0, 255).astype(np.uint8)
    val = LabelledImages(images[:32], labels[:32], [str(i) for i in range(32)])
    params = tiny_cnn(ema_momentum=0.9)
    model = build_cnn(params, base_params.classes)
    loss = build_loss(params, None)
    model.compile(optimizer=build_optimizer(params, 0.003, 3, 4, params.ema_momentum), loss=loss)
    assert model.optimizer.use_ema and model.optimizer.ema_momentum == 0.9

    seen = []

    class AfterScoring(keras.callbacks.Callback):
        """Runs after ValidationMetrics: what the model holds then, and what the averages are."""

        def on_epoch_end(self, epoch, logs=None):
            averages = [np.array(v) for v in self.model.optimizer._model_variables_moving_average]
            seen.append(
                (logs["val_balanced_accuracy"], [np.array(v) for v in self.model.trainable_variables], averages)
            )

    scoring = ValidationMetrics(
        val, make_dataset(val.images, None, 7, 32), loss, base_params.classes, "val_balanced_accuracy", tmp_path, 0, 96
    )
    model.fit(
        make_dataset(images, labels, 7, 32, training=True, seed=1),
        epochs=4,
        verbose=0,
        callbacks=[scoring, AfterScoring()],
    )

    best = read_json(tmp_path / "best.json")
    _score, raw, averages = seen[best["epoch"]]
    # After scoring the model holds the raw weights again: training continues from them.
    assert any(not np.allclose(r, a) for r, a in zip(raw, averages))
    kept = build_cnn(params, base_params.classes)
    kept.load_weights(tmp_path / best["weights"])
    for kept_variable, average in zip(kept.trainable_variables, averages):
        np.testing.assert_allclose(np.array(kept_variable), average, rtol=1e-6, atol=1e-7)
    # The score logged is the averaged model's: predicting with the kept weights gives it again.
    predicted = kept.predict(val.images.astype(np.float32), verbose=0).argmax(axis=1)
    from sklearn.metrics import balanced_accuracy_score

    assert balanced_accuracy_score(val.labels, predicted) == pytest.approx(best["value"])


def test_a_seed_ensemble_ships_the_mean_of_members_that_are_the_single_seed_runs(
    tiny_artifacts, mlflow_store, seed_runs, capsys
):
    """``members: 2`` trains the seed run and the seed + 1 run, each keeping its best epoch, and
    saves one model whose output is their mean, scored on validation as a whole."""
    base, root = tiny_artifacts
    paths = make_paths(root, "cnn_members")
    summary = train_cnn_focal(base, tiny_cnn(epochs=2, members=2), paths)
    assert "best epochs" in kept(summary) and "(2 members averaged)" in kept(summary)
    assert {"member1_best_epoch", "member2_best_epoch", "member2_best_val_balanced_accuracy"} <= set(summary)
    history = pd.read_csv(paths.out_dir / HISTORY_FILE)
    assert history["epoch"].tolist() == [1, 2, 3, 4] and history["member"].tolist() == [1, 1, 2, 2]
    assert "member 2 of 2: training seed 43" in capsys.readouterr().out

    ensemble = load_model(paths.out_dir / MODEL_FILE)  # safe mode: no custom objects
    assert model_class_names(ensemble) == list(base.classes) and model_input_size(ensemble) == 32
    assert tiny_cnn().seed == 42
    single = {seed: load_model(seed_runs[str(seed)] / MODEL_FILE) for seed in (42, 43)}
    for number, seed in ((1, 42), (2, 43)):  # member k is the one-model run with seed + k - 1
        for a, b in zip(ensemble.get_layer(f"member_{number}").get_weights(), single[seed].get_weights()):
            np.testing.assert_array_equal(a, b)
    images = np.random.default_rng(2).integers(0, 255, (11, 32, 32, 3), dtype=np.uint8)
    mean = (predict_probabilities(single[42], images) + predict_probabilities(single[43], images)) / 2
    np.testing.assert_allclose(predict_probabilities(ensemble, images), mean, rtol=1e-5, atol=1e-6)

    # The number logged is the ensemble's own on the validation split, not a member's.
    from pipeline.data.datasets import load_split_images

    val = load_split_images(paths.ingested, paths.split, "val", base.classes, 32)
    from sklearn.metrics import balanced_accuracy_score

    predicted = predict_probabilities(ensemble, val.images).argmax(axis=1)
    assert summary["best_val_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(val.labels, predicted))

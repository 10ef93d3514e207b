"""The one module that talks to MLflow.

The tracking URI comes from ``MLFLOW_TRACKING_URI`` (``make run`` points it at the project's
server on 127.0.0.1); tests point it at a throwaway sqlite store. Before a stage does any
work, :func:`connect` checks that an HTTP server answers, so a stopped server costs seconds,
not a training run. Request retries and timeouts are bounded so nothing hangs.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.errors import TrackingError, redact
from pipeline.local_servers.mlflow_server import NOT_REACHABLE, unavailable

DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"
#: Alias moved to every newly registered version, and to the best one by validation score.
CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"
#: The experiment's kind in MLflow 3 (model development, not GenAI). MLflow 3.17's UI still opens in
#: its GenAI mode, a browser setting: ``?workflowType=machine_learning`` opens the training view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: Run metric compared between versions to decide the champion.
CHAMPION_METRIC = "best_val_balanced_accuracy"


def tracking_uri() -> str:
    """The tracking URI in force: ``MLFLOW_TRACKING_URI`` or the project's default server."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def connect(experiment_name: str, timeout_s: float = 5.0) -> str:
    """Point MLflow at the tracking URI, check it answers, select the experiment; return the URI.

    Raises :class:`TrackingError` with how to fix it when an HTTP server does not answer.
    """
    uri = connect_for_loading()
    problem = unavailable(uri, timeout_s) if uri.startswith(("http://", "https://")) else None
    if problem == NOT_REACHABLE:
        raise TrackingError(
            f"MLflow tracking server at {uri} {problem}; "
            "start it with `make server` or point MLFLOW_TRACKING_URI at a running one"
        )
    if problem:
        raise TrackingError(f"MLflow tracking server at {uri} {problem}")
    import mlflow

    try:
        experiment = mlflow.set_experiment(experiment_name)
        # Written every time, even when already there: a server with accounts refuses it to a
        # user who may only read, here, before any training and before a run exists.
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    except Exception as error:  # MlflowException and transport errors alike
        if getattr(error, "error_code", None) == "PERMISSION_DENIED":
            user = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
            raise TrackingError(
                f"MLflow at {uri}: user '{user}' may only read experiment '{experiment_name}' (HTTP 403: logging runs needs "
                f"EDIT permission; a team admin grants it with `make team-user NAME=<name> ROLE=edit`)"
            ) from None
        raise TrackingError(f"MLflow at {uri}: cannot select experiment '{experiment_name}' ({error})") from error
    return uri


def log_input(name: str, digest: str, source: Path | None, context: str = "training") -> None:
    """Record the data a run trained on as an MLflow dataset input (the UI's Dataset column):
    metadata only, named ``demo`` / ``ham10000``, with the stages' data hash as its digest and
    the data folder as its source."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    location = str(source.resolve()) if source is not None else "unknown"
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
        warnings.simplefilter("ignore", UserWarning)
        resolved = resolve_dataset_source(location)
    dataset = MetaDataset(resolved, name=name, digest=digest)
    _guard(mlflow.log_input, dataset, context=context)


def connect_for_loading() -> str:
    """Point MLflow at the tracking URI for reading models (no experiment is selected)."""
    uri = tracking_uri()
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # Artifacts go through the tracking server, whatever store is behind it: an MLflow 3 server
    # on S3 otherwise hands out presigned URLs for files over 500 MB (uploads) and for every
    # download, which a client can only use with a network path to the bucket. Set either to
    # true to use them.
    os.environ.setdefault("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "false")
    os.environ.setdefault("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")
    import mlflow

    mlflow.set_tracking_uri(uri)
    return uri


@contextmanager
def run(run_name: str, tags: Mapping[str, str], resume_run_id: str | None = None) -> Iterator[Any]:
    """Start (or resume) an MLflow run; a failed stage leaves the run marked FAILED. Every run is
    tagged with the machine it ran on (``host``): runs of several machines share one team server."""
    import mlflow

    try:
        active = mlflow.start_run(
            run_id=resume_run_id,
            run_name=None if resume_run_id else run_name,
            tags={"host": socket.gethostname(), **tags},
        )
    except Exception as error:
        raise TrackingError(f"MLflow at {tracking_uri()}: cannot start run ({error})") from error
    with active:
        yield active


def log_params(params: Mapping[str, Any]) -> None:
    """Log parameters to the active run (values are stringified by MLflow)."""
    import mlflow

    _guard(mlflow.log_params, dict(params))


def log_metrics(metrics: Mapping[str, float], step: int | None = None, run_id: str | None = None) -> None:
    """Log numeric metrics to the active run, or to ``run_id``."""
    import mlflow

    numeric = {key: float(value) for key, value in metrics.items() if isinstance(value, (int, float))}
    _guard(mlflow.log_metrics, numeric, step=step, run_id=run_id)


def log_artifacts(paths: list[str | Path], artifact_path: str | None = None, run_id: str | None = None) -> None:
    """Upload files to the active run, or to ``run_id``."""
    import mlflow

    client = mlflow.MlflowClient()
    target = run_id or mlflow.active_run().info.run_id
    for path in paths:
        _guard(client.log_artifact, target, str(path), artifact_path)


def log_and_register_model(model: Any, sample_images: Any, registered_name: str, score: float) -> dict[str, Any]:
    """Log a Keras model with a signature, register it, and move its aliases.

    Every new version gets the ``candidate`` alias; it also becomes ``champion`` when its
    validation score beats the current champion's (or there is none).
    """
    # A direct call, not model.predict on an array: that builds a tf.data map whose attribute
    # TensorFlow 2.21 does not know and logs an "E0000 ... use_unbounded_threadpool" line.
    import keras
    import mlflow
    from mlflow.models import infer_signature

    predictions = keras.ops.convert_to_numpy(model(sample_images, training=False))
    signature = infer_signature(sample_images, predictions)
    # input_example is not passed: it fails with FileNotFoundError in mlflow 3.17 (a known trap).
    # Explicit requirements: mlflow's inference of them fails for Keras 3 models and wastes time.
    requirements = [f"{package}=={metadata.version(package)}" for package in ("keras", *_backend_packages())]
    info = _guard(
        mlflow.keras.log_model,
        model,
        name="model",
        signature=signature,
        registered_model_name=registered_name,
        pip_requirements=requirements,
    )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    _guard(client.set_registered_model_alias, registered_name, CANDIDATE_ALIAS, version)
    promoted = _is_better_than_champion(client, registered_name, score)
    if promoted:
        _guard(client.set_registered_model_alias, registered_name, CHAMPION_ALIAS, version)
    return {"model_uri": info.model_uri, "registered_model": registered_name, "version": version, "champion": promoted}


def _backend_packages() -> tuple[str, ...]:
    """The packages the model's Keras backend needs at serving time (those installed here)."""
    import keras

    # tensorflow-cpu is the same TensorFlow in a CPU-only build: a served model needs either.
    wanted = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "jax": ("jax", "jaxlib"), "torch": ("torch",)}.get(
        keras.backend.backend(), ()
    )
    found = []
    for package in wanted:
        try:
            metadata.version(package)
            found.append(package)
        except metadata.PackageNotFoundError:
            pass
    return tuple(found)


def find_run_by_tag(key: str, value: str) -> str | None:
    """The id of a run in the current experiment whose tag ``key`` is ``value``, if any."""
    import mlflow

    runs = _guard(mlflow.search_runs, filter_string=f"tags.{key} = '{value}'", max_results=1, output_format="list")
    return runs[0].info.run_id if runs else None


def import_run(manifest: Mapping[str, Any], history: list[Any], tags: Mapping[str, str], model: Any) -> dict[str, Any]:
    """Log an offline bundle's run (see :mod:`pipeline.tracking.bundle`) as a normal run: its params,
    its whole metric history with the original steps and times, the model (registered, aliases
    moved as for any run), then ``offline_bundle_id``, set last so that an import that fails
    half-way is retried rather than taken as done."""
    import mlflow
    import numpy as np
    from mlflow.entities import Metric, Param, RunTag

    client = mlflow.MlflowClient()
    experiment = _guard(mlflow.get_experiment_by_name, manifest["experiment_name"])
    bundle_tag = tags.get("offline_bundle_id")
    run_tags = {key: str(value) for key, value in tags.items() if key != "offline_bundle_id"}
    created = _guard(
        client.create_run,
        experiment.experiment_id,
        start_time=int(manifest["start_time_ms"]),
        tags=run_tags,
        run_name=manifest["run_name"],
    )
    run_id = created.info.run_id
    try:
        params = [Param(key, str(value)) for key, value in manifest["params"].items()]
        for start in range(0, len(params), 100):
            _guard(client.log_batch, run_id, params=params[start : start + 100])
        metrics = [Metric(point.key, point.value, point.timestamp_ms, point.step) for point in history]
        for start in range(0, len(metrics), 1000):
            _guard(client.log_batch, run_id, metrics=metrics[start : start + 1000])
        size = int(model.input_shape[1])
        with mlflow.start_run(run_id=run_id):
            for item in manifest.get("inputs", []):
                log_input(item["name"], item["digest"], Path(item["source"]) if item.get("source") else None)
            registered = log_and_register_model(
                model,
                np.zeros((2, size, size, 3), np.float32),
                manifest["registered_model_name"],
                float(manifest["score"]),
            )
        if bundle_tag:
            _guard(client.log_batch, run_id, tags=[RunTag("offline_bundle_id", bundle_tag)])
        _guard(client.set_terminated, run_id, "FINISHED", end_time=int(manifest["end_time_ms"]))
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return {"run_id": run_id, **registered}


class MlflowRecorder:  # implements pipeline.tracking.recorder.Recorder
    """Records a training run to the MLflow tracking server (the default; see
    :class:`pipeline.tracking.offline.OfflineRecorder` for the offline counterpart)."""

    def describe(self) -> str:
        return f"MLflow at {tracking_uri()}"

    def connect(self, experiment_name: str) -> None:
        connect(experiment_name)

    def run_exists(self, run_id: str) -> bool:
        return run_exists(run_id)

    @contextmanager
    def run(self, run_name: str, tags: Mapping[str, str], resume_run_id: str | None = None) -> Iterator[str]:
        with run(run_name, tags, resume_run_id) as active:
            yield active.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        log_params(params)

    def log_input(self, name: str, digest: str, source: Path | None) -> None:
        log_input(name, digest, source)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        log_metrics(metrics, step=step)

    def log_model(
        self, model: Any, sample_images: Any, registered_name: str, score: float, out_dir: Path, metrics_file: Path
    ) -> dict[str, Any]:
        import mlflow

        run_id = mlflow.active_run().info.run_id
        return {
            "run_id": run_id,
            "tracking_uri": tracking_uri(),
            **log_and_register_model(model, sample_images, registered_name, score),
        }


def _is_better_than_champion(client: Any, name: str, score: float) -> bool:
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except Exception:  # no champion yet
        return True
    champion_score = client.get_run(champion.run_id).data.metrics.get(CHAMPION_METRIC, float("-inf"))
    return score >= champion_score


def run_exists(run_id: str) -> bool:
    """Whether ``run_id`` exists on the current tracking server."""
    import mlflow

    try:
        mlflow.MlflowClient().get_run(run_id)
    except Exception:
        return False
    return True


def _guard(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call an MLflow function, turning its failures into one clear :class:`TrackingError`."""
    try:
        return function(*args, **kwargs)
    except TrackingError:
        raise
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrackingError(f"MLflow at {tracking_uri()}: {function.__name__} failed ({redact(first_line)})") from error

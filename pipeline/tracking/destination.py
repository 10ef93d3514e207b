"""Which recorder a training stage uses: MLflow, or an offline bundle folder."""

from __future__ import annotations

from pipeline.tracking.recorder import Recorder, offline_dir


def open_recorder() -> Recorder:
    """An :class:`~pipeline.tracking.offline.OfflineRecorder` when ``PIPELINE_OFFLINE_RUNS`` is
    set (then mlflow is never imported), else the MLflow recorder."""
    folder = offline_dir()
    if folder is not None:
        from pipeline.tracking.offline import OfflineRecorder

        return OfflineRecorder(folder)
    from pipeline.tracking.mlflow_runs import MlflowRecorder

    return MlflowRecorder()

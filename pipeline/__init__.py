"""HAM10000 skin-lesion classification pipeline.

All logic of the DVC stages lives in this package; the scripts in ``stages/`` only parse
arguments, load their params section and call into it. Importing the package imports no
TensorFlow, opens no MLflow connection and touches no file.

Layout, by concern (each subpackage may use the ones below it; ``.importlinter`` enforces it)::

    reproduction/   published metrics, derived tolerances, training-seed spread
    evaluation/     test-split scoring, intervals, ensemble, report, offline plots
    team/           team mode's servers and clients
    training/       the training loop, devices/backends, running stages without DVC
    serving/        loading models and predicting images
    tracking/       the recorder interface, MLflow runs, offline bundles
    local_servers/  detached local processes, the MLflow server
    models/         model builders, EfficientNet-Lite weights
    data/           ingest, split, augment, input pipelines, demo data, packs
    config, errors, io   shared helpers
"""

__version__ = "0.1.0"

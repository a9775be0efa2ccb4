"""mnist-pipeline: Hydra-configured DVC stages for Keras on MNIST, tracked in MLflow.

The folder is the architecture. Modules at the top are commands: one per `dvc.yaml` stage,
named after it (compose, download, preprocess, train, evaluate, sweep, compare), and the
commands outside the DAG (experiment, predict, tune, scaling, records, ui). A command imports
shared code, never another command. Shared code sits in layers, imports pointing down:

    sweeps/  analysis/     a sweep's jobs and parent run; statistics, tables, plots, champion
    training/              the runner: training loop, scoring, what a run records
    data/  model/          the workload: datasets and splits; networks and optimizers as config
    core/                  config schema, paths, files, errors, environment, MLflow store, entry point

Heavy libraries (Keras, JAX, MLflow) are imported inside the functions that need them, so
a command starts fast and loads only what it runs; no import is deferred to dodge a cycle.
"""

__version__ = "0.1.0"

import os

# TensorFlow's C++ INFO lines (XLA, oneDNN notices) drown the training log; warnings stay.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
# A progress bar per logged artifact (a local copy) drowns the training log too.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow 3 sends usage telemetry from every process; the pipeline's runs do not.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

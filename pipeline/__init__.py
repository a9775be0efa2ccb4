"""mnist-pipeline: Hydra-configured DVC stages for Keras on MNIST, tracked in MLflow."""

__version__ = "0.1.0"

import os

# TensorFlow's C++ INFO lines (XLA, oneDNN notices) drown the training log; warnings stay.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
# A progress bar per logged artifact (a local copy) drowns the training log too.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow 3 sends usage telemetry from every process; the pipeline's runs do not.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

"""mnist-pipeline: Hydra-configured DVC stages for Keras on MNIST, tracked in MLflow."""

__version__ = "0.1.0"

import os

# TensorFlow's C++ INFO lines (XLA, oneDNN notices) drown the training log; warnings stay.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

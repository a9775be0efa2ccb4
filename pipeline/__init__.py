"""mnist-pipeline: Hydra-configured DVC stages for Keras on MNIST, tracked in MLflow."""

__version__ = "0.1.0"

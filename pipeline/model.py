"""The network and its optimizer, built from config."""

from __future__ import annotations

import keras
from hydra.utils import instantiate
from keras import layers
from omegaconf import DictConfig


def build_model(cfg: DictConfig, input_dim: int = 784, num_classes: int = 10) -> keras.Model:
    """The MLP of `cfg.model`: Dense(units, activation) per hidden layer, then softmax."""
    inputs = keras.Input(shape=(input_dim,), name="pixels")
    x = inputs
    for i, units in enumerate(cfg.model.hidden_units):
        x = layers.Dense(int(units), activation=cfg.model.activation, name=f"hidden_{i}")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=cfg.model.name)


def build_optimizer(cfg: DictConfig) -> keras.optimizers.Optimizer:
    """Instantiate `cfg.optimizer` (its `_target_` is a Keras optimizer class)."""
    # Keras refuses an integer learning rate, which is what `learning_rate=1000` parses to.
    return instantiate(cfg.optimizer, learning_rate=float(cfg.optimizer.learning_rate), _convert_="all")


def compile_model(model: keras.Model, cfg: DictConfig) -> keras.Model:
    """Compile with the configured optimizer, loss, metrics and performance knobs."""
    model.compile(
        optimizer=build_optimizer(cfg),
        loss=cfg.train.loss,
        metrics=list(cfg.train.metrics),
        steps_per_execution=int(cfg.train.steps_per_execution),
        jit_compile=bool(cfg.train.jit_compile),
    )
    return model

"""The networks (builder functions that conf/model/ names), built from config; Keras files.

The optimizer is built in `core.config` (`build_optimizer`), with the learning rate the batch size scales.
"""

from __future__ import annotations

import json
import math
import sys
import zipfile
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pipeline.core.config import build_optimizer
from pipeline.core.errors import PipelineError


def mlp(
    *, image_shape: list[int], num_classes: int, seed: int, name: str = "mlp", hidden_units=(512,), activation="relu"
):
    """A dense network on the flat pixels: Dense(units, activation) per hidden layer, then softmax."""
    import keras

    inputs = keras.Input(shape=(math.prod(image_shape),), name="pixels")
    x = inputs
    for i, units in enumerate(hidden_units):
        x = _dense(int(units), activation, f"hidden_{i}", seed + i)(x)
    outputs = _dense(num_classes, "softmax", "probabilities", seed + len(hidden_units))(x)
    return keras.Model(inputs, outputs, name=name)


def cnn(
    *, image_shape: list[int], num_classes: int, seed: int, name: str = "cnn", filters=(32, 64), kernel_size=3,
    activation="relu", dropout=0.5,
):  # fmt: skip
    """A small convolutional network: the flat pixels as an image, conv + max-pool blocks, dropout, softmax."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(math.prod(image_shape),), name="pixels")
    x = layers.Reshape((*image_shape, 1))(inputs)
    for i, count in enumerate(filters):
        init = keras.initializers.GlorotUniform(seed=seed + i)
        x = layers.Conv2D(int(count), int(kernel_size), activation=activation, kernel_initializer=init)(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(float(dropout), seed=seed + len(filters))(layers.Flatten()(x))
    outputs = _dense(num_classes, "softmax", "probabilities", seed + len(filters) + 1)(x)
    return keras.Model(inputs, outputs, name=name)


def _dense(units: int, activation: str, name: str, seed: int):
    import keras

    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.layers.Dense(units, activation=activation, kernel_initializer=init, name=name)


def build_model(cfg: DictConfig, input_dim: int = 784, num_classes: int = 10) -> Any:
    """The network of `cfg.model`: its builder (`_target_`) called with its arguments and the data's shape.

    Every builder also gets `image_shape`, `num_classes`, `name` and a `seed` from
    `train.seed` for its initialisers, so the same seed gives the same initial weights.
    """
    image_shape = list(cfg.dataset.image_shape)
    if math.prod(image_shape) != input_dim:
        raise PipelineError(
            f"dataset.image_shape={image_shape} does not hold the data's {input_dim} features per image"
        )
    args = {"name": "model", **OmegaConf.to_container(cfg.model, resolve=True)}
    try:
        # 100 initialiser seeds per run seed, kept inside the uint32 range the initialisers take
        seed = int(cfg.train.seed) * 100 % (2**32 - 1000)
        return instantiate(args, image_shape=image_shape, num_classes=num_classes, seed=seed)
    except Exception as err:  # noqa: BLE001 - an unknown builder, argument or layer setting in the model file
        cause = err.__cause__ or err
        raise PipelineError(
            f"model={cfg.model.get('name')} ({cfg.model._target_}) cannot be built: {cause}. A model file holds "
            "`_target_` (a builder function) and its arguments: fix the value named above, e.g. model.activation=relu."
        ) from err


def check_buildable(cfg: DictConfig) -> None:
    """Build the optimizer and the network once, so a bad setting fails before any data or run."""
    build_optimizer(cfg)
    build_model(cfg, math.prod(cfg.dataset.image_shape), int(cfg.dataset.num_classes))


def keep_tensorflow_unloaded() -> None:
    """On the JAX backend, tell Keras that TensorFlow is absent (it is installed for the other backend).

    Keras' saving and loading ask whether TensorFlow is available, to recognise its
    types, and so import all of it: about 4 s and 0.5 GB per process, for types a JAX
    model never holds. Keras keeps the answer in a lazy module; this sets it first.
    """
    import keras

    if keras.backend.backend() == "jax" and "tensorflow" not in sys.modules:
        from keras.src.utils import module_utils

        module_utils.tensorflow._available = False


def load_model(path: Path) -> Any:
    """A `.keras` file as a Keras model (without importing TensorFlow on the JAX backend)."""
    import keras

    keep_tensorflow_unloaded()
    return keras.models.load_model(path)


def save_model(model: Any, path: Path) -> None:
    """Save `model` as a `.keras` file whose bytes depend on the weights only.

    Keras stamps the save time into `metadata.json` and the weights' zip entry, and
    writes Python object ids as `shared_object_id` into `config.json`, so the same model
    would hash differently on every save (and DVC would see a change). The ids are
    renumbered in order of appearance, which keeps which objects are shared. Entries
    are stored uncompressed, as Keras writes them (deflating the float weights saves 8 %
    of the size and costs 0.08 s per save).
    """
    keep_tensorflow_unloaded()
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        entries = [(info.filename, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            if name == "metadata.json":
                meta = json.loads(data)
                meta.pop("date_saved", None)
                data = json.dumps(meta, sort_keys=True).encode()
            elif name == "config.json":
                data = json.dumps(_renumber_shared_objects(json.loads(data))).encode()
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)


def _renumber_shared_objects(node: Any, ids: dict | None = None) -> Any:
    """Replace every `shared_object_id` (a Python object id) with 1, 2, ... in order of appearance."""
    ids = {} if ids is None else ids
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "shared_object_id":
                value = ids.setdefault(value, len(ids) + 1)
            out[key] = _renumber_shared_objects(value, ids)
        return out
    if isinstance(node, list):
        return [_renumber_shared_objects(v, ids) for v in node]
    return node

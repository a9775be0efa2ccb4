"""The network and its optimizer, built from config."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import PipelineError


def build_model(cfg: DictConfig, input_dim: int = 784, num_classes: int = 10) -> Any:
    """The MLP of `cfg.model`: Dense(units, activation) per hidden layer, then softmax.

    Keras' default initialisers (Glorot uniform kernels, zero biases), each seeded from
    `train.seed`, so the same seed gives the same initial weights on every backend run.
    """
    import keras
    from keras import layers

    seed = int(cfg.train.seed) * 100

    def dense(units: int, activation: str, name: str, i: int) -> Any:
        init = keras.initializers.GlorotUniform(seed=seed + i)
        return layers.Dense(units, activation=activation, kernel_initializer=init, name=name)

    inputs = keras.Input(shape=(input_dim,), name="pixels")
    x = inputs
    for i, units in enumerate(cfg.model.hidden_units):
        x = dense(int(units), cfg.model.activation, f"hidden_{i}", i)(x)
    outputs = dense(num_classes, "softmax", "probabilities", len(cfg.model.hidden_units))(x)
    return keras.Model(inputs, outputs, name=str(cfg.model.get("name") or "mlp"))


def effective_learning_rate(cfg: DictConfig, batch_samples: int | None = None) -> float:
    """`optimizer.learning_rate` x `train.lr_factor`, scaled with the batch size by `train.lr_scaling`.

    `batch_samples` is the batch size in samples (`full` resolved); None means the
    base batch size (no scaling), for checks made before the data is read.
    """
    rate = float(cfg.optimizer.learning_rate) * float(cfg.train.lr_factor)
    ratio = (batch_samples or cfg.train.base_batch_size) / cfg.train.base_batch_size
    rule = str(getattr(cfg.train.lr_scaling, "value", cfg.train.lr_scaling))
    return rate * {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[rule]


def build_optimizer(cfg: DictConfig, batch_samples: int | None = None) -> Any:
    """Instantiate `cfg.optimizer` (a Keras optimizer class and its arguments) at the effective rate."""
    args = OmegaConf.to_container(cfg.optimizer, resolve=True)
    # Keras refuses an integer learning rate, which is what `learning_rate=1000` parses to.
    args["learning_rate"] = effective_learning_rate(cfg, batch_samples)
    try:
        return instantiate(args, _convert_="all")
    except Exception as err:  # noqa: BLE001 - an unknown class or argument in the optimizer file
        cause = err.__cause__ or err
        raise PipelineError(
            f"optimizer={cfg.optimizer.get('name')} ({cfg.optimizer._target_}) cannot be built: {cause}. "
            "An optimizer file holds `_target_` (a Keras optimizer class) and that class's arguments; "
            "fix or remove the argument named above."
        ) from err


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

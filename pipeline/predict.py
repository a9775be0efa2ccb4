"""Classify your own digit images: `python -m pipeline.predict input=<image file or folder>`.

Reads PNG and JPEG files of any size, converts each the way MNIST was made
(`pipeline.model.serving.to_mnist`: grey, digit white on black with the dark-on-light rule,
fitted into 20 x 20 and centred in 28 x 28), and prints one tab-separated line per image:
`<path>  <digit>  <probability>`. `output=<file.csv>` writes the same as CSV.

`model=` takes an MLflow model URI (`models:/mnist@champion`, `models:/mnist/3`,
`runs:/<id>/model`, `models:/<model id>`) or a `.keras` file; by default the registry's
champion when the store has one, otherwise the trained `models/model.keras`.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline.core.app import stage_main
from pipeline.core.errors import PipelineError
from pipeline.core.files import write_text
from pipeline.core.paths import CONFIG_DIR, project_paths, resolve_path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_files(target: Path) -> list[Path]:
    """The image files named by `input=`: one file, or every PNG/JPEG of a folder (sorted)."""
    if target.is_dir():
        files = sorted(p for p in target.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise PipelineError(
                f"input={target} holds no PNG or JPEG files: point input= at an image or a folder of them"
            )
        return files
    if not target.exists():
        raise PipelineError(f"input={target} does not exist: give an image file or a folder of PNG/JPEG images")
    return [target]


def default_model(cfg: DictConfig) -> str:
    """The registry's champion if there is one, else the trained model file."""
    if cfg.tracking.enabled:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        from pipeline.core.store import setup_tracking, tracking_uri

        setup_tracking(cfg)
        name = cfg.tracking.registered_model
        try:
            MlflowClient().get_model_version_by_alias(name, "champion")
            return f"models:/{name}@champion"
        except MlflowException as err:
            if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise _unreadable_registry(tracking_uri(cfg), err) from err
            log.info("No champion of registered model %r in the store: using the trained model file", name)
        except Exception as err:  # noqa: BLE001 - the store did not answer: never guess another model
            raise _unreadable_registry(tracking_uri(cfg), err) from err
    model = project_paths(cfg).stage_outputs.model
    if not model.is_file():
        raise PipelineError(
            f"No model to predict with: no champion in the registry and no {model}. Train one (dvc repro), "
            "or give model=<MLflow model URI or .keras file>."
        )
    return str(model)


def _unreadable_registry(uri: str, err: Exception) -> PipelineError:
    return PipelineError(
        f"The model registry of {uri} cannot be read ({type(err).__name__}: {str(err)[:200]}), so the champion is "
        "unknown: predict will not guess another model. Fix the store, or name one: model=<MLflow model URI or "
        ".keras file>."
    )


def load(uri: str) -> Any:
    """A callable: float32 rows (N, 784) -> probabilities (N, 10)."""
    if uri.endswith(".keras") and "://" not in uri and not uri.startswith("models:"):
        path = resolve_path(uri)
        if not path.is_file():
            raise PipelineError(f"model={uri}: no such file")
        from pipeline.model.networks import load_model

        try:
            model = load_model(path)
        except Exception as err:  # noqa: BLE001 - Keras raises several kinds for a file that is no Keras model
            raise PipelineError(
                f"model={uri} is not a Keras model file ({type(err).__name__}: {str(err)[:200]}): give a .keras "
                "file the train stage wrote, or an MLflow model URI"
            ) from err
        return lambda rows: np.asarray(model(rows, training=False))
    import mlflow.pyfunc

    try:
        with warnings.catch_warnings():  # MLflow: "add type hints to predict"; the signature is the schema
            warnings.simplefilter("ignore", UserWarning)
            model = mlflow.pyfunc.load_model(uri)
    except Exception as err:  # noqa: BLE001 - MLflow raises several kinds for a URI that does not resolve
        raise PipelineError(
            f"model={uri} does not resolve in this MLflow store ({type(err).__name__}: {str(err)[:200]}). "
            "Give models:/<name>@<alias>, models:/<name>/<version>, runs:/<run id>/model or a .keras file."
        ) from err

    def probabilities(rows: np.ndarray) -> np.ndarray:
        answer = model.predict(pd.DataFrame({"pixels": [row.tolist() for row in rows]}))
        return np.stack(answer["probabilities"].to_numpy())

    return probabilities


def predict(cfg: DictConfig) -> list[tuple[str, int, float]]:
    """Classify every image of `input`; print (and optionally write) path, digit, probability."""
    from pipeline.model.serving import to_mnist

    if cfg.invert not in ("auto", "true", "false"):
        raise PipelineError(f"invert={cfg.invert!r} is not allowed: auto, true or false. Fix it, e.g. invert=auto")
    files = image_files(resolve_path(cfg.input))
    rows = np.stack([to_mnist(path, str(cfg.invert)) for path in files])
    uri = cfg.model or default_model(cfg)
    log.info("Model: %s", uri)
    if cfg.model is not None and cfg.tracking.enabled and "://" not in uri and uri.startswith(("models:", "runs:")):
        from pipeline.core.store import setup_tracking

        setup_tracking(cfg)
    probs = load(uri)(rows)
    results = [(str(path), int(p.argmax()), float(p.max())) for path, p in zip(files, probs, strict=True)]
    # csv quotes a path holding a tab, a comma, a quote or a line break, so every line stays three fields
    tsv = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
    tsv.writerows((path, digit, f"{probability:.4f}") for path, digit, probability in results)
    sys.stdout.flush()
    if cfg.output:
        table = io.StringIO()
        rows = csv.writer(table, lineterminator="\n")
        rows.writerow(["path", "digit", "probability"])
        rows.writerows((path, digit, f"{probability:.6f}") for path, digit, probability in results)
        write_text(resolve_path(cfg.output), table.getvalue())
    return results


main = stage_main(
    predict, config_name="predict", config_dir=str(CONFIG_DIR / "predict")
)  # python -m pipeline.predict input=...

if __name__ == "__main__":
    main()

"""The model registry: each finished, replicated sweep's best model becomes the `champion`.

Chosen without the test set: the winning cell is the one with the best mean validation
accuracy (`pipeline.analysis.stats`), and within it the seed with the best final
validation accuracy. Only a winner replicated over at least two seeds moves the
champion (a single-seed search phase never does). Its logged model becomes a new
version of the registered model `tracking.registered_model`, tagged with the sweep's
parent run and the cell, and the alias `champion` moves to it; earlier versions keep
their history. Registration is idempotent: comparing the same sweep again, or retrying
after an error, reuses the version already registered for that sweep.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from pipeline.analysis.stats import Cell

log = logging.getLogger(__name__)

CHAMPION = "champion"


def register_champion(cfg: DictConfig, client: Any, parent: Any, table: pd.DataFrame, cells: list[Cell]) -> dict | None:
    """Register the sweep's best model and point `champion` at it; None if there is no model to register."""
    import mlflow

    if not cells:
        return None
    best = cells[0]
    if best.n < 2:
        log.warning("No champion: the winning cell %s has %d run; replicate it (sweep.seeds >= 2)", best.cell, best.n)
        return None
    runs = table[(table["status"] == "FINISHED") & (table["cell"] == best.cell)]
    runs = runs.sort_values(["final_val_accuracy", "seed"], ascending=[False, True])
    run = runs.iloc[0]
    models = mlflow.search_logged_models(
        experiment_ids=[parent.info.experiment_id],
        filter_string=f"source_run_id = '{run.run_id}'",
        output_format="list",
    )
    if not models:
        log.warning("Run %s logged no model (tracking.log_model=false): no champion registered", run.run_name)
        return None
    name = str(cfg.tracking.registered_model)
    version = _version_of(client, name, parent.info.run_id)
    if version is None:
        tags = {
            "sweep.parent_run_id": parent.info.run_id,
            "sweep": parent.info.run_name,
            "cell": best.cell,
            "seed": str(run.seed),
            "cell.mean_val_accuracy": f"{best.val_mean:.4f}",
            "cell.mean_test_accuracy": f"{best.mean:.4f}",
            "cell.n": str(best.n),
            "val_accuracy": f"{run.final_val_accuracy:.4f}",
            "test_accuracy": f"{run.test_accuracy:.4f}",
        }
        try:
            version = mlflow.register_model(models[0].model_uri, name, tags=tags)
        except Exception:
            # The server may have registered it before the error reached us: never register twice.
            version = _version_of(client, name, parent.info.run_id)
            if version is None:
                raise
    client.set_registered_model_alias(name, CHAMPION, version.version)
    client.set_tag(parent.info.run_id, "champion", f"{name} version {version.version} ({run.run_name})")
    log.info("Registered model %s version %s (%s) is the %s", name, version.version, run.run_name, CHAMPION)
    return {"name": name, "version": int(version.version), "run_id": run.run_id, "cell": best.cell}


def _version_of(client: Any, name: str, parent_run_id: str) -> Any | None:
    """The version already registered for this sweep, if any."""
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - MLflow raises RestException / MlflowException for a missing name
        return None
    versions = client.search_model_versions(f"name = '{name}'")
    return next((v for v in versions if v.tags.get("sweep.parent_run_id") == parent_run_id), None)

"""The model registry: each finished sweep's best model becomes the `champion`.

The winner is the cell with the best mean test accuracy; within it, the seed with the
best validation accuracy (chosen on validation, like any model selection). Its logged
model becomes a new version of the registered model `tracking.registered_model`,
tagged with the sweep's parent run and the cell, and the alias `champion` moves to it.
Earlier versions keep their history. Comparing the same sweep again reuses its version.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from pipeline.stats import Cell

log = logging.getLogger(__name__)

CHAMPION = "champion"


def register_champion(cfg: DictConfig, client: Any, parent: Any, table: pd.DataFrame, cells: list[Cell]) -> dict | None:
    """Register the sweep's best model and point `champion` at it; None if there is no model to register."""
    import mlflow

    if not cells:
        return None
    best = cells[0]
    runs = table[
        (table["status"] == "FINISHED")
        & (table["optimizer"] == best.optimizer)
        & (table["batch_size"] == best.batch_size)
    ].sort_values(["final_val_accuracy", "seed"], ascending=[False, True])
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
    existing = (
        [
            v
            for v in client.search_model_versions(f"name = '{name}'")
            if v.tags.get("sweep.parent_run_id") == parent.info.run_id
        ]
        if _registered(client, name)
        else []
    )
    if existing:
        version = existing[0]
    else:
        tags = {
            "sweep.parent_run_id": parent.info.run_id,
            "sweep": parent.info.run_name,
            "cell": best.label,
            "seed": str(run.seed),
            "cell.mean_test_accuracy": f"{best.mean:.4f}",
            "cell.n": str(best.n),
            "test_accuracy": f"{run.test_accuracy:.4f}",
        }
        version = mlflow.register_model(models[0].model_uri, name, tags=tags)
    client.set_registered_model_alias(name, CHAMPION, version.version)
    client.set_tag(parent.info.run_id, "champion", f"{name} version {version.version} ({run.run_name})")
    log.info("Registered model %s version %s (%s) is the %s", name, version.version, run.run_name, CHAMPION)
    return {"name": name, "version": int(version.version), "run_id": run.run_id, "cell": best.label}


def _registered(client: Any, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - MLflow raises RestException / MlflowException for a missing name
        return False
    return True

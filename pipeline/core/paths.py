"""Where every file the pipeline writes lives: the one module that builds the paths of its outputs.

Inputs are named elsewhere: a dataset's mirrors in `conf/dataset/`, and the `conf/` files that
`pipeline.project.stages` (a development command) lists as dvc.yaml's dependencies.

Folders come from `conf/paths/` and are relative to the project root: the nearest
directory above the working directory that holds `dvc.yaml` (so a command works from
any subfolder and inside any copy of the project), else this package's own checkout.
The MLflow store is the exception: in a DVC experiment run in a temporary copy
(`dvc exp run --queue`), it stays in the real project (`DVC_ROOT`), so no run is lost.

Hydra's own folders under `logs/` are set in `conf/config.yaml` through the `project_path`
resolver this module registers; a sweep job's folder is one of them, Hydra's to create,
and `Paths.job_outputs` names the files in it; `multirun_file` names the sweep's config record.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.core.env import DVC_ROOT
from pipeline.core.errors import PipelineError

PACKAGE_CHECKOUT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PACKAGE_CHECKOUT / "conf"
ROOT_MARKER = "dvc.yaml"
PARAMS_FILE = "params.yaml"  # DVC's composition of conf/ (pipeline/core/dvcparams.py)
# What the compare stage writes into <reports_dir>/sweep/ (all of it, or none of it).
SWEEP_REPORTS = (
    "runs.csv", "runs.md", "cells.csv", "pivot.csv", "curves.csv", "cell_curves.csv", "curves.png", "heatmap.png",
    "report.html", "summary.json",
)  # fmt: skip
# What `python -m pipeline.scaling` writes into <reports_dir>/scaling/ (all of it, or none of it).
SCALING_REPORTS = ("runs.csv", "points.csv", "profiles.csv", "summary.json", "steps_vs_batch.png", "profiles.png")


def find_project_root(start: str | os.PathLike[str] | None = None) -> Path:
    """Return the nearest ancestor of `start` (default: cwd) that holds `dvc.yaml`."""
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / ROOT_MARKER).is_file():
            return candidate
    return PACKAGE_CHECKOUT


def resolve_path(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> Path:
    """Resolve a configured path against `root` (the project root when None)."""
    path = Path(os.path.expanduser(str(path)))
    if path.is_absolute():
        return path
    return (checked_root(root) if root else find_project_root()) / path


def checked_root(root: str | os.PathLike[str]) -> Path:
    """`paths.root` resolved; the filesystem root is refused before anything is written under it.

    Hydra creates the log folder from `paths.root` before any stage runs, so this check sits here,
    where the folder's path is resolved, and not in a stage's own checks.
    """
    resolved = Path(os.path.expanduser(str(root))).resolve()
    if resolved == Path(resolved.anchor):
        raise PipelineError(
            f"paths.root={root} is the filesystem root: the project's data/, models/, logs/ and mlruns/ "
            "would be written there. Allowed: any other folder; empty (the default) means this checkout. "
            "Fix: drop the override, or give a folder such as paths.root=$HOME/mnist-run."
        )
    return resolved


@dataclass(frozen=True)
class RunOutputs:
    """Files one training + evaluation writes: the stages' folders, or a sweep job's folder."""

    model: Path
    history: Path
    metrics: Path
    confusion_matrix: Path
    misclassified: Path

    @classmethod
    def in_folders(cls, models: Path, reports: Path) -> RunOutputs:
        return cls(
            model=models / "model.keras",
            history=reports / "history.csv",
            metrics=reports / "metrics.json",
            confusion_matrix=reports / "confusion_matrix.png",
            misclassified=reports / "misclassified.png",
        )


@dataclass(frozen=True)
class Paths:
    """Every folder and named file of one configured project (absolute)."""

    root: Path
    raw_dir: Path
    processed_dir: Path
    models_dir: Path
    reports_dir: Path
    mlruns_dir: Path
    logs_dir: Path
    dataset: str
    workspace_mlruns: Path  # <mlruns_dir> in this workspace (differs from mlruns_dir only in a queued DVC experiment)

    @classmethod
    def as_configured(cls, folders: dict[str, str], dataset: str) -> Paths:
        """The paths relative to the project root, as `conf/paths/` names the folders (how dvc.yaml names them)."""
        keys = [f.name for f in dataclasses.fields(cls) if f.name.endswith("_dir")]  # the folders of conf/paths/
        relative = {key: Path(folders[key]) for key in keys}
        return cls(root=Path(), dataset=dataset, workspace_mlruns=relative["mlruns_dir"], **relative)

    @property
    def raw_data(self) -> Path:
        """The canonical dataset file the download stage writes, and its provenance record."""
        return self.raw_dir / f"{self.dataset}.npz"

    @property
    def raw_record(self) -> Path:
        return self.raw_dir / f"{self.dataset}.json"

    def processed(self, split: str) -> Path:
        """One processed split (`train`, `val`, `test`), and what preprocess recorded about them."""
        return self.processed_dir / f"{split}.npz"

    @property
    def processed_meta(self) -> Path:
        return self.processed_dir / "meta.json"

    @property
    def stage_outputs(self) -> RunOutputs:
        """What the train and evaluate stages write."""
        return RunOutputs.in_folders(self.models_dir, self.reports_dir)

    @staticmethod
    def job_outputs(job_dir: Path, seed: int | None = None) -> RunOutputs:
        """What one run of a sweep job writes: its Hydra job folder, one subfolder per seed when replicated."""
        folder = job_dir if seed is None else job_dir / f"seed-{seed}"
        return RunOutputs.in_folders(folder, folder)

    @staticmethod
    def multirun_file(sweep_dir: Path) -> Path:
        """The composed config of a whole sweep, in its Hydra sweep folder (as Hydra's own sweeper names it)."""
        return sweep_dir / "multirun.yaml"

    def sweep_report(self, name: str) -> Path:
        """One of compare's outputs (`SWEEP_REPORTS`) under `<reports_dir>/sweep/`."""
        return self.reports_dir / "sweep" / name

    def scaling_report(self, name: str) -> Path:
        """One of `pipeline.scaling`'s outputs (`SCALING_REPORTS`) under `<reports_dir>/scaling/`."""
        return self.reports_dir / "scaling" / name

    def other_dataset_processed(self, dataset: str) -> Path:
        """The processed splits of a dataset other than the pipeline's (a scaling study's workload), beside its own."""
        return self.processed_dir.parent / "workloads" / dataset

    def tuned(self, name: str) -> Path:
        """`pipeline.tune`'s files under `<reports_dir>/tuned/` (its search and final sweeps' reports too)."""
        return self.reports_dir / "tuned" / name

    @property
    def benchmark(self) -> Path:
        """The speed benchmark's figures (benchmarks/train_speed.py)."""
        return self.reports_dir / "benchmark.json"

    @property
    def study_benchmark(self) -> Path:
        """The scaling study in one process against its runs as separate processes (benchmarks/study_speed.py)."""
        return self.reports_dir / "study_benchmark.json"

    @property
    def first_command(self) -> Path:
        """README command 1 timed on a fresh clone (benchmarks/first_command.py)."""
        return self.reports_dir / "first_command.json"

    @property
    def sweep_records(self) -> Path:
        """The folder of every sweep's own record, `<parent run id>.json`: a sweep never touches another's."""
        return self.mlruns_dir / "sweeps"

    def sweep_record_of(self, parent_run_id: str) -> Path:
        return self.sweep_records / f"{parent_run_id}.json"

    def stage_record(self, stage: str) -> Path:
        """What a stage run by DVC recorded in the MLflow store (a DVC output beside the store: gone with it)."""
        return self.workspace_mlruns / "stages" / f"{stage}.json"

    @property
    def sweep_record(self) -> Path:
        """The sweep stage's record: the sweep that the compare stage compares."""
        return self.stage_record("sweep")

    @property
    def store_db(self) -> Path:
        """The local MLflow store (SQLite); artifacts go beside it."""
        return self.mlruns_dir / "mlflow.db"

    @property
    def store_artifacts(self) -> Path:
        return self.artifacts_beside(self.store_db)

    @staticmethod
    def artifacts_beside(db: Path) -> Path:
        """Where the artifacts of a SQLite store go: beside its file."""
        return db.parent / "artifacts"

    @staticmethod
    def lock_beside(db: Path) -> Path:
        """The lock file of a SQLite store's folder (its first use creates the tables once)."""
        return db.parent / ".mlflow.lock"

    def unlogged(self, run_id: str) -> Path:
        """Per-epoch metrics of a run whose tracking server vanished, kept for `python -m pipeline.records`."""
        return self.mlruns_dir / "unlogged" / f"{run_id}.json"

    @property
    def optuna_db(self) -> Path:
        """Optuna studies, beside the MLflow store (so a search resumes)."""
        return self.mlruns_dir / "optuna.db"


def project_paths(cfg: DictConfig) -> Paths:
    """Every path of the project configured by `cfg`."""
    conf = cfg.paths
    root = checked_root(conf.root) if conf.root else find_project_root()
    store_root = root if conf.root else Path(os.environ.get(DVC_ROOT) or root)
    return Paths(
        root=root,
        raw_dir=resolve_path(conf.raw_dir, root),
        processed_dir=resolve_path(conf.processed_dir, root),
        models_dir=resolve_path(conf.models_dir, root),
        reports_dir=resolve_path(conf.reports_dir, root),
        mlruns_dir=resolve_path(conf.mlruns_dir, store_root),
        logs_dir=resolve_path(conf.logs_dir, root),
        dataset=str(OmegaConf.select(cfg, "dataset.name", default="mnist")),
        workspace_mlruns=resolve_path(conf.mlruns_dir, root),
    )


def paths_at(root: Path) -> Paths:
    """The paths of the project checked out at `root`, as its `params.yaml` configures them."""
    params = OmegaConf.load(root / PARAMS_FILE)
    with_root = OmegaConf.merge(params, {"paths": {"root": str(root)}})
    return project_paths(with_root)


def _register_resolvers() -> None:
    # conf/config.yaml: logs under the project (hydra.run.dir, hydra.sweep.dir); the sweep callback in multiruns only.
    if not OmegaConf.has_resolver("project_path"):
        OmegaConf.register_new_resolver("project_path", lambda path, root=None: str(resolve_path(path, root)))
    if not OmegaConf.has_resolver("if_multirun"):
        OmegaConf.register_new_resolver("if_multirun", _if_multirun)


def _if_multirun(multirun: str, otherwise: str, *, _root_: DictConfig) -> str:
    """`multirun` when Hydra runs a multirun, else `otherwise` (e.g. a callback class that only sweeps need)."""
    mode = OmegaConf.select(_root_, "hydra.mode", default=None)
    return multirun if str(getattr(mode, "name", mode)) == "MULTIRUN" else otherwise


_register_resolvers()

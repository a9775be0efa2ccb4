"""Where every file of the pipeline lives: the one module that builds paths.

Folders come from `conf/paths/` and are relative to the project root: the nearest
directory above the working directory that holds `dvc.yaml` (so a stage works from any
subfolder and inside any copy of the project), else this package's own checkout. The
MLflow store is the exception: in a DVC experiment run in a temporary folder
(`dvc exp run --queue`), it stays in the real project (`DVC_ROOT`), so no run is lost.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

PACKAGE_CHECKOUT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PACKAGE_CHECKOUT / "conf"
ROOT_MARKER = "dvc.yaml"
PARAMS_FILE = "params.yaml"  # DVC's composition of conf/ (pipeline/params.py)


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
    return (Path(root).resolve() if root else find_project_root()) / path


@dataclass(frozen=True)
class StageOutputs:
    """Files one training + evaluation writes: the stage folders, or a sweep job's folder."""

    model: Path
    history: Path
    metrics: Path
    confusion_matrix: Path
    misclassified: Path

    @classmethod
    def in_folder(cls, folder: Path) -> StageOutputs:
        return cls._build(folder, folder)

    @classmethod
    def _build(cls, models: Path, reports: Path) -> StageOutputs:
        return cls(
            model=models / "model.keras",
            history=reports / "history.csv",
            metrics=reports / "metrics.json",
            confusion_matrix=reports / "confusion_matrix.png",
            misclassified=reports / "misclassified.png",
        )


@dataclass(frozen=True)
class Paths:
    """Every folder and named file of one configured project."""

    root: Path
    raw_dir: Path
    processed_dir: Path
    models_dir: Path
    reports_dir: Path
    mlruns_dir: Path
    logs_dir: Path
    dataset: str

    @property
    def raw_data(self) -> Path:
        """The canonical dataset file the download stage writes."""
        return self.raw_dir / f"{self.dataset}.npz"

    @property
    def raw_record(self) -> Path:
        """Its provenance record (mirror, checksums, counts)."""
        return self.raw_dir / f"{self.dataset}.json"

    def processed(self, split: str) -> Path:
        """One processed split (`train`, `val`, `test`)."""
        return self.processed_dir / f"{split}.npz"

    @property
    def processed_meta(self) -> Path:
        return self.processed_dir / "meta.json"

    @property
    def stage_outputs(self) -> StageOutputs:
        """What the train and evaluate stages write."""
        return StageOutputs._build(self.models_dir, self.reports_dir)

    @property
    def sweep_dir(self) -> Path:
        return self.reports_dir / "sweep"

    @property
    def sweep_record(self) -> Path:
        """The sweep stage's record, which the compare stage reads."""
        return self.sweep_dir / "sweep.json"

    @property
    def store_db(self) -> Path:
        """The local MLflow store (SQLite); artifacts go beside it."""
        return self.mlruns_dir / "mlflow.db"

    @property
    def store_artifacts(self) -> Path:
        return self.mlruns_dir / "artifacts"

    @property
    def unlogged_dir(self) -> Path:
        """Per-epoch metrics of runs whose tracking server vanished, kept for later logging."""
        return self.mlruns_dir / "unlogged"


def project_paths(cfg: DictConfig) -> Paths:
    """Every path of the project configured by `cfg` (absolute)."""
    conf = cfg.paths
    root = Path(conf.root).resolve() if conf.root else find_project_root()
    store_root = Path(conf.root).resolve() if conf.root else Path(os.environ.get("DVC_ROOT") or root)
    return Paths(
        root=root,
        raw_dir=resolve_path(conf.raw_dir, root),
        processed_dir=resolve_path(conf.processed_dir, root),
        models_dir=resolve_path(conf.models_dir, root),
        reports_dir=resolve_path(conf.reports_dir, root),
        mlruns_dir=resolve_path(conf.mlruns_dir, store_root),
        logs_dir=resolve_path(conf.logs_dir, root),
        dataset=str(OmegaConf.select(cfg, "dataset.name", default="mnist")),
    )


def _register_resolvers() -> None:
    # Used by conf/config.yaml's hydra.run.dir and hydra.sweep.dir (logs under the project).
    if not OmegaConf.has_resolver("project_path"):
        OmegaConf.register_new_resolver("project_path", lambda path, root=None: str(resolve_path(path, root)))


_register_resolvers()

"""Where the project lives, and helpers shared by every stage's Hydra config.

Paths in `conf/paths/` are relative to the project root: the nearest directory above
the working directory that holds `dvc.yaml` (so a stage works from any subfolder and
inside any copy of the project), else this package's own checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

PACKAGE_CHECKOUT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PACKAGE_CHECKOUT / "conf"
ROOT_MARKER = "dvc.yaml"
# Set by a parallel sweep so that each job takes its share of the CPU cores.
THREADS_ENV = "MNIST_PIPELINE_THREADS"


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
    return Path(root).resolve() / path if root else find_project_root() / path


def project_path(cfg: DictConfig, key: str) -> Path:
    """Absolute path of `cfg.paths.<key>`."""
    return resolve_path(cfg.paths[key], cfg.paths.root)


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(find_project_root()))
    if not OmegaConf.has_resolver("project_path"):
        OmegaConf.register_new_resolver("project_path", lambda path, root=None: str(resolve_path(path, root)))


_register_resolvers()

"""`params.yaml`: DVC's composition of `conf/`, and the Hydra overrides that reproduce it.

DVC composes `conf/` into `params.yaml` itself on `dvc exp run` (Hydra composition is
on in `.dvc/config`, so `-S optimizer=adam` is a Hydra override), and the stages
declare the keys they read from it as DVC params. When DVC runs a stage
(`DVC_STAGE` is set), the stage does not compose `conf/` a second time on its own:
`infer_overrides` finds the Hydra overrides that turn `conf/` into exactly
`params.yaml` (group choices first, then single values), checks that composing them
gives `params.yaml` key for key, and the stage runs with them as if they were typed on
its command line. So `dvc exp run -S optimizer=adam` runs `python -m pipeline.train
optimizer=adam`, and what DVC records is what ran.

Why not just read `params.yaml`: a stage needs Hydra's group choices as well (an
optimizer's name is its file's name), and running with the inferred overrides makes
`dvc exp run -S optimizer=adam` and `python -m pipeline.train optimizer=adam` one and
the same run, recorded with the overrides that made it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.errors import PipelineError
from pipeline.core.paths import CONFIG_DIR, PARAMS_FILE, find_project_root

log = logging.getLogger(__name__)

CONFIG_NAME = "config"


def _container(cfg: Any) -> dict:
    from omegaconf import OmegaConf

    task_keys = [key for key in cfg if key != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, task_keys), resolve=True, enum_to_str=True)


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def _distance(a: Any, b: Any) -> int:
    """How many leaves differ between two config nodes."""
    la, lb = _leaves(a), _leaves(b)
    return sum(la.get(k) != lb.get(k) for k in set(la) | set(lb))


def override_value(value: Any) -> str:
    """`value` in Hydra's override grammar (strings always quoted, so '128' stays a string)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    raise PipelineError(f"{PARAMS_FILE}: cannot express {value!r} ({type(value).__name__}) as a Hydra override")


def _value_overrides(want: Any, have: Any, prefix: str) -> list[str]:
    if isinstance(want, dict) and isinstance(have, dict):
        out = []
        for key in want:
            path = f"{prefix}{key}"
            if key not in have:
                out.append(f"+{path}={override_value(want[key])}")
            else:
                out += _value_overrides(want[key], have[key], f"{path}.")
        out += [f"~{prefix}{key}" for key in have if key not in want]
        return out
    return [] if want == have else [f"{prefix.rstrip('.')}={override_value(want)}"]


def infer_overrides(params: dict, config_dir: Path = CONFIG_DIR) -> list[str]:
    """The Hydra overrides that compose `conf/` into `params` exactly (raises if none do)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import pipeline.core.config  # noqa: F401 - registers the schema in Hydra's ConfigStore

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        base = compose(CONFIG_NAME, return_hydra_config=True)
        choices = {g: c for g, c in base.hydra.runtime.choices.items() if not g.startswith("hydra/") and c}
        base_data = _container(base)
        loader = GlobalHydra.instance().config_loader()
        overrides = []
        for group, choice in choices.items():
            want = params.get(group)
            if want is None or want == base_data.get(group):
                continue
            options = [o for o in loader.get_group_options(group) if o != choice]
            best, best_distance = choice, _distance(want, base_data.get(group))
            for option in sorted(options):
                distance = _distance(want, _container(compose(CONFIG_NAME, [f"{group}={option}"])).get(group))
                if distance < best_distance:
                    best, best_distance = option, distance
            if best != choice:
                overrides.append(f"{group}={best}")
        composed = _container(compose(CONFIG_NAME, overrides))
        overrides += _value_overrides(params, composed, "")
        try:
            final = _container(compose(CONFIG_NAME, overrides))
        except Exception as err:  # noqa: BLE001 - reported with the file and the overrides tried
            raise PipelineError(
                f"{PARAMS_FILE} cannot be composed from conf/ (tried overrides {overrides}): {err}. "
                f"Recompose it from conf/ with: python -m pipeline.compose"
            ) from err
    GlobalHydra.instance().clear()
    if final != params:
        diff = sorted(k for k, v in _leaves(params).items() if _leaves(final).get(k) != v)
        raise PipelineError(
            f"{PARAMS_FILE} cannot be composed from conf/: {', '.join(diff[:5])} differ. "
            "Recompose it from conf/ with: python -m pipeline.compose"
        )
    return overrides


def read_params(root: Path | None = None) -> dict:
    """The project's `params.yaml` as plain data."""
    path = (root or find_project_root()) / PARAMS_FILE
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as err:
        raise PipelineError(f"{path} is missing: compose it from conf/ with: python -m pipeline.compose") from err
    except yaml.YAMLError as err:
        raise PipelineError(f"{path} is not valid YAML ({err}); recompose it: python -m pipeline.compose") from err


def composed_params(root: Path | None = None) -> str:
    """The text of `params.yaml` as DVC composes it from `conf/` (DVC's own function, its defaults)."""
    import tempfile

    from dvc.utils.hydra import compose_and_dump
    from hydra.core.global_hydra import GlobalHydra

    root = root or find_project_root()
    GlobalHydra.instance().clear()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / PARAMS_FILE
        # plugins from the project root, as `dvc exp run` does: the same bytes it writes
        compose_and_dump(fresh, str(root / "conf"), None, CONFIG_NAME, str(root), [])
        text = fresh.read_text()
    GlobalHydra.instance().clear()
    return text


def compose_params_file(root: Path | None = None, write: bool = True) -> bool:
    """Write `params.yaml` as DVC composes it from `conf/` (unless not `write`); return whether it differs."""
    root = root or find_project_root()
    target, text = root / PARAMS_FILE, composed_params(root)
    if target.is_file() and target.read_text() == text:
        return False
    if write:
        from pipeline.core.files import write_text

        write_text(target, text)
    return True

"""Download stage: try the dataset's mirrors in order, write one canonical `.npz`.

Output: `<raw_dir>/<name>.npz` (uint8 images `(N, 28, 28)`, uint8 labels) and
`<raw_dir>/<name>.json` (which mirror, checksums, counts; no timestamp, so the same
mirror's data gives the same output and DVC sees nothing new; another mirror is named). An output that already
verifies against its provenance file is kept and nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pipeline.core.app import stage_main
from pipeline.core.errors import PipelineError
from pipeline.core.files import sha256_file, write_json, write_npz
from pipeline.core.paths import project_paths
from pipeline.data.raw import validate_arrays
from pipeline.data.sources import check_mirrors, fetch_mirror

log = logging.getLogger(__name__)


def verified_provenance(data_file: Path, provenance_file: Path) -> dict | None:
    """The provenance record if `data_file` exists and matches its recorded sha256."""
    if not (data_file.is_file() and provenance_file.is_file()):
        return None
    try:
        record = json.loads(provenance_file.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("sha256") == sha256_file(data_file) else None


def download_dataset(cfg: DictConfig) -> dict:
    """Make sure the canonical raw dataset exists; return its provenance record."""
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    check_mirrors(dataset.get("mirrors"), dataset["name"])
    paths = project_paths(cfg)
    data_file, provenance_file = paths.raw_data, paths.raw_record
    record = verified_provenance(data_file, provenance_file)
    if record:
        log.info("%s already verifies (sha256 %s); nothing to download", data_file, record["sha256"][:12])
        return record

    failures = []
    data_file.parent.mkdir(parents=True, exist_ok=True)
    for mirror in dataset["mirrors"]:
        url = mirror["url"]
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".download-", dir=data_file.parent) as workdir:
            try:
                arrays, checksums = fetch_mirror(mirror, dataset, Path(workdir))
                validate_arrays(arrays, url, dataset["image_shape"], dataset["num_classes"])
            except Exception as err:  # noqa: BLE001 - any failure moves on to the next mirror
                reason = f"{type(err).__name__}: {err}"
                log.warning("Mirror %s failed after %.1f s: %s", url, time.monotonic() - started, reason)
                failures.append(f"  - {url}: {reason}")
                continue
        arrays = {k: np.asarray(v, dtype=np.uint8) for k, v in arrays.items()}
        write_npz(data_file, arrays)
        record = {
            "dataset": dataset["name"],
            "mirror": url,
            "source_sha256": checksums,
            "sha256": sha256_file(data_file),
            "counts": {"train": len(arrays["y_train"]), "test": len(arrays["y_test"])},
            "label_counts": {
                split: np.bincount(arrays[f"y_{split}"], minlength=dataset["num_classes"]).tolist()
                for split in ("train", "test")
            },
        }
        write_json(provenance_file, record)
        log.info(
            "Wrote %s from %s at %s (%d train, %d test images)",
            data_file,
            url,
            datetime.now(UTC).isoformat(timespec="seconds"),
            *record["counts"].values(),
        )
        return record

    raise PipelineError(
        f"Could not get dataset '{dataset['name']}': every mirror failed.\n"
        + "\n".join(failures)
        + "\nTo use a local copy, point the mirrors at it, e.g.\n"
        f"  python -m pipeline.download 'dataset.mirrors=[{{url: /path/to/{dataset['name']}.npz, sha256: null}}]'\n"
        f"(an .npz with x_train, y_train, x_test, y_test, or a folder with the four IDX files), "
        f"or edit conf/dataset/{dataset['name']}.yaml."
    )


main = stage_main(download_dataset)  # python -m pipeline.download [overrides]


if __name__ == "__main__":
    main()

"""Write files so that a crash never leaves a half-written file where a good one was."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it into place only on success.

    The temporary file keeps the target's suffix (Keras and numpy choose the format
    by suffix) and lives in the same directory, so the final rename is atomic.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp_path.chmod(0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def probe_write(folder: Path) -> None:
    """Write and remove a temporary file in `folder`; OSError if the folder cannot be written."""
    fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
    os.close(fd)
    os.unlink(probe)


def check_writable(folders: list[Path]) -> None:
    """Fail now, naming the folder, if an output folder cannot be written (not after training)."""
    from pipeline.core.errors import PipelineError

    for folder in folders:
        # Probe the folder, or the nearest existing folder above it: nothing is created.
        existing = Path(folder)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            if not existing.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(existing))
            probe_write(existing)
        except OSError as err:
            raise PipelineError(
                f"Cannot write to {folder} ({err.strerror or err}): make it writable (and check free space), "
                "or point paths.* at another folder. Nothing was started."
            ) from err


def write_together(
    writers: dict[Path, Callable[[Path], None]],
    before_replace: Callable[[dict[Path, Path]], None] | None = None,
) -> None:
    """Write several files as one unit: all of them are replaced, or none is.

    Each writer fills a temporary file beside its target; only when every writer has
    succeeded (and `before_replace`, given {target: written file}, has returned: e.g. the
    record of these files in MLflow) are the files renamed into place, each old file first
    moved aside so that a rename that fails puts every file back as it was. If any step
    fails, no target changes and the temporary files are removed. A folder that cannot be
    written is named in the error.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for target, write in writers.items():
            target = Path(target)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
            except OSError as err:
                from pipeline.core.errors import PipelineError

                raise PipelineError(
                    f"Cannot write {target} ({err.strerror or err}): make {target.parent} writable "
                    "(and check free space); nothing was replaced."
                ) from err
            os.close(fd)
            staged.append((Path(tmp), target))
            write(Path(tmp))
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        for tmp, _ in staged:
            tmp.chmod(0o666 & ~umask)
        if before_replace:
            before_replace({target: tmp for tmp, target in staged})
        _replace_all(staged)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def _replace_all(staged: list[tuple[Path, Path]]) -> None:
    """Rename every temporary file onto its target; on any failure restore the old targets."""
    done: list[tuple[Path, Path | None]] = []
    try:
        for tmp, target in staged:
            backup = None
            if target.is_file():
                backup = target.with_name(f".{target.name}.previous")
                os.replace(target, backup)
            try:
                os.replace(tmp, target)
            except BaseException:
                if backup is not None:
                    os.replace(backup, target)
                raise
            done.append((target, backup))
    except BaseException:
        for target, backup in reversed(done):
            if backup is not None:
                os.replace(backup, target)
            else:
                target.unlink(missing_ok=True)
        raise
    for _, backup in done:
        if backup is not None:
            backup.unlink(missing_ok=True)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    """Atomically write `text` to `target`."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | os.PathLike[str], data: Any) -> None:
    """Atomically write `data` as indented JSON."""
    write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_npz(target: str | os.PathLike[str], arrays: dict[str, Any]) -> None:
    """Atomically write an uncompressed `.npz` whose bytes depend on the arrays only.

    `numpy.savez` stamps each member with the current time, so the same data would
    hash differently on every run and DVC would see a change that is not there.
    """
    import zipfile

    import numpy as np

    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


@contextlib.contextmanager
def named_copies(files: dict[str, Path]) -> Iterator[Path]:
    """A temporary folder holding each file under its name (to record staged files under their final names)."""
    import shutil

    with tempfile.TemporaryDirectory() as folder:
        for name, path in files.items():
            shutil.copyfile(path, Path(folder) / name)
        yield Path(folder)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()

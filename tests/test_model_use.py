"""Putting the model to use: images and rows in the logged model, the champion, predict, serving."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import free_port, http_post_json, run_module, run_sweep
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.compare import compare_sweep
from pipeline.core.store import tracking_uri, use_store
from pipeline.data.splits import load_split
from pipeline.model.serving import to_mnist
from pipeline.training.runner import run_experiment


def stroke_image(size: int = 280, dark_on_light: bool = True) -> np.ndarray:
    """A hand-drawn-like '1': a thick vertical stroke, off centre, on a large canvas."""
    image = np.zeros((size, size), np.uint8)
    image[size // 5 : size - size // 5, size // 3 : size // 3 + size // 12] = 255
    return 255 - image if dark_on_light else image


def test_image_conversion_follows_mnist(tmp_path):
    path = tmp_path / "one.png"
    Image.fromarray(stroke_image()).save(path)
    pixels = to_mnist(path).reshape(28, 28)
    assert pixels.shape == (28, 28) and pixels.min() >= 0 and pixels.max() <= 1
    assert pixels[0].max() == 0 and pixels[:, 0].max() == 0, "dark-on-light became white on black"
    rows, cols = np.nonzero(pixels > 0.1)
    assert rows.max() - rows.min() + 1 <= 21, "fitted into the 20 x 20 box"
    cy, cx = (np.indices(pixels.shape) * pixels).reshape(2, -1).sum(axis=1) / pixels.sum()
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1, "centred by its centre of mass"
    jpeg = tmp_path / "one.jpg"
    Image.fromarray(stroke_image(97, dark_on_light=False)).convert("RGB").save(jpeg)
    assert np.abs(to_mnist(jpeg).reshape(28, 28) - pixels).mean() < 0.1, "size and polarity barely matter"


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """A tiny 2-cell sweep of 2 seeds each, compared (so a champion is registered)."""
    from conftest import compose_config, tiny_arrays

    from pipeline.core.files import write_npz
    from pipeline.download import download_dataset
    from pipeline.preprocess import preprocess_dataset

    root = tmp_path_factory.mktemp("use")
    write_npz(root / "tiny.npz", tiny_arrays())
    cfg = compose_config(root, f"dataset.mirrors=[{{url: '{root / 'tiny.npz'}', sha256: null}}]")
    download_dataset(cfg)
    preprocess_dataset(cfg)
    run_sweep(root, "optimizer=sgd,adam", "train.batch_size=32", "sweep.seeds=2")  # a champion needs replicates
    summary = compare_sweep(cfg)
    return cfg, summary


def test_logged_model_takes_images_and_flat_rows(sweep_store):
    cfg, summary = sweep_store
    use_store(tracking_uri(cfg))
    model = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.registered_model}@champion")
    inputs = {spec.name: spec.required for spec in model.metadata.get_input_schema().inputs}
    assert inputs == {"image": False, "pixels": False}, "the signature names both forms, each optional"
    test = load_split(cfg, "test")
    rows = test.x[:5]
    by_rows = model.predict(pd.DataFrame({"pixels": [r.tolist() for r in rows]}))
    by_images = model.predict(pd.DataFrame({"image": [r.reshape(28, 28).tolist() for r in rows]}))
    assert list(by_rows["digit"]) == list(by_images["digit"])
    np.testing.assert_allclose(np.stack(by_rows["probabilities"]).sum(axis=1), 1, rtol=1e-5)


def test_compare_registers_the_champion_and_keeps_history(sweep_store, tmp_path):
    cfg, summary = sweep_store
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    name = cfg.tracking.registered_model
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.tags["sweep.parent_run_id"] == summary["parent_run_id"]
    assert champion.tags["cell"] == summary["winner"]["cell"]
    compare_sweep(cfg)  # the same sweep again: no second version
    assert len(client.search_model_versions(f"name = '{name}'")) == 1


def test_predict_prints_path_digit_probability_and_writes_csv(sweep_store, tmp_path):
    cfg, _ = sweep_store
    folder = tmp_path / "digits"
    folder.mkdir()
    Image.fromarray(stroke_image()).save(folder / "a.png")
    Image.fromarray(stroke_image(64, dark_on_light=False)).convert("RGB").save(folder / "b.jpg")
    out = tmp_path / "predictions.csv"
    result = run_module("pipeline.predict", f"paths.root={cfg.paths.root}", f"input={folder}", f"output={out}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    assert [Path(p).name for p, _, _ in lines] == ["a.png", "b.jpg"]
    for _, digit, probability in lines:
        assert 0 <= int(digit) <= 9 and 0 < float(probability) <= 1
    assert "models:/mnist@champion" in result.stdout + result.stderr, "the champion by default"
    csv = out.read_text().splitlines()
    assert csv[0] == "path,digit,probability" and len(csv) == 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("text", "is not an image Pillow can read"),
        ("empty", "holds no PNG or JPEG files"),
        ("missing", "does not exist"),
        ("bad-model", "does not resolve in this MLflow store"),
    ],
)
def test_predict_bad_input_is_one_line(sweep_store, tmp_path, make, message):
    cfg, _ = sweep_store
    target, extra = tmp_path / "x", []
    if make == "text":
        target = tmp_path / "notes.png"
        target.write_text("not an image")
    elif make == "empty":
        target.mkdir()
    elif make == "bad-model":
        target = tmp_path / "a.png"
        Image.fromarray(stroke_image()).save(target)
        extra = ["model=models:/no-such-model@champion"]
    result = run_module("pipeline.predict", f"paths.root={cfg.paths.root}", f"input={target}", *extra)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert message in output and "Traceback" not in output


def test_runs_record_the_data_they_read(sweep_store):
    cfg, summary = sweep_store
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    runs = [client.get_run(row.run_id) for row in summary["table"].itertuples()]
    digests = {run.info.run_id: {(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs} for run in runs}
    expected = {(f"mnist-{s}", load_split(cfg, s).sha256[:16]) for s in ("train", "val", "test")}
    assert all(d == expected for d in digests.values())


@pytest.mark.slow
def test_serving_scores_two_images_over_rest(sweep_store, tmp_path):
    cfg, _ = sweep_store
    log = (tmp_path / "serve.log").open("w")
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # as with an activated virtual environment: the server runs the venv's uvicorn
    path = f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(cfg), "PATH": path}
    uri = f"models:/{cfg.tracking.registered_model}@champion"
    server = subprocess.Popen(
        [str(mlflow_cli), "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        test = load_split(cfg, "test")
        images = {"dataframe_records": [{"image": test.x[i].reshape(28, 28).tolist()} for i in (0, 1)]}
        rows = {"dataframe_records": [{"pixels": test.x[i].tolist()} for i in (0, 1)]}
        deadline = time.monotonic() + 180
        while True:
            try:
                answer = http_post_json(f"http://127.0.0.1:{port}/invocations", images, timeout=10)
                break
            except urllib.error.HTTPError:
                raise
            except OSError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the model server did not answer within 180 s"
                time.sleep(1)
        predictions = answer["predictions"]
        assert len(predictions) == 2
        as_rows = http_post_json(f"http://127.0.0.1:{port}/invocations", rows, timeout=30)["predictions"]
        assert [p["digit"] for p in as_rows] == [p["digit"] for p in predictions], "images and rows agree"
        local = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"pixels": [test.x[i].tolist() for i in (0, 1)]}))
        assert [p["digit"] for p in predictions] == list(local["digit"])
        assert all(0 < p["probability"] <= 1 for p in predictions)
        two = [test.x[i].reshape(28, 28).tolist() for i in (0, 1)]
        flat = [test.x[i].tolist() for i in (0, 1)]
        formats = {  # the scoring protocol's four JSON formats, with images or rows
            "dataframe_split": {"dataframe_split": {"columns": ["image"], "data": [[image] for image in two]}},
            "dataframe_split rows": {"dataframe_split": {"columns": ["pixels"], "data": [[row] for row in flat]}},
            "instances": {"instances": [{"image": image} for image in two]},
            "instances rows": {"instances": [{"pixels": row} for row in flat]},
            "inputs": {"inputs": {"image": two}},
            "inputs rows": {"inputs": {"pixels": flat}},
            "inputs records": {"inputs": [{"image": two[0]}, {"pixels": flat[1]}]},
        }
        for name, body in formats.items():
            answered = http_post_json(f"http://127.0.0.1:{port}/invocations", body, timeout=30)["predictions"]
            assert [p["digit"] for p in answered] == [p["digit"] for p in predictions], name
        from mlflow.models import validate_serving_input

        example = Path(mlflow.artifacts.download_artifacts(f"{uri}/serving_input_example.json")).read_text()
        assert len(validate_serving_input(uri, example)) == 1, "the logged input example is a valid request"
        image = test.x[0].reshape(28, 28).tolist()
        bad = {
            "misspelt field": ([{"images": image}], "no record holds `image`"),
            "empty record": ([{}], "no record holds `image`"),
            "NaN pixels": ([{"pixels": [float("nan")] * 784}], "`pixels` holds values outside [0, 1]"),
            "0-255 grey levels": ([{"image": (test.x[0] * 255).reshape(28, 28).tolist()}], "divide 0-255 by 255"),
            "wrong shape": ([{"pixels": [0.0] * 756}], "`pixels` has 756 values"),
        }
        requests = {case: {"dataframe_records": records} for case, (records, _) in bad.items()}
        requests["wrong shape (instances)"] = {"instances": [{"pixels": [0.0] * 756}]}
        requests["both forms in one row (instances)"] = {"instances": [{"image": image}, {"pixels": flat[1]}]}
        requests["both forms in one record"] = {"dataframe_records": [{"image": image, "pixels": flat[1]}]}
        requests["values that are no grid (inputs)"] = {"inputs": {"pixels": ["seven"]}}
        messages = {case: message for case, (_, message) in bad.items()}
        messages["wrong shape (instances)"] = "`pixels` has 756 values"
        messages["both forms in one row (instances)"] = "record 0 has both fields"
        messages["both forms in one record"] = "record 0 has both fields"
        messages["values that are no grid (inputs)"] = "`pixels` is not a grid of numbers"
        for case, request in requests.items():
            with pytest.raises(urllib.error.HTTPError) as refused:
                http_post_json(f"http://127.0.0.1:{port}/invocations", request, timeout=30)
            body = json.loads(refused.value.read())
            assert refused.value.code == 400 and messages[case] in body["message"], (case, body)
            assert "Traceback" not in body["message"], case
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def test_experiment_run_records_the_model_it_trained(tiny_data_cfg):
    cfg = tiny_data_cfg()
    result = run_experiment(cfg)
    use_store(tracking_uri(cfg))
    run = MlflowClient().get_run(result["run_id"])
    (logged,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert logged.source_run_id == result["run_id"]


def test_predict_reads_images_as_a_viewer_shows_them(tmp_path):
    """Phone photos (EXIF orientation), 16-bit greys, palette and grey+alpha transparency, CMYK, bilevel:
    each converts to what the plain 8-bit picture of the same digit gives."""
    from PIL import Image

    upright = Image.fromarray(stroke_image(140))  # a dark '1' on white
    upright.save(tmp_path / "plain.png")
    expected = to_mnist(tmp_path / "plain.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer turns it 90 degrees clockwise
    upright.rotate(90, expand=True).convert("RGB").save(tmp_path / "phone.jpg", exif=exif, quality=95)
    Image.fromarray(np.asarray(upright, np.uint16) * 257).save(tmp_path / "sixteen.png")  # mode I;16
    ink = Image.fromarray(np.where(np.asarray(upright) < 128, 1, 0).astype(np.uint8), mode="P")
    ink.putpalette([255, 0, 0, 0, 0, 0])  # index 0 (red) is the transparent background, 1 the black ink
    ink.save(tmp_path / "palette.png", transparency=0)
    grey_alpha = Image.merge("LA", (Image.new("L", upright.size, 0), Image.eval(upright, lambda v: 255 - v)))
    grey_alpha.save(tmp_path / "grey_alpha.png")  # black everywhere, only the ink opaque
    upright.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    upright.convert("1").save(tmp_path / "bilevel.png")
    for name in ("phone.jpg", "sixteen.png", "palette.png", "grey_alpha.png", "cmyk.jpg", "bilevel.png"):
        assert np.abs(to_mnist(tmp_path / name) - expected).mean() < 0.03, name
    sideways = Image.open(tmp_path / "phone.jpg")
    assert sideways.size == (upright.height, upright.width), "stored turned; only its EXIF tag makes it upright"


def test_predict_output_survives_awkward_file_names(sweep_store, tmp_path):
    import csv

    cfg, _ = sweep_store
    folder = tmp_path / "odd"
    folder.mkdir()
    name = 'a "quoted", tabbed\tname.png'
    Image.fromarray(stroke_image()).save(folder / name)
    out = tmp_path / "predictions.csv"
    result = run_module("pipeline.predict", f"paths.root={cfg.paths.root}", f"input={folder}", f"output={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = list(csv.reader(out.read_text().splitlines()))[1:]
    assert Path(row[0]).name == name and len(row) == 3
    (printed,) = [r for r in csv.reader(result.stdout.splitlines(), delimiter="\t") if len(r) == 3]
    assert Path(printed[0]).name == name


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("input=zifferä.png", "needs quotes around a value with spaces or non-ASCII"),
        ("model=junk.keras", "is not a Keras model file"),
    ],
)
def test_predict_explains_unquoted_values_and_files_that_are_no_model(sweep_store, tmp_path, argument, message):
    cfg, _ = sweep_store
    image = tmp_path / "a.png"
    Image.fromarray(stroke_image()).save(image)
    (tmp_path / "junk.keras").write_bytes(np.random.default_rng(0).bytes(2000))
    args = [argument] if argument.startswith("input=") else [f"input={image}", f"model={tmp_path / 'junk.keras'}"]
    result = run_module("pipeline.predict", f"paths.root={cfg.paths.root}", *args)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and message in output and "Traceback" not in output, output[-2000:]

"""Train and evaluate through the stage functions: real TensorFlow, real MLflow (tmp SQLite)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import compose_config, run_module, tiny_arrays
from mlflow.tracking import MlflowClient

from pipeline.core.errors import PipelineError
from pipeline.core.files import sha256_file, write_npz
from pipeline.core.paths import Paths, project_paths
from pipeline.core.store import parent_run, tracking_uri, use_store
from pipeline.data.splits import load_split
from pipeline.download import download_dataset
from pipeline.evaluate import evaluate
from pipeline.preprocess import preprocess_dataset
from pipeline.train import train
from pipeline.training.loop import gradient_noise_scale
from pipeline.training.records import MODEL_SHA_TAG
from pipeline.training.runner import run_experiment


def client_for(cfg) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri(cfg))


def trained_run_id(cfg) -> str:
    """The run that recorded the stage's model file (by its sha256)."""
    sha = sha256_file(project_paths(cfg).stage_outputs.model)
    client = client_for(cfg)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{MODEL_SHA_TAG}` = '{sha}'")
    return run.info.run_id


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny train + evaluate shared by the assertions below (TensorFlow is slow to start)."""
    tmp = tmp_path_factory.mktemp("trained")
    write_npz(tmp / "tiny.npz", tiny_arrays())
    mirror = f"dataset.mirrors=[{{url: '{tmp / 'tiny.npz'}', sha256: null}}]"
    cfg = compose_config(tmp, mirror, "train.epochs=2", "train.batch_size=32")
    download_dataset(cfg)
    preprocess_dataset(cfg)
    result = train(cfg)
    metrics = evaluate(cfg)
    return cfg, result, metrics


def test_run_is_finished_with_params_curves_and_test_accuracy(trained):
    cfg, result, metrics = trained
    run_id = trained_run_id(cfg)
    client = client_for(cfg)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "rmsprop-bs32"
    params = run.data.params
    assert params["optimizer.name"] == "rmsprop"
    assert params["optimizer.learning_rate"] == "0.001"
    assert params["train.batch_size"] == "32"
    assert params["model.hidden_units"] == "[512]"
    history = client.get_metric_history(run_id, "val_loss")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx([row["val_loss"] for row in result.history])
    for name in ("loss", "accuracy", "val_accuracy", "epoch_seconds", "samples_per_second"):
        assert len(client.get_metric_history(run_id, name)) == 2, name
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert metrics["test_accuracy"] > 0.5, "the tiny digits are learnable"
    assert run.data.tags["git_commit"]
    assert run.data.tags["data.sha256.train"] == load_split(cfg, "train").sha256
    assert run.data.tags["version.keras"]
    assert run.data.tags["cpu.model"] and "cpu.vector_extensions" in run.data.tags
    assert run.data.tags["host"] and run.data.tags["process.pid"].isdigit()
    inputs = {(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs}
    assert inputs == {
        ("mnist-train", load_split(cfg, "train").sha256[:16]),
        ("mnist-val", load_split(cfg, "val").sha256[:16]),
        ("mnist-test", load_split(cfg, "test").sha256[:16]),
    }, "the UI's dataset column: each split read, told apart by the digest of its bytes"


def test_artifacts_and_logged_model(trained):
    cfg, _, _ = trained
    run_id = trained_run_id(cfg)
    client = client_for(cfg)
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "history.csv", "evaluation"} <= top
    evaluation = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert evaluation == {
        "evaluation/metrics.json",
        "evaluation/confusion_matrix.png",
        "evaluation/misclassified.png",
        "evaluation/test_correct.npz",
    }, "the test images it got right: compare's paired test"
    use_store(tracking_uri(cfg))
    models = mlflow.search_logged_models(
        experiment_ids=[client.get_run(run_id).info.experiment_id], output_format="list"
    )
    assert [m.source_run_id for m in models] == [run_id]
    info = mlflow.models.get_model_info(models[0].model_uri)
    assert [spec["name"] for spec in info.signature.inputs.to_dict()] == ["image", "pixels"]
    assert info.saved_input_example_info is not None


def test_reloaded_model_predicts_exactly_what_the_trained_one_did(trained):
    import keras

    cfg, result, _ = trained
    test = load_split(cfg, "test")
    reloaded = keras.models.load_model(project_paths(cfg).stage_outputs.model)
    # the same weights; two compiled predict programs may round the last float32 bit differently
    np.testing.assert_allclose(reloaded.predict(test.x, verbose=0), result.model.predict(test.x, verbose=0), rtol=1e-5)
    use_store(tracking_uri(cfg))
    run = client_for(cfg).get_run(trained_run_id(cfg))
    (logged,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    from_mlflow = mlflow.pyfunc.load_model(logged.model_uri).predict(
        pd.DataFrame({"pixels": [r.tolist() for r in test.x]})
    )
    expected = result.model.predict(test.x, verbose=0)
    np.testing.assert_allclose(np.stack(from_mlflow["probabilities"]), expected, rtol=1e-5)


def test_reports_on_disk(trained):
    cfg, result, metrics = trained
    paths = project_paths(cfg).stage_outputs
    assert json.loads(paths.metrics.read_text()) == metrics
    assert set(metrics) == {"test_loss", "test_accuracy", "test_errors", "test_samples"}, "no timings in DVC outputs"
    assert metrics["test_errors"] == round((1 - metrics["test_accuracy"]) * metrics["test_samples"])
    lines = paths.history.read_text().splitlines()
    assert lines[0] == "epoch,loss,accuracy,val_loss,val_accuracy"
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2"]
    assert [float(line.split(",")[4]) for line in lines[1:]] == pytest.approx(
        [r["val_accuracy"] for r in result.history]
    )


def test_experiment_is_one_run_with_training_and_test_metrics(tiny_data_cfg):
    cfg = tiny_data_cfg("optimizer=adam")
    metrics = run_experiment(cfg)
    run = client_for(cfg).get_run(metrics["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "adam-bs32"
    assert {"val_loss", "test_accuracy", "train_seconds"} <= set(run.data.metrics)
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_full_batch_is_one_step_per_epoch_over_the_training_set(tiny_data_cfg):
    cfg = tiny_data_cfg("train.batch_size=full", "optimizer=sgd")
    metrics = run_experiment(cfg)
    run = client_for(cfg).get_run(metrics["run_id"])
    assert run.info.run_name == "sgd-bsfull"
    assert run.data.params["train.batch_size"] == "full"
    assert run.data.tags["train.batch_samples"] == "360", "400 images less the 10 % validation split"


def test_missing_processed_data_says_which_stage(compose_cfg):
    with pytest.raises(PipelineError, match="is missing: rerun preprocess"):
        train(compose_cfg())


def test_evaluate_without_model(tiny_data_cfg):
    with pytest.raises(PipelineError, match="No trained model .* run the train stage first"):
        evaluate(tiny_data_cfg())


def test_evaluate_continues_the_train_stages_run_never_a_sweep_child_with_the_same_model(tiny_data_cfg, tmp_path):
    """The same settings train the same bytes, so a sweep's child can carry the stage model's sha256."""
    cfg = tiny_data_cfg()
    train(cfg)
    stage_run = trained_run_id(cfg)
    with parent_run(cfg, "a sweep", {}) as parent:
        child = run_experiment(cfg, Paths.job_outputs(tmp_path / "job"), parent_run_id=parent, name="child")
    assert sha256_file(tmp_path / "job/model.keras") == sha256_file(project_paths(cfg).stage_outputs.model)
    evaluate(cfg)
    client = client_for(cfg)
    assert "test_accuracy" in client.get_run(stage_run).data.metrics
    assert client.get_run(child["run_id"]).info.status == "FINISHED"


def test_a_failed_evaluation_leaves_the_training_run_finished_and_evaluate_can_run_again(tiny_data_cfg):
    cfg = tiny_data_cfg()
    train(cfg)
    run_id = trained_run_id(cfg)
    metrics_file = project_paths(cfg).stage_outputs.metrics
    metrics_file.mkdir(parents=True)  # a directory where the metrics file goes: replacing it fails
    with pytest.raises(OSError):
        evaluate(cfg)
    run = client_for(cfg).get_run(run_id)
    assert run.info.status == "FINISHED", "its training finished; the evaluation failed"
    assert "evaluation.failure_reason" in run.data.tags
    metrics_file.rmdir()
    evaluate(cfg)  # the cause fixed, the same model is evaluated into the same run
    run = client_for(cfg).get_run(run_id)
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    assert "evaluation.failure_reason" not in run.data.tags, "the failure no longer holds"


def test_unwritable_store_fails_before_training(tiny_data_cfg, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cfg = tiny_data_cfg(f"paths.mlruns_dir={blocker / 'mlruns'}")
    cfg.tracking.uri = None
    with pytest.raises(PipelineError, match="Cannot create the MLflow store"):
        train(cfg)
    assert not project_paths(cfg).stage_outputs.model.exists()


def test_cli_unknown_optimizer_lists_choices(tmp_path):
    result = run_module("pipeline.train", "optimizer=adagrad", f"paths.root={tmp_path}")
    assert result.returncode != 0
    assert "Could not find 'optimizer/adagrad'" in result.stderr
    for name in ("adam", "momentum", "rmsprop", "sgd"):
        assert name in result.stderr


@pytest.mark.slow
def test_tensorflow_backend_trains_and_evaluates_the_same_way(tiny_data_cfg):
    """`train.backend=tensorflow` (Keras' fit with XLA) stays a supported backend."""
    cfg = tiny_data_cfg()
    root = cfg.paths.root
    for module in ("pipeline.train", "pipeline.evaluate"):
        result = run_module(module, f"paths.root={root}", "train.backend=tensorflow", "train.epochs=2")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    client = client_for(cfg)
    (run,) = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.backend"] == "tensorflow"
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2
    assert run.data.metrics["test_accuracy"] > 0.5


def test_the_jax_training_loop_matches_keras_fit(tiny_data_cfg):
    """The hand-written JAX loop and Keras' own `model.fit`, on the same model, data, batches and settings:
    the first epoch's loss and accuracy (training and validation) agree within 1e-4 (float rounding)."""
    from pipeline.core.config import build_optimizer
    from pipeline.model.networks import build_model
    from pipeline.training.loop import fit

    cfg = tiny_data_cfg("optimizer=adam", "train.batch_size=32", "train.epochs=1")
    train_split, val = load_split(cfg, "train"), load_split(cfg, "val")
    ours = fit(cfg, train_split, val).history[0]
    model = build_model(cfg, 784, 10)  # the same seeded initial weights
    model.compile(optimizer=build_optimizer(cfg, 32), loss=cfg.train.loss, metrics=["accuracy"])
    order = np.random.default_rng(int(cfg.train.seed)).permutation(len(train_split.x))  # the loop's first epoch
    keras_fit = model.fit(
        train_split.x[order], train_split.y[order], batch_size=32, epochs=1, shuffle=False,
        validation_data=(val.x, val.y), verbose=0,
    ).history  # fmt: skip
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert ours[name] == pytest.approx(keras_fit[name][0], abs=1e-4), name


def test_a_run_records_when_it_first_reached_the_target_or_that_it_never_did(tiny_data_cfg):
    """Validation 4 times an epoch; the first evaluation at or above compare.target gives steps, samples, time."""
    from pipeline.training.loop import time_to_target

    cfg = tiny_data_cfg("train.epochs=2", "compare.target=0.5")  # 360 images, batch 32: 12 steps an epoch
    run_id = run_experiment(cfg)["run_id"]
    client = client_for(cfg)
    run = client.get_run(run_id)
    steps = [m.step for m in client.get_metric_history(run_id, "step_val_accuracy")]
    assert steps == [3, 6, 9, 12, 15, 18, 21, 24], "every 3 steps: a quarter of an epoch"
    history = {m.step: m.value for m in client.get_metric_history(run_id, "step_val_accuracy")}
    first = min(s for s, v in history.items() if v >= 0.5)
    assert run.data.tags["target.reached"] == "true" and run.data.tags["target.value"] == "0.5"
    assert run.data.metrics["target.steps"] == first
    epochs_done, into = divmod(first, 12)
    assert run.data.metrics["target.samples"] == 360 * epochs_done + min(into * 32, 360)
    assert run.data.metrics["target.epochs"] == pytest.approx(first / 12)
    assert 0 < run.data.metrics["target.train_seconds"] <= run.data.metrics["train_seconds"]

    never = tiny_data_cfg("optimizer=sgd", "optimizer.learning_rate=0.0001", "train.epochs=1", "compare.target=1.0")
    run = client_for(never).get_run(run_experiment(never)["run_id"])
    assert run.data.tags["target.reached"] == "false" and run.data.tags["target.value"] == "1"
    assert not [k for k in run.data.metrics if k.startswith("target.")], "never reached: no number"
    assert time_to_target([{"val_accuracy": 0.5, "step": 1}, {"val_accuracy": 0.97, "step": 2}], 0.97)["step"] == 2
    assert time_to_target([{"val_accuracy": 0.5, "step": 1}], 0.97) is None


def test_stop_at_target_ends_the_run_at_its_first_validation_there_having_trained_the_same_until_then(tiny_data_cfg):
    """`train.stop_at_target=true`: the same evaluations as the full run up to the first at or above
    compare.target, then no more; the stopped epoch is the history's last row, with its noise estimate."""
    import math

    from pipeline.training.loop import fit, time_to_target

    cfg = tiny_data_cfg("train.epochs=6", "compare.target=0.5")  # 12 steps an epoch, validated every 3
    train_split, val = load_split(cfg, "train"), load_split(cfg, "val")
    full = fit(cfg, train_split, val)
    first = time_to_target(full.evaluations, 0.5)
    assert first is not None and first["step"] < 6 * 12, "the target is reached before the budget ends"
    assert first["epoch"] % 1, "inside an epoch: the stopped epoch's row averages the batches it trained"
    cfg.train.stop_at_target = True
    stopped = fit(cfg, train_split, val)

    def same(evaluations: list[dict]) -> list[dict]:
        return [{k: v for k, v in e.items() if k != "train_seconds"} for e in evaluations]

    upto = full.evaluations.index(first) + 1
    assert same(stopped.evaluations) == same(full.evaluations[:upto]), "identical training until the target"
    assert len(stopped.history) == math.ceil(first["epoch"]) < len(full.history)
    assert stopped.history[-1]["val_accuracy"] == first["val_accuracy"] and "noise_scale" in stopped.history[-1]
    assert 0 < stopped.history[-1]["accuracy"] <= 1 and stopped.history[-1]["loss"] > 0
    run = client_for(cfg).get_run(run_experiment(cfg)["run_id"])
    assert run.data.metrics["target.steps"] == first["step"] and run.data.params["train.stop_at_target"] == "True"


def test_the_logged_model_carries_its_validation_and_test_metrics(trained):
    """MLflow 3 logged models: the Models tab and search_logged_models rank a project's models by them."""
    cfg, result, metrics = trained
    use_store(tracking_uri(cfg))
    run = client_for(cfg).get_run(trained_run_id(cfg))
    ranked = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        order_by=[{"field_name": "metrics.test_accuracy", "ascending": False}],
        output_format="list",
    )
    (model,) = ranked
    linked = {m.key: m for m in model.metrics}
    assert linked["test_accuracy"].value == pytest.approx(metrics["test_accuracy"])
    assert linked["final_val_accuracy"].value == pytest.approx(result.history[-1]["val_accuracy"])
    assert (
        linked["test_accuracy"].dataset_name == "mnist-test"
        and linked["final_val_accuracy"].dataset_name == "mnist-val"
    )


def test_training_runs_record_system_metrics(tiny_data_cfg, monkeypatch):
    # The store samples once a second; a tiny run can finish within one second on a fast CPU,
    # so this test samples ten times as often (only the interval changes, the monitor is real).
    every_second, asked = mlflow.set_system_metrics_sampling_interval, []
    monkeypatch.setattr(
        mlflow, "set_system_metrics_sampling_interval", lambda interval: asked.append(interval) or every_second(0.1)
    )
    cfg = tiny_data_cfg("train.batch_size=4", "train.epochs=12")
    run = client_for(cfg).get_run(run_experiment(cfg)["run_id"])
    assert asked == [1], "the pipeline samples once a second"
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    quiet = tiny_data_cfg("tracking.system_metrics=false")
    assert not [
        k for k in client_for(quiet).get_run(run_experiment(quiet)["run_id"]).data.metrics if k.startswith("system/")
    ]


def test_noise_scale_estimator_recovers_the_gradient_and_the_noise():
    # Expected squared norms at two batch sizes for |G|^2 = 4 and tr(Sigma) = 320: B_simple = 80.
    small_sq, big_sq = 4 + 320 / 32, 4 + 320 / 2048
    estimate = gradient_noise_scale(small_sq, big_sq, 32, 2048)
    assert estimate["noise.gradient_sq"] == pytest.approx(4)
    assert estimate["noise.trace"] == pytest.approx(320)
    assert estimate["noise_scale"] == pytest.approx(80)
    swamped = gradient_noise_scale(10.0, 10.5, 32, 2048)  # noise larger than the signal: no ratio, never a number
    assert swamped["noise.gradient_sq"] > 10 and swamped["noise.trace"] < 0 and "noise_scale" not in swamped


def test_gradient_norms_are_those_of_the_sub_batches_and_their_union(tiny_data_cfg):
    import jax
    import jax.numpy as jnp

    from pipeline.core.config import build_optimizer
    from pipeline.model.networks import build_model
    from pipeline.training.loop import JaxProgram

    cfg = tiny_data_cfg()
    train_split = load_split(cfg, "train")
    model = build_model(cfg, train_split.x.shape[1], train_split.y.shape[1])
    optimizer = build_optimizer(cfg, 32)
    optimizer.build(model.trainable_variables)
    program = JaxProgram.for_model(cfg, model, optimizer)
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    x, y = jnp.asarray(train_split.x), jnp.asarray(train_split.y)
    index = np.random.default_rng(0).choice(len(train_split.x), 96, replace=False).astype(np.int32).reshape(3, 32)
    small_sq, big_sq = program.gradient_norms(trainable, non_trainable, x, y, index)

    def squared_gradient(rows):
        grads = jax.grad(lambda t: program._batch_loss(t, non_trainable, x[rows], y[rows], jnp.ones(len(rows)))[0])
        return float(sum(jnp.vdot(g, g) for g in grads(trainable)))

    assert small_sq == pytest.approx(np.mean([squared_gradient(rows) for rows in index]), rel=1e-4)
    assert big_sq == pytest.approx(squared_gradient(index.ravel()), rel=1e-4)
    assert small_sq > big_sq > 0  # a smaller batch has the noisier gradient


def test_noise_scale_is_logged_per_epoch_and_leaves_training_as_it_was(tiny_data_cfg):
    cfg = tiny_data_cfg("train.epochs=3", "train.noise_scale.examples=64", "train.noise_scale.small_batch=16")
    run_id = run_experiment(cfg)["run_id"]
    client = client_for(cfg)
    for name in ("noise.gradient_sq", "noise.trace", "noise.seconds"):
        assert [m.step for m in client.get_metric_history(run_id, name)] == [1, 2, 3], name
    logged = client.get_metric_history(run_id, "noise_scale")
    assert logged and all(m.value > 0 for m in logged)
    with_noise = project_paths(cfg).stage_outputs.history.read_text()
    off = tiny_data_cfg("train.epochs=3", "train.noise_scale.examples=0")
    off_run = run_experiment(off)["run_id"]
    assert project_paths(off).stage_outputs.history.read_text() == with_noise, "the estimate draws its own images"
    assert not [k for k in client.get_run(off_run).data.metrics if k.startswith("noise")]


def test_the_noise_estimate_is_not_counted_as_training_time(tiny_data_cfg, monkeypatch):
    """A clock that jumps 1,000 s during each noise estimate: the jumps land in `noise.seconds` only."""
    import time as real_time
    from types import SimpleNamespace

    from pipeline.training import loop

    jumped = [0.0]
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: real_time.perf_counter() + jumped[0]))
    measure = loop.JaxProgram.noise_scale

    def slow_measure(self, *args, **kwargs):
        jumped[0] += 1000.0
        return measure(self, *args, **kwargs)

    monkeypatch.setattr(loop.JaxProgram, "noise_scale", slow_measure)
    cfg = tiny_data_cfg("train.epochs=2", "train.noise_scale.examples=64", "train.noise_scale.small_batch=16")
    result = loop.fit(cfg, load_split(cfg, "train"), load_split(cfg, "val"))
    assert jumped[0] == 2000.0, "one estimate an epoch"
    assert all(row["noise.seconds"] >= 1000 for row in result.history)
    assert all(row["epoch_seconds"] < 1000 for row in result.history), "the epoch's time leaves it out"
    assert result.train_seconds < 1000 and all(e["train_seconds"] < 1000 for e in result.evaluations)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.noise_scale.examples=100"], "train.noise_scale.examples=100 is not allowed: 0 (off) or a multiple"),
        (["train.noise_scale.examples=32"], "at least twice it"),
        (["train.noise_scale.small_batch=0"], "train.noise_scale.small_batch=0 is not allowed: a positive integer"),
    ],
)
def test_bad_noise_scale_settings_are_refused_before_training(tmp_path, overrides, message):
    result = run_module("pipeline.train", f"paths.root={tmp_path}", *overrides)
    assert result.returncode == 1 and message in result.stdout + result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "mlruns").exists()

"""The config: every option of every group composes and checks; the schema refuses bad keys and values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import compose_hydra, run_module

from pipeline.core.config import check_config, resolve_batch_size
from pipeline.core.errors import PipelineError
from pipeline.core.paths import CONFIG_DIR, find_project_root, project_paths, resolve_path


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


# conf/predict/ holds the primary config of `pipeline.predict`, not a group of the pipeline's.
GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "predict"))


def test_groups_have_expected_options():
    assert options("optimizer") == ["adam", "momentum", "rmsprop", "sgd"]
    assert options("dataset") == ["fashion_mnist", "mnist"]
    assert {"optimizers_x_batch_sizes", "none"} <= set(options("sweep"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_of_every_group_composes_and_checks(compose_cfg, group, option):
    cfg = compose_cfg(f"{group}={option}")
    check_config(cfg)
    if group == "optimizer":
        from pipeline.core.config import build_optimizer

        optimizer = build_optimizer(cfg)
        assert optimizer.name == option, "the optimizer's name is its file's name"
        assert float(optimizer.learning_rate) == pytest.approx(cfg.optimizer.learning_rate)
    if group == "model":
        from pipeline.model.networks import build_model

        model = build_model(cfg)
        assert model.input_shape == (None, 784) and model.output_shape == (None, 10)
        assert model.name == option


def test_momentum_is_sgd_with_momentum(compose_cfg):
    from pipeline.core.config import build_optimizer

    optimizer = build_optimizer(compose_cfg("optimizer=momentum"))
    assert type(optimizer).__name__ == "SGD" and optimizer.momentum == pytest.approx(0.9)


def test_reference_network_shape(compose_cfg):
    from pipeline.model.networks import build_model

    model = build_model(compose_cfg())
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    assert [layer.units for layer in dense] == [512, 10]
    assert [layer.activation.__name__ for layer in dense] == ["relu", "softmax"]
    assert model.count_params() == 784 * 512 + 512 + 512 * 10 + 10


def test_deeper_mlp_is_a_config_change(compose_cfg):
    from pipeline.model.networks import build_model

    model = build_model(compose_cfg("model.hidden_units=[256,128]", "model.activation=tanh"))
    assert [layer.units for layer in model.layers[1:]] == [256, 128, 10]


def test_optimizer_file_needs_only_target_and_arguments(tmp_path, compose_cfg):
    """A new optimizer is a YAML file with `_target_` and its arguments; its name is the file's."""
    extra = tmp_path / "extra_conf" / "optimizer"
    extra.mkdir(parents=True)
    (extra / "adagrad.yaml").write_text("_target_: keras.optimizers.Adagrad\nlearning_rate: 0.01\n")
    cfg = compose_cfg("optimizer=adagrad", f"hydra.searchpath=[file://{extra.parent}]")
    from pipeline.core.config import build_optimizer

    assert cfg.optimizer.name == "adagrad"
    assert type(build_optimizer(cfg)).__name__ == "Adagrad"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=0", "train.batch_size=0 is not allowed: a positive integer or 'full'"),
        ("train.batch_size=-4", "train.batch_size=-4 is not allowed"),
        ("train.batch_size=abc", "train.batch_size='abc' is not allowed"),
        ("train.epochs=0", "train.epochs=0 is not allowed: a positive integer"),
        ("train.seed=-1", "train.seed=-1 is not allowed: an integer in [0, 2**32)"),
        ("sweep.seeds=0", "sweep.seeds=0 is not allowed: a positive integer"),
        ("optimizer.learning_rate=0", "optimizer.learning_rate=0 is not allowed: a finite number > 0"),
        ("optimizer.learning_rate=-1e-3", "optimizer.learning_rate=-0.001 is not allowed"),
        ("optimizer.learning_rate=inf", "optimizer.learning_rate=inf is not allowed: a finite number > 0"),
        ("optimizer=momentum optimizer.momentum=1.0", "optimizer.momentum=1.0 is not allowed: a number in [0, 1)"),
        ("model.hidden_units=[512,0]", "model.hidden_units=[512, 0] is not allowed: a non-empty list of positive"),
        ("split.val_fraction=1.0", "split.val_fraction=1.0 is not allowed"),
        ("compare.alpha=1.5", "compare.alpha=1.5 is not allowed"),
        ("+train.batchsize=3", "train.batchsize is not a setting of this pipeline (misspelt?)"),
        ("+foo=1", "foo is not a setting of this pipeline"),
        ("scaling.seeds=[]", "scaling.seeds=[] is not allowed. Fix it, e.g. scaling.seeds=[1,2,3]"),
        ("scaling.seeds=[1,1]", "scaling.seeds=[1, 1] is not allowed"),
        ("scaling.seeds=[0,1]", "scaling.seeds=[0, 1] holds scaling.search_seed=0: the replicas are fresh seeds"),
        ("scaling.batch_sizes=[64,64]", "scaling.batch_sizes=[64, 64] is not allowed"),
        ("scaling.workloads.mnist.batch_sizes=[0]", "scaling.workloads.mnist.batch_sizes=[0] is not allowed"),
        ("scaling.batch_sizes=[16,0]", "scaling.batch_sizes=[16, 0] is not allowed"),
        ("scaling.rate_range=[1.0,0.1]", "scaling.rate_range=[1.0, 0.1] is not allowed"),
        ("scaling.eval_ratio=1.0", "scaling.eval_ratio=1.0 is not allowed"),
        ("scaling.workloads.mnist.target=97", "scaling.workloads.mnist.target=97.0 is not a validation accuracy"),
    ],
)
def test_bad_values_are_named_with_allowed_values(tmp_path, override, message):
    from conftest import compose_config

    with pytest.raises(PipelineError) as err:
        compose_config(tmp_path, *override.split())
    assert message in str(err.value)


def test_misspelt_key_without_plus_is_refused_before_anything_runs(tmp_path):
    """Refused before Hydra composes (whose own message would suggest adding it with `+`), naming the fix."""
    result = run_module("pipeline.train", f"paths.root={tmp_path}", "train.batchsize=3")
    assert result.returncode == 1
    assert "train.batchsize is not a setting of this pipeline" in result.stderr
    assert "e.g. train.batch_size=..." in result.stderr and "+train.batchsize" not in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "logs").exists(), "refused before Hydra writes its log folder"


def test_override_keys_are_checked_against_the_schema_down_to_free_form_nodes():
    from pipeline.core.config import Config, PredictConfig, check_override_key

    for key in ("train.batch_size", "train.divergence.chance_margin", "paths.raw_dir", "scaling.workloads.x.target"):
        check_override_key(key, Config)
    for key in ("model.hidden_units", "optimizer.beta_1", "sweep.grid.optimizer", "hparams_search", "dataset"):
        check_override_key(key, Config)  # free-form nodes and config groups: Hydra judges them
    check_override_key("input", PredictConfig)
    for key, fix in [
        ("train.divergence.chance_margn", "train.divergence.chance_margin"),
        ("tracking.urii", "tracking.uri"),
        ("paths.rawdir", "paths.raw_dir"),
    ]:
        with pytest.raises(PipelineError, match=rf"{re.escape(key)} is not a setting.*e\.g\. {re.escape(fix)}=\.\.\."):
            check_override_key(key, Config)
    with pytest.raises(PipelineError, match="tracking.urii is not a setting"):
        check_override_key("tracking.urii", PredictConfig)


def test_wrong_type_is_refused_by_the_schema(tmp_path):
    result = run_module("pipeline.train", f"paths.root={tmp_path}", "train.epochs=five")
    assert result.returncode != 0
    assert "train.epochs" in result.stderr and "could not be converted to Integer" in result.stderr
    result = run_module("pipeline.train", f"paths.root={tmp_path}", "train.backend=torch")
    assert "Invalid value 'torch', expected one of [jax, tensorflow]" in result.stderr


def test_batch_size_full_is_the_training_set():
    assert resolve_batch_size("full", 54000) == 54000
    assert resolve_batch_size(128, 54000) == 128
    with pytest.raises(PipelineError, match=r"train.batch_size=128 is not allowed: at most the 100 training images"):
        resolve_batch_size(128, 100)  # refused, never silently clamped (the run's name and param would lie)


def test_project_root_found_from_a_subfolder(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert find_project_root() == tmp_path
    assert resolve_path("data/raw") == tmp_path / "data" / "raw"
    assert resolve_path("/abs/x") == Path("/abs/x")


def test_stage_paths_resolve_against_root(compose_cfg, tmp_path, monkeypatch):
    paths = project_paths(compose_cfg())
    assert paths.raw_dir == tmp_path / "project" / "data" / "raw"
    assert paths.raw_data == tmp_path / "project" / "data" / "raw" / "mnist.npz"
    assert paths.sweep_record == tmp_path / "project" / "mlruns" / "stages" / "sweep.json"


def test_store_stays_in_the_real_project_inside_a_dvc_experiment_folder(tmp_path, monkeypatch):
    """`dvc exp run --queue` runs in a temporary copy; DVC_ROOT names the real project."""
    copy, real = tmp_path / "exp-copy", tmp_path / "real"
    for folder in (copy, real):
        folder.mkdir()
        (folder / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(real))
    paths = project_paths(compose_hydra())
    assert paths.models_dir == copy / "models", "outputs go to the experiment's copy"
    assert paths.store_db == real / "mlruns" / "mlflow.db", "runs go to the project's store"

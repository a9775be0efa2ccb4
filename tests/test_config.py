"""The config: every option of every group composes and instantiates; bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import CONFIG_DIR, find_project_root, resolve_path
from pipeline.errors import PipelineError
from pipeline.validation import check_config, resolve_batch_size


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_groups_have_expected_options():
    assert options("optimizer") == ["adam", "momentum", "rmsprop", "sgd"]
    assert options("dataset") == ["fashion_mnist", "mnist"]


@pytest.mark.parametrize("name", options("optimizer"))
def test_every_optimizer_instantiates(compose_cfg, name):
    from pipeline.model import build_optimizer

    cfg = compose_cfg(f"optimizer={name}")
    optimizer = build_optimizer(cfg)
    assert optimizer.name == name
    assert float(optimizer.learning_rate) == pytest.approx(cfg.optimizer.learning_rate)
    check_config(cfg)


def test_momentum_is_sgd_with_momentum(compose_cfg):
    from pipeline.model import build_optimizer

    optimizer = build_optimizer(compose_cfg("optimizer=momentum"))
    assert type(optimizer).__name__ == "SGD" and optimizer.momentum == pytest.approx(0.9)


@pytest.mark.parametrize("name", options("model"))
def test_every_model_builds(compose_cfg, name):
    from pipeline.model import build_model

    model = build_model(compose_cfg(f"model={name}"))
    assert model.input_shape == (None, 784) and model.output_shape == (None, 10)


def test_reference_network_shape(compose_cfg):
    from pipeline.model import build_model

    model = build_model(compose_cfg())
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    assert [layer.units for layer in dense] == [512, 10]
    assert [layer.activation.__name__ for layer in dense] == ["relu", "softmax"]
    assert model.count_params() == 784 * 512 + 512 + 512 * 10 + 10


def test_deeper_mlp_is_a_config_change(compose_cfg):
    from pipeline.model import build_model

    model = build_model(compose_cfg("model.hidden_units=[256,128]", "model.activation=tanh"))
    assert [layer.units for layer in model.layers[1:]] == [256, 128, 10]


@pytest.mark.parametrize("name", options("dataset"))
def test_every_dataset_has_mirrors_with_checksums(compose_cfg, name):
    from pipeline.sources import check_mirrors

    cfg = compose_cfg(f"dataset={name}")
    check_mirrors(cfg.dataset.mirrors, name)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=0", "train.batch_size=0 is not allowed: a positive integer or 'full'"),
        ("train.batch_size=-4", "train.batch_size=-4 is not allowed"),
        ("train.batch_size=abc", "train.batch_size='abc' is not allowed"),
        ("train.epochs=0", "train.epochs=0 is not allowed: a positive integer"),
        ("optimizer.learning_rate=0", "optimizer.learning_rate=0 is not allowed: a number > 0"),
        ("optimizer.learning_rate=-1e-3", "optimizer.learning_rate=-0.001 is not allowed"),
        ("optimizer=momentum optimizer.momentum=1.0", "optimizer.momentum=1.0 is not allowed: a number in [0, 1)"),
        ("model.hidden_units=[512,0]", "model.hidden_units=[512, 0] is not allowed: a list of positive integers"),
        ("split.val_fraction=1.0", "split.val_fraction=1.0 is not allowed"),
    ],
)
def test_bad_values_are_named_with_allowed_values(compose_cfg, override, message):
    cfg = compose_cfg(*override.split())
    with pytest.raises(PipelineError) as err:
        check_config(cfg)
    assert message in str(err.value)
    assert "Fix it, e.g." in str(err.value)


def test_batch_size_full_is_the_training_set():
    assert resolve_batch_size("full", 54000) == 54000
    assert resolve_batch_size(128, 54000) == 128
    assert resolve_batch_size(128, 100) == 100


def test_project_root_found_from_a_subfolder(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert find_project_root() == tmp_path
    assert resolve_path("data/raw") == tmp_path / "data" / "raw"
    assert resolve_path("/abs/x") == Path("/abs/x")


def test_stage_paths_resolve_against_root(compose_cfg, tmp_path):
    from pipeline.config import project_path

    cfg = compose_cfg()
    assert project_path(cfg, "raw_dir") == tmp_path / "project" / "data" / "raw"

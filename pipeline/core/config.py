"""The config schema: types and defaults as structured configs, plus the range rules.

`conf/config.yaml` starts its defaults list with `schema` (the `Config` dataclass below,
registered in Hydra's ConfigStore), so Hydra refuses a misspelt key or a value of the
wrong type while composing. A key added with `+` bypasses that check, so `check_config`
walks the composed config against the schema once more, then applies the range rules
that types cannot express. Every message names the key, the value, what is allowed
and a fix.

It also says what the settings come to where the batch size decides it: the samples per
step (`resolve_batch_size`), the learning rate after `train.lr_scaling`
(`effective_learning_rate`) and the Keras optimizer that `optimizer` instantiates at that
rate (`build_optimizer`). The training loop (`training/loop.py`) does the rest.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from pipeline.core.errors import PipelineError

FULL_BATCH = "full"
# Losses the divergence rule can judge: its uniform-guess loss is ln(classes) for each.
JUDGED_LOSSES = ("categorical_crossentropy",)
# What a sweep job can return, and the direction that improves it.
OBJECTIVES = {"val_accuracy": "maximize", "val_loss": "minimize"}


class LrScaling(enum.Enum):
    """How the learning rate follows the batch size (`train.lr_scaling`)."""

    none = "none"
    linear = "linear"  # rate x batch / base_batch_size (Goyal et al. 2017)
    sqrt = "sqrt"  # rate x sqrt(batch / base_batch_size) (Krizhevsky 2014; Hoffer et al. 2017)


class Backend(enum.Enum):
    """Keras backends the pipeline supports (`train.backend`)."""

    jax = "jax"
    tensorflow = "tensorflow"


@dataclass
class PathsConfig:
    root: str | None = None  # null: the project root (the folder holding dvc.yaml)
    raw_dir: str = "data/raw"
    processed_dir: str = "data/processed"
    models_dir: str = "models"
    reports_dir: str = "reports"
    mlruns_dir: str = "mlruns"
    logs_dir: str = "logs"


@dataclass
class DatasetConfig:
    name: str = MISSING
    num_classes: int = 10
    image_shape: list[int] = field(default_factory=lambda: [28, 28])
    connect_timeout: float = 5.0
    mirrors: list[Any] = MISSING  # {url, sha256, ...} entries; sources.check_mirrors checks each


@dataclass
class SplitConfig:
    val_fraction: float = 0.1
    seed: int = 42


@dataclass
class DivergenceConfig:
    # A run has diverged when its training loss is not finite, or its training accuracy is
    # within `chance_margin` of chance (1 / classes) while its loss exceeds `loss_factor` x
    # ln(classes); it does not learn when, at the end of an epoch once `learn_after_steps`
    # optimizer steps are done, its validation accuracy is not `min_accuracy_gain` above the
    # untrained network's (pipeline/training/loop.py). Either ends the run FAILED.
    chance_margin: float = 0.05
    loss_factor: float = 2.0
    learn_after_steps: int = 200
    min_accuracy_gain: float = 0.01


@dataclass
class NoiseScaleConfig:
    # The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018, appendix A.1),
    # estimated once an epoch from `examples` training images cut into batches of `small_batch`
    # (pipeline/training/loop.py, JAX backend). examples: 0 turns it off.
    examples: int = 2048
    small_batch: int = 32


@dataclass
class TrainConfig:
    backend: Backend = Backend.jax
    epochs: int = 5
    evals_per_epoch: int = 4  # validation passes an epoch (JAX backend; TensorFlow: 1): time to a target
    stop_at_target: bool = False  # end a run at its first validation at or above compare.target (JAX)
    batch_size: Any = 128  # a positive integer, or "full"
    seed: int = 0
    lr_factor: float = 1.0  # multiplies optimizer.learning_rate: what a learning-rate search varies
    lr_scaling: LrScaling = LrScaling.none
    base_batch_size: int = 128  # the batch size at which lr_scaling leaves the rate as it is
    loss: str = "categorical_crossentropy"
    metrics: list[str] = field(default_factory=lambda: ["accuracy"])
    steps_per_execution: int = 64
    jit_compile: bool = True
    threads: int | None = None
    compilation_cache: str | None = "~/.cache/mnist-pipeline/jax"  # JAX's compiled programs, kept across runs
    verbose: Any = "auto"
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    noise_scale: NoiseScaleConfig = field(default_factory=NoiseScaleConfig)


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None
    experiment: str = "mnist"
    log_model: bool = True
    server_timeout_s: float = 10.0
    registered_model: str = "mnist"  # compare registers each finished sweep's best model here
    system_metrics: bool = True  # CPU and memory of every training run (MLflow's system metrics)
    ui_port: int = 5000  # `python -m pipeline.ui` serves the MLflow UI of the local store here


@dataclass
class SweepConfig:
    name: str = "sweep"
    grid: dict[str, str] = field(default_factory=dict)
    seeds: int = 1
    jobs_file: str | None = None  # a JSON list of override lists: exactly these jobs instead of the grid


@dataclass
class CompareConfig:
    parent_run_id: str | None = None  # the sweep to compare (default: see pipeline/compare.py)
    alpha: float = 0.05
    target: float = 0.97  # validation accuracy a run must reach (AlgoPerf's MNIST target): time to result
    register: bool = True  # register the winner as the `champion` (only a replicated winner, n >= 2)


@dataclass
class WorkloadConfig:
    overrides: list[str] = field(default_factory=list)  # Hydra overrides that make it, e.g. [dataset=fashion_mnist]
    target: float = 0.97  # the validation accuracy it is judged by
    batch_sizes: list[int] | None = None  # null: scaling.batch_sizes


@dataclass
class ScalingConfig:
    # `python -m pipeline.scaling` (pipeline/sweeps/study.py says how each value is used).
    optimizers: list[str] = field(default_factory=lambda: ["sgd", "momentum", "adam"])
    batch_sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192])
    rates_per_decade: int = 2  # the learning-rate grid: 10 ** (k / rates_per_decade)
    rate_range: list[float] = field(default_factory=lambda: [1e-5, 10.0])  # the grid's ends
    search_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])  # the chosen rate's replicas
    max_epochs: float = 40.0  # a run that has not reached the target by then never does
    eval_ratio: float = 1.0905  # validations 2^(1/8) steps apart ...
    eval_min_samples: int = 4096  # ... and at least this many images apart
    taus: list[float] = field(default_factory=lambda: [1.0, 1.25, 1.5, 2.0, 4.0])  # performance profile columns
    workloads: dict[str, WorkloadConfig] = field(default_factory=dict)


@dataclass
class Config:
    """The whole composed config of a stage (the `hydra` node aside)."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: dict[str, Any] = field(default_factory=dict)  # `_target_` (a builder function) + its arguments
    optimizer: dict[str, Any] = field(default_factory=dict)  # `_target_` (a Keras optimizer class) + its arguments
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    # What a sweep job returns to its sweeper (an Optuna search optimises it): a validation metric,
    # never a test metric. lightning-hydra-template's name for it.
    optimized_metric: str = "val_accuracy"


@dataclass
class PredictConfig:
    """`python -m pipeline.predict` (conf/predict/predict.yaml)."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    input: str = MISSING
    model: str | None = None
    output: str | None = None
    invert: str = "auto"


# Hydra's default job logging with a shorter console line (`override hydra/job_logging: pipeline`
# in both primary configs); here, not in conf/, because conf/predict/ cannot see conf/hydra/.
JOB_LOGGING = {
    "version": 1,
    "formatters": {
        "simple": {"format": "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"},
        "console": {"format": "%(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "console", "stream": "ext://sys.stdout"},
        "file": {
            "class": "logging.FileHandler",
            "formatter": "simple",
            "filename": "${hydra.runtime.output_dir}/${hydra.job.name}.log",
        },
    },
    "root": {"level": "INFO", "handlers": ["console", "file"]},
    # JAX tells at INFO that this machine has no TPU, in every process.
    # ... and MLflow tells four INFO lines of its system-metrics monitor for every run.
    "loggers": {"jax._src.xla_bridge": {"level": "WARNING"}, "mlflow.system_metrics": {"level": "WARNING"}},
    "disable_existing_loggers": False,
}

ConfigStore.instance().store(group="hydra/job_logging", name="pipeline", node=JOB_LOGGING, provider="mnist_pipeline")
ConfigStore.instance().store(name="schema", node=Config)
ConfigStore.instance().store(name="predict_schema", node=PredictConfig)


def _bad(key: str, value: Any, allowed: str, example: str) -> PipelineError:
    return PipelineError(f"{key}={value!r} is not allowed: {allowed}. Fix it, e.g. {key}={example}")


def check_unknown_keys(node: Any, schema: type, prefix: str = "") -> None:
    """Refuse keys the schema does not know (Hydra lets `+key=value` add any)."""
    known = {f.name: f for f in dataclasses.fields(schema)}
    for key in node:
        full = f"{prefix}{key}"
        if key not in known:
            raise _unknown_key(prefix, key, known)
        child = node[key]
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(child)):
            check_unknown_keys(child, OmegaConf.get_type(child), f"{full}.")


def _unknown_key(prefix: str, key: str, known: Any) -> PipelineError:
    example = (difflib.get_close_matches(str(key), list(known), n=1) or sorted(known))[0]
    return PipelineError(
        f"{prefix}{key} is not a setting of this pipeline (misspelt?). The settings under "
        f"{prefix.rstrip('.') or 'the top level'} are: {', '.join(sorted(known))}. "
        f"Remove it or use one of those, e.g. {prefix}{example}=..."
    )


def check_override_key(key: str, schema: type) -> None:
    """Refuse a command line's `train.batchsize=3` before Hydra composes: Hydra's own message would
    suggest `+train.batchsize=3`, which `check_unknown_keys` then refuses. A top-level name (a config
    group such as `hparams_search`) and keys under a free-form node (`model`, `optimizer`) pass."""
    node, prefix = schema, ""
    for part in key.split("."):
        fields = typing.get_type_hints(node)
        if part not in fields:
            if prefix:
                raise _unknown_key(prefix, part, fields)
            return
        node, prefix = fields[part], f"{prefix}{part}."
        if not dataclasses.is_dataclass(node):
            return


def check_batch_size(value: Any) -> None:
    """A positive integer or `full` (the whole training set as one batch)."""
    if not (value == FULL_BATCH or (_is_int(value) and value > 0)):
        raise _bad(
            "train.batch_size", value, f"a positive integer or '{FULL_BATCH}' (full-batch gradient descent)", "128"
        )


def resolve_batch_size(value: Any, n_train: int) -> int:
    """The number of samples per step; `full` is the whole training set, more than it is refused."""
    check_batch_size(value)
    if value != FULL_BATCH and int(value) > n_train:
        raise _bad(
            "train.batch_size", value, f"at most the {n_train:,} training images (or '{FULL_BATCH}')", FULL_BATCH
        )
    return n_train if value == FULL_BATCH else int(value)


def effective_learning_rate(cfg: DictConfig, batch_samples: int | None = None) -> float:
    """`optimizer.learning_rate` x `train.lr_factor`, scaled with the batch size by `train.lr_scaling`.

    `batch_samples` is the batch size in samples (`full` resolved); None means the
    base batch size (no scaling), for checks made before the data is read.
    """
    rate = float(cfg.optimizer.learning_rate) * float(cfg.train.lr_factor)
    ratio = (batch_samples or cfg.train.base_batch_size) / cfg.train.base_batch_size
    rule = str(getattr(cfg.train.lr_scaling, "value", cfg.train.lr_scaling))
    return rate * {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[rule]


def build_optimizer(cfg: DictConfig, batch_samples: int | None = None) -> Any:
    """Instantiate `cfg.optimizer` (a Keras optimizer class and its arguments) at the effective rate."""
    args = OmegaConf.to_container(cfg.optimizer, resolve=True)
    # Keras refuses an integer learning rate, which is what `learning_rate=1000` parses to.
    args["learning_rate"] = effective_learning_rate(cfg, batch_samples)
    from hydra.utils import instantiate

    try:
        return instantiate(args, _convert_="all")
    except Exception as err:  # noqa: BLE001 - an unknown class or argument in the optimizer file
        cause = err.__cause__ or err
        raise PipelineError(
            f"optimizer={cfg.optimizer.get('name')} ({cfg.optimizer._target_}) cannot be built: {cause}. "
            "An optimizer file holds `_target_` (a Keras optimizer class) and that class's arguments; "
            "fix or remove the argument named above."
        ) from err


def check_val_fraction(value: Any) -> float:
    """The validation fraction, strictly between 0 and 1."""
    if not (_is_number(value) and 0 < value < 1):
        raise _bad("split.val_fraction", value, "a number strictly between 0 and 1", "0.1")
    return float(value)


def check_config(cfg: DictConfig) -> None:
    """Refuse unknown keys and out-of-range values of a composed config (cheap, no imports)."""
    check_unknown_keys(cfg, Config)
    train = cfg.train
    check_batch_size(train.batch_size)
    positive_ints = {
        "train.epochs": (train.epochs, "5"),
        "train.evals_per_epoch": (train.evals_per_epoch, "4"),
        "train.steps_per_execution": (train.steps_per_execution, "64"),
    }
    positive_ints["sweep.seeds"] = (cfg.sweep.seeds, "3")
    positive_ints["train.base_batch_size"] = (train.base_batch_size, "128")
    for key, (value, example) in positive_ints.items():
        if value <= 0:
            raise _bad(key, value, "a positive integer", example)
    if not 0 <= train.seed < 2**32:
        raise _bad("train.seed", train.seed, "an integer in [0, 2**32)", "0")
    if not (math.isfinite(train.lr_factor) and train.lr_factor > 0):
        raise _bad("train.lr_factor", train.lr_factor, "a finite number > 0", "1.0")
    if train.threads is not None and train.threads <= 0:
        raise _bad("train.threads", train.threads, "a positive integer or null (all cores)", "2")
    if train.stop_at_target and backend_name(cfg) != "jax":
        raise PipelineError(
            "train.stop_at_target=true needs train.backend=jax (the backend that validates within an epoch), "
            f"not train.backend={backend_name(cfg)}: set train.backend=jax or train.stop_at_target=false"
        )
    noise = train.noise_scale
    if noise.small_batch <= 0:
        raise _bad("train.noise_scale.small_batch", noise.small_batch, "a positive integer", "32")
    if noise.examples != 0 and (noise.examples < 2 * noise.small_batch or noise.examples % noise.small_batch):
        allowed = f"0 (off) or a multiple of train.noise_scale.small_batch={noise.small_batch}, at least twice it"
        raise _bad("train.noise_scale.examples", noise.examples, allowed, str(64 * noise.small_batch))
    if not 0 <= train.divergence.chance_margin < 1:
        raise _bad("train.divergence.chance_margin", train.divergence.chance_margin, "a number in [0, 1)", "0.05")
    if not train.divergence.loss_factor > 1:
        raise _bad("train.divergence.loss_factor", train.divergence.loss_factor, "a number > 1", "2.0")
    if train.loss not in JUDGED_LOSSES:
        allowed = f"one of {', '.join(JUDGED_LOSSES)} (the losses whose divergence rule is known)"
        raise _bad("train.loss", train.loss, allowed, JUDGED_LOSSES[0])
    if "accuracy" not in train.metrics:
        raise _bad("train.metrics", list(train.metrics), "a list holding accuracy (the rules judge it)", "[accuracy]")
    check_optimizer(cfg.optimizer)
    check_model(cfg.model)
    check_val_fraction(cfg.split.val_fraction)
    if not 0 <= cfg.split.seed < 2**32:
        raise _bad("split.seed", cfg.split.seed, "an integer in [0, 2**32)", "42")
    if cfg.optimized_metric not in OBJECTIVES:
        raise _bad("optimized_metric", cfg.optimized_metric, f"one of {', '.join(OBJECTIVES)}", "val_accuracy")
    if not 0 < cfg.compare.target <= 1:
        raise _bad("compare.target", cfg.compare.target, "a validation accuracy in (0, 1]", "0.97")
    if not 0 < cfg.compare.alpha < 1:
        raise _bad("compare.alpha", cfg.compare.alpha, "a significance level strictly between 0 and 1", "0.05")
    timeout = cfg.tracking.server_timeout_s
    if not (math.isfinite(timeout) and timeout > 0):
        raise _bad("tracking.server_timeout_s", timeout, "a number of seconds > 0", "10")
    check_scaling(cfg.scaling)


def check_scaling(settings: DictConfig) -> None:
    """The scaling study's settings (`scaling.*`): lists not empty, numbers in range, targets accuracies."""
    s = settings
    rules = [
        ("batch_sizes", _positive_distinct(s.batch_sizes), "[16,128,1024]"),
        (
            "seeds",
            len(s.seeds) > 0 and len(set(s.seeds)) == len(s.seeds) and all(0 <= x < 2**32 for x in s.seeds),
            "[1,2,3]",
        ),
        ("search_seed", 0 <= s.search_seed < 2**32, "0"),
        ("rates_per_decade", s.rates_per_decade > 0, "2"),
        ("rate_range", len(s.rate_range) == 2 and 0 < s.rate_range[0] < s.rate_range[1], "[1e-5,10]"),
        ("max_epochs", s.max_epochs > 0, "40"),
        ("eval_ratio", s.eval_ratio > 1, "1.0905"),
        ("eval_min_samples", s.eval_min_samples > 0, "4096"),
        ("optimizers", len(s.optimizers) > 0, "[sgd,momentum,adam]"),
        ("workloads", len(s.workloads) > 0, "'{mnist: {target: 0.97}}'"),
    ]
    for key, ok, example in rules:
        if not ok:
            value = OmegaConf.to_container(s[key]) if OmegaConf.is_config(s[key]) else s[key]
            raise PipelineError(f"scaling.{key}={value} is not allowed. Fix it, e.g. scaling.{key}={example}")
    if s.search_seed in s.seeds:
        raise PipelineError(
            f"scaling.seeds={list(s.seeds)} holds scaling.search_seed={s.search_seed}: the replicas are fresh seeds "
            "(the search's seed chose the rate). Fix it, e.g. scaling.seeds=[1,2,3] with scaling.search_seed=0"
        )
    for name, workload in s.workloads.items():
        if workload.batch_sizes is not None and not _positive_distinct(workload.batch_sizes):
            raise PipelineError(
                f"scaling.workloads.{name}.batch_sizes={list(workload.batch_sizes)} is not allowed: distinct positive "
                f"integers, or null for scaling.batch_sizes. Fix it, e.g. scaling.workloads.{name}.batch_sizes=[32,512]"
            )
        if not 0 < workload.target <= 1:
            raise PipelineError(
                f"scaling.workloads.{name}.target={workload.target} is not a validation accuracy in (0, 1]. "
                f"Fix it, e.g. scaling.workloads.{name}.target=0.97"
            )


def _positive_distinct(values: Any) -> bool:
    return len(values) > 0 and len(set(values)) == len(values) and all(v > 0 for v in values)


def check_optimizer(optimizer: DictConfig) -> None:
    """`_target_` names a class; the learning rate is a finite number > 0; momentum in [0, 1)."""
    target = optimizer.get("_target_")
    if not isinstance(target, str) or "." not in target:
        raise _bad("optimizer._target_", target, "the dotted path of an optimizer class", "keras.optimizers.Adam")
    lr = optimizer.get("learning_rate")
    if not (_is_number(lr) and math.isfinite(lr) and lr > 0):
        raise _bad("optimizer.learning_rate", lr, "a finite number > 0", "0.001")
    momentum = optimizer.get("momentum")
    if momentum is not None and not (_is_number(momentum) and 0 <= momentum < 1):
        raise _bad("optimizer.momentum", momentum, "a number in [0, 1)", "0.9")


def check_model(model: DictConfig) -> None:
    """`_target_` names a builder function; layer sizes, where given, are positive."""
    target = model.get("_target_")
    if not isinstance(target, str) or "." not in target:
        raise _bad("model._target_", target, "the dotted path of a model builder", "pipeline.model.networks.mlp")
    units = model.get("hidden_units")
    if units is not None and not (units and all(_is_int(u) and u > 0 for u in units)):
        raise _bad("model.hidden_units", list(units), "a non-empty list of positive integers (layer sizes)", "[512]")


def backend_name(cfg: DictConfig) -> str:
    """`train.backend` as a plain string (`jax`, `tensorflow`)."""
    backend = cfg.train.backend
    return str(backend.value if isinstance(backend, Backend) else backend)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

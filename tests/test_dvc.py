"""DVC end to end in a temporary git repo on a tiny dataset: repro, exact dependencies,
byte-identical outputs, DVC experiments with Hydra keys, the queue, and a shared remote."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_arrays
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipeline.core.files import sha256_file, write_npz
from pipeline.core.paths import PACKAGE_CHECKOUT

pytestmark = pytest.mark.slow

STAGES = ("compose", "download", "preprocess", "train", "evaluate", "sweep", "compare")
EVERY_STAGE = set(STAGES)
TRAINED = {"train", "evaluate", "sweep"}
# What an edit of each module must make stale: an independent statement of what each stage runs,
# held against dvc.yaml (derived from the imports) by `dvc status` after a real edit. Longest prefix wins.
EXPECTED_STALE = {
    "hydra_plugins/": EVERY_STAGE,  # Hydra imports the plugin package whenever it starts
    "pipeline/__init__.py": EVERY_STAGE,
    "pipeline/core/": EVERY_STAGE,  # the foundations
    "pipeline/core/store.py": TRAINED | {"compare"},  # the MLflow store
    "pipeline/compose.py": {"compose"},
    "pipeline/download.py": {"download"},
    "pipeline/preprocess.py": {"preprocess"},
    "pipeline/train.py": {"train"},
    "pipeline/evaluate.py": {"evaluate"},
    "pipeline/sweep.py": {"sweep"},
    "pipeline/compare.py": {"compare"},
    "pipeline/experiment.py": set(),  # commands outside the DAG
    "pipeline/predict.py": set(),
    "pipeline/tune.py": set(),
    "pipeline/records.py": set(),
    "pipeline/ui.py": set(),
    "pipeline/scaling.py": set(),
    "pipeline/training/target.py": set(),  # the scaling study's loop: no stage runs it
    "pipeline/sweeps/study.py": set(),
    "pipeline/analysis/profiles.py": set(),
    "pipeline/project/": set(),  # development commands
    "pipeline/data/": {"download", "preprocess"} | TRAINED,
    "pipeline/data/sources.py": {"download"},  # the mirrors and their formats
    "pipeline/data/raw.py": {"download", "preprocess"},  # the raw file the download writes and preprocess reads
    "pipeline/data/splits.py": {"preprocess"} | TRAINED,  # features and processed splits
    "pipeline/model/": TRAINED | {"compose"},  # compose builds the model and optimizer to check the settings
    "pipeline/model/serving.py": TRAINED,  # the served model, logged by training runs
    "pipeline/training/": TRAINED,  # the training loop, the runner and what a run records
    "pipeline/sweeps/": {"sweep"},
    "pipeline/sweeps/__init__.py": {"sweep", "compare"},
    "pipeline/sweeps/search.py": {"sweep", "compare"},  # compare reads a search's parameter importance
    "pipeline/analysis/": {"compare"},  # statistics, tables, plots, the champion
}


def expected_stale(relative: str) -> set[str]:
    prefix = max((p for p in EXPECTED_STALE if relative.startswith(p)), key=len)
    return EXPECTED_STALE[prefix]


def sh(*cmd: str, cwd: Path, env: dict, ok: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def run_queue(repo: Path, env: dict, workers: int, within_s: float) -> str:
    """`dvc queue start -j <workers>`, then wait until nothing is queued or running; the last status.

    The workers are daemons that keep the starting command's stdout and stderr open until
    they exit, so the command writes to a file: through a pipe it would block until every
    worker had gone. Past `within_s`, the workers are killed and the test fails showing the
    queue's status, each task's log and each worker's log.
    """
    log = repo.parent / "queue-start.log"

    def start() -> None:
        with open(log, "a") as out:
            started = subprocess.run(
                ["dvc", "queue", "start", "-j", str(workers)], cwd=repo, env=env, stdout=out, stderr=out, timeout=120
            )
        assert started.returncode == 0, log.read_text()

    start()
    began = time.monotonic()
    restarted, deadline = False, began + within_s
    try:
        while True:
            status = sh("dvc", "queue", "status", cwd=repo, env=env, timeout=120).stdout
            if "Queued" not in status and "Running" not in status:
                return status
            if time.monotonic() > deadline:
                break
            idle = "Running" not in status and "0 active, 0 idle" in status
            if idle and not restarted and time.monotonic() - began > 60:
                # DVC's workers can all exit with tasks still queued (treeverse/dvc#10562);
                # the fix is to start them again, as a user would. A minute lets new workers register.
                start()
                restarted = True
            time.sleep(3)
        tasks = re.findall(r"^([0-9a-f]{7})\s", status, flags=re.MULTILINE)
        logs = [sh("dvc", "queue", "logs", t, cwd=repo, env=env, ok=False, timeout=120).stdout[-2000:] for t in tasks]
        worker_logs = [p.read_text()[-2000:] for p in sorted((repo / ".dvc/tmp/exps/celery").glob("*.out"))]
        pytest.fail(f"queue not done after {within_s} s:\n{status}\n" + "\n---\n".join(logs + worker_logs))
    finally:
        sh("dvc", "queue", "stop", "--kill", cwd=repo, env=env, ok=False, timeout=120)


def edit_yaml(path: Path, **values) -> None:
    cfg = OmegaConf.load(path)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value)
    OmegaConf.save(cfg, path)


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


def stale(repo: Path, env: dict) -> set[str]:
    return set(json.loads(sh("dvc", "status", "--json", cwd=repo, env=env).stdout))


def store(repo: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")


def runs(repo: Path) -> list:
    client = store(repo)
    experiment = client.get_experiment_by_name("mnist")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def make_repo(tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the project with a tiny dataset and a 2 x 1 grid of 2 seeds, committed."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("conf", "pipeline", "hydra_plugins"):
        shutil.copytree(PACKAGE_CHECKOUT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(PACKAGE_CHECKOUT / name, repo / name)
    write_npz(tmp_path / "tiny.npz", tiny_arrays())
    edit_yaml(repo / "conf/dataset/mnist.yaml", mirrors=[{"url": str(tmp_path / "tiny.npz"), "sha256": None}])
    edit_yaml(repo / "conf/train/default.yaml", epochs=1, batch_size=32)
    edit_yaml(
        repo / "conf/sweep/optimizers_x_batch_sizes.yaml", grid={"optimizer": "sgd,adam", "train.batch_size": "32"}
    )
    edit_yaml(repo / "conf/sweep/optimizers_x_batch_sizes.yaml", seeds=2)
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MNIST_PIPELINE_", "DVC_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
        DVC_NO_ANALYTICS="1",
    )
    sh("git", "init", "-q", cwd=repo, env=env)
    sh("dvc", "init", "-q", cwd=repo, env=env)
    shutil.copy(PACKAGE_CHECKOUT / ".dvc/config", repo / ".dvc/config")  # Hydra composition on
    shutil.copytree(PACKAGE_CHECKOUT / ".dvc/plots", repo / ".dvc/plots")
    (repo / ".gitignore").write_text("/mlruns/\n/logs/\n__pycache__/\n")
    sh("python", "-m", "pipeline.compose", cwd=repo, env=env)  # params.yaml for the tiny config
    sh("python", "-m", "pipeline.project.stages", cwd=repo, env=env)
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "tiny", cwd=repo, env=env)
    return repo, env


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, dict]:
    return make_repo(tmp_path)


def cached_outputs(repo: Path) -> dict[str, str]:
    """sha256 of every file DVC caches (data, processed tensors, model), by path."""
    return {
        str(path.relative_to(repo)): sha256_file(path)
        for folder in ("data", "models")
        for path in sorted((repo / folder).rglob("*"))
        if path.is_file() and path.name != ".gitignore"
    }


def round_trip_through_remote(repo: Path, env: dict, remote: Path) -> None:
    """Push to a local-folder remote, lose cache and outputs, pull: all back, nothing to rerun."""
    sh("dvc", "remote", "add", "--default", "shared", str(remote), cwd=repo, env=env)
    before = cached_outputs(repo)
    assert "models/model.keras" in before and "data/raw/mnist.npz" in before
    pushed = sh("dvc", "push", cwd=repo, env=env).stdout
    assert "pushed" in pushed, pushed
    for folder in (".dvc/cache", "data", "models"):
        shutil.rmtree(repo / folder)
    assert "changed outs" in sh("dvc", "status", cwd=repo, env=env).stdout
    sh("dvc", "pull", cwd=repo, env=env)
    assert cached_outputs(repo) == before, "the same bytes came back"
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=repo, env=env).stdout
    assert "Data and pipelines are up to date" in sh("dvc", "repro", cwd=repo, env=env).stdout, "no retraining"


def imports_per_stage(output: str) -> dict[str, set[str]]:
    """Project modules each stage imported while it ran (`-X importtime` lines in dvc repro's output)."""
    found: dict[str, set[str]] = {}
    stage = None
    for line in output.splitlines():
        if match := re.search(r"Running stage '(\w+)'", line):
            stage = match.group(1)
            found[stage] = set()
        elif stage and (match := re.search(r"import time:.*\|\s+((pipeline|hydra_plugins)[\w.]*)\s*$", line)):
            found[stage].add(match.group(1))
    return found


def module_path(module: str, repo: Path) -> str:
    base = repo.joinpath(*module.split("."))
    path = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
    return str(path.relative_to(repo))


def test_dvc_repro_runs_all_stages_then_nothing(repo, tmp_path):
    repo, env = repo
    first = sh("dvc", "repro", cwd=repo, env=env).stdout
    assert ran(first) == set(STAGES)
    summary = json.loads((repo / "reports/sweep/summary.json").read_text())
    assert (summary["runs"], summary["finished"]) == (4, 4), "2 cells x 2 seeds"
    assert {(c["cell"], c["n"]) for c in summary["cells"]} == {("sgd-bs32", 2), ("adam-bs32", 2)}
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert (repo / "mlruns/mlflow.db").is_file(), "the store lives under the temporary project"
    assert "Data and pipelines are up to date" in sh("dvc", "repro", cwd=repo, env=env).stdout
    shown = json.loads(sh("dvc", "metrics", "show", "--json", cwd=repo, env=env).stdout)
    values = json.dumps(shown)
    assert "test_accuracy" in values and "tied_with_winner" in values and "ci95_low" in values

    # A teammate's machine: outputs come from the shared remote instead of retraining.
    round_trip_through_remote(repo, env, tmp_path / "dvc-remote")


def test_a_fresh_clone_runs_the_sweep_into_its_own_store(repo, tmp_path):
    """README command 1 on a fresh clone: the published repository has no store; the clone's dvc repro makes one."""
    publisher, env = repo
    sh("dvc", "repro", cwd=publisher, env=env)
    sh("git", "add", "-A", cwd=publisher, env=env)
    sh("git", "commit", "-qm", "published results", cwd=publisher, env=env)
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(publisher), str(clone), cwd=tmp_path, env=env)
    assert not (clone / "mlruns").exists(), "an empty store"

    first = sh("dvc", "repro", cwd=clone, env=env).stdout
    assert ran(first) == set(STAGES) - {"compose"}, "the sweep and compare run, not skip"
    client = store(clone)
    parents = [r for r in runs(clone) if r.data.tags.get("mnist_pipeline.role") == "sweep"]
    assert [p.info.status for p in parents] == ["FINISHED"]
    children = [r for r in runs(clone) if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}, "2 cells x 2 seeds"
    champion = client.get_model_version_by_alias("mnist", "champion")
    assert champion.tags["sweep.parent_run_id"] == parents[0].info.run_id
    summary = json.loads((clone / "reports/sweep/summary.json").read_text())
    assert summary["sweep"] == parents[0].info.run_name, "compare compared the clone's own sweep"
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=clone, env=env).stdout
    assert "Data and pipelines are up to date" in sh("dvc", "repro", cwd=clone, env=env).stdout

    shutil.rmtree(clone / "mlruns")  # the store is gone: so is the sweep's record beside it
    again = sh("dvc", "repro", cwd=clone, env=env).stdout
    assert {"sweep", "compare"} <= ran(again), again
    assert len([r for r in runs(clone) if r.data.tags.get("mnist_pipeline.role") == "sweep"]) == 1
    assert int(store(clone).get_model_version_by_alias("mnist", "champion").version) == 1


def test_every_edit_reruns_exactly_what_it_can_change(repo):
    repo, env = repo
    profile = {**env, "PYTHONPROFILEIMPORTTIME": "1"}
    first = subprocess.run(
        ["dvc", "repro"], cwd=repo, env=profile, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert first.returncode == 0, first.stdout[-4000:]
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())

    # Every project module a stage imported while it ran is one of its declared dependencies.
    imported = imports_per_stage(first.stdout)
    assert set(imported) == set(STAGES)
    for stage, modules in imported.items():
        assert modules, f"no import lines seen for {stage}"
        missing = {module_path(m, repo) for m in modules} - set(dvc_yaml["stages"][stage]["deps"])
        assert not missing, f"{stage} imports {missing} but does not depend on them"

    # Identical runs give identical outputs: forcing every stage again changes no hash (but the
    # stage records beside the store, which name the new MLflow runs).
    def outputs(lock: dict, stage: str) -> list:
        return [o for o in lock["stages"][stage]["outs"] if not o["path"].startswith("mlruns/")]

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    sh("dvc", "repro", "-f", "evaluate", cwd=repo, env=env)
    again = yaml.safe_load((repo / "dvc.lock").read_text())
    for stage in ("download", "preprocess", "train", "evaluate"):
        assert outputs(again, stage) == outputs(lock, stage), stage

    # Editing a module marks stale exactly the stages that import it, for every module, and those
    # are the stages that run it: a stage depends on the code it runs and on nothing else.
    for path in sorted([*repo.glob("pipeline/**/*.py"), *repo.glob("hydra_plugins/**/*.py")]):
        relative = str(path.relative_to(repo))
        original = path.read_text()
        path.write_text(original + "\n# edited\n")
        importers = {name for name, stage in dvc_yaml["stages"].items() if relative in stage["deps"]}
        assert stale(repo, env) == importers == expected_stale(relative), relative
        path.write_text(original)
    assert stale(repo, env) == set()

    # And `dvc repro` after an edit: the training loop reruns the trained stages and, through the
    # sweep's new runs, compare; the statistics rerun compare alone; the download code (the stage and
    # how mirrors are fetched) reruns download alone, since its output's bytes stay the same.
    for relative, rerun in [
        ("pipeline/training/loop.py", TRAINED | {"compare"}),
        ("pipeline/analysis/stats.py", {"compare"}),
        ("pipeline/download.py", {"download"}),
        ("pipeline/data/sources.py", {"download"}),
    ]:
        path = repo / relative
        path.write_text(path.read_text() + "\n# edited\n")  # kept: the next edit starts from a clean status
        assert ran(sh("dvc", "repro", cwd=repo, env=env).stdout) == rerun, relative

    # Config edits (then dvc repro): exactly the stages whose inputs change rerun.
    def edit_then_repro(path: str, **values) -> set[str]:
        edit_yaml(repo / path, **values)
        return ran(sh("dvc", "repro", cwd=repo, env=env).stdout)

    (repo / "conf/optimizer/adagrad.yaml").write_text("_target_: keras.optimizers.Adagrad\nlearning_rate: 0.01\n")
    assert stale(repo, env) == set(), "an optimizer file nothing selects reruns nothing"
    config = (repo / "conf/config.yaml").read_text()
    (repo / "conf/config.yaml").write_text(config.replace("optimizer: rmsprop", "optimizer: adam"))
    assert ran(sh("dvc", "repro", cwd=repo, env=env).stdout) == {"compose", "train", "evaluate"}
    train_run = runs(repo)[-1]
    assert train_run.data.params["optimizer.name"] == "adam", "the default optimizer changed"
    assert edit_then_repro("conf/compare/default.yaml", alpha=0.1) == {"compose", "compare"}
    assert edit_then_repro("conf/tracking/mlflow.yaml", log_model=False) == {"compose"}
    assert edit_then_repro("conf/scaling/default.yaml", max_epochs=20) == {"compose"}, "the study is outside the DAG"
    assert edit_then_repro("conf/sweep/optimizers_x_batch_sizes.yaml", seeds=1) == {"compose", "sweep", "compare"}
    # The README's recipe for a new optimizer in the default sweep: add it to the grid, compose,
    # rewrite dvc.yaml, dvc repro. The sweep (now with its cell) and compare rerun, and its file is a dependency.
    grid = {"optimizer": "sgd,adam,adagrad", "train.batch_size": "32"}
    edit_yaml(repo / "conf/sweep/optimizers_x_batch_sizes.yaml", grid=grid)
    sh("python", "-m", "pipeline.compose", cwd=repo, env=env)
    sh("python", "-m", "pipeline.project.stages", cwd=repo, env=env)
    sweep_deps = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["sweep"]["deps"]
    assert "conf/optimizer/adagrad.yaml" in sweep_deps
    assert ran(sh("dvc", "repro", cwd=repo, env=env).stdout) == {"compose", "sweep", "compare"}
    assert "adagrad-bs32" in {run.data.tags.get("sweep.cell") for run in runs(repo)}
    edit_yaml(repo / "conf/optimizer/adagrad.yaml", learning_rate=0.02)
    assert stale(repo, env) == {"sweep"}, "editing a swept optimizer's file reruns the sweep"
    edit_yaml(repo / "conf/optimizer/adagrad.yaml", learning_rate=0.01)
    everything_but_data = {"compose", "train", "evaluate", "sweep", "compare"}
    assert edit_then_repro("conf/train/default.yaml", epochs=2) == everything_but_data
    assert edit_then_repro("conf/model/mlp.yaml", hidden_units=[64]) == everything_but_data
    assert edit_then_repro("conf/split/default.yaml", seed=7) == everything_but_data | {"preprocess"}
    # a dataset setting: download reruns, keeps the verified file, so nothing downstream changes
    assert edit_then_repro("conf/dataset/mnist.yaml", connect_timeout=3) == {"compose", "download"}


REFUSED = [
    ("+train.typo=1", "train.typo is not a setting of this pipeline"),
    ("train.batch_size=0", "train.batch_size=0 is not allowed"),
    ("optimizer.learning_rate=-1", "optimizer.learning_rate=-1"),
    ("model.activation=nonsense", "model=mlp (pipeline.model.networks.mlp) cannot be built"),
]


def test_a_refused_dvc_exp_run_changes_nothing(repo):
    """The compose stage checks DVC's composition first: no stage runs, nothing is deleted, the next repro works.

    Each bad setting in turn against the same reproduced project, since none of them may change it.
    """
    repo, env = repo
    sh("dvc", "repro", cwd=repo, env=env)
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "baseline", cwd=repo, env=env)
    kept = {
        p: (repo / p).read_bytes() for p in ("params.yaml", "dvc.lock", "models/model.keras", "reports/history.csv")
    }
    for override, message in REFUSED:
        refused = sh("dvc", "exp", "run", "-S", override, cwd=repo, env=env, ok=False)
        output = refused.stdout + refused.stderr
        assert refused.returncode != 0 and message in output and "nothing ran" in output, (override, output[-3000:])
        assert {p: (repo / p).read_bytes() for p in kept} == kept, f"{override}: the project as it was"
        assert "Data and pipelines are up to date" in sh("dvc", "repro", cwd=repo, env=env).stdout, override


def test_dvc_experiments_with_hydra_keys(repo):
    repo, env = repo
    sh("dvc", "repro", cwd=repo, env=env)
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "baseline", cwd=repo, env=env)

    # The same keys and grammar as the Hydra command line, recorded and run exactly.
    for override, key, value in [
        ("train.epochs=2", "train.epochs", 2),
        ("optimizer.learning_rate=0.01", "optimizer.learning_rate", 0.01),
        ("train.batch_size=64", "train.batch_size", 64),
    ]:
        out = sh("dvc", "exp", "run", "-S", override, "train", cwd=repo, env=env)
        assert "Running stage 'train'" in out.stdout
        run = runs(repo)[-1]
        assert str(run.data.params[key]) == str(value), override
        assert run.data.tags["dvc.exp_name"], "the DVC experiment's name is a tag of its MLflow run"
        assert yaml.safe_load((repo / "params.yaml").read_text())[key.split(".")[0]][key.split(".")[1]] == value

    # `dvc exp run -S optimizer=adam` and `python -m pipeline.train optimizer=adam` train the same model.
    sh("dvc", "exp", "run", "-S", "optimizer=adam", cwd=repo, env=env)
    adam_exp = runs(repo)
    trained = next(
        r for r in reversed(adam_exp) if "model.sha256" in r.data.tags and "mlflow.parentRunId" not in r.data.tags
    )
    assert trained.data.params["optimizer.name"] == "adam"
    assert trained.data.tags["dvc.params_overrides"] == "optimizer=adam"
    exp_model = sha256_file(repo / "models/model.keras")
    assert trained.data.tags["model.sha256"] == exp_model
    sh("python", "-m", "pipeline.train", "optimizer=adam", cwd=repo, env=env)
    assert sha256_file(repo / "models/model.keras") == exp_model, "byte-identical model"
    sh("git", "checkout", "--", ".", cwd=repo, env=env)

    # exp show: hyperparameters and metrics as columns; params diff: what changed.
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=repo, env=env).stdout)
    text = json.dumps(shown)
    for column in ("train.epochs", "optimizer.learning_rate", "test_accuracy"):
        assert column.split(".")[-1] in text, column
    diff = sh("dvc", "params", "diff", "--all", cwd=repo, env=env).stdout
    assert "train.epochs" in diff or "Params" in diff

    # The queue: two experiments, two workers, each tracked in MLflow with its name.
    before = {r.info.run_id for r in runs(repo)}
    for value in ("sgd", "momentum"):
        sh("dvc", "exp", "run", "--queue", "-S", f"optimizer={value}", "train", cwd=repo, env=env)
    status = run_queue(repo, env, workers=2, within_s=420)
    assert status.count("Success") >= 2, status
    new = [r for r in runs(repo) if r.info.run_id not in before]
    assert {r.data.params["optimizer.name"] for r in new} == {"sgd", "momentum"}
    assert all(r.info.status == "FINISHED" and r.data.tags.get("dvc.exp_name") for r in new)
    names = json.dumps(json.loads(sh("dvc", "exp", "show", "--json", cwd=repo, env=env).stdout))
    for run in new:
        assert run.data.tags["dvc.exp_name"] in names

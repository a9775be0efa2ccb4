"""The scaling study in one process against the same runs as separate processes, measured in one run here.

    python benchmarks/study_speed.py            # real MNIST in data/ (dvc repro first)

A small study (adam, batch sizes 128 and 1024, 3 seeds, MNIST only) runs as
`python -m pipeline.scaling` into a temporary store and reports folder. Then each of its
runs (the search's and the replicas') runs again as its own `python -m pipeline.train`
process, as a user would run them one by one: the same optimizer, batch size, learning
rate and seed, `train.stop_at_target=true`, as many whole epochs as the study's run
trained (a run the study pruned mid-epoch trains to the end of that epoch), no logged
model, and the noise scale only where the study measures it (the replicas). What still
differs is the validation schedule (4 a epoch there, 2^(1/8) steps apart in the study)
and a process, its imports and its compilations per run. Both sides' whole-process wall
seconds are measured; the ratio and both figures go to reports/study_benchmark.json
(`python -m pipeline.project.readme` renders them).

Vectorised replicas: 4 learning rates (1e-4 to 1e-2) of the seed network with Adam,
trained on the same batches (as the study's search does) in one `jax.vmap` program, against
4 x the time of one run at 1e-3 (one after another, the same steps), at batch sizes 16 and
1024, compilation excluded.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.paths import paths_at  # noqa: E402
from pipeline.core.store import cpu_tags  # noqa: E402

STUDY = ["scaling.optimizers=[adam]", "scaling.batch_sizes=[128,1024]", "~scaling.workloads.fashion_mnist"]


def timed(args: list[str]) -> float:
    """Run `python -m args` from the project root; return its wall seconds (fail loudly)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"python -m {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def vmap_ratio(batch_size: int, replicas: int = 4, samples: int = 131_072) -> float:
    """Seconds of `replicas` rates in one vmapped program / seconds of them one after another."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax
    import jax.numpy as jnp
    import keras

    from pipeline.model.networks import mlp

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((60_000, 784), np.float32))
    y = jnp.asarray(np.eye(10, dtype=np.float32)[rng.integers(0, 10, 60_000)])
    model = mlp(image_shape=[28, 28], num_classes=10, seed=0)
    optimizer = keras.optimizers.Adam(learning_rate=0.001)
    optimizer.build(model.trainable_variables)
    loss = keras.losses.get("categorical_crossentropy")

    def step(state, index):
        trainable, non_trainable, variables = state

        def batch_loss(t):
            return loss(y[index], model.stateless_call(t, non_trainable, x[index], training=True)[0]).mean()

        grads = jax.grad(batch_loss)(trainable)
        trainable, variables = optimizer.stateless_apply(variables, grads, trainable)
        return (trainable, non_trainable, variables), None

    def run(state, index):
        return jax.lax.scan(step, state, index)[0]

    state = tuple([v.value for v in vs] for vs in (model.trainable_variables, model.non_trainable_variables))
    state = (*state, [v.value for v in optimizer.variables])
    index = jnp.asarray(rng.integers(0, 60_000, (samples // batch_size, batch_size)).astype(np.int32))
    single, many = jax.jit(run), jax.jit(jax.vmap(run, in_axes=(0, None)))
    stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a] * replicas), state)
    rate = next(i for i, v in enumerate(optimizer.variables) if v.path.endswith("learning_rate"))
    stacked[2][rate] = jnp.asarray(np.geomspace(1e-4, 1e-2, replicas), dtype=stacked[2][rate].dtype)

    def seconds(program, argument) -> float:
        jax.block_until_ready(program(argument, index))  # compiled first, not timed
        started = time.perf_counter()
        jax.block_until_ready(program(argument, index))
        return time.perf_counter() - started

    return seconds(many, stacked) / (replicas * seconds(single, state))


def main() -> None:
    paths = paths_at(ROOT)
    with np.load(paths.processed("train")) as train:
        n_train = len(train["y"])
    with tempfile.TemporaryDirectory(prefix="study-bench-") as tmp:
        where = [f"paths.mlruns_dir={tmp}/mlruns", f"paths.reports_dir={tmp}/reports"]
        study_s = timed(["pipeline.scaling", *STUDY, *where])
        runs = pd.read_csv(Path(tmp) / "reports" / "scaling" / "runs.csv")
        separate_s = 0.0
        for _, run in runs.iterrows():
            epochs = math.ceil(run.steps_trained / -(-n_train // int(run.batch_size)))
            separate_s += timed(
                [
                    "pipeline.train", "optimizer=adam", f"train.batch_size={run.batch_size}",
                    f"optimizer.learning_rate={run.learning_rate}", f"train.seed={run.seed}",
                    "train.stop_at_target=true", f"train.epochs={epochs}", f"paths.models_dir={tmp}/models",
                    "tracking.log_model=false", *([] if run.phase == "replica" else ["train.noise_scale.examples=0"]),
                    *where,
                ]
            )  # fmt: skip
    tags = cpu_tags()
    result = {
        "cpu": f"{tags['cpu.model']}, {tags['cpu.count']} cores ({tags['cpu.vector_extensions']})",
        "date": time.strftime("%Y-%m-%d"),
        "study": STUDY,
        "runs": len(runs),
        "study_s": round(study_s, 1),
        "separate_s": round(separate_s, 1),
        "ratio": round(study_s / separate_s, 3),
        "vmap_ratio": {str(b): round(vmap_ratio(b), 2) for b in (16, 1024)},
    }
    paths.study_benchmark.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

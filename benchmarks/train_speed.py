"""Speed of the pipeline against the seed's plain Keras script, measured in one run on this machine.

    python benchmarks/train_speed.py                 # full: real MNIST, 3 interleaved rounds + the sweep
    python benchmarks/train_speed.py --quick --root <project with tiny data>   # what the test runs

Both sides train the seed network (rmsprop, batch 128, 5 epochs) on the same 54,000
processed training images, validate on the same 6,000, then evaluate on the 10,000 test
images, in one process. The pipeline runs its defaults and so does more: on JAX it validates
4 times an epoch (the script and the TensorFlow backend once), scores the untrained network
once (before its fit clock starts) and estimates the gradient noise scale every epoch (its
seconds subtracted from the fit, counted in the whole process). Every variant runs as its own
process, as a user runs it, interleaved (A B C D A B C D ...):

  script          the seed's Keras script on TensorFlow (`model.fit` with validation_data,
                  then `evaluate`), seeded per round
  pipeline-cold   `python -m pipeline.experiment` (train + evaluate, MLflow tracking and model
                  logging on; JAX backend) with an empty JAX compilation cache: compiling included
  pipeline-warm   the same again with the cache the cold run filled (what later runs see)
  pipeline-no-sysmetrics   warm, without MLflow's system metrics (what recording them costs)
  pipeline-tf     the same with `train.backend=tensorflow`

For each: the fit seconds (the training loop with its validation passes; compilation
included, but for the pipeline's validation program, compiled when it scores the untrained
network), the whole process's wall seconds (start-up, data, training, evaluation,
tracking), its peak memory (VmHWM) and the test accuracy. Then the default sweep (12 cells
x 3 seeds) in one multirun; the floor: the matmuls training does (forward and backward
without the input gradient, 1.64 MFLOP per training sample, plus the forward pass over the
validation images once an epoch; the timed step computes the hidden-layer gradient
twice), timed with numpy float32 at the network's shapes in the same run; and 3 seeds in
one `jax.vmap` program against one after another. It prints the ratios and writes every
figure to reports/benchmark.json (`python -m pipeline.project.readme` renders it into
README.md and benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.paths import paths_at  # noqa: E402

MACS = 784 * 512 + 512 * 10  # multiply-adds of one forward pass of the seed network
# Training: forward (2 x MACs) + backward without the input-pixel gradient (2 x MACs, and 2 x 512 x 10 for dh).
TRAIN_FLOP = 2 * MACS + 2 * MACS + 2 * 512 * 10  # ~1.64 MFLOP per training sample
EVAL_FLOP = 2 * MACS  # ~0.81 MFLOP per validation sample
GOALS = {"fit_ratio": 0.45, "process_ratio": 0.75, "sweep_ratio": 8.0, "overhead_s": 1.0, "accuracy_gap": 0.003}

SEED_SCRIPT = """
import json, time
import numpy as np
import keras
from keras import layers
keras.utils.set_random_seed({seed})
split = {{name: np.load(f"{processed}/{{name}}.npz") for name in ("train", "val", "test")}}
(x, y), (x_val, y_val), (x_test, y_test) = [(split[n]["x"], split[n]["y"]) for n in ("train", "val", "test")]
hidden, output = layers.Dense(512, activation="relu"), layers.Dense(10, activation="softmax")
model = keras.Sequential([keras.Input((784,)), hidden, output])
model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
started = time.perf_counter()
model.fit(x, y, epochs={epochs}, batch_size=128, validation_data=(x_val, y_val), verbose=0)
fit = time.perf_counter() - started
print("RESULT", json.dumps({{"fit": fit, "accuracy": model.evaluate(x_test, y_test, verbose=0)[1]}}))
"""


def cpu() -> str:
    """The CPU model and its vector extensions, as every run's tags name it (numbers are claims about it only)."""
    from pipeline.core.store import cpu_tags

    tags = cpu_tags()
    avx512 = "" if "avx512f" in tags["cpu.vector_extensions"] else ", no AVX-512"
    return f"{tags['cpu.model']}, {tags['cpu.count']} cores ({tags['cpu.vector_extensions']}{avx512})"


def run_measured(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[str, float, float]:
    """Run `cmd`; return its output, wall seconds and peak resident memory in GB (VmHWM, polled)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )
    peak = [0]

    def poll() -> None:
        while proc.poll() is None:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    output = proc.communicate()[0]
    wall = time.perf_counter() - started
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{output[-3000:]}")
    return output, wall, peak[0] / 1024**2


def seed_script(processed: Path, epochs: int, work: Path, seed: int) -> dict:
    path = work / "seed_script.py"
    path.write_text(SEED_SCRIPT.format(processed=processed, epochs=epochs, seed=seed))
    output, wall, peak = run_measured([sys.executable, str(path)], work, {"KERAS_BACKEND": "tensorflow"})
    result = json.loads(output.split("RESULT", 1)[1])
    return {"fit": result["fit"], "process": wall, "peak_gb": peak, "accuracy": result["accuracy"]}


def project(work: Path, name: str, source: Path) -> Path:
    """A fresh project folder for one measured command, sharing the processed data."""
    root = work / name
    (root / "data").mkdir(parents=True, exist_ok=True)
    link = root / "data" / "processed"
    if not link.exists():
        link.symlink_to(source / "data" / "processed")
    return root


def runs_of(root: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist")
    return client.search_runs([experiment.experiment_id], max_results=1000)


def pipeline_run(source: Path, work: Path, name: str, overrides: list[str]) -> dict:
    """`python -m pipeline.experiment`: train and evaluate in one process, as the script does."""
    root = project(work, name, source)
    cmd = [sys.executable, "-m", "pipeline.experiment", f"paths.root={root}", *overrides]
    _, wall, peak = run_measured(cmd, ROOT)
    (run,) = sorted((r for r in runs_of(root) if r.info.status == "FINISHED"), key=lambda r: r.info.start_time)[-1:]
    metrics = run.data.metrics
    return {"fit": metrics["train_seconds"], "process": wall, "peak_gb": peak, "accuracy": metrics["test_accuracy"]}


def sweep(source: Path, work: Path, overrides: list[str]) -> dict:
    """The sweep in the first warm run's project (`warm0`, with round 0's JAX cache): its store exists, as after
    `dvc repro train`."""
    root = project(work, "warm0", source)
    cmd = [sys.executable, "-m", "pipeline.sweep", f"paths.root={root}", *overrides]
    _, wall, peak = run_measured(cmd, ROOT)
    children = [r for r in runs_of(root) if "mlflow.parentRunId" in r.data.tags]
    fits = [r.data.metrics.get("train_seconds", 0.0) for r in children]
    finished = sum(r.info.status == "FINISHED" for r in children)
    return {"wall": wall, "runs": len(children), "finished": finished, "fit_sum": sum(fits), "peak_gb": peak}


def matmul_floor(n_train: int, n_val: int, epochs: int, batch: int = 128, repeats: int = 50) -> dict:
    """Seconds numpy float32 needs for the matmuls training does: per training batch the forward and the
    backward pass without the input gradient; per epoch the forward pass over the validation images."""
    rng = np.random.default_rng(0)
    x, w1 = rng.random((batch, 784), np.float32), rng.random((784, 512), np.float32)
    h, w2 = rng.random((batch, 512), np.float32), rng.random((512, 10), np.float32)
    g2, x_val = rng.random((batch, 10), np.float32), rng.random((1000, 784), np.float32)

    def train_step() -> None:
        x @ w1, h @ w2  # forward
        h.T @ g2, g2 @ w2.T, x.T @ (g2 @ w2.T)  # dW2, dh, dW1 (the input gradient h @ w1.T is never needed)

    def val_batch() -> None:
        (x_val @ w1) @ w2

    timings = {}
    for name, work in (("train", train_step), ("val", val_batch)):
        work()
        started = time.perf_counter()
        for _ in range(repeats):
            work()
        timings[name] = (time.perf_counter() - started) / repeats
    seconds = epochs * (n_train / batch * timings["train"] + n_val / 1000 * timings["val"])
    flop = epochs * (n_train * TRAIN_FLOP + n_val * EVAL_FLOP)
    return {"seconds": seconds, "gflops": flop / seconds / 1e9, "train_mflop_per_sample": TRAIN_FLOP / 1e6}


VMAP_SCRIPT = """
import json, time, numpy as np, jax, jax.numpy as jnp
data = np.load("{train}")
x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
n, batch, replicas = x.shape[0], 128, 3
steps = n // batch

def init(key):
    k1, k2 = jax.random.split(key)
    g1, g2 = (6 / (784 + 512)) ** 0.5, (6 / (512 + 10)) ** 0.5
    return dict(w1=jax.random.uniform(k1, (784, 512), minval=-g1, maxval=g1), b1=jnp.zeros(512),
                w2=jax.random.uniform(k2, (512, 10), minval=-g2, maxval=g2), b2=jnp.zeros(10))

def loss(p, xb, yb):
    logits = jax.nn.relu(xb @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return -(yb * jax.nn.log_softmax(logits)).sum(-1).mean()

def epoch(p, v, x, y, order):  # RMSprop, as Keras: rho 0.9, eps 1e-7, lr 1e-3
    def step(carry, idx):
        p, v = carry
        g = jax.grad(loss)(p, x[idx], y[idx])
        v = jax.tree.map(lambda v, g: 0.9 * v + 0.1 * g * g, v, g)
        p = jax.tree.map(lambda p, g, v: p - 1e-3 * g / (jnp.sqrt(v) + 1e-7), p, g, v)
        return (p, v), None
    return jax.lax.scan(step, (p, v), order)[0]

one = jax.jit(epoch)
many = jax.jit(jax.vmap(epoch, in_axes=(0, 0, None, None, 0)))
rng = np.random.default_rng(0)
orders = np.stack([rng.permutation(n)[: steps * batch].reshape(steps, batch) for _ in range(replicas)])
keys = jax.random.split(jax.random.PRNGKey(0), replicas)
ps = [init(k) for k in keys]
vs = [jax.tree.map(jnp.zeros_like, p) for p in ps]
stacked_p, stacked_v = jax.vmap(init)(keys), jax.tree.map(jnp.zeros_like, jax.vmap(init)(keys))
jax.block_until_ready(one(ps[0], vs[0], x, y, orders[0]))  # compile both before timing
jax.block_until_ready(many(stacked_p, stacked_v, x, y, orders))
t = time.perf_counter()
for r in range(replicas):
    jax.block_until_ready(one(ps[r], vs[r], x, y, orders[r]))
sequential = time.perf_counter() - t
t = time.perf_counter()
jax.block_until_ready(many(stacked_p, stacked_v, x, y, orders))
vectorised = time.perf_counter() - t
print("RESULT", json.dumps({{"sequential": sequential, "vmap": vectorised, "replicas": replicas}}))
"""


def vmap_replicas(source: Path, work: Path) -> dict:
    """One epoch of the seed network for 3 seeds: one after another vs `jax.vmap` in one program."""
    path = work / "vmap.py"
    path.write_text(VMAP_SCRIPT.format(train=source / "data" / "processed" / "train.npz"))
    output, _, _ = run_measured([sys.executable, str(path)], work)
    return json.loads(output.split("RESULT", 1)[1])


def summarise(rows: list[dict]) -> dict:
    return {key: statistics.mean(r[key] for r in rows) for key in rows[0]} | {"n": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round, one epoch, a 2-job sweep (tests)")
    parser.add_argument("--root", type=Path, default=ROOT, help="project whose data/ to use (default: this one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="default: reports/benchmark.json (full runs)")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    epochs = 1 if args.quick else 5
    processed = args.root / "data" / "processed"
    if not (processed / "train.npz").is_file():
        sys.exit(f"no processed MNIST under {processed}: run `dvc repro` (or download and preprocess) first")
    sizes = {name: int(np.load(processed / f"{name}.npz")["y"].shape[0]) for name in ("train", "val")}
    short = [f"train.epochs={epochs}"]
    results: dict[str, list[dict]] = {
        "script": [], "pipeline-cold": [], "pipeline-warm": [], "pipeline-no-sysmetrics": [], "pipeline-tf": []
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        for i in range(rounds):
            cache = f"train.compilation_cache={work / f'jax-cache-{i}'}"  # empty for the cold run, then warm
            results["script"].append(seed_script(processed, epochs, work, seed=i))
            for variant, name in (("pipeline-cold", f"cold{i}"), ("pipeline-warm", f"warm{i}")):
                results[variant].append(pipeline_run(args.root, work, name, [f"train.seed={i}", cache, *short]))
            quiet = [f"train.seed={i}", cache, "tracking.system_metrics=false", *short]  # what system metrics cost
            results["pipeline-no-sysmetrics"].append(pipeline_run(args.root, work, f"quiet{i}", quiet))
            tf = ["train.backend=tensorflow", f"train.seed={i}", *short]
            results["pipeline-tf"].append(pipeline_run(args.root, work, f"tf{i}", tf))
            print(f"round {i + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]['fit']:.1f} s" for k, v in results.items()))
        grid = ["sweep=none", "optimizer=sgd,adam", "train.epochs=1"] if args.quick else []
        swept = sweep(args.root, work, [f"train.compilation_cache={work / 'jax-cache-0'}", *grid])
        replicas = None if args.quick else vmap_replicas(args.root, work)
    floor = matmul_floor(sizes["train"], sizes["val"], epochs)
    means = {k: summarise(v) for k, v in results.items()}
    script, cold, warm = means["script"], means["pipeline-cold"], means["pipeline-warm"]
    report = {
        "cpu": cpu(),
        "quick": args.quick,
        "rounds": rounds,
        "epochs": epochs,
        "samples": sizes,
        "variants": means,
        "sweep": swept,
        "vmap": replicas,
        "floor": floor,
        "ratios": {
            "fit": cold["fit"] / script["fit"],
            "fit_warm": warm["fit"] / script["fit"],
            "process": cold["process"] / script["process"],
            "process_warm": warm["process"] / script["process"],
            "peak": warm["peak_gb"] / script["peak_gb"],
            "sweep": swept["wall"] / script["process"],
            "overhead_per_run_s": (swept["wall"] - swept["fit_sum"]) / max(1, swept["runs"]),
            "accuracy_gap": warm["accuracy"] - script["accuracy"],
            "fit_vs_floor": warm["fit"] / floor["seconds"],
            "system_metrics_s": warm["process"] - means["pipeline-no-sysmetrics"]["process"],
            "tf_fit": means["pipeline-tf"]["fit"] / script["fit"],
            "tf_process": means["pipeline-tf"]["process"] / script["process"],
        },
        "goals": GOALS,
    }
    print(f"\nCPU: {report['cpu']}; the matmul floor {floor['seconds']:.2f} s at {floor['gflops']:.0f} GFLOP/s\n")
    print("| variant | fit s | whole process s | peak memory GB | test accuracy (mean) |")
    print("|---|---|---|---|---|")
    for name, m in means.items():
        print(f"| {name} | {m['fit']:.2f} | {m['process']:.2f} | {m['peak_gb']:.2f} | {m['accuracy']:.4f} |")
    r, g, pg = report["ratios"], GOALS, GOALS["process_ratio"]
    print(
        textwrap.dedent(
            f"""
            fit / script fit                 cold {r["fit"]:.2f}, warm {r["fit_warm"]:.2f} (goal <= {g["fit_ratio"]})
            whole process / script process   cold {r["process"]:.2f}, warm {r["process_warm"]:.2f} (goal <= {pg})
            accuracy gap (mean)              {r["accuracy_gap"]:+.4f} (goal within {GOALS["accuracy_gap"]})
            peak memory / script             {r["peak"]:.2f}   (goal < 1)
            warm fit / matmul floor          {r["fit_vs_floor"]:.2f}
            sweep: {swept["runs"]} runs ({swept["finished"]} finished) in {swept["wall"]:.0f} s
              = {r["sweep"]:.2f} x script process  (goal <= {GOALS["sweep_ratio"]})
            overhead per run outside the fit {r["overhead_per_run_s"]:.2f} s (goal <= {GOALS["overhead_s"]})
            tensorflow backend: fit {r["tf_fit"]:.2f}, whole process {r["tf_process"]:.2f} of the script's"""
        )
    )
    if replicas:
        print(
            f"3 seeds, one epoch, pure JAX: sequential {replicas['sequential']:.2f} s, "
            f"jax.vmap {replicas['vmap']:.2f} s ({replicas['vmap'] / replicas['sequential']:.2f}x)"
        )
    target = args.json or (None if args.quick else paths_at(ROOT).benchmark)
    if target:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        print(f"\nwrote {target}")


if __name__ == "__main__":
    main()

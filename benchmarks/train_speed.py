"""Speed of the pipeline against the seed's plain Keras script, measured in one run on this machine.

    python benchmarks/train_speed.py                 # full: real MNIST, 3 interleaved rounds + the sweep
    python benchmarks/train_speed.py --quick --root <project with tiny data>   # what the test runs

Every variant runs as its own process, as a user runs it, interleaved (A B C A B C ...):

  script          the seed's Keras script on TensorFlow, unchanged (60,000 images, rmsprop,
                  5 epochs, batch 128; unseeded, as published)
  pipeline        `python -m pipeline.train` with the default config (JAX backend, 54,000
                  images, validation every epoch, MLflow tracking and model logging on), seeds 0, 1, 2
  pipeline-tf     the same with `train.backend=tensorflow`

For each: the fit seconds (the training loop, compilation included), the whole process's
wall seconds, its peak memory (VmHWM) and the test accuracy. Then the default sweep (12
cells x 3 seeds) in one `python -m pipeline.experiment -m` call, and the matmul limit:
1.64 MFLOP per sample at numpy's float32 matmul speed on the layer shapes. It prints the
ratios the README's performance table shows and writes them as JSON
(reports/benchmark.json, read by `python -m pipeline.project.readme`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
FLOP_PER_SAMPLE = 6 * (784 * 512 + 512 * 10)  # forward 2 x MACs + backward 4 x MACs: ~1.64 MFLOP
GOALS = {"fit_ratio": 0.45, "process_ratio": 0.75, "sweep_ratio": 8.0, "overhead_s": 1.0, "accuracy_gap": 0.003}

SEED_SCRIPT = """
import json, time
import numpy as np
import keras
from keras import layers
raw = np.load("{raw}")
x = raw["x_train"].reshape(len(raw["x_train"]), 784).astype("float32") / 255
y = keras.utils.to_categorical(raw["y_train"], 10)
x_test = raw["x_test"].reshape(len(raw["x_test"]), 784).astype("float32") / 255
y_test = keras.utils.to_categorical(raw["y_test"], 10)
hidden, output = layers.Dense(512, activation="relu"), layers.Dense(10, activation="softmax")
model = keras.Sequential([keras.Input((784,)), hidden, output])
model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
started = time.perf_counter()
model.fit(x, y, epochs={epochs}, batch_size=128, verbose=0)
fit = time.perf_counter() - started
print("RESULT", json.dumps({{"fit": fit, "accuracy": model.evaluate(x_test, y_test, verbose=0)[1]}}))
"""


def cpu() -> str:
    """The CPU model and its vector extensions (numbers are only claims about this CPU)."""
    model, flags = platform.processor() or "unknown", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    extensions = [f for f in ("avx", "avx2", "fma", "avx512f") if f in flags]
    missing = [f for f in ("avx512f",) if f not in flags]
    return f"{model}, {os.cpu_count()} cores, {' '.join(extensions)}" + (" (no AVX-512)" if missing else "")


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


def seed_script(raw: Path, epochs: int, work: Path) -> dict:
    path = work / "seed_script.py"
    path.write_text(SEED_SCRIPT.format(raw=raw, epochs=epochs))
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


def pipeline_train(source: Path, work: Path, name: str, overrides: list[str]) -> dict:
    root = project(work, name, source)
    cmd = [sys.executable, "-m", "pipeline.train", f"paths.root={root}", *overrides]
    _, wall, peak = run_measured(cmd, ROOT)
    subprocess.run(
        [sys.executable, "-m", "pipeline.evaluate", f"paths.root={root}"], cwd=ROOT, check=True, capture_output=True
    )
    accuracy = json.loads((root / "reports" / "metrics.json").read_text())["test_accuracy"]
    (run,) = [r for r in runs_of(root) if r.info.status == "FINISHED"][-1:]
    return {"fit": run.data.metrics["train_seconds"], "process": wall, "peak_gb": peak, "accuracy": accuracy}


def sweep(source: Path, work: Path, overrides: list[str]) -> dict:
    """The sweep in the project the first pipeline run used: its store exists, as after `dvc repro train`."""
    root = project(work, "jax0", source)
    cmd = [sys.executable, "-m", "pipeline.experiment", "-m", f"paths.root={root}", *overrides]
    _, wall, peak = run_measured(cmd, ROOT)
    children = [r for r in runs_of(root) if "mlflow.parentRunId" in r.data.tags]
    fits = [r.data.metrics.get("train_seconds", 0.0) for r in children]
    finished = sum(r.info.status == "FINISHED" for r in children)
    return {"wall": wall, "runs": len(children), "finished": finished, "fit_sum": sum(fits), "peak_gb": peak}


def matmul_limit_seconds(samples: int, batch: int = 128, repeats: int = 50) -> tuple[float, float]:
    """Seconds numpy needs for the training matmuls of `samples` samples, and its GFLOP/s."""
    rng = np.random.default_rng(0)
    x, w1 = rng.random((batch, 784), np.float32), rng.random((784, 512), np.float32)
    h, w2 = rng.random((batch, 512), np.float32), rng.random((512, 10), np.float32)
    g2 = rng.random((batch, 10), np.float32)

    def step() -> None:
        x @ w1, h @ w2  # forward
        h.T @ g2, g2 @ w2.T, x.T @ h, h @ w1.T  # backward: weight and input gradients

    step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    per_step = (time.perf_counter() - started) / repeats
    gflops = FLOP_PER_SAMPLE * batch / per_step / 1e9
    return samples * FLOP_PER_SAMPLE / (gflops * 1e9), gflops


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
    raw = args.root / "data" / "raw" / "mnist.npz"
    if not (raw.is_file() and (args.root / "data" / "processed" / "train.npz").is_file()):
        sys.exit(f"no MNIST under {args.root / 'data'}: run `dvc repro` (or download and preprocess) first")
    short = ["train.epochs=1"] if args.quick else []
    results: dict[str, list[dict]] = {"script": [], "pipeline": [], "pipeline-tf": []}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        for i in range(rounds):
            results["script"].append(seed_script(raw, epochs, work))
            results["pipeline"].append(pipeline_train(args.root, work, f"jax{i}", [f"train.seed={i}", *short]))
            tf = ["train.backend=tensorflow", f"train.seed={i}", *short]
            results["pipeline-tf"].append(pipeline_train(args.root, work, f"tf{i}", tf))
            print(f"round {i + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]['fit']:.1f} s" for k, v in results.items()))
        grid = ["sweep=none", "optimizer=sgd,adam", "train.epochs=1"] if args.quick else []
        swept = sweep(args.root, work, grid)
        replicas = None if args.quick else vmap_replicas(args.root, work)
    n_train = 54000 if not args.quick else None
    limit, gflops = matmul_limit_seconds((n_train or 3000) * epochs)
    means = {k: summarise(v) for k, v in results.items()}
    script, pipe = means["script"], means["pipeline"]
    report = {
        "cpu": cpu(),
        "quick": args.quick,
        "rounds": rounds,
        "variants": means,
        "sweep": swept,
        "vmap": replicas,
        "matmul_limit_s": limit,
        "matmul_gflops": gflops,
        "ratios": {
            "fit": pipe["fit"] / script["fit"],
            "process": pipe["process"] / script["process"],
            "sweep": swept["wall"] / script["process"],
            "overhead_per_run_s": (swept["wall"] - swept["fit_sum"]) / max(1, swept["runs"]),
            "accuracy_gap": pipe["accuracy"] - script["accuracy"],
            "fit_vs_limit": pipe["fit"] / limit,
            "tf_fit": means["pipeline-tf"]["fit"] / script["fit"],
            "tf_process": means["pipeline-tf"]["process"] / script["process"],
        },
        "goals": GOALS,
    }
    print(f"\nCPU: {report['cpu']}; numpy float32 matmul {gflops:.0f} GFLOP/s\n")
    print("| variant | fit s | whole process s | peak memory GB | test accuracy (mean) |")
    print("|---|---|---|---|---|")
    for name, m in means.items():
        print(f"| {name} | {m['fit']:.2f} | {m['process']:.2f} | {m['peak_gb']:.2f} | {m['accuracy']:.4f} |")
    r = report["ratios"]
    print(
        textwrap.dedent(
            f"""
            fit / script fit                 {r["fit"]:.2f}   (goal <= {GOALS["fit_ratio"]})
            whole process / script process   {r["process"]:.2f}   (goal <= {GOALS["process_ratio"]})
            accuracy gap (mean)              {r["accuracy_gap"]:+.4f} (goal within {GOALS["accuracy_gap"]})
            peak memory / script             {pipe["peak_gb"] / script["peak_gb"]:.2f}   (goal < 1)
            fit / matmul limit ({limit:.2f} s)     {r["fit_vs_limit"]:.2f}
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
    target = args.json or (None if args.quick else ROOT / "reports" / "benchmark.json")
    if target:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        print(f"\nwrote {target}")


if __name__ == "__main__":
    main()

"""Training speed of the pipeline against the plain Keras script, measured in one process.

    python benchmarks/train_speed.py            # full: real MNIST, 3 interleaved repeats
    python benchmarks/train_speed.py --quick    # small data, one repeat (what the test runs)

Variants, interleaved A B C A B C ... on the same arrays, medians reported:
  reference  the reference experiment as the plain Keras script (Sequential, rmsprop,
             fit(x, y_onehot, epochs=5, batch_size=128), everything else at defaults)
  pipeline   pipeline.train.fit with the default config, MLflow tracking on
  no-track   the same with tracking off (isolates the tracking overhead)
and the machine's practical limit: numpy float32 matmul throughput on the layer shapes.
Also: peak memory of `python -m pipeline.train`, the sweep machinery's overhead (wall
time of the latest sweep / the sum of its runs' training times), and a no-op `dvc repro`.
Prints one table and the targets; numbers are measured here, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLOP_PER_SAMPLE = 6 * (784 * 512 + 512 * 10)  # forward 2*MACs + backward 4*MACs = ~1.64 MFLOP
TARGETS = {
    "speedup": 1.8,  # pipeline / reference throughput
    "accuracy_gap": 0.003,  # |test accuracy difference|
    "tracking_overhead": 0.03,
    "limit_fraction": 0.5,
    "peak_rss_gb": 1.5,
    "sweep_overhead": 0.10,
    "noop_repro_s": 3.0,
}


def load_arrays(cfg, quick: bool) -> dict[str, np.ndarray]:
    """The pipeline's processed splits (for MNIST, train + val = the 60,000 training images)."""
    from pipeline.data import load_split

    splits = {name: tuple(vars(load_split(cfg, name)).values()) for name in ("train", "val", "test")}
    if quick:
        splits = {k: (x[:3000], y[:3000]) if k == "train" else (x[:500], y[:500]) for k, (x, y) in splits.items()}
    return splits


def epoch_timer():
    """A callback that only records each epoch's wall time (changes nothing in training)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._started)

    timer = EpochTimer()
    timer.seconds = []
    return timer


def reference_script(x, y, x_test, y_test, epochs: int) -> tuple[float, float, list[float]]:
    """The plain Keras script everyone starts from: (fit seconds, test accuracy, epoch seconds)."""
    import keras
    from keras import layers

    model = keras.Sequential(
        [keras.Input((784,)), layers.Dense(512, activation="relu"), layers.Dense(10, activation="softmax")]
    )
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    timer = epoch_timer()
    started = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=128, verbose=0, callbacks=[timer])
    seconds = time.perf_counter() - started
    return seconds, float(model.evaluate(x_test, y_test, verbose=0)[1]), timer.seconds


def pipeline_training(cfg, splits, tracking: bool) -> tuple[float, float, list[float]]:
    """pipeline.train.fit under a tracked run (or none): (fit seconds, test accuracy, epoch seconds)."""
    from pipeline.data import Split
    from pipeline.tracking import tracked_run
    from pipeline.train import fit

    cfg.tracking.enabled = tracking
    train, val, test = (Split(*splits[k]) for k in ("train", "val", "test"))
    with tracked_run(cfg, run_name="benchmark") as run:
        result = fit(cfg, train, val, run.info.run_id if run else None)
    accuracy = float(result.model.evaluate(test.x, test.y, batch_size=1000, verbose=0)[1])
    return result.train_seconds, accuracy, [row["epoch_seconds"] for row in result.history]


def matmul_limit(batch: int = 128, seconds: float = 3.0) -> float:
    """GFLOP/s of numpy float32 matmuls of one training step's shapes (forward + backward)."""
    rng = np.random.default_rng(0)
    x, w1, w2 = (rng.random(s, dtype=np.float32) for s in ((batch, 784), (784, 512), (512, 10)))
    h, g2 = rng.random((batch, 512), dtype=np.float32), rng.random((batch, 10), dtype=np.float32)
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        x @ w1, h @ w2  # forward
        h.T @ g2, g2 @ w2.T, x.T @ h  # backward: dW2, dH, dW1
        steps += 1
    return steps * batch * FLOP_PER_SAMPLE / (time.perf_counter() - started) / 1e9


def peak_memory_of_training(root: Path, quick: bool) -> tuple[float, float]:
    """(peak RSS in GB, wall seconds) of `python -m pipeline.train` in a child process."""
    overrides = [f"paths.root={root}", "tracking.enabled=false"]
    with tempfile.TemporaryDirectory() as tmp:
        overrides += [
            f"paths.models_dir={tmp}/models",
            f"paths.reports_dir={tmp}/reports",
            f"paths.logs_dir={tmp}/logs",
        ]
        if quick:
            overrides.append("train.epochs=1")
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.train", *overrides], cwd=ROOT, stdout=subprocess.DEVNULL
        )
        # The child's own high-water mark (VmHWM), polled while it runs: getrusage's
        # maxrss would also count the pages it shared with this large process at fork.
        peak_kb = 0
        while proc.poll() is None:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(0.05)
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit("python -m pipeline.train failed")
    return peak_kb / 1024**2, wall


def sweep_overhead(cfg, experiment: str) -> tuple[float, int] | None:
    """Latest sweep's wall time / sum of its runs' training seconds, and its run count."""
    from mlflow.tracking import MlflowClient

    from pipeline.compare import find_sweep
    from pipeline.errors import PipelineError
    from pipeline.tracking import setup_tracking

    cfg = cfg.copy()
    cfg.tracking.enabled = True
    cfg.tracking.experiment = experiment  # the sweeps' experiment, not the benchmark's
    try:
        experiment_id = setup_tracking(cfg)
        client = MlflowClient()
        parent = find_sweep(client, experiment_id, None)
    except PipelineError:
        return None
    children = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    train_seconds = sum(r.data.metrics.get("train_seconds", 0.0) for r in children)
    if not parent.info.end_time or not train_seconds:
        return None
    return (parent.info.end_time - parent.info.start_time) / 1000 / train_seconds, len(children)


def noop_repro_seconds() -> float | None:
    """Wall time of `dvc repro` when everything is up to date (None if it had work to do)."""
    dvc = Path(sys.executable).with_name("dvc")
    started = time.perf_counter()
    out = subprocess.run([str(dvc), "repro"], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    return seconds if "up to date" in out.stdout else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data, one repeat, 1 epoch (for the test)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--root", type=Path, default=ROOT, help="project root holding data/processed (default: here)")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    epochs = 1 if args.quick else 5

    from hydra import compose, initialize_config_dir

    from pipeline.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        sweep_experiment = compose("config").tracking.experiment
        cfg = compose(
            "config",
            overrides=[
                f"paths.root={args.root}",
                f"train.epochs={epochs}",
                "train.verbose=0",
                "tracking.experiment=benchmark",
            ],
        )

    splits = load_arrays(cfg, args.quick)
    # The reference script trains on all 60,000 training images; the pipeline on its
    # 54,000 (6,000 held out for validation). Throughput is per training sample.
    x_all = np.concatenate([splits["train"][0], splits["val"][0]])
    y_all = np.concatenate([splits["train"][1], splits["val"][1]])
    n_pipeline = len(splits["train"][0])
    results: dict[str, list[tuple[float, float, list[float]]]] = {"reference": [], "pipeline": [], "no-track": []}
    for _ in range(repeats):  # interleaved: A B C A B C ...
        results["reference"].append(reference_script(x_all, y_all, *splits["test"], epochs))
        results["pipeline"].append(pipeline_training(cfg, splits, tracking=True))
        results["no-track"].append(pipeline_training(cfg, splits, tracking=False))

    limit = matmul_limit(seconds=1.0 if args.quick else 3.0)
    rows, summary = [], {}
    for name, runs in results.items():
        seconds = statistics.median(s for s, _, _ in runs)
        accuracy = statistics.median(a for _, a, _ in runs)
        per_epoch = len(x_all) if name == "reference" else n_pipeline
        samples = per_epoch * epochs
        gflops = samples * FLOP_PER_SAMPLE / seconds / 1e9
        # Steady state: the epochs after the first, which also pays for tracing and compiling.
        later = [t for _, _, times in runs for t in times[1:]] or [t for _, _, times in runs for t in times]
        steady = per_epoch / statistics.median(later)
        summary[name] = {
            "seconds": seconds,
            "samples_per_s": samples / seconds,
            "steady_samples_per_s": steady,
            "gflops": gflops,
            "accuracy": accuracy,
        }
        share = 100 * gflops / limit
        rows.append(
            f"| {name} | {seconds:.2f} | {samples / seconds:,.0f} | {steady:,.0f} | {gflops:.1f} | {share:.0f} % "
            f"| {accuracy:.4f} |"
        )
    rss_gb, train_wall = peak_memory_of_training(args.root, args.quick)
    speedup = summary["pipeline"]["samples_per_s"] / summary["reference"]["samples_per_s"]
    steady_speedup = summary["pipeline"]["steady_samples_per_s"] / summary["reference"]["steady_samples_per_s"]
    overhead = summary["pipeline"]["seconds"] / summary["no-track"]["seconds"] - 1
    gap = summary["pipeline"]["accuracy"] - summary["reference"]["accuracy"]
    sweep = None if args.quick else sweep_overhead(cfg, sweep_experiment)
    noop = noop_repro_seconds() if not args.quick else None

    print(f"\n{epochs} epoch(s), {repeats} interleaved repeat(s), medians; numpy matmul limit {limit:.1f} GFLOP/s\n")
    print("| variant | fit seconds | samples/s | samples/s after epoch 1 | GFLOP/s | of limit | test accuracy |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    checks = [
        ("pipeline / reference throughput", f"{speedup:.2f}x", speedup >= TARGETS["speedup"], ">= 1.8x"),
        (
            "the same after epoch 1 (compiled)",
            f"{steady_speedup:.2f}x",
            steady_speedup >= TARGETS["speedup"],
            ">= 1.8x",
        ),
        (
            "test accuracy pipeline - reference",
            f"{100 * gap:+.2f} points",
            abs(gap) <= TARGETS["accuracy_gap"],
            "within 0.3",
        ),
        ("tracking overhead", f"{100 * overhead:+.1f} %", overhead <= TARGETS["tracking_overhead"], "<= 3 %"),
        (
            "pipeline share of matmul limit",
            f"{100 * summary['pipeline']['gflops'] / limit:.0f} %",
            summary["pipeline"]["gflops"] / limit >= TARGETS["limit_fraction"],
            ">= 50 %",
        ),
        (
            "peak RSS of `python -m pipeline.train`",
            f"{rss_gb:.2f} GB ({train_wall:.1f} s wall)",
            rss_gb <= TARGETS["peak_rss_gb"],
            "<= 1.5 GB",
        ),
    ]
    if sweep:
        checks.append(
            (
                "sweep wall / sum of training",
                f"{sweep[0]:.2f} ({sweep[1]} runs, +{100 * (sweep[0] - 1):.0f} %)",
                sweep[0] - 1 <= TARGETS["sweep_overhead"],
                "<= +10 %",
            )
        )
    if noop is not None:
        checks.append(("no-op `dvc repro`", f"{noop:.2f} s", noop <= TARGETS["noop_repro_s"], "<= 3 s"))
    print("\n| measure | value | target | met |\n|---|---|---|---|")
    for name, value, met, target in checks:
        print(f"| {name} | {value} | {target} | {'yes' if met else 'NO'} |")
    if args.json:
        args.json.write_text(
            json.dumps({"summary": summary, "limit_gflops": limit, "checks": [c[:3] for c in checks]}, indent=2)
        )


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    main()

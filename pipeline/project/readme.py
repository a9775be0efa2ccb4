"""The README's result tables (and benchmarks/README.md's), generated from `reports/`, never copied by hand.

A document marks each generated block with `<!-- generated: NAME -->` ...
`<!-- end: NAME -->`; this module renders every block from the files the pipeline and
the benchmark wrote, and replaces it.

    python -m pipeline.project.readme          # rewrite the generated blocks of README.md
    python -m pipeline.project.readme --check  # exit 1 if README.md is not what reports/ says
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pipeline.core.paths import PACKAGE_CHECKOUT, paths_at

BLOCK = re.compile(r"(<!-- generated: (\w+) -->\n)(.*?)(<!-- end: \2 -->)", re.DOTALL)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def first_command(root: Path) -> str:
    """How long README command 1 took on a fresh clone (reports/first_command.json, benchmarks/first_command.py)."""
    run = _json(paths_at(root).first_command)
    total = run["install_s"] + run["repro_s"]
    return (
        f"On {run['cpu']} ({run['date']}, `python benchmarks/first_command.py`: a fresh clone, no caches) "
        f"command 1 took {_minutes(total)}: {_minutes(run['install_s'])} to install, {_minutes(run['repro_s'])} "
        f"for `dvc repro` with its {run['sweep_runs']} sweep runs.\n"
    )


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {round(seconds % 60):02d} s"


def reference_result(root: Path) -> str:
    """The reference experiment's test metrics (reports/metrics.json)."""
    metrics = _json(paths_at(root).stage_outputs.metrics)
    return (
        "| test accuracy | test loss | test errors |\n|---|---|---|\n"
        f"| {metrics['test_accuracy']:.4f} | {metrics['test_loss']:.4f} | "
        f"{metrics['test_errors']} of {metrics['test_samples']:,} |\n"
    )


def sweep_answer(root: Path) -> str:
    """The sweep's noise-aware answer and its cells table (reports/sweep/summary.json)."""
    summary = _json(paths_at(root).sweep_report("summary.json"))
    cells = pd.DataFrame(summary["cells"])
    verdicts = {c["cell"]: c["verdict"] for c in summary["comparisons"]}
    winner = summary["winner"]["cell"] if summary["winner"] else None
    cells["verdict"] = ["winner (chosen on validation)" if c == winner else verdicts.get(c, "") for c in cells["cell"]]
    cells["95 % interval"] = ["-" if lo is None or lo != lo else f"{lo:.4f}-{hi:.4f}" for lo, hi in cells["ci95"]]
    cells = cells.rename(columns={"mean": "test mean", "val_mean": "validation mean"})
    columns = ["cell", "n", "validation mean", "test mean", "std", "95 % interval", "verdict"]
    times, target = summary.get("time_to_target"), summary.get("target")
    if times:  # time to result: the second answer
        reach, when = f"seeds reaching {target:g}", f"median s to {target:g}"
        cells[reach] = [f"{times[c]['reached']} of {times[c]['runs']}" for c in cells["cell"]]
        cells[when] = [_seconds(times[c]["median_train_seconds"]) for c in cells["cell"]]
        columns += [reach, when]
    for key, column in (("noise_scale", "noise scale (last)"), ("noise_scale_at_target", "noise scale at target")):
        noise = summary.get(key)  # the gradient noise scale (median over seeds): at the end, and at the target
        if noise:
            cells[column] = ["-" if noise.get(c) is None else f"{noise[c]:,.0f}" for c in cells["cell"]]
            columns.append(column)
    table = cells[columns]
    machine = summary["machine"]
    return (
        f"{summary['answer']}\n\n"
        f"{summary['finished']} of {summary['runs']} runs finished ({summary['test']}); measured on "
        f"{machine['cpu.model']}, {machine['cpu.count']} cores ({machine['cpu.vector_extensions']}).\n\n"
        + table.to_markdown(index=False, floatfmt=".4f")
        + "\n"
    )


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f}"


def sweep_pivot(root: Path) -> str:
    """Mean test accuracy by optimizer x batch size (reports/sweep/pivot.csv)."""
    pivot = pd.read_csv(paths_at(root).sweep_report("pivot.csv"), index_col=0, dtype={"optimizer": str})
    return pivot.to_markdown(floatfmt=".4f") + "\n"


def batch_scaling(root: Path) -> str:
    """Steps to the target against batch size per setting, beside the noise scale (summary.json `scaling`)."""
    from pipeline.analysis.scaling import sentence

    summary = _json(paths_at(root).sweep_report("summary.json"))
    found = summary.get("scaling") or {}
    rows = [
        {
            "setting": setting,
            "batch size": row["batch_size"],
            f"median steps to {summary['target']:g}": f"{row['steps']:.0f}",
            "perfect scaling": f"{row['perfect_steps']:.0f}",
            "measured / perfect": f"{row['ratio']:.2f}",
        }
        for setting, s in found.items()
        for row in s["rows"]
    ]
    table = pd.DataFrame(rows).to_markdown(index=False) + "\n" if rows else ""
    return sentence(found) + "\n\n" + table


def scaling_study(root: Path) -> str:
    """The batch-size scaling study: its answer, steps per batch size, the bend, the profiles (reports/scaling/)."""
    paths = paths_at(root)
    summary = _json(paths.scaling_report("summary.json"))
    points = pd.read_csv(paths.scaling_report("points.csv"))
    machine = summary["machine"]
    text = (
        f"Measured on {machine['cpu.model']}, {machine['cpu.count']} cores ({machine['cpu.vector_extensions']}): "
        f"{summary['runs']} runs in {_minutes(summary['study_seconds'])} (`python -m pipeline.scaling`). "
        f"{summary['answer']}\n\n"
    )
    for workload, group in points.groupby("workload", sort=False):
        target = summary["workloads"][workload]["target"]
        text += f"Median steps to {target:g} validation accuracy on {workload} (learning rate chosen per cell):\n\n"
        cells = group.assign(
            cell=[
                f"{s:.0f} ({r:g})" if s == s else f"never ({r:g})"
                for s, r in zip(group["median_steps"], group["learning_rate"], strict=True)
            ]
        )
        text += cells.pivot(index="optimizer", columns="batch_size", values="cell").to_markdown() + "\n\n"
    rows = [
        {
            "workload": workload,
            "optimizer": optimizer,
            "critical batch size": f"{found['critical_batch_size']:.0f}" if found["critical_batch_size"] else "-",
            "fitted B_noise": f"{found['fit']['b_noise']:.0f}" if found["fit"] else "-",
            "B_simple at the target": f"{found['noise_scale']:.0f}" if found["noise_scale"] else "-",
        }
        for workload, by_optimizer in summary["reading"].items()
        for optimizer, found in by_optimizer.items()
    ]
    text += pd.DataFrame(rows).to_markdown(index=False) + "\n\n"
    found = summary["profiles"]
    profile = pd.DataFrame(found["profiles"]).T.rename(columns=lambda tau: f"tau = {tau}")
    workloads = ", ".join(found["ratios"])
    text += f"Performance profiles over {len(found['ratios'])} workloads ({workloads}): the share of workloads on "
    text += "which the optimizer's median training seconds to the target are within tau x the fastest optimizer's"
    if found["unsolved"]:
        text += f" (no optimizer reached the target on {', '.join(found['unsolved'])})"
    text += ":\n\n"
    return text + profile.to_markdown(floatfmt=".2f") + "\n"


def study_speed(root: Path) -> str:
    """The study in one process against the same runs as separate processes (reports/study_benchmark.json)."""
    bench = _json(paths_at(root).study_benchmark)
    return (
        f"On {bench['cpu']} ({bench['date']}, `python benchmarks/study_speed.py`): a study of {bench['runs']} runs "
        f"(`{' '.join(bench['study'])}`) took {bench['study_s']:.0f} s as one `python -m pipeline.scaling`, against "
        f"{bench['separate_s']:.0f} s for the same runs as separate `python -m pipeline.train` processes (no logged "
        "model, the noise scale on the replicas only, validation 4 times an epoch: see the script) "
        f"(**{bench['ratio']:.2f}x** the time). In the same run, 4 learning rates in one `jax.vmap` program took "
        + ", ".join(
            f"{r:.2f}x the time of 4 runs one after another at batch size {b}" for b, r in bench["vmap_ratio"].items()
        )
        + ".\n"
    )


def performance(root: Path) -> str:
    """The benchmark's figures against the seed's script, and which goals they meet (reports/benchmark.json)."""
    bench = _json(paths_at(root).benchmark)
    v, r, g, sweep, floor = bench["variants"], bench["ratios"], bench["goals"], bench["sweep"], bench["floor"]
    names = ("script", "pipeline-cold", "pipeline-warm", "pipeline-tf")
    rows = [
        "| | seed's script (TensorFlow) | pipeline, JAX, cold compile | pipeline, JAX, warm | pipeline, TensorFlow |",
        "|---|---|---|---|---|",
    ]
    for key, label, fmt in (
        ("fit", f"fit, {bench['epochs']} epochs with validation (s)", "{:.2f}"),
        ("process", "whole process: train + evaluate (s)", "{:.2f}"),
        ("peak_gb", "peak memory (GB)", "{:.2f}"),
        ("accuracy", "test accuracy (mean)", "{:.4f}"),
    ):
        rows.append(f"| {label} | " + " | ".join(fmt.format(v[name][key]) for name in names) + " |")

    def goal(value: float, bound: float, within: bool = False) -> str:
        met = abs(value) <= bound if within else value <= bound
        return f"goal {'within' if within else '<='} {bound:g}: {'met' if met else 'missed'}"

    ratios = [
        f"- fit: **{r['fit']:.2f}x** the script's cold, {r['fit_warm']:.2f}x warm ({goal(r['fit'], g['fit_ratio'])}); "
        f"warm, {r['fit_vs_floor']:.2f}x the {floor['seconds']:.2f} s numpy float32 needs, in the same run, for the "
        f"matmuls this training does ({floor['train_mflop_per_sample']:.2f} MFLOP a training sample plus one "
        f"validation pass an epoch, {floor['gflops']:.0f} GFLOP/s; XLA's fused program can beat it)",
        f"- whole process: **{r['process']:.2f}x** cold, {r['process_warm']:.2f}x warm "
        f"({goal(r['process'], g['process_ratio'])}); peak memory {r['peak']:.2f}x the script's",
        f"- accuracy: mean of {v['pipeline-warm']['n']} seeds {r['accuracy_gap']:+.4f} against the script's "
        f"({goal(r['accuracy_gap'], g['accuracy_gap'], within=True)})",
        f"- sweep: {sweep['runs']} runs ({sweep['finished']} finished) in {sweep['wall']:.0f} s, **{r['sweep']:.2f}x** "
        f"the script's whole process ({goal(r['sweep'], g['sweep_ratio'])}); {r['overhead_per_run_s']:.2f} s per run "
        f"outside the fit ({goal(r['overhead_per_run_s'], g['overhead_s'])})",
        f"- TensorFlow backend: fit {r['tf_fit']:.2f}x, whole process {r['tf_process']:.2f}x the script's",
        f"- system metrics (CPU, memory each second): {r['system_metrics_s']:+.2f} s of whole process per run",
    ]
    return (
        f"Measured on {bench['cpu']}, {bench['rounds']} interleaved rounds, both sides training on the same "
        f"{bench['samples']['train']:,} images and validating on the same {bench['samples']['val']:,} (the pipeline "
        "at its default `train.evals_per_epoch`, the script once an epoch: see above) "
        "(`python benchmarks/train_speed.py`):\n\n" + "\n".join(rows) + "\n\n" + "\n".join(ratios) + "\n"
    )


def benchmark_detail(root: Path) -> str:
    """benchmarks/README.md: every figure of the latest benchmark run, with the CPU it ran on."""
    bench = _json(paths_at(root).benchmark)
    text = performance(root)
    vmap = bench.get("vmap")
    if vmap:
        ratio = vmap["vmap"] / vmap["sequential"]
        text += (
            f"- vmap: {vmap['replicas']} seeds x 1 epoch in pure JAX: {vmap['sequential']:.2f} s one after another, "
            f"{vmap['vmap']:.2f} s in one vectorised program ({ratio:.2f}x the time)\n"
        )
    sweep = bench["sweep"]
    return text + (
        f"- sweep detail: {sweep['fit_sum']:.0f} s of fitting in {sweep['wall']:.0f} s of wall time, "
        f"peak memory {sweep['peak_gb']:.2f} GB\n"
    )


def tuned_comparison(root: Path) -> str:
    """Default vs tuned learning rates, per cell (reports/tuned/comparison.json, `python -m pipeline.tune`)."""
    data = _json(paths_at(root).tuned("comparison.json"))
    rows = []
    for name, cell in sorted(data["cells"].items(), key=lambda kv: -kv[1].get("tuned", {}).get("mean", 0)):
        default, tuned, chosen = cell.get("default"), cell.get("tuned"), cell.get("chosen", {})

        def view(v: dict | None) -> str:
            return "-" if not v else f"{v['mean']:.4f} [{v['ci95'][0]:.4f}, {v['ci95'][1]:.4f}]"

        rate = f"{chosen['learning_rate']:.3g} (x{chosen['lr_factor']:g})" if chosen else "-"
        change = f"{tuned['mean'] - default['mean']:+.4f}" if default and tuned else "-"
        rows.append(f"| {name} | {view(default)} | {rate} | {view(tuned)} | {change} |")
    d, t = data["default"], data["tuned"]
    if d:
        default = (
            f"Default rates: the winner (chosen on validation) is {d['winner']}; not shown to differ from it: "
            f"{', '.join(d['tied_with']) or 'none'}."
        )
    else:
        default = f"Default rates: left out ({data.get('default_left_out') or 'no default sweep in reports/sweep/'})."
    return (
        "| cell | default rate: mean [95 % CI] | tuned rate (x default) | tuned: mean [95 % CI] | change |\n"
        "|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"{default} Tuned rates: the winner is {t['winner']}; not shown to differ from it: "
        f"{', '.join(t['tied_with']) or 'none'}.\n"
    )


BLOCKS: dict[str, Callable[[Path], str]] = {
    "first_command": first_command,
    "benchmark_detail": benchmark_detail,
    "tuned_comparison": tuned_comparison,
    "performance": performance,
    "reference_result": reference_result,
    "sweep_answer": sweep_answer,
    "batch_scaling": batch_scaling,
    "scaling_study": scaling_study,
    "study_speed": study_speed,
    "sweep_pivot": sweep_pivot,
}


def render(text: str, root: Path = PACKAGE_CHECKOUT) -> str:
    """`text` with every generated block rendered anew from `root`'s reports."""

    def replace(match: re.Match) -> str:
        name = match.group(2)
        if name not in BLOCKS:
            raise KeyError(f"README block {name!r} has no generator in pipeline/project/readme.py")
        return f"{match.group(1)}{BLOCKS[name](root)}{match.group(4)}"

    return BLOCK.sub(replace, text)


DOCUMENTS = ("README.md", "benchmarks/README.md")


def main() -> None:
    """`python -m pipeline.project.readme [--check]`."""
    for name in DOCUMENTS:
        document = PACKAGE_CHECKOUT / name
        text = document.read_text()
        fresh = render(text)
        if "--check" in sys.argv[1:]:
            if fresh != text:
                print(
                    f"{name}'s generated tables differ from reports/: run python -m pipeline.project.readme",
                    file=sys.stderr,
                )
                sys.exit(1)
            continue
        document.write_text(fresh)
        print(f"{name}: {len(BLOCK.findall(text))} generated block(s) rewritten from reports/")


if __name__ == "__main__":
    main()

"""Steps to the target against batch size: how far a sweep's batch sizes are from perfect scaling.

Shallue et al. (JMLR 2019) measured the steps to a target against the batch size: doubling
the batch halves the steps (perfect scaling) up to a point, then buys less and less. For
each setting of a sweep (the optimizer, plus any other swept setting) this reads the median
steps to `compare.target` of its cells at numeric batch sizes that way (with fewer than two
batch sizes that reached the target: the rows, but no critical batch size and no fit):

- `perfect_steps`: the steps perfect scaling predicts from the smallest batch size that
  reached the target, `steps(B0) * B0 / B`; `ratio`: measured / predicted (1 = perfect);
- `critical_batch_size`: where the ratio reaches 2 (measured steps twice the perfect-scaling
  prediction), interpolated on log-log axes between the two batch sizes around it; None
  when no measured ratio reaches 2 (the bend lies above the largest batch size that
  reached the target, or the sweep cannot tell);
- `fit`: McCandlish et al.'s (2018) model `steps = S_min * (1 + B_noise / B)` fitted by
  least squares of log steps (every batch size's relative error counts the same): B_noise
  is the batch size at which a run needs twice the minimum steps, the quantity their
  gradient noise scale B_simple estimates;
- `noise_scale`: the median over the cells in the rows of the measured B_simple when their
  runs reached the target (compare's `noise_scale_at_target_median`), beside it;
- `slopes`: the measured local slope of log steps against log batch size between
  neighbouring batch sizes (-1: perfect scaling; 0: the steps no longer fall);
- `regimes` (`regimes`): Shallue et al.'s three regimes, read from the fitted curve, whose
  slope is -B_noise / (B + B_noise): perfect scaling while it is at most -0.75 (B up to
  B_noise / 3: doubling the batch nearly halves the steps), maximal data parallelism from
  -0.25 (B from 3 B_noise: the steps no longer fall), diminishing returns between; each
  within the measured batch sizes. One local slope is too noisy to name a regime: the
  rates are chosen on a grid and the steps counted at validations.

A cell that never reached the target in most of its seeds has no steps: it is left out, and
named in `not_reached`. Steps are counted at the validations (`train.evals_per_epoch` an
epoch), so each is an upper bound, at most one validation interval late. The default sweep
keeps each optimizer's learning rate at every batch size, where the studies tune it for
each: its reading is that of this sweep, not the optimal-rate curve (`python -m
pipeline.tune` tunes the rate per cell).
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pandas as pd

from pipeline.analysis.stats import batch_order
from pipeline.analysis.summary import row_label

RULE = "measured steps to the target = 2 x the perfect-scaling prediction from the smallest batch size"
PERFECT, DIMINISHING, MAXIMAL = "perfect scaling", "diminishing returns", "maximal data parallelism"


def slopes(batch_sizes: list[int], steps: list[float]) -> list[dict]:
    """Between each two neighbouring batch sizes, the measured slope of log steps against log batch size."""
    return [
        {"from": b0, "to": b1, "slope": (math.log(s1) - math.log(s0)) / (math.log(b1) - math.log(b0))}
        for (b0, b1), (s0, s1) in zip(pairwise(batch_sizes), pairwise(steps), strict=True)
    ]


def regimes(fit: dict | None, smallest: int, largest: int) -> list[dict]:
    """The regimes of the fitted curve within [smallest, largest]: perfect scaling up to B_noise / 3,
    diminishing returns up to 3 B_noise, maximal data parallelism beyond (no fit: none)."""
    if fit is None:
        return []
    bounds = [smallest, fit["b_noise"] / 3, 3 * fit["b_noise"], largest]
    spans = zip((PERFECT, DIMINISHING, MAXIMAL), pairwise(bounds), strict=True)
    return [
        {"regime": name, "from": max(low, smallest), "to": min(high, largest)}
        for name, (low, high) in spans
        if min(high, largest) > max(low, smallest)
    ]


def crossing(batch_sizes: list[int], ratios: list[float], level: float = 2.0) -> float | None:
    """The batch size where `ratios` first reach `level`, log-log interpolated; None if they never do."""
    for i in range(1, len(ratios)):
        if ratios[i] >= level:
            (b0, b1), (r0, r1) = batch_sizes[i - 1 : i + 1], ratios[i - 1 : i + 1]
            if r1 == r0:
                return float(b1)
            t = (math.log(level) - math.log(r0)) / (math.log(r1) - math.log(r0))
            return float(math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0))))
    return None


def fit_noise_model(batch_sizes: list[int], steps: list[float]) -> dict | None:
    """`steps = S_min * (1 + B_noise / B)` by least squares of log steps: {"s_min", "b_noise"}.

    For each B_noise the best S_min has a closed form (the mean log residual); B_noise is
    found by a bounded search on its log within [B_min / 1000, B_max * 1000]. None with
    fewer than two points, or when the best B_noise is an end of that range: no bend within
    reach (perfect scaling everywhere, or steps that do not fall at all).
    """
    if len(batch_sizes) < 2:
        return None
    from scipy.optimize import minimize_scalar

    sizes, log_steps = np.asarray(batch_sizes, dtype=float), np.log(np.asarray(steps, dtype=float))

    def log_s_min(noise: float) -> float:
        return float(np.mean(log_steps - np.log1p(noise / sizes)))

    def residual(t: float) -> float:
        noise = math.exp(t)
        return float(np.sum((log_steps - log_s_min(noise) - np.log1p(noise / sizes)) ** 2))

    low, high = math.log(sizes.min() / 1000), math.log(sizes.max() * 1000)
    t = minimize_scalar(residual, bounds=(low, high), method="bounded", options={"xatol": 1e-12}).x
    if t < low + 1e-3 or t > high - 1e-3:
        return None
    noise = math.exp(t)
    return {"s_min": math.exp(log_s_min(noise)), "b_noise": noise}


def scaling(cells: pd.DataFrame) -> dict[str, dict]:
    """Per setting with numeric batch sizes: the rows, the critical batch size and the fit (None with
    fewer than two batch sizes that reached the target), the cells that did not reach it.

    `cells` is compare's cells frame (`target_median_steps`, `noise_scale_at_target_median` per cell).
    """
    out: dict[str, dict] = {}
    frame = cells.assign(setting=[row_label(c, b) for c, b in zip(cells["cell"], cells["batch_size"], strict=True)])
    for setting, group in frame.groupby("setting", sort=False):
        numeric = group[group["batch_size"].astype(str).str.isdigit()]
        numeric = numeric.iloc[sorted(range(len(numeric)), key=lambda i: batch_order(numeric["batch_size"].iloc[i]))]
        reached = numeric[numeric["target_median_steps"].notna()]
        if not len(numeric):
            continue
        sizes = [int(b) for b in reached["batch_size"]]
        steps = [float(s) for s in reached["target_median_steps"]]
        perfect = [steps[0] * sizes[0] / b for b in sizes]
        fit = fit_noise_model(sizes, steps)
        ratios = [s / p for s, p in zip(steps, perfect, strict=True)]
        noise = reached["noise_scale_at_target_median"].dropna()  # the cells in the rows only
        out[str(setting)] = {
            "rows": [
                {"batch_size": b, "steps": s, "perfect_steps": p, "ratio": r}
                for b, s, p, r in zip(sizes, steps, perfect, ratios, strict=True)
            ],
            "not_reached": [str(c) for c in numeric.loc[numeric["target_median_steps"].isna(), "cell"]],
            "critical_batch_size": crossing(sizes, ratios),
            "rule": RULE,
            "fit": fit,
            "noise_scale": float(noise.median()) if len(noise) else None,
            "slopes": slopes(sizes, steps),
            "regimes": regimes(fit, sizes[0], sizes[-1]) if sizes else [],
        }
    return out


def bend_text(found: dict, within: str) -> str:
    """The bend in words.

    `critical batch size about 369, fitted B_noise 211, measured B_simple at the target 2578
    (7.0 x the critical batch size)`.
    """
    critical = found["critical_batch_size"]
    text = f"critical batch size about {critical:.0f}" if critical else f"no bend to 2 x within the {within}"
    if found["fit"]:
        text += f", fitted B_noise {found['fit']['b_noise']:.0f}"
    if found["noise_scale"]:
        text += f", measured B_simple at the target {found['noise_scale']:.0f}"
        text += f" ({found['noise_scale'] / critical:.1f} x the critical batch size)" if critical else ""
    return text


def sentence(found: dict[str, dict]) -> str:
    """The reading in words, one clause per setting."""
    if not found:
        return "The sweep has no numeric batch sizes: it does not show how steps scale."
    parts = []
    for setting, s in found.items():
        if len(s["rows"]) < 2:
            where = f"batch size {s['rows'][0]['batch_size']} only" if s["rows"] else "no batch size"
            parts.append(f"{setting}: reached the target at {where}, so no scaling to read")
            continue
        first, last = s["rows"][0], s["rows"][-1]
        text = (
            f"{setting}: from batch size {first['batch_size']} to {last['batch_size']} the steps to the target went "
            f"from {first['steps']:.0f} to {last['steps']:.0f} ({last['ratio']:.2f} x perfect scaling's "
            f"{last['perfect_steps']:.0f})"
        )
        parts.append(f"{text}; {bend_text(s, 'sweep')}")
    return "; ".join(parts) + "."


def study_reading(points: pd.DataFrame) -> dict[str, dict[str, dict]]:
    """A scaling study's points (`pipeline.sweeps.study.Point.row`) read per workload and optimizer as above."""
    out = {}
    for workload, group in points.groupby("workload", sort=False):
        cells = pd.DataFrame(
            {
                "cell": [f"{o}-bs{b}" for o, b in zip(group["optimizer"], group["batch_size"], strict=True)],
                "batch_size": group["batch_size"].astype(str),
                "target_median_steps": group["median_steps"],
                "noise_scale_at_target_median": group["noise_scale_at_target"],
            }
        )
        out[str(workload)] = scaling(cells)
    return out


def regime_text(found: dict) -> str:
    """`perfect scaling 16-103, diminishing returns 103-924, maximal data parallelism 924-8192`."""
    return ", ".join(f"{r['regime']} {r['from']:.0f}-{r['to']:.0f}" for r in found["regimes"]) or "no fitted curve"


def study_sentence(reading: dict[str, dict[str, dict]], targets: dict[str, float]) -> str:
    """The study's reading in words: per workload and optimizer, the regimes, the bend and the noise scale."""
    parts = []
    for workload, by_optimizer in reading.items():
        for optimizer, found in by_optimizer.items():
            head = f"{workload} ({targets[workload]:g}), {optimizer}"
            if len(found["rows"]) < 2:
                parts.append(f"{head}: reached the target at {len(found['rows'])} batch size(s), no scaling to read")
                continue
            text = f"{head}: {regime_text(found)}; {bend_text(found, 'study')}"
            if found["not_reached"]:
                text += f"; never reached at {', '.join(c.rsplit('-bs', 1)[1] for c in found['not_reached'])}"
            parts.append(text)
    return "; ".join(parts) + "."


def plot_study(points: pd.DataFrame, reading: dict[str, dict[str, dict]], path) -> None:
    """Steps to the target against batch size (log-log), per workload: the measured medians, perfect scaling
    from the smallest batch size (dashed), the fitted curve (wide, faint), the critical batch size
    (dash-dot) and B_simple (dotted)."""
    from pipeline.analysis.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, len(reading), figsize=(6 * len(reading), 4.2), squeeze=False)
    for ax, (workload, by_optimizer) in zip(axes[0], reading.items(), strict=True):
        for i, (optimizer, found) in enumerate(by_optimizer.items()):
            color = f"C{i}"
            sizes = [r["batch_size"] for r in found["rows"]]
            ax.plot(sizes, [r["steps"] for r in found["rows"]], "o-", color=color, label=optimizer)
            ax.plot(sizes, [r["perfect_steps"] for r in found["rows"]], "--", color=color, alpha=0.5)
            if found["fit"]:
                grid = np.geomspace(sizes[0], sizes[-1], 50)
                fitted = found["fit"]["s_min"] * (1 + found["fit"]["b_noise"] / grid)
                ax.plot(grid, fitted, "-", color=color, alpha=0.25, linewidth=4)
            if found["critical_batch_size"]:
                ax.axvline(found["critical_batch_size"], color=color, linestyle="-.", alpha=0.5)
            if found["noise_scale"]:
                ax.axvline(found["noise_scale"], color=color, linestyle=":", alpha=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("median steps to the target")
        ax.set_title(f"{workload}: -- perfect scaling, wide: fit, -. critical B, : B_simple", fontsize=9)
        ax.legend()
    save_figure(fig, path)

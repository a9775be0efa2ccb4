"""Performance profiles (Dolan and More 2002), as MLCommons AlgoPerf compares training algorithms across workloads.

For each workload, every optimizer's time to the workload's validation target is divided
by the best optimizer's time there (the performance ratio r; a target never reached is
r = infinity). An optimizer's profile rho(tau) is the fraction of workloads on which
r <= tau: rho(1) is the share of workloads it is fastest on, and a curve that rises
sooner is better. A workload on which no optimizer reached its target says nothing about
the optimizers and is left out (named in `unsolved`).
"""

from __future__ import annotations

import math
from pathlib import Path


def performance_ratios(times: dict[str, dict[str, float | None]]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """{workload: {optimizer: seconds or None}} -> ({workload: {optimizer: ratio}}, unsolved workloads)."""
    ratios, unsolved = {}, []
    for workload, by_optimizer in times.items():
        best = min((t for t in by_optimizer.values() if t is not None), default=None)
        if best is None:
            unsolved.append(workload)
            continue
        ratios[workload] = {o: (t / best if t is not None else math.inf) for o, t in by_optimizer.items()}
    return ratios, unsolved


def profile(ratios: dict[str, dict[str, float]], optimizer: str, tau: float) -> float:
    """The fraction of the workloads on which `optimizer`'s ratio is at most `tau`."""
    if not ratios:
        return 0.0
    return sum(by_optimizer.get(optimizer, math.inf) <= tau for by_optimizer in ratios.values()) / len(ratios)


def profiles(times: dict[str, dict[str, float | None]], taus: list[float]) -> dict:
    """The ratios, each optimizer's profile at `taus`, and the unsolved workloads."""
    ratios, unsolved = performance_ratios(times)
    optimizers = sorted({o for by_optimizer in times.values() for o in by_optimizer})
    table = {o: {f"{tau:g}": profile(ratios, o, tau) for tau in taus} for o in optimizers}
    return {"ratios": ratios, "profiles": table, "taus": list(taus), "unsolved": unsolved}


def plot_profiles(found: dict, path: Path) -> None:
    """rho(tau) per optimizer as a step function of tau on a log axis (AlgoPerf's figure)."""
    from pipeline.analysis.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    finite = [r for by_optimizer in found["ratios"].values() for r in by_optimizer.values() if math.isfinite(r)]
    top = max([*finite, *found["taus"], 2.0]) * 1.2
    for optimizer in found["profiles"]:
        ratios = sorted(by[optimizer] for by in found["ratios"].values() if optimizer in by)
        taus = [1.0, *(r for r in ratios if math.isfinite(r)), top]
        ax.step(taus, [profile(found["ratios"], optimizer, t) for t in taus], where="post", label=optimizer)
    ax.set_xscale("log")
    ax.set_xlim(1.0, top)
    ticks = [t for t in (1, 1.25, 1.5, 2, 3, 4, 6, 8, 16, 32) if t <= top]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("tau: time to target within tau x the fastest optimizer's")
    ax.set_ylabel("fraction of workloads")
    ax.set_title(f"Performance profiles over {len(found['ratios'])} workload(s)")
    ax.legend(loc="lower right")
    save_figure(fig, path)

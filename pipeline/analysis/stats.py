"""Noise-aware comparison of sweep cells: the winner chosen on validation, the others tested against it on test.

A cell is every setting the sweep varied except the seed, replicated over seeds.

- The winner is the cell with the best mean final *validation* accuracy; its test
  accuracy is then reported, never used to choose it.
- Each cell's interval is the Student-t 95 % confidence interval of its mean test
  accuracy over seeds (none with fewer than two runs: there is no variance to use).
- Every other cell is tested against the winner twice: Welch's two-sided t-test over
  seeds (does the training setting differ, seed to seed?) and a paired t-test over the
  test images of the per-image difference in seed-averaged correctness (are the two
  cells' models told apart by this test set, beyond the luck of which images it holds?).
  Each family of p-values is Holm-corrected over the comparisons with the winner.
- Verdict: `worse` / `better` when both corrected tests reject at level alpha (Welch's
  alone when the runs kept no per-image record), `not shown to differ` otherwise, `not
  testable` when either cell has fewer than two runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

WORSE, BETTER, NOT_SHOWN, NOT_TESTABLE = "worse", "better", "not shown to differ", "not testable"


@dataclass
class Cell:
    cell: str
    optimizer: str
    batch_size: str
    n: int
    mean: float  # test accuracy, over seeds
    std: float
    ci95: list[float]
    val_mean: float  # final validation accuracy, over seeds: what chooses the winner

    @property
    def label(self) -> str:
        return self.cell

    def as_dict(self) -> dict:
        return asdict(self)


def batch_order(value: str) -> float:
    """Sort key for batch sizes: numbers ascending, `full` last."""
    return float(value) if str(value).isdigit() else math.inf


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The Student-t confidence interval of the mean of `values`; (nan, nan) with fewer than two values."""
    from scipy import stats

    if len(values) < 2:
        return math.nan, math.nan
    mean, sem = float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values)))
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * sem
    return mean - half, mean + half


def aggregate(table: pd.DataFrame, metric: str = "test_accuracy", select: str = "final_val_accuracy") -> list[Cell]:
    """One `Cell` per cell over its finished runs, the winner (best mean `select`) first.

    Only FINISHED runs with a `metric` count; cells are grouped by the `sweep.cell` tag;
    `final_val_accuracy` is each run's last-epoch `val_accuracy` (`summary.collect_runs`);
    ties go by the cell's name, never by `metric`. compare takes the first as the winner.
    """
    done = table[(table["status"] == "FINISHED") & table[metric].notna()]
    cells = []
    for name, group in done.groupby("cell", sort=False):
        values = group[metric].to_numpy(dtype=float)
        first = group.iloc[0]
        cells.append(
            Cell(
                cell=str(name),
                optimizer=str(first["optimizer"]),
                batch_size=str(first["batch_size"]),
                n=len(values),
                mean=float(values.mean()),
                std=float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                ci95=list(interval(values)),
                val_mean=float(group[select].mean()),
            )
        )
    return sorted(cells, key=lambda c: (-c.val_mean, c.cell))  # ties on validation by name, never by test


def welch_p(a: np.ndarray, b: np.ndarray) -> float | None:
    """Two-sided p-value of Welch's t-test; None when either sample has fewer than two values."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    if np.std(a, ddof=1) == 0 and np.std(b, ddof=1) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def paired_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float | None:
    """Two-sided p-value of the paired t-test over images of the seed-averaged correctness of two cells.

    `correct_*` are (seeds, images) booleans on the same test images. With one seed per
    cell the per-image differences are -1, 0 or 1 and the test is McNemar's in its
    large-sample form. None when there are no images to pair.
    """
    from scipy import stats

    a, b = np.asarray(correct_a, dtype=float).mean(axis=0), np.asarray(correct_b, dtype=float).mean(axis=0)
    if a.size == 0 or a.shape != b.shape:
        return None
    difference = a - b
    if not difference.any():
        return 1.0
    if np.all(difference == difference[0]):
        return 0.0
    return float(stats.ttest_1samp(difference, 0.0).pvalue)


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjustment of a family of p-values (None entries stay None and do not count)."""
    ranked = sorted((p, key) for key, p in pvalues.items() if p is not None)
    adjusted: dict[str, float | None] = {key: None for key, p in pvalues.items() if p is None}
    running = 0.0
    for i, (p, key) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - i) * p))
        adjusted[key] = running
    return adjusted


def compare_with_winner(
    table: pd.DataFrame,
    cells: list[Cell],
    alpha: float,
    correct: dict[str, np.ndarray] | None = None,
    metric: str = "test_accuracy",
) -> list[dict]:
    """Every other cell against the winner: both tests, Holm-corrected, and the verdict."""
    if not cells:
        return []
    done = table[(table["status"] == "FINISHED") & table[metric].notna()]
    values = {c.cell: done.loc[done["cell"] == c.cell, metric].to_numpy(dtype=float) for c in cells}
    runs = {c.cell: list(done.loc[done["cell"] == c.cell, "run_id"]) for c in cells}
    best, others = cells[0], cells[1:]

    def correctness(cell: Cell) -> np.ndarray | None:
        if correct is None or not all(r in correct for r in runs[cell.cell]):
            return None
        return np.stack([correct[r] for r in runs[cell.cell]])

    best_correct = correctness(best)
    raw_welch = {c.cell: welch_p(values[best.cell], values[c.cell]) for c in others}
    raw_paired = {}
    for cell in others:
        other = correctness(cell)
        raw_paired[cell.cell] = None if best_correct is None or other is None else paired_p(best_correct, other)
    welch, paired = holm(raw_welch), holm(raw_paired)
    out = []
    for cell in others:
        p_welch, p_paired = welch[cell.cell], paired[cell.cell]
        if p_welch is None:
            verdict = NOT_TESTABLE
        elif p_welch < alpha and (p_paired is None or p_paired < alpha):
            verdict = WORSE if cell.mean < best.mean else BETTER
        else:
            verdict = NOT_SHOWN
        out.append(
            {
                "cell": cell.cell,
                "verdict": verdict,
                "p_welch": raw_welch[cell.cell],
                "p_welch_holm": p_welch,
                "p_paired": raw_paired[cell.cell],
                "p_paired_holm": p_paired,
            }
        )
    return out

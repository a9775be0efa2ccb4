"""Noise-aware comparison of sweep cells: per-cell mean and 95 % interval, and which cells are tied.

A cell is one optimizer x batch size, replicated over seeds. Its interval is the
Student-t 95 % confidence interval of the mean test accuracy. A cell is *tied* with the
winner (the best mean) when Welch's two-sided t-test cannot tell their means apart at
level `alpha` (p >= alpha), or when either has fewer than two finished seeds (no
variance to test with).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd


@dataclass
class Cell:
    optimizer: str
    batch_size: str
    n: int
    mean: float
    std: float
    ci95: list[float]

    @property
    def label(self) -> str:
        return f"{self.optimizer}-bs{self.batch_size}"

    def as_dict(self) -> dict:
        return {**asdict(self), "cell": self.label}


def batch_order(value: str) -> float:
    """Sort key for batch sizes: numbers ascending, `full` last."""
    return float(value) if str(value).isdigit() else math.inf


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The t confidence interval of the mean of `values` (the mean itself when n < 2)."""
    from scipy import stats

    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))
    return mean - half, mean + half


def aggregate(table: pd.DataFrame, metric: str = "test_accuracy") -> list[Cell]:
    """One `Cell` per optimizer x batch size over the finished runs, best mean first."""
    done = table[(table["status"] == "FINISHED") & table[metric].notna()]
    cells = []
    for (optimizer, batch), group in done.groupby(["optimizer", "batch_size"], sort=False):
        values = group[metric].to_numpy(dtype=float)
        low, high = interval(values)
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        cells.append(Cell(str(optimizer), str(batch), len(values), float(values.mean()), std, [low, high]))
    return sorted(cells, key=lambda c: (-c.mean, c.optimizer, batch_order(c.batch_size)))


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of Welch's t-test (1.0 when either sample has fewer than two values)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return 1.0
    if np.std(a, ddof=1) == 0 and np.std(b, ddof=1) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def tied_with_winner(table: pd.DataFrame, cells: list[Cell], alpha: float, metric: str = "test_accuracy") -> list[dict]:
    """The cells (other than the winner) whose mean the test cannot tell from the winner's."""
    if not cells:
        return []
    done = table[(table["status"] == "FINISHED") & table[metric].notna()]

    def values(cell: Cell) -> np.ndarray:
        rows = done[(done["optimizer"] == cell.optimizer) & (done["batch_size"] == cell.batch_size)]
        return rows[metric].to_numpy(dtype=float)

    best = values(cells[0])
    tied = []
    for cell in cells[1:]:
        p = welch_p(best, values(cell))
        if p >= alpha:
            tied.append({"cell": cell.label, "optimizer": cell.optimizer, "batch_size": cell.batch_size, "p": p})
    return tied

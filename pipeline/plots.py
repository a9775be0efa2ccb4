"""How a figure is made and saved: headless pyplot, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend (stages run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110, tight: bool = True) -> None:
    """Write `fig` to `path` atomically (PNG without a timestamp, so identical data give identical bytes).

    `tight=False` keeps the figure's own margins: one drawing instead of two, for the
    figures every sweep run makes.
    """
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight" if tight else None, metadata={"Software": None})
    pyplot().close(fig)

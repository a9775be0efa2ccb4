"""The README's result tables, generated from `reports/` (never copied by hand).

The README marks each generated block with `<!-- generated: NAME -->` ...
`<!-- end: NAME -->`; this module renders every block from the files the pipeline and
the benchmark wrote, and replaces it.

    python -m pipeline.readme          # rewrite the generated blocks of README.md
    python -m pipeline.readme --check  # exit 1 if README.md is not what reports/ says
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pipeline.paths import PACKAGE_CHECKOUT

BLOCK = re.compile(r"(<!-- generated: (\w+) -->\n)(.*?)(<!-- end: \2 -->)", re.DOTALL)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def reference_result(root: Path) -> str:
    """The reference experiment's test metrics (reports/metrics.json)."""
    metrics = _json(root / "reports/metrics.json")
    return (
        "| test accuracy | test loss | test errors |\n|---|---|---|\n"
        f"| {metrics['test_accuracy']:.4f} | {metrics['test_loss']:.4f} | "
        f"{metrics['test_errors']} of {metrics['test_samples']:,} |\n"
    )


def sweep_answer(root: Path) -> str:
    """The sweep's noise-aware answer and its cells table (reports/sweep/summary.json)."""
    summary = _json(root / "reports/sweep/summary.json")
    cells = pd.DataFrame(summary["cells"])
    tied = {t["cell"] for t in summary["tied_with"]}
    winner = summary["winner"]["cell"] if summary["winner"] else None
    cells["verdict"] = [
        "best mean" if c == winner else ("tied with the best" if c in tied else "worse") for c in cells["cell"]
    ]
    cells["95 % interval"] = [f"{lo:.4f}-{hi:.4f}" for lo, hi in cells["ci95"]]
    table = cells[["optimizer", "batch_size", "n", "mean", "std", "95 % interval", "verdict"]]
    return (
        f"{summary['answer']}\n\n"
        f"{summary['finished']} of {summary['runs']} runs finished ({summary['test']}).\n\n"
        + table.to_markdown(index=False, floatfmt=".4f")
        + "\n"
    )


def sweep_pivot(root: Path) -> str:
    """Mean test accuracy by optimizer x batch size (reports/sweep/pivot.csv)."""
    pivot = pd.read_csv(root / "reports/sweep/pivot.csv", index_col=0, dtype={"optimizer": str})
    return pivot.to_markdown(floatfmt=".4f") + "\n"


BLOCKS: dict[str, Callable[[Path], str]] = {
    "reference_result": reference_result,
    "sweep_answer": sweep_answer,
    "sweep_pivot": sweep_pivot,
}


def render(text: str, root: Path = PACKAGE_CHECKOUT) -> str:
    """`text` with every generated block rendered anew from `root`'s reports."""

    def replace(match: re.Match) -> str:
        name = match.group(2)
        if name not in BLOCKS:
            raise KeyError(f"README block {name!r} has no generator in pipeline/readme.py")
        return f"{match.group(1)}{BLOCKS[name](root)}{match.group(4)}"

    return BLOCK.sub(replace, text)


def main() -> None:
    """`python -m pipeline.readme [--check]`."""
    readme = PACKAGE_CHECKOUT / "README.md"
    text = readme.read_text()
    fresh = render(text)
    if "--check" in sys.argv[1:]:
        if fresh != text:
            print("README.md's generated tables differ from reports/: run python -m pipeline.readme", file=sys.stderr)
            sys.exit(1)
        return
    readme.write_text(fresh)
    print(f"README.md: {len(BLOCK.findall(text))} generated block(s) rewritten from reports/")


if __name__ == "__main__":
    main()

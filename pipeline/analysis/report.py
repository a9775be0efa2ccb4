"""A sweep's answer as one page: `reports/sweep/report.html`, self-contained (images inline, no network).

The verdict, the cells table with intervals, verdicts and time to the target, the heatmap,
the mean curves with their bands, the parameter importance when a search measured it, and
the machine and settings the runs had. compare writes it with the other reports and logs
it to the sweep's parent run, whose artifact view in the MLflow UI renders it.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

COLUMNS = {
    "cell": "cell",
    "n": "seeds",
    "val_mean": "validation mean",
    "mean": "test mean",
    "ci95_low": "95 % low",
    "ci95_high": "95 % high",
    "verdict": "verdict",
    "p_welch_holm": "p Welch (Holm)",
    "p_paired_holm": "p paired (Holm)",
    "target_share": "share reaching target",
    "target_median_seconds": "median s to target",
    "noise_scale_median": "noise scale B_simple (last)",
    "noise_scale_at_target_median": "B_simple at target",
}
STYLE = (
    "body{font-family:sans-serif;max-width:70em;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}"
    "th{background:#f4f4f4}img{max-width:100%}.answer{font-size:1.1em;background:#f6f8fa;padding:1em}"
)


def inline_png(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def render(result: dict, cells: pd.DataFrame, heatmap: Path, curves: Path, settings: dict[str, str]) -> str:
    """The page's HTML from compare's summary, its cells table and its two figures."""
    table = cells[list(COLUMNS)].rename(columns=COLUMNS).to_html(index=False, float_format="{:.4f}".format, na_rep="-")
    importance = result.get("importance") or {}
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.3f}</td></tr>" for k, v in importance.items())
    machine = {**result["machine"], **settings}
    about = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in machine.items()
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Sweep {html.escape(result['sweep'])}</title>"
        f"<style>{STYLE}</style></head><body><h1>Sweep {html.escape(result['sweep'])}</h1>"
        f"<p class='answer' id='answer'>{html.escape(result['answer'])}</p>"
        f"<p>{result['finished']} of {result['runs']} runs finished. {html.escape(result['test'])}.</p>"
        f"<h2>Cells</h2>{table}<h2>Mean test accuracy per cell</h2>{inline_png(heatmap)}"
        f"<h2>Validation curves (mean over seeds, band: range)</h2>{inline_png(curves)}"
        + (f"<h2>Parameter importance (fANOVA)</h2><table>{rows}</table>" if rows else "")
        + f"<h2>Machine and settings</h2><table>{about}</table></body></html>\n"
    )

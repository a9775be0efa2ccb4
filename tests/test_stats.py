"""The statistics behind the README's answer, against scipy and statsmodels on fixed inputs, and the batch-size
scaling reading on known curves."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from pipeline.analysis.stats import (
    BETTER,
    NOT_SHOWN,
    NOT_TESTABLE,
    WORSE,
    aggregate,
    compare_with_winner,
    holm,
    interval,
    paired_p,
    welch_p,
)

A = np.array([0.9799, 0.9803, 0.9797])
B = np.array([0.9790, 0.9795, 0.9791])


def test_interval_is_students_t():
    low, high = interval(A)
    expected = stats.t.interval(0.95, len(A) - 1, loc=A.mean(), scale=stats.sem(A))
    assert (low, high) == pytest.approx(expected, rel=1e-12)
    assert all(math.isnan(v) for v in interval(A[:1])), "one run has no interval, not a zero-width one"


def test_welch_is_scipys():
    assert welch_p(A, B) == pytest.approx(stats.ttest_ind(A, B, equal_var=False).pvalue, rel=1e-12)
    assert welch_p(A[:1], B) is None, "fewer than two runs: not testable"


def test_paired_test_over_images():
    rng = np.random.default_rng(0)
    a = rng.random((3, 10_000)) < 0.98  # 3 seeds x 10,000 images
    b = rng.random((3, 10_000)) < 0.97
    expected = stats.ttest_rel(a.mean(axis=0), b.mean(axis=0)).pvalue
    assert paired_p(a, b) == pytest.approx(expected, rel=1e-12)
    # One seed each: the large-sample McNemar test on the discordant images.
    one_a, one_b = a[:1], b[:1]
    table = [[np.sum(one_a & one_b), np.sum(one_a & ~one_b)], [np.sum(~one_a & one_b), np.sum(~one_a & ~one_b)]]
    assert paired_p(one_a, one_b) == pytest.approx(mcnemar(table, exact=False, correction=False).pvalue, rel=0.02)
    assert paired_p(one_a, one_a) == 1.0


def test_holm_is_statsmodels():
    raw = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5, "e": None}
    adjusted = holm(raw)
    expected = multipletests([0.01, 0.04, 0.03, 0.5], method="holm")[1]
    assert [adjusted[k] for k in "abcd"] == pytest.approx(list(expected), rel=1e-12)
    assert adjusted["e"] is None


def table_of(cells: dict[str, tuple[list[float], list[float]]]) -> pd.DataFrame:
    rows = []
    for cell, (tests, vals) in cells.items():
        optimizer, batch = cell.split("-bs")
        for seed, (test, val) in enumerate(zip(tests, vals, strict=True)):
            rows.append(
                {
                    "run_id": f"{cell}-s{seed}",
                    "cell": cell,
                    "optimizer": optimizer,
                    "batch_size": batch,
                    "test_accuracy": test,
                    "final_val_accuracy": val,
                    "status": "FINISHED",
                }  # fmt: skip
            )
    return pd.DataFrame(rows)


def test_winner_is_chosen_on_validation_and_each_cell_gets_a_verdict():
    table = table_of(
        {
            "adam-bs32": ([0.980, 0.981, 0.979], [0.982, 0.983, 0.982]),  # best on validation
            "rmsprop-bs32": ([0.980, 0.979, 0.981], [0.981, 0.980, 0.981]),  # indistinguishable
            "sgd-bs512": ([0.870, 0.872, 0.874], [0.871, 0.873, 0.875]),  # clearly worse
            "momentum-bs32": ([0.990, 0.991, 0.992], [0.979, 0.978, 0.979]),  # better on test, worse on validation
            "sgd-bs32": ([0.940], [0.941]),  # one run
        }
    )
    cells = aggregate(table)
    assert cells[0].cell == "adam-bs32" and cells[0].val_mean == pytest.approx(0.98233, abs=1e-5)
    assert cells[0].mean == pytest.approx(0.980), "reported on test"
    verdicts = {c["cell"]: c["verdict"] for c in compare_with_winner(table, cells, 0.05)}
    assert verdicts == {
        "rmsprop-bs32": NOT_SHOWN,
        "sgd-bs512": WORSE,
        "momentum-bs32": BETTER,
        "sgd-bs32": NOT_TESTABLE,
    }


def test_each_family_of_p_values_is_holm_corrected_before_the_verdict():
    """Three cells each below alpha on its own are not called worse once Holm corrects the family."""
    best = [0.980, 0.982, 0.981]
    noise = [0.001, -0.001, 0.0005]
    family = {
        f"sgd-bs{b}": [x - d + e for x, e in zip(best, noise, strict=True)]
        for b, d in ((32, 0.003), (64, 0.0031), (128, 0.0032))
    }
    table = table_of({"adam-bs32": (best, [0.99] * 3)} | {cell: (tests, [0.9] * 3) for cell, tests in family.items()})
    comparisons = compare_with_winner(table, aggregate(table), 0.05)
    raw = {c["cell"]: c["p_welch"] for c in comparisons}
    assert all(p < 0.05 for p in raw.values()), "each would be called worse on its own"
    assert {c["cell"]: c["p_welch_holm"] for c in comparisons} == pytest.approx(holm(raw))
    assert min(c["p_welch_holm"] for c in comparisons) == pytest.approx(3 * min(raw.values()))
    assert {c["verdict"] for c in comparisons} == {NOT_SHOWN}


def test_a_seed_that_never_reached_the_target_counts_as_infinitely_late():
    from pipeline.analysis.summary import TARGET_KEYS, time_to_target

    rows = []
    for cell, reached in {"a-bs32": [10, 20, None], "b-bs32": [10, None], "c-bs32": [30, None, None]}.items():
        for seed, steps in enumerate(reached):
            row = {"run_name": f"{cell}-s{seed}", "cell": cell, "status": "FINISHED", "target": 0.97}
            row |= {f"target_{k}": np.nan if steps is None else float(steps) for k in TARGET_KEYS}
            rows.append(row | {"target_reached": steps is not None})
    times = time_to_target(pd.DataFrame(rows), 0.97)
    assert times["a-bs32"]["median_steps"] == 20, "2 of 3 reached: the median is the later of the two"
    assert times["b-bs32"]["median_steps"] is None, "1 of 2 reached: no median"
    assert times["c-bs32"]["median_steps"] is None and times["c-bs32"]["reached"] == 1
    assert times["c-bs32"]["range_train_seconds"] == [30.0, 30.0]


def test_a_difference_the_test_images_cannot_tell_is_not_called_worse():
    """Seeds agree closely (Welch rejects), but the models differ on a handful of the same images."""
    table = table_of(
        {"adam-bs32": ([0.9800] * 2 + [0.9801], [0.99] * 3), "sgd-bs32": ([0.9796] * 2 + [0.9797], [0.98] * 3)}
    )
    cells = aggregate(table)
    rng = np.random.default_rng(1)
    base = rng.random(10_000) < 0.98
    correct = {}
    for run in table.itertuples():
        flipped = base.copy()
        flipped[rng.choice(10_000, 4, replace=False)] ^= True  # a few images differ, at random
        correct[run.run_id] = flipped
    (comparison,) = compare_with_winner(table, cells, 0.05, correct)
    assert comparison["p_welch_holm"] < 0.05 and comparison["p_paired_holm"] >= 0.05
    assert comparison["verdict"] == NOT_SHOWN


def scaling_cells(steps: dict[str, float | None], noise: float = 900.0) -> pd.DataFrame:
    """Cells with these median steps; the noise scale `noise` where steps are given, 10x it elsewhere."""
    return pd.DataFrame(
        [
            {
                "cell": cell,
                "batch_size": cell.split("-bs")[1],
                "target_median_steps": s,
                "noise_scale_at_target_median": noise if s is not None and cell[-1].isdigit() else 10 * noise,
            }
            for cell, s in steps.items()
        ]
    )


def test_steps_against_batch_size_recover_the_noise_model_and_the_critical_batch_size():
    from pipeline.analysis.scaling import scaling, sentence

    def model(b: int) -> float:  # McCandlish et al.: S_min = 100 steps, B_noise = 200
        return 100 * (1 + 200 / b)

    steps = {f"adam-bs{b}": model(b) for b in (512, 32, 128)}  # any order
    found = scaling(scaling_cells({**steps, "adam-bsfull": 50.0, "adam-bs2048": None}))["adam"]
    assert [r["batch_size"] for r in found["rows"]] == [32, 128, 512], "numeric, sorted; full and unreached left out"
    assert found["not_reached"] == ["adam-bs2048"]
    assert found["fit"] == pytest.approx({"s_min": 100.0, "b_noise": 200.0})
    ratios = [model(b) / (model(32) * 32 / b) for b in (32, 128, 512)]
    assert [r["ratio"] for r in found["rows"]] == pytest.approx(ratios)
    assert ratios[1] < 2 < ratios[2]
    t = math.log(2 / ratios[1]) / math.log(ratios[2] / ratios[1])  # where the log-log line through them is 2
    assert found["critical_batch_size"] == pytest.approx(128 * 4**t)
    assert found["noise_scale"] == 900.0, "the median over the cells in the rows only"
    text = sentence({"adam": found})
    assert "critical batch size about" in text and "fitted B_noise 200" in text


def test_perfect_scaling_has_no_critical_batch_size_and_one_batch_size_no_reading():
    from pipeline.analysis.scaling import scaling, sentence

    found = scaling(scaling_cells({"sgd-bs32": 1600.0, "sgd-bs128": 400.0, "sgd-bs512": 100.0, "adam-bs32": 900.0}))
    assert [r["ratio"] for r in found["sgd"]["rows"]] == pytest.approx([1, 1, 1])
    assert found["sgd"]["critical_batch_size"] is None and found["sgd"]["fit"] is None, "no bend: B_noise unbounded"
    assert found["adam"]["critical_batch_size"] is None and len(found["adam"]["rows"]) == 1
    text = sentence(found)
    assert "no bend to 2 x within the sweep" in text and "adam: reached the target at batch size 32 only" in text


def test_regimes_are_read_from_the_fitted_curve_and_the_local_slopes_are_kept():
    from pipeline.analysis.scaling import DIMINISHING, MAXIMAL, PERFECT, regime_text, scaling

    def model(b: int) -> float:  # S_min = 100, B_noise = 300: slope -0.75 at 100, -0.25 at 900
        return 100 * (1 + 300 / b)

    sizes = [16, 64, 256, 1024, 4096]
    found = scaling(scaling_cells({f"adam-bs{b}": model(b) for b in sizes}))["adam"]
    assert found["fit"] == pytest.approx({"s_min": 100.0, "b_noise": 300.0})
    assert found["regimes"] == [
        {"regime": PERFECT, "from": 16, "to": pytest.approx(100.0)},
        {"regime": DIMINISHING, "from": pytest.approx(100.0), "to": pytest.approx(900.0)},
        {"regime": MAXIMAL, "from": pytest.approx(900.0), "to": 4096},
    ]
    assert (
        regime_text(found) == "perfect scaling 16-100, diminishing returns 100-900, maximal data parallelism 900-4096"
    )
    measured = [math.log(model(b1) / model(b0)) / math.log(b1 / b0) for b0, b1 in itertools.pairwise(sizes)]
    assert [s["slope"] for s in found["slopes"]] == pytest.approx(measured)
    noisy = scaling(scaling_cells({"sgd-bs16": 1000.0, "sgd-bs32": 700.0, "sgd-bs64": 480.0, "sgd-bs128": 500.0}))
    assert noisy["sgd"]["fit"] is not None, "noisy steps still fit in log space"
    flat = scaling(scaling_cells({"sgd-bs16": 100.0, "sgd-bs64": 100.0}))["sgd"]
    assert flat["fit"] is None and flat["regimes"] == [], "steps that do not fall: no bend within reach"


def test_performance_profiles_are_the_share_of_workloads_within_tau_of_the_best():
    from pipeline.analysis.profiles import profiles

    times = {
        "mnist": {"sgd": 4.0, "adam": 2.0, "momentum": 3.0},
        "fashion": {"sgd": None, "adam": 6.0, "momentum": 5.0},
        "nobody": {"sgd": None, "adam": None, "momentum": None},
    }
    found = profiles(times, [1.0, 1.25, 2.0, 4.0])
    assert found["unsolved"] == ["nobody"], "a workload no optimizer solved says nothing about them"
    assert found["ratios"]["mnist"] == {"sgd": 2.0, "adam": 1.0, "momentum": 1.5}
    assert found["ratios"]["fashion"]["adam"] == pytest.approx(1.2) and math.isinf(found["ratios"]["fashion"]["sgd"])
    assert found["profiles"]["adam"] == {"1": 0.5, "1.25": 1.0, "2": 1.0, "4": 1.0}
    assert found["profiles"]["momentum"] == {"1": 0.5, "1.25": 0.5, "2": 1.0, "4": 1.0}
    assert found["profiles"]["sgd"] == {"1": 0.0, "1.25": 0.0, "2": 0.5, "4": 0.5}, "never reached: never within tau"


def test_the_report_page_shows_importance_only_when_measured_and_the_machine_and_settings(tmp_path):
    import base64
    import html

    from pipeline.analysis.report import COLUMNS, render

    heatmap, curves = tmp_path / "heatmap.png", tmp_path / "curves.png"
    heatmap.write_bytes(b"\x89PNG heatmap bytes")
    curves.write_bytes(b"\x89PNG curves bytes")
    cells = pd.DataFrame([{column: 0.5 for column in COLUMNS} | {"cell": "adam-bs32", "verdict": "winner", "n": 3}])
    result = {
        "sweep": "s<1>",
        "answer": "Chosen on validation: adam-bs32 & more",
        "finished": 3,
        "runs": 3,
        "test": "Welch",
        "machine": {"cpu.model": "AMD EPYC <x>", "cpu.vector_extensions": "avx2 avx512f", "cpu.count": "2"},
    }
    settings = {"sweep.overrides": "optimizer=sgd,adam", "sweep.launcher": "joblib"}

    page = render(
        result | {"importance": {"optimizer": 0.8125, "train.batch_size": 0.1875}}, cells, heatmap, curves, settings
    )
    assert "<h2>Parameter importance (fANOVA)</h2>" in page
    assert (
        "<tr><th>optimizer</th><td>0.812</td></tr>" in page
        and "<tr><th>train.batch_size</th><td>0.188</td></tr>" in page
    )
    for key, value in {**result["machine"], **settings}.items():
        assert f"<tr><th>{key}</th><td>{html.escape(value)}</td></tr>" in page, key
    for figure in (heatmap, curves):
        assert f"data:image/png;base64,{base64.b64encode(figure.read_bytes()).decode()}" in page, (
            "the figure itself, inline"
        )
    assert "Chosen on validation: adam-bs32 &amp; more" in page and "<title>Sweep s&lt;1&gt;</title>" in page

    for unmeasured in ({}, {"importance": None}, {"importance": {}}):
        assert "Parameter importance" not in render(result | unmeasured, cells, heatmap, curves, settings)


def test_the_figures_draw_each_cells_mean_and_its_spread(monkeypatch, tmp_path):
    """heatmap.png: the mean test accuracy per optimizer x batch size with its interval, "no run" where
    none finished; curves.png: each cell's mean validation curve over seeds, its band the range."""
    from matplotlib.colors import to_rgb

    from pipeline.analysis import plots
    from pipeline.analysis.summary import cell_curves

    drawn = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.update({path.name: fig}))
    cells = pd.DataFrame(
        [
            {
                "cell": "sgd-bs32",
                "optimizer": "sgd",
                "batch_size": "32",
                "mean": 0.91,
                "ci95_low": 0.9,
                "ci95_high": 0.92,
            },
            {
                "cell": "sgd-bs64",
                "optimizer": "sgd",
                "batch_size": "64",
                "mean": 0.88,
                "ci95_low": 0.8,
                "ci95_high": 0.96,
            },
            {
                "cell": "adam-bs32",
                "optimizer": "adam",
                "batch_size": "32",
                "mean": 0.97,
                "ci95_low": None,
                "ci95_high": None,
            },
        ]
    )
    plots.plot_heatmap(cells, tmp_path / "heatmap.png")
    ax = drawn["heatmap.png"].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["adam", "sgd"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["32", "64"]
    shown = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
    assert np.allclose(shown, [[0.97, np.nan], [0.91, 0.88]], equal_nan=True)
    labels = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert labels == {
        (0, 0): "0.9700",
        (0, 1): "no run",
        (1, 0): "0.9100\n[0.9000, 0.9200]",
        (1, 1): "0.8800\n[0.8000, 0.9600]",
    }

    runs = [("a", "sgd-bs32", "sgd", "32", [0.5, 0.7]), ("b", "sgd-bs32", "sgd", "32", [0.7, 0.9])]
    runs += [("c", "adam-bs32", "adam", "32", [0.8, 0.95]), ("d", "adam-bs32", "adam", "32", [0.1, 0.2])]
    curves = pd.DataFrame(
        [
            {
                "run_id": r,
                "cell": c,
                "optimizer": o,
                "batch_size": b,
                "epoch": e + 1,
                "val_accuracy": a,
                "val_loss": 1 - a,
            }
            for r, c, o, b, accuracies in runs
            for e, a in enumerate(accuracies)
        ]
    )
    table = pd.DataFrame({"run_id": list("abcd"), "status": ["FINISHED", "FINISHED", "FINISHED", "FAILED"]})
    plots.plot_curves(cell_curves(curves, table), tmp_path / "curves.png")
    accuracy = drawn["curves.png"].axes[1]
    lines = {line.get_label(): line for line in accuracy.lines}
    assert set(lines) == {"sgd-bs32", "adam-bs32"}
    assert np.allclose(lines["sgd-bs32"].get_ydata(), [0.6, 0.8]), "the mean over seeds"
    assert np.allclose(lines["adam-bs32"].get_ydata(), [0.8, 0.95]), "a failed run is left out"
    assert lines["sgd-bs32"].get_color() != lines["adam-bs32"].get_color(), "colour = optimizer"
    assert lines["sgd-bs32"].get_linestyle() == lines["adam-bs32"].get_linestyle(), "line = batch size"
    sgd_color = to_rgb(lines["sgd-bs32"].get_color())
    band = next(c for c in accuracy.collections if np.allclose(c.get_facecolor()[0][:3], sgd_color))
    ys = band.get_paths()[0].vertices[:, 1]
    assert np.isclose(ys.min(), 0.5) and np.isclose(ys.max(), 0.9), "the band spans the range over seeds"

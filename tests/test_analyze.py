"""analyze: curves equal what convert reports, thresholds are exact, and the PNG/CSV/JSON are written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.image
import pytest
from click.testing import CliRunner

import wavecompress as wc
from wavecompress.analyze import PNG_NAME, analyze, layer_group, write_analysis
from wavecompress.cli import main
from conftest import make_peft_lora


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_peft_lora(tmp_path_factory.mktemp("an") / "lora", r=8, target_modules=["query", "value"])[0]


def test_layer_groups() -> None:
    assert layer_group("bert.encoder.layer.3.attention.output.dense") == "attention.output.dense"
    assert layer_group("model.layers.11.mlp.down_proj") == "mlp.down_proj"
    assert layer_group("lm_head") == "lm_head"


def test_curves_match_convert_and_thresholds_are_exact(lora: Path) -> None:
    result = analyze(lora, ["waveft", "lora", "wara"], reorder=False)
    assert set(result.groups) == {"all", "attention.self.query", "attention.self.value"}
    budgets = [256, 768, result.budgets[10], result.budgets[-1]]  # two table budgets, an odd grid point, the top
    assert set(budgets) <= set(result.budgets) and len(set(budgets)) == 4
    for method in ("waveft", "lora", "wara"):
        for budget in budgets:
            report = wc.compress(lora, budget=budget, method=method, reorder=False, baselines=()).report
            assert result.error_at(method, "all", budget) == pytest.approx(report.relative_error, rel=1e-5, abs=1e-7)
    threshold = result.thresholds["all"]["waveft"]["10%"]
    at = wc.compress(lora, budget=threshold, method="waveft", reorder=False, baselines=()).report.relative_error
    below = wc.compress(lora, budget=threshold - 1, method="waveft", reorder=False, baselines=()).report.relative_error
    assert at <= 0.10 < below
    # a LoRA of rank 8 on 32×32 layers is exact at rank 8: 8·64 = 512 values per layer
    assert result.thresholds["all"]["lora"]["1%"] == 512


def test_analyze_writes_png_csv_json(tmp_path: Path, lora: Path) -> None:
    out = tmp_path / "analysis"
    run = CliRunner().invoke(main, ["analyze", str(lora), "--out", str(out)])
    assert run.exit_code == 0, run.output
    assert "| waveft |" in run.output and "10% at" in run.output
    image = matplotlib.image.imread(out / PNG_NAME)
    assert image.shape[0] >= 400 and image.shape[1] >= 1000 and image.shape[2] in (3, 4)  # 3 panels, 110 dpi
    assert image[..., :3].std() > 0.05  # not a blank canvas
    data = json.loads((out / "rate_distortion.json").read_text())
    rows = list(csv.DictReader((out / "rate_distortion.csv").open()))
    assert len(rows) == len(data["groups"]) * len(data["methods"]) * len(data["budgets_per_layer"])
    assert set(data["methods"]) == {"waveft", "wara", "lora", "sparse", "waveft-plain", "wara-plain"}
    assert all(0.0 <= float(r["relative_error"]) <= 1.0 + 1e-9 for r in rows)
    again = CliRunner().invoke(main, ["analyze", str(lora), "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_write_analysis_is_atomic_and_refuses_overwrite(tmp_path: Path, lora: Path) -> None:
    result = analyze(lora, ["lora"], reorder=False)
    write_analysis(result, tmp_path / "a")
    with pytest.raises(wc.InputError):
        write_analysis(result, tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["rate_distortion.csv", "rate_distortion.json", "rate_distortion.png"]


def test_order_by_selects_the_ordering_of_the_reordered_curves(tmp_path: Path, lora: Path) -> None:
    run = CliRunner().invoke(main, ["analyze", str(lora), "--out", str(tmp_path / "svd"), "--methods", "waveft", "--order-by", "svd"])
    assert run.exit_code == 0, run.output
    data = json.loads((tmp_path / "svd" / "rate_distortion.json").read_text())
    assert "reordered (svd)" in " ".join(data["notes"])
    expected = analyze(lora, ["waveft"], reorder="svd")
    assert data["relative_error"]["waveft"]["all"] == pytest.approx(expected.errors["waveft"]["all"], rel=1e-9)
    assert data["relative_error"]["waveft"]["all"] != pytest.approx(analyze(lora, ["waveft"], reorder="greedy").errors["waveft"]["all"], rel=1e-3)


def test_picture_keeps_labels_visible_curves_apart_and_zero_errors_marked(lora: Path) -> None:
    import matplotlib.pyplot as plt

    from wavecompress.analyze import error_floor, figure

    result = analyze(lora, ["waveft", "lora", "sparse"], reorder=True)  # + waveft-plain
    assert min(result.errors["lora"]["all"]) == 0  # rank-8 LoRA: large budgets are exact
    fig = figure(result)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        for text in ax.texts:  # the 10%/5%/1% labels
            assert not legend.overlaps(text.get_window_extent(renderer)), text.get_text()
            assert ax.get_window_extent(renderer).contains(*text.get_window_extent(renderer).get_points()[0])
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    plain, sparse = lines["waveft-plain"], lines["sparse"]
    assert (plain.get_linestyle(), plain.get_marker(), plain.get_color()) != (sparse.get_linestyle(), sparse.get_marker(), sparse.get_color())
    assert plain.get_zorder() > sparse.get_zorder() and plain.get_linewidth() < sparse.get_linewidth()
    floor = error_floor(result)
    positive = [v for m in result.methods for g in result.groups for v in result.errors[m][g] if v > 0]
    assert floor < min(positive)  # nothing positive is clipped to the floor
    zero_marks = [line for line in fig.axes[0].lines if line.get_marker() == "v" and line.get_color() == lines["lora"].get_color()]
    assert len(zero_marks) == 1 and len(zero_marks[0].get_xdata()) == sum(v == 0 for v in result.errors["lora"]["all"])
    assert all(y > 0 for y in zero_marks[0].get_ydata())  # on the axis, not lost at log(0)
    assert "error 0 (exact)" in [t.get_text() for t in fig.legends[0].get_texts()]
    plt.close(fig)

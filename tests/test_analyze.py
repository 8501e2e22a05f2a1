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


def test_reordered_curves_are_what_convert_reports_at_each_budget(lora: Path) -> None:
    """With the default ordering (auto: greedy and snake, the lower error per layer at the budget
    converted) each point is the lower of the two orderings' curves per layer, as convert picks."""
    result = analyze(lora, ["waveft", "wara"], plain_variants=False)
    for method in ("waveft", "wara"):
        for budget in (16, 256, result.budgets[10], result.budgets[-1]):
            report = wc.compress(lora, budget=budget, method=method, baselines=()).report
            assert result.error_at(method, "all", budget) == pytest.approx(report.relative_error, rel=1e-5, abs=1e-7)
    # the two orderings win at different budgets here, so neither single curve would match
    wins = {o: [analyze(lora, ["waveft"], reorder=o, plain_variants=False).error_at("waveft", "all", b) for b in (16, 256)]
            for o in ("greedy", "snake")}
    assert (wins["greedy"][0] < wins["snake"][0]) != (wins["greedy"][1] < wins["snake"][1])


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


def _report(lora: Path, budget: int, method: str, dtype: str):
    """convert's report totals of ``method`` at ``budget`` (its -plain column beside it)."""
    return wc.compress(lora, budget=budget, method=method, dtype=dtype, baselines=()).report.overall()


def test_bytes_axis_is_what_the_report_counts(lora: Path) -> None:
    from wavecompress.methods.budget import Budget

    result = analyze(lora, ["waveft", "wara", "lora"], x="bytes", dtype="bfloat16", mark=Budget.of(300))
    assert result.x == "bytes" and result.dtype == "bfloat16" and 300 in result.budgets
    checked = [300, result.budgets[5], result.budgets[-1]]  # the marked budget, a small grid point, the top
    for budget in checked:
        i = result.budgets.index(budget)
        for method in ("waveft", "wara", "lora"):
            totals = _report(lora, budget, method, "bfloat16")[method]
            assert result.bytes[method]["all"][i] == totals.bytes, (method, budget)
            assert result.errors[method]["all"][i] == pytest.approx(totals.relative_error, rel=1e-6, abs=1e-9)
        # the plain-order curve is the report's waveft-plain column (unpermuted, so no permutation bytes)
        plain = wc.compress(lora, budget=budget, method="waveft", dtype="bfloat16", baselines=("lora",)).report.overall()
        assert result.bytes["waveft-plain"]["all"][i] == plain["waveft-plain"].bytes < plain["waveft"].bytes
    sizes = result.sizes_at(300)
    assert sizes["lora"] == 2048 == 4 * 2 * 256  # rank 4 of 32×32 fits 300 values: 256 values, bf16, 4 layers
    # a group's bytes are its layers' bytes: the query and value panels add up to all
    assert [a + b for a, b in zip(result.bytes["wara"]["attention.self.query"], result.bytes["wara"]["attention.self.value"])] \
        == result.bytes["wara"]["all"]
    ten = result.thresholds["all"]["waveft"]["10%"]
    assert result.threshold_bytes["all"]["waveft"]["10%"] == _report(lora, ten, "waveft", "bfloat16")["waveft"].bytes
    # float32 values cost 2 bytes more each than bfloat16 (indices and permutations unchanged)
    wide = analyze(lora, ["waveft"], plain_variants=False, x="bytes", dtype="float32", mark=Budget.of(300))
    i = wide.budgets.index(300)
    assert wide.bytes["waveft"]["all"][i] - result.bytes["waveft"]["all"][result.budgets.index(300)] == 2 * 4 * 300


def test_budget_and_size_markers_sit_at_their_sizes(tmp_path: Path, lora: Path) -> None:
    import matplotlib.pyplot as plt

    from wavecompress.analyze import MARK_GID, figure

    out = tmp_path / "bytes"
    run = CliRunner().invoke(main, ["analyze", str(lora), "--out", str(out), "--x", "bytes", "--budget", "300",
                                    "--methods", "waveft,lora", "--dtype", "bfloat16"])
    assert run.exit_code == 0, run.output
    waveft, lora_bytes = _report(lora, 300, "waveft", "bfloat16")["waveft"].bytes, _report(lora, 300, "lora", "bfloat16")["lora"].bytes
    assert f"--budget 300: waveft {waveft} B, lora {lora_bytes} B," in run.output
    data = json.loads((out / "rate_distortion.json").read_text())
    assert data["x"] == "bytes" and data["mark"] == {"per_layer": 300, "max_bytes": None, "label": "--budget 300"}
    i = data["budgets_per_layer"].index(300)
    assert data["stored_bytes"]["waveft"]["all"][i] == waveft
    rows = list(csv.DictReader((out / "rate_distortion.csv").open()))
    assert {int(r["stored_bytes"]) for r in rows if r["budget_per_layer"] == "300" and r["method"] == "lora"} == {2048, 1024}

    from wavecompress.methods.budget import Budget

    result = analyze(lora, ["waveft", "lora"], x="bytes", dtype="bfloat16", mark=Budget.of(300))
    fig = figure(result)
    marks = sorted(line.get_xdata()[0] for line in fig.axes[0].lines if line.get_gid() == MARK_GID)
    assert marks == sorted(result.sizes_at(300).values())  # one per method, at its own size in the "all" panel
    query = sorted(line.get_xdata()[0] for line in fig.axes[1].lines if line.get_gid() == MARK_GID)
    assert query == sorted(result.sizes_at(300, "attention.self.query").values())
    assert "--budget 300" in [t.get_text().strip() for t in fig.axes[0].texts]
    plt.close(fig)

    sized = analyze(lora, ["waveft", "lora"], x="bytes", mark=Budget.of(max_size="3kB"))
    fig = figure(sized)
    assert [line.get_xdata()[0] for line in fig.axes[0].lines if line.get_gid() == MARK_GID] == [3000]
    assert not [line for ax in fig.axes[1:] for line in ax.lines if line.get_gid() == MARK_GID]  # whole-adapter size
    plt.close(fig)
    table = sized.format_table().splitlines()
    column = [c.strip() for c in table[0].split("|")].index("≤ 3.00 kB")  # the --max-size is a table column
    cell = table[2].split("|")[column].strip()
    assert table[2].startswith("| waveft |")
    error, used = sized.error_within("waveft", "all", 3000)
    assert cell == f"{error:.4f}" and used <= 3000
    larger = [b for b in sized.bytes["waveft"]["all"] if b > used]
    assert larger and min(larger) > 3000  # the next plotted point no longer fits

    values = figure(analyze(lora, ["lora"], reorder=False, mark=Budget.of(300)))
    assert [line.get_xdata()[0] for line in values.axes[0].lines if line.get_gid() == MARK_GID] == [300]
    plt.close(values)


@pytest.mark.parametrize("args, message", [
    (["--max-size", "3kB"], "--max-size marks a file size: use it with --x bytes"),
    (["--dtype", "bfloat16"], "--dtype sets the precision the sizes are measured in"),
    (["--x", "bytes", "--budget", "300", "--max-size", "3kB"], "give exactly one budget"),
])
def test_marker_and_dtype_misuse_is_one_line(tmp_path: Path, lora: Path, args: list[str], message: str) -> None:
    run = CliRunner().invoke(main, ["analyze", str(lora), "--out", str(tmp_path / "x"), *args])
    assert run.exit_code == 2 and message in run.output and "Traceback" not in run.output, run.output
    assert not (tmp_path / "x").exists()

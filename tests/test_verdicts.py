"""Honest verdicts: equal errors (at the shown rounding) are ties, and an output larger than its input says so."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from wavecompress.cli import main
from wavecompress.report import LayerReport, MethodSummary, Report, size_note, weight_bytes

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "minilm-bbc-lora"


def _report(own: float, lora: float) -> Report:
    """A one-layer report: waveft with squared error ``own``, the lora baseline with ``lora`` (energy 1)."""
    layer = LayerReport("l", (4, 4), 3, False, MethodSummary("waveft", 3, 12, own, 1.0),
                        {"lora": MethodSummary("lora", 3, 12, lora, 1.0)})
    return Report("waveft", 3, "x", [layer])


def test_equal_errors_are_a_tie_and_a_real_gap_wins() -> None:
    assert _report(0.25, 0.25).verdict_parts()[1] == "equal values: lora 0.5000 -> tie: waveft, lora"
    # 0.50000 vs 0.500004: the same at the 4 decimals shown: still a tie
    assert _report(0.25, 0.500004 ** 2).verdict_parts()[1].endswith("-> tie: waveft, lora")
    assert _report(0.25, 0.36).verdict_parts()[1] == "equal values: lora 0.6000 -> waveft wins"
    assert _report(0.36, 0.25).verdict_parts()[1] == "equal values: lora 0.5000 -> lora wins"


def test_size_note_names_both_sizes_and_the_ratio(tmp_path: Path) -> None:
    assert size_note(1000, 2000) is None and size_note(2000, 2000) is None
    assert size_note(3_500_000, 1_200_000) == ("note: the output (3.50 MB) is larger than its input (1.20 MB): "
                                               "2.92x, +2.30 MB")
    (tmp_path / "a.safetensors").write_bytes(b"x" * 300)
    (tmp_path / "config.json").write_text("{}")
    assert weight_bytes(tmp_path) == 300 and weight_bytes(tmp_path / "a.safetensors") == 300
    assert weight_bytes(tmp_path / "missing") is None


def test_convert_says_when_its_output_is_larger(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["convert", str(FIXTURE), "--budget", "99999999", "--method", "lora", "--quiet",
                                       "--out", str(tmp_path / "big")])
    assert result.exit_code == 0, result.output
    output, source = weight_bytes(tmp_path / "big"), weight_bytes(FIXTURE)
    assert output > source
    assert f"note: the output ({output / 1e6:.2f} MB) is larger than its input ({source / 1e6:.2f} MB)" in result.output
    assert "-> tie: lora, sparse" in result.output  # both exact at this budget: 0.0000 each
    small = CliRunner().invoke(main, ["convert", str(FIXTURE), "--budget", "3000", "--method", "lora", "--quiet",
                                      "--out", str(tmp_path / "small")])
    assert small.exit_code == 0 and "larger than its input" not in small.output

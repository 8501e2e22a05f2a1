"""convert --baselines chooses the report's baseline columns (the sparse one forms every dense ΔW)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from conftest import FIXTURE
from wavecompress.cli import main


def columns(tmp_path: Path, *extra: str) -> tuple[int, list[str]]:
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["convert", str(FIXTURE), "--budget", "3000", "--method", "wara", "--out",
                                       str(tmp_path / "out"), "--force", "--quiet", "--report", str(report), *extra])
    if result.exit_code:
        return result.exit_code, [result.output]
    return 0, sorted(json.loads(report.read_text())["overall"])


def test_baselines_option_picks_the_report_columns(tmp_path: Path) -> None:
    assert columns(tmp_path) == (0, ["lora", "lora@bytes", "sparse", "sparse@bytes", "wara", "wara-plain"])
    assert columns(tmp_path, "--baselines", "lora") == (0, ["lora", "lora@bytes", "wara", "wara-plain"])
    assert columns(tmp_path, "--baselines", "none") == (0, ["wara", "wara-plain"])
    code, output = columns(tmp_path, "--baselines", "lora,bogus")
    assert code == 2 and "unknown method 'bogus'" in output[0]

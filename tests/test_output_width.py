"""Every line of every command's default output fits 100 columns (long lists summarised; --wide/--json for all)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from wavecompress.cli import main

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "minilm-bbc-lora"
WIDTH = 100


def _run(*args: str) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _too_wide(text: str) -> list[str]:
    """Lines over WIDTH, once pytest's long temporary folders read as a short user path (``out``)."""
    import re

    text = re.sub(r"/tmp/pytest-of-[^/\s]+/pytest-\d+/[^/\s]+", "out", text)
    return [line for line in text.splitlines() if len(line) > WIDTH]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("width") / "wara"
    return out, _run("convert", FIXTURE, "--budget", "3000", "--method", "wara", "--out", out)


def test_help_lists_every_command_uncut_with_an_example() -> None:
    text = _run("--help")
    assert not _too_wide(text)
    for command in main.commands.values():
        assert f"{command.name}: " in text
        assert not _too_wide(_run(command.name, "--help")), command.name
    assert "e.g. wavecompress convert fixtures/minilm-bbc-lora --budget 3000" in text
    assert "..." not in text.split("Commands:")[1]  # nothing cut


def test_convert_inspect_export_reconstruct_fit(converted: tuple[Path, str], tmp_path: Path) -> None:
    out, convert_text = converted
    assert not _too_wide(convert_text)
    inspected = _run("inspect", out)
    assert not _too_wide(inspected)
    assert "target_modules: 31 entries: " in inspected  # the 1341-column list, summarised
    assert '"bert.pooler.dense"' in _run("inspect", out, "--wide")  # in full on request
    assert not _too_wide(_run("inspect", FIXTURE))
    assert not _too_wide(_run("export", out, "--to", "lora", "--out", tmp_path / "exported"))
    assert not _too_wide(_run("reconstruct", out, "--out", tmp_path / "dense.safetensors"))


def test_dry_run_and_quiet_target_error_fit(tmp_path: Path) -> None:
    for args in (["--budget", "3000"], ["--target-error", "0.3"], ["--max-size", "300kB"]):
        assert not _too_wide(_run("convert", FIXTURE, *args, "--dry-run")), args
    quiet = _run("convert", FIXTURE, "--target-error", "0.3", "--method", "lora", "--quiet", "--out", tmp_path / "t")
    assert not _too_wide(quiet)


def test_analyze_fits(tmp_path: Path) -> None:
    text = _run("analyze", FIXTURE, "--methods", "lora,sparse", "--no-reorder", "--max-budget", "4096",
                "--out", tmp_path / "analysis")
    assert not _too_wide(text)
    assert "group errors are Frobenius" in text

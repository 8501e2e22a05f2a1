"""The progress line: heartbeat lines when stderr is not a terminal (interval from the environment),
a labelled bar with count and ETA on a terminal, silence when asked."""

from __future__ import annotations

import io
import time

from click.testing import CliRunner

from wavecompress.cli import main
from wavecompress.progress import HEARTBEAT_ENV, Progress, format_seconds, heartbeat_interval

from pathlib import Path

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "minilm-bbc-lora"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_heartbeat_lines_name_the_phase_count_and_eta() -> None:
    stream = io.StringIO()
    with Progress("choosing orderings", total=4, unit="layers", show=None, stream=stream, interval=0.05) as bar:
        bar.step()
        time.sleep(0.3)
        bar.describe("size search: try 3, 300 kB")
        time.sleep(0.3)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3
    assert lines[0].startswith("choosing orderings 1/4 layers, ETA ") and lines[0].endswith(" elapsed")
    assert any(line.startswith("size search: try 3, 300 kB 1/4 layers") for line in lines)
    assert lines[-1].startswith("size search: try 3, 300 kB: done in ")
    assert all(len(line) <= 100 for line in lines)


def test_terminal_bar_and_silence() -> None:
    screen = Terminal()
    with Progress("analyze: 6 curves per layer", total=10, unit="layers", stream=screen) as bar:
        bar.step(5)
        time.sleep(1.4)  # past the bar's delay
    assert "\r\x1b[K[##########..........] analyze: 6 curves per layer 5/10 layers, ETA" in screen.getvalue()
    assert screen.getvalue().endswith("analyze: 6 curves per layer: done in 1 s\n")
    quiet = io.StringIO()
    with Progress("x", total=3, show=False, stream=quiet, interval=0.01) as bar:
        time.sleep(0.1)
    assert quiet.getvalue() == ""
    short = Terminal()
    with Progress("short", total=3, stream=short):
        pass  # a phase under a second draws nothing
    assert short.getvalue() == ""


def test_interval_from_environment(monkeypatch) -> None:
    monkeypatch.setenv(HEARTBEAT_ENV, "0.5")
    assert heartbeat_interval() == 0.5
    monkeypatch.setenv(HEARTBEAT_ENV, "soon")
    assert heartbeat_interval() == 10.0
    assert format_seconds(8.2) == "8 s" and format_seconds(125) == "2 min 05 s" and format_seconds(3840) == "1 h 04 min"


def test_analyze_prints_heartbeats_when_not_a_terminal(tmp_path: Path) -> None:
    result = CliRunner(env={HEARTBEAT_ENV: "0.001"}).invoke(
        main, ["analyze", str(FIXTURE), "--methods", "lora", "--no-reorder", "--max-budget", "2048",
               "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    beats = result.stderr.splitlines()
    assert len(beats) >= 2 and all(line.startswith("analyze: 1 curves per layer") for line in beats)
    assert "/31 layers, " in beats[0] and beats[-1].startswith("analyze: 1 curves per layer: done in ")
    assert "curves per layer" not in result.stdout  # the heartbeat goes to stderr only
    quiet = CliRunner(env={HEARTBEAT_ENV: "0.001"}).invoke(
        main, ["inspect", str(FIXTURE)])
    assert quiet.stderr == ""

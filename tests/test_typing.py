"""The public modules type-check under ``mypy --strict`` and the package ships ``py.typed`` (PEP 561)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = ["wavecompress/__init__.py", "wavecompress/compress.py", "wavecompress/compressed_adapter.py",
          "wavecompress/report.py", "wavecompress/peft_integration/loader.py",
          "wavecompress/peft_integration/fresh.py", "wavecompress/deltas/__init__.py", "wavecompress/deltas/in_memory.py",
          "wavecompress/deltas/peft_model.py", "wavecompress/integrations/transformers.py"]
MYPY = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental", *PUBLIC]


def test_public_modules_are_mypy_strict_clean():
    pytest.importorskip("mypy")
    done = subprocess.run(MYPY, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_users_code_sees_precise_types(tmp_path):
    """What mypy infers in a user's file: compress -> CompressedAdapter, load_adapter -> PeftModel."""
    pytest.importorskip("mypy")
    user = tmp_path / "user.py"
    user.write_text("import torch\nimport wavecompress\n"
                    "r = wavecompress.compress('x', budget=10)\nreveal_type(r)\n"
                    "m = wavecompress.load_adapter(torch.nn.Linear(2, 2), 'x')\nreveal_type(m)\n"
                    "reveal_type(r.to_peft_model(torch.nn.Linear(2, 2)))\n")
    done = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental", str(user)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert "wavecompress.compressed_adapter.CompressedAdapter" in done.stdout, done.stdout
    assert done.stdout.count("peft.peft_model.PeftModel") == 2, done.stdout


def test_wheel_ships_py_typed(tmp_path):
    assert (ROOT / "wavecompress" / "py.typed").is_file()
    if shutil.which("pip") is None and subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode:
        pytest.skip("pip is not available to build the wheel")
    source = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT / "wavecompress", source / "wavecompress", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(source)], capture_output=True, text=True, timeout=600)
    if done.returncode:
        pytest.skip(f"cannot build a wheel here: {done.stderr.strip().splitlines()[-1:]}")
    wheel = next(tmp_path.glob("wavecompress-*.whl"))
    assert "wavecompress/py.typed" in zipfile.ZipFile(wheel).namelist()

"""The GPU suite's benchmark scripts run on the CPU too (--device cpu), so a broken script is found
here and not on a lent GPU's few minutes. Correctness only: the timings they print are not checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_throughput_runs_on_the_cpu_and_prints_its_summary_lines() -> None:
    done = subprocess.run([sys.executable, "benchmarks/gpu_throughput.py", "--device", "cpu", "--quick", "--shapes", "1",
                           "--budget", "300"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summaries = [line for line in done.stdout.splitlines() if line.startswith("SUMMARY|")]
    assert [line.split("|")[1] for line in summaries] == [
        "convert waveft ms per 4096x4096 layer (cpu)", "convert wara ms per 4096x4096 layer (cpu)"]
    assert "| self_attn.q_proj 4096×4096 |" in done.stdout

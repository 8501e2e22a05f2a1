"""Peak memory and time of ``wavecompress analyze`` on a t5-large-shaped LoRA, against a default convert.

Writes the LoRA of benchmarks/make_t5_like_lora.py (144 layers of 1024×1024, r=16) into a temporary
folder (or uses ``--adapter``), then runs, each in a fresh process measured with ``wait4`` (its own
peak RSS): ``convert --budget 3000`` (every default: waveft, ordering auto, baselines) and
``analyze``. Printed: each one's wall time and peak RSS, and analyze's time as a multiple of the
convert measured in the same run (goals: peak RSS ≤ 2 GB, time ≤ 3× the convert).

    python benchmarks/analyze_memory.py
    python benchmarks/analyze_memory.py --adapter fixtures/minilm-bbc-lora --x bytes   # the fixture, by bytes
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))


def measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one child process."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{child.stderr.read().decode()[-2000:]}")
    child.stderr.close()
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default=None, help="An adapter folder [default: a generated t5-like LoRA].")
    parser.add_argument("--x", default="values", choices=["values", "bytes"], help="analyze's x axis.")
    parser.add_argument("--plain", action="store_true", help="With --x bytes: also time a plain analyze.")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wavecompress-analyze-mem-"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-c", "import sys; from wavecompress.cli import main; sys.argv[0] = 'wavecompress'; main()"]
    try:
        if args.adapter is None:
            from make_t5_like_lora import write

            adapter = write(work / "t5-like-lora")
        else:
            adapter = Path(args.adapter)
        rows = [("convert --budget 3000", measured([*cli, "convert", str(adapter), "--budget", "3000", "--out",
                                                    str(work / "converted"), "--quiet"], env))]
        if args.x == "bytes" and args.plain:
            rows.append(("analyze", measured([*cli, "analyze", str(adapter), "--out", str(work / "plain")], env)))
        rows.append((f"analyze --x {args.x}", measured([*cli, "analyze", str(adapter), "--x", args.x,
                                                       "--out", str(work / "analysis")], env)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"input: {adapter if args.adapter else 'generated t5-like LoRA (144 x 1024x1024, r=16)'}; load {load:.1f}")
    print("| run | wall s | peak RSS MB | × convert |")
    print("|---|---:|---:|---:|")
    base = rows[0][1][0]
    for name, (wall, rss) in rows:
        print(f"| {name} | {wall:.1f} | {rss:.0f} | {wall / base:.2f} |")
    if args.x == "bytes" and args.plain:
        print(f"analyze --x bytes / analyze: {rows[2][1][0] / rows[1][1][0]:.2f}×")


if __name__ == "__main__":
    main()

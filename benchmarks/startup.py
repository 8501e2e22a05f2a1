"""Start-up cost of the CLI: ``wavecompress convert --method lora`` of the fixture against ``import torch``.

Both run as fresh processes, interleaved, in the same run (so they see the same machine load);
printed: the median wall time of each and their ratio (goal ≤ 2×), plus which heavy packages
the convert imported (peft, transformers, matplotlib, triton, scipy: none is needed for it).

    python benchmarks/startup.py            # 5 runs each
    python benchmarks/startup.py --runs 9
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("peft", "transformers", "matplotlib", "triton", "scipy", "accelerate")
CONVERT = ("from wavecompress.cli import main; import sys; sys.argv = ['wavecompress', *sys.argv[1:]]\n"
           "try:\n    main()\nfinally:\n    import json\n"
           "    open(os.environ['WC_MODULES'], 'w').write(json.dumps(sorted(m for m in sys.modules if '.' not in m)))")


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--adapter", default=str(REPO / "fixtures" / "minilm-bbc-lora"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wavecompress-startup-"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "WC_MODULES": str(work / "modules.json"), "HF_HUB_OFFLINE": "1"}
    torch_cmd = [sys.executable, "-c", "import torch"]
    convert_cmd = [sys.executable, "-c", "import os\n" + CONVERT, "convert", args.adapter, "--budget", "3000", "--method", "lora",
                   "--out", str(work / "out"), "--force", "--quiet"]
    try:
        timed(torch_cmd, env), timed(convert_cmd, env)  # warm the file cache for both
        torch_s, convert_s = [], []
        for _ in range(args.runs):
            torch_s.append(timed(torch_cmd, env))
            convert_s.append(timed(convert_cmd, env))
        import json

        imported = [m for m in HEAVY if m in json.loads((work / "modules.json").read_text())]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    t_torch, t_convert = statistics.median(torch_s), statistics.median(convert_s)
    ratio = t_convert / t_torch
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.runs} runs each, interleaved; load average {load:.1f}")
    print(f"| command | median s |")
    print(f"|---|---:|")
    print(f"| python -c \"import torch\" | {t_torch:.2f} |")
    print(f"| wavecompress convert {Path(args.adapter).name} --budget 3000 --method lora | {t_convert:.2f} |")
    print(f"ratio: convert --method lora / import torch = {ratio:.2f}× (goal ≤ 2×) -> {'meets' if ratio <= 2 else 'misses'} the goal")
    print(f"heavy packages imported by the convert: {', '.join(imported) or 'none'}")
    print(f"SUMMARY|startup: convert --method lora / import torch|{ratio:.2f}x|<= 2x|{'pass' if ratio <= 2 else 'fail'}")


if __name__ == "__main__":
    main()

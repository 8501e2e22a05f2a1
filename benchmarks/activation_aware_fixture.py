"""Plain vs activation-aware compression on the fixture: Frobenius error, activation-weighted error,
held-out accuracy. Calibration text: every 9th BBC training text (first 200), 512 tokens.

python benchmarks/activation_aware_fixture.py [--adapter fixtures/minilm-bbc-lora]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))

import bbc_task  # noqa: E402

import wavecompress as wc  # noqa: E402
from wavecompress.calibration import calibrate  # noqa: E402
from wavecompress.methods.activation_aware import activation_errors  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapter", default="fixtures/minilm-bbc-lora")
    args = parser.parse_args()
    torch.set_num_threads(2)
    deltas = wc.load_deltas(args.adapter)
    splits = bbc_task.load_bbc_splits()
    work = Path(tempfile.mkdtemp(prefix="wavecompress-aware-"))
    calib_text = work / "calib.txt"
    calib_text.write_text("\n".join(text for text, _ in splits["train"][::9][:200]))
    calib = calibrate(bbc_task.base_model_path(), calib_text, [layer.name for layer in deltas.layers], max_tokens=512)
    tokenizer = bbc_task.load_tokenizer()
    print(f"test texts {len(splits['test'])}")
    print("| method | budget / layer | mode | Frobenius err | activation-weighted err | accuracy |")
    print("|---|---:|---|---:|---:|---:|")
    for method, budget in (("lora", 1920), ("waveft", 768)):
        for label, used in (("plain", None), ("activation-aware", calib)):
            result = wc.compress(deltas, budget=budget, method=method, calibration=used, baselines=())
            num = den = 0.0
            for delta, layer in zip(deltas.layers, result.layers):
                err, energy = activation_errors(delta, layer, calib.gram(delta.name))
                num, den = num + err, den + energy
            out = work / f"{method}-{label}"
            result.save(out)
            accuracy = bbc_task.evaluate_accuracy(bbc_task.load_adapter_model(out), tokenizer, splits["test"])
            total = result.report.overall()[method]
            print(f"| {method} | {budget} | {label} | {total.relative_error:.4f} | {(num / den) ** 0.5:.4f} | {accuracy:.3f} |", flush=True)


if __name__ == "__main__":
    main()

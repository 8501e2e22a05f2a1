"""Plain vs activation-aware compression on the fixture: Frobenius error, activation-weighted error,
held-out accuracy. Calibration text: every 9th BBC training text (first 200), 512 tokens. The
activation-weighted error is reported on those calibration tokens (what the aware mode fitted) and
on 512 held-out tokens from the BBC test texts (never used for fitting).

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
    held_text = work / "held-out.txt"
    held_text.write_text("\n".join(text for text, _ in splits["test"]))
    held = calibrate(bbc_task.base_model_path(), held_text, [layer.name for layer in deltas.layers], max_tokens=512)
    tokenizer = bbc_task.load_tokenizer()
    print(f"test texts {len(splits['test'])}")
    print("| method | budget / layer | mode | Frobenius err | act.-weighted err, calibration tokens | "
          "act.-weighted err, held-out tokens | accuracy |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for method, budget in (("lora", 1920), ("waveft", 768)):
        for label, used in (("plain", None), ("activation-aware", calib)):
            result = wc.compress(deltas, budget=budget, method=method, calibration=used, baselines=())
            weighted = []
            for grams in (calib, held):
                num = den = 0.0
                for delta, layer in zip(deltas.layers, result.layers):
                    err, energy = activation_errors(delta, layer, grams.gram(delta.name))
                    num, den = num + err, den + energy
                weighted.append((num / den) ** 0.5)
            out = work / f"{method}-{label}"
            result.save(out)
            accuracy = bbc_task.evaluate_accuracy(bbc_task.load_adapter_model(out), tokenizer, splits["test"])
            total = result.report.overall()[method]
            print(f"| {method} | {budget} | {label} | {total.relative_error:.4f} | {weighted[0]:.4f} | {weighted[1]:.4f} "
                  f"| {accuracy:.3f} |", flush=True)


if __name__ == "__main__":
    main()

"""The tiny-BERT (docs/results.md) recovery figure: held-out KL(PEFT teacher ‖ student) before and after
``wavecompress finetune``, on the exact setup of ``tests/test_finetune.py`` (which asserts at least a
halving): a 2-layer BERT classifier with a LoRA (r=8) trained in the test on random word sequences,
converted with ``--budget 48`` (waveft, default options), then 40 fine-tune steps at lr 2e-3. The
KL is computed without wavecompress.finetune (PEFT's own LoRA model against the base with the
written adapter's ΔŴ merged), on 64 held-out texts. CPU, one thread, about a minute.

    python benchmarks/finetune_tiny_bert.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import torch  # noqa: E402

import conftest  # noqa: E402,F401  (offline settings for transformers)
import wavecompress as wc  # noqa: E402
from test_finetune import convert_and_finetune, kl_teacher_student, tiny_setup  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="wavecompress-ft-tiny-"))
    trained = tiny_setup(root)
    lora_dir, _, _, tokenizer, held_out = trained
    compressed, tuned, result = convert_and_finetune(trained, root, "40", "2e-3")
    assert result.exit_code == 0, result.output
    before = kl_teacher_student(lora_dir, wc.reconstruct(compressed), tokenizer, held_out)
    after = kl_teacher_student(lora_dir, wc.reconstruct(tuned), tokenizer, held_out)
    print("tiny BERT (tests/test_finetune.py setup): waveft --budget 48, finetune --steps 40 --lr 2e-3")
    print(f"held-out KL(PEFT teacher ‖ student) on {len(held_out)} texts: before {before:.3g}, after {after:.3g} "
          f"({before / after:.1f}× lower)")


if __name__ == "__main__":
    main()

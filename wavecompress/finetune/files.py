"""Fine-tune from names and paths: load the base model, tokenizer and data, then run the loop.

Shared by ``wavecompress finetune`` and ``wavecompress convert --finetune-steps``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..compressed_adapter import CompressedAdapter
from ..deltas import AdapterDeltas, load_deltas
from ..errors import InputError
from .compressed_source import as_compressed_source
from .data import read_examples
from .loop import FinetuneConfig, finetune
from .model_loading import load_base_model, load_tokenizer
from .result import FinetuneResult


def finetune_from_files(
    compressed: CompressedAdapter | str | Path,
    data: str | Path,
    teacher: AdapterDeltas | str | Path | None = None,
    base_model: str | None = None,
    config: FinetuneConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``compressed`` on the texts in ``data``; the base model defaults to the adapter's own."""
    examples = read_examples(data)
    source = as_compressed_source(compressed)
    if teacher is None and source.teacher is None:
        raise InputError(f"{source.origin}: give the original adapter with --teacher")
    teacher_deltas = teacher if isinstance(teacher, AdapterDeltas) else (load_deltas(teacher) if teacher else source.teacher)
    name = base_model or teacher_deltas.base_model or source.config.get("base_model_name_or_path")
    if not name:
        raise InputError(f"{source.origin}: the adapter does not name its base model; give --base-model")
    task_type = teacher_deltas.config.get("task_type") or source.config.get("task_type")
    model = load_base_model(str(name), task_type, source.passthrough)
    tokenizer = load_tokenizer(str(name))
    return finetune(source, model, tokenizer, examples, teacher=teacher_deltas, config=config, log=log)

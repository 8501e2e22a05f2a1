"""Recovery fine-tune: distil the original adapter into a compressed adapter's stored values.

>>> from wavecompress.finetune import finetune, load_base_model, load_tokenizer, read_examples
>>> result = finetune("out/wara", model, tokenizer, read_examples("texts.txt"), teacher="my-lora", steps=200)
>>> print(result.summary()); result.save("out/wara-ft")

Only float stored values (top-k values, WaRA or LoRA factors) train; indices and permutations
stay fixed, so the output has the input's format and size.
"""

import sys
from typing import Any

from .compressed_source import CompressedSource, as_compressed_source, read_compressed
from .data import Example, read_examples
from ..hardware import resolve_device
from .loop import FinetuneConfig, finetune
from .model_loading import apply_passthrough, load_base_model, load_tokenizer
from .result import Figures, FinetuneResult
from .trainable import KERNEL_CHOICES, StudentDeltas, TrainableDelta

__all__ = [
    "KERNEL_CHOICES",
    "CompressedSource",
    "Example",
    "Figures",
    "FinetuneConfig",
    "FinetuneResult",
    "StudentDeltas",
    "TrainableDelta",
    "apply_passthrough",
    "as_compressed_source",
    "finetune",
    "load_base_model",
    "load_tokenizer",
    "read_compressed",
    "read_examples",
    "resolve_device",
]


class _CallableModule(type(sys.modules[__name__])):  # type: ignore[misc]
    """``wavecompress.finetune`` is both this package and the function: ``wavecompress.finetune(...)`` calls
    :func:`finetune`, ``from wavecompress.finetune import ...`` imports from the package."""

    def __call__(self, *args: Any, **kwargs: Any) -> FinetuneResult:
        return finetune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

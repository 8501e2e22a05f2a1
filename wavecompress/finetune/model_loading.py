"""Build the base model the adapter was trained on, and load the adapter's saved modules into it.

The model class follows the adapter's ``task_type`` (PEFT's field): sequence/token
classification and causal LM get their heads (distillation on logits); anything else loads the
bare encoder (distillation on the last hidden state). Saved whole modules (``modules_to_save``,
for example a trained classifier head) come as passthrough tensors and are copied into the model:
teacher and student share them.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..layout import strip_prefix
from ..errors import InputError

AUTO_CLASSES = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "CAUSAL_LM": "AutoModelForCausalLM",
}
_HEAD_TASKS = ("SEQ_CLS", "TOKEN_CLS")
_SAVED_MODULE = re.compile(r"\.modules_to_save(?:\.[^.]+)?(?=\.)")


def passthrough_targets(passthrough: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{model parameter name: tensor} for saved whole modules (PEFT key prefixes removed)."""
    out = {}
    for key, value in passthrough.items():
        name = strip_prefix(key)
        out[_SAVED_MODULE.sub("", name)] = value
    return out


def infer_num_labels(passthrough: dict[str, torch.Tensor]) -> int | None:
    """Labels of a saved classification head: the smallest output size among its 2-D weights."""
    sizes = [t.shape[0] for key, t in passthrough.items() if key.endswith(".weight") and t.dim() == 2]
    return min(sizes) if sizes else None


def load_base_model(name: str, task_type: str | None, passthrough: dict[str, torch.Tensor], **kwargs: Any) -> nn.Module:
    """The base model ``name`` (local folder or Hub id) with the head that ``task_type`` implies."""
    import transformers

    from transformers.utils import logging as hf_logging

    class_name = AUTO_CLASSES.get(task_type or "", "AutoModel")
    labels = infer_num_labels(passthrough) if task_type in _HEAD_TASKS else None
    if labels is not None:
        kwargs.setdefault("num_labels", labels)
    # The head comes from the adapter's saved modules (copied in by apply_passthrough), so transformers'
    # "classifier MISSING ... newly initialized" load report is about weights that are replaced: silence it.
    previous = hf_logging.get_verbosity()
    if labels is not None:
        hf_logging.set_verbosity_error()
    try:
        return getattr(transformers, class_name).from_pretrained(name, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{name}: cannot load the base model ({first})") from None
    finally:
        hf_logging.set_verbosity(previous)


def load_tokenizer(name: str):
    """The base model's tokenizer, with a pad token (EOS) when it has none (GPT-2 style)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{name}: cannot load the tokenizer ({first})") from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@torch.no_grad()
def apply_passthrough(model: nn.Module, passthrough: dict[str, torch.Tensor], origin: str = "adapter") -> list[str]:
    """Copy saved whole-module tensors into ``model``; InputError on an unknown name or shape."""
    state = dict(model.named_parameters())
    state.update(dict(model.named_buffers()))
    loaded = []
    for name, value in sorted(passthrough_targets(passthrough).items()):
        target = state.get(name)
        if target is None:
            raise InputError(f"{origin}: tensor {name} has no place in the base model (is it the model the adapter was trained on?)")
        if tuple(target.shape) != tuple(value.shape):
            raise InputError(f"{origin}: tensor {name} is {tuple(value.shape)} but the base model has {tuple(target.shape)}")
        target.copy_(value.to(target.dtype))
        loaded.append(name)
    return loaded

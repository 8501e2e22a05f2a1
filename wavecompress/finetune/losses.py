"""Distillation objectives: KL between teacher and student logits, or hidden-state MSE.

Per-example logits (sequence classification) give one KL per example; per-token logits
(causal LM, token classification) give one KL per non-padding token; encoders without a head
are matched on their last hidden state (mean squared error over non-padding tokens). Every
function returns (sum, count) so callers can average over many batches exactly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def model_output(output: Any) -> tuple[str, torch.Tensor]:
    """('logits', tensor) when the model has a head, else ('hidden', last hidden state)."""
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if logits is not None:
        return "logits", logits
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None and isinstance(output, (tuple, list)):
        hidden = output[0]
    if hidden is None:
        raise ValueError("the model output has neither logits nor a last hidden state")
    return "hidden", hidden


def _token_mask(tensor: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    if tensor.dim() == 3 and attention_mask is not None and attention_mask.shape == tensor.shape[:2]:
        return attention_mask.to(tensor.device).bool()
    return None


def kl_terms(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor | None = None,
             temperature: float = 1.0) -> tuple[torch.Tensor, int]:
    """(Σ KL(teacher ‖ student) · T², number of terms) over examples or non-padding tokens."""
    s = F.log_softmax(student.float() / temperature, dim=-1)
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    per_item = (t.exp() * (t - s)).sum(-1) * temperature**2
    mask = _token_mask(student, attention_mask)
    if mask is not None:
        return per_item[mask].sum(), int(mask.sum())
    return per_item.sum(), per_item.numel()


def mse_terms(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """(Σ mean-over-features squared error, number of tokens) over non-padding tokens."""
    per_item = (student.float() - teacher.float()).square().mean(-1)
    mask = _token_mask(student, attention_mask)
    if mask is not None:
        return per_item[mask].sum(), int(mask.sum())
    return per_item.sum(), per_item.numel()


def distillation_terms(kind: str, student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor | None,
                       temperature: float = 1.0) -> tuple[torch.Tensor, int]:
    """KL terms for logits, MSE terms for hidden states."""
    if kind == "logits":
        return kl_terms(student, teacher, attention_mask, temperature)
    return mse_terms(student, teacher, attention_mask)


def supervised_terms(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """(Σ cross-entropy, count) for per-example class labels; None when they do not fit the logits."""
    if logits.dim() != 2 or labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        return None
    return F.cross_entropy(logits.float(), labels.to(logits.device), reduction="sum"), labels.numel()

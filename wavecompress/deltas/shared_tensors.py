"""Tensors stored once for several layers (e.g. the column permutation that q/k/v share).

A layer's metadata entry ``shared_tensors`` maps a tensor key to the module under whose key that
tensor is stored: ``{"reorder_cols": "encoder.layer.0.attention.self.query"}``. The owner lists
itself; every other member stores nothing under that key. In memory every layer holds all its
tensors; writers store what :func:`written_tensors` keeps, readers put the rest back with
:func:`resolve_shared`, so methods' ``reconstruct`` never sees the difference.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

SHARED_TENSORS = "shared_tensors"


def borrowed(name: str, meta: Mapping[str, Any]) -> dict[str, str]:
    """{tensor key: owner module} of the tensors layer ``name`` uses but another layer stores."""
    table = meta.get(SHARED_TENSORS) or {}
    if not isinstance(table, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
        raise ValueError(f"layer {name}: '{SHARED_TENSORS}' must map tensor keys to module names")
    return {key: owner for key, owner in table.items() if owner != name}


def written_tensors(name: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of layer ``name`` that its own keys store (shared ones borrowed from an owner left out)."""
    lent = borrowed(name, meta)
    return {key: value for key, value in tensors.items() if key not in lent}


def resolve_shared(layers: Mapping[str, tuple[dict[str, torch.Tensor], Mapping[str, Any]]], where: str) -> None:
    """Put every borrowed tensor into its layer's ``tensors`` (in place), from its owner's.

    ``layers``: {name: (tensors as stored, meta)}. ValueError naming ``where`` and the layer when an
    owner is missing, does not store the tensor, or the borrower stores its own copy too."""
    for name, (tensors, meta) in layers.items():
        for key, owner in borrowed(name, meta).items():
            if key in tensors:
                raise ValueError(f"{where}: layer {name} stores {key} although it borrows it from {owner}")
            stored = _stored_by(layers, owner, key)
            if stored is None:
                raise ValueError(f"{where}: layer {name} borrows {key} from {owner}, which does not store it")
            tensors[key] = stored


def check_lenders(layers: Iterable[tuple[str, Mapping[str, torch.Tensor], Mapping[str, Any]]]) -> None:
    """Before writing: every borrowed tensor's owner is written too and holds an equal tensor
    (ValueError otherwise: the file would rebuild a different ΔŴ)."""
    table = {name: (tensors, meta) for name, tensors, meta in layers}
    for name, (tensors, meta) in table.items():
        for key, owner in borrowed(name, meta).items():
            stored = _stored_by(table, owner, key)
            if stored is None:
                raise ValueError(f"layer {name} borrows {key} from {owner}, which is not written with it")
            if key in tensors and not torch.equal(tensors[key].cpu(), stored.cpu()):
                raise ValueError(f"layer {name}: its {key} differs from the one {owner} stores for it")


def _stored_by(layers: Mapping[str, tuple[Mapping[str, torch.Tensor], Mapping[str, Any]]], owner: str,
               key: str) -> torch.Tensor | None:
    """Tensor ``key`` as layer ``owner`` stores it, or None when ``owner`` is absent, lacks it or borrows it itself."""
    source = layers.get(owner)
    if source is None or key not in source[0] or borrowed(owner, source[1]).get(key):
        return None
    return source[0][key]

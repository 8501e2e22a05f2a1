"""Which permutations a reordered layer stores: its own, one column permutation shared with the
layers that read the same input (transforms/permutation_groups.py), or none at all.

Each choice is measured on what would be stored (after rounding to the output dtype), and the
sum of squared errors decides (it is what the overall relative error adds up):

- **values budget** (PEFT's meaning; permutations are fixed, not trained, and cost no values): a
  group shares one column permutation when its error is no higher than with per-layer
  permutations (sharing always stores fewer bytes, (n−1)·d_in·2); every layer stays permuted, so
  outputs where sharing does not win are unchanged.
- **bytes budget** (``--max-size``): choices are compared at equal bytes. A layer keeps its
  permutations when its error at k values beats the plain (unpermuted) layer at k + (bytes of the
  permutations / bytes per value); a group shares when its error, with the bytes sharing saves
  spent on more values (split evenly), is lower than its members' own best.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from ..deltas.layer_delta import LayerDelta
from ..transforms.permutation_groups import PermutationGroup, find_groups, shared_column_order
from ..transforms.reorder import GREEDY_MAX_SIZE, ORDERINGS
from .compressed_layer import CompressedLayer
from .options import MethodOptions
from .precision import layer_dtype
from .registry import get_method
from .wavelet_domain import SHARED_COLUMNS, layer_features

PERMUTATION_KEYS = ("reorder_rows", "reorder_cols")


@dataclass
class SharedColumns:
    """The column permutation a group shares: stored by ``owner``, one per ordering, computed once
    from the members' stacked column features."""

    owner: str
    features: list[torch.Tensor]
    orders: dict[str, torch.Tensor] = field(default_factory=dict)

    def order(self, ordering: str) -> torch.Tensor:
        if ordering not in self.orders:
            self.orders[ordering] = shared_column_order(self.features, ordering)
        return self.orders[ordering]


def permutation_bytes(layer: CompressedLayer) -> int:
    """Bytes of the permutations ``layer`` itself stores."""
    written = layer.written_tensors()
    return sum(t.numel() * t.element_size() for key, t in written.items() if key in PERMUTATION_KEYS)


def value_bytes(method: str, options: MethodOptions, delta: LayerDelta) -> int:
    """Bytes one more stored value of ``method`` costs (the value, plus a uint16 gap code for top-k)."""
    return layer_dtype(options.dtype, delta).itemsize + (2 if get_method(method).indices_key else 0)


@dataclass
class PermutationChoice:
    """Compresses the layers of one conversion with the permutations that win (see the module doc).

    ``fetch(name)`` gives another layer's delta (a group is compressed when its first member comes),
    ``budget_of(name)`` its planned budget, ``finish(layer, delta)`` the layer as stored (rounded)."""

    method: str
    options: MethodOptions
    shapes: dict[str, tuple[int, int]]
    fetch: Callable[[str], LayerDelta]
    budget_of: Callable[[str], int]
    finish: Callable[[CompressedLayer, LayerDelta], CompressedLayer]
    bytes_currency: bool = False
    done: dict[str, CompressedLayer] = field(default_factory=dict)
    shared_groups: int = 0
    unpermuted: int = 0

    def __post_init__(self) -> None:
        self.group_of = {name: group for group in find_groups(self.shapes) for name in group.members}

    def compress(self, delta: LayerDelta) -> CompressedLayer:
        """``delta`` compressed and rounded, with the permutations chosen for it."""
        if delta.name in self.done:
            return self.done.pop(delta.name)
        group = self.group_of.get(delta.name)
        if group is None:
            return self._own(delta, self.budget_of(delta.name))
        deltas = {name: delta if name == delta.name else self.fetch(name) for name in group.members}
        chosen = self._group(group, deltas)
        self.done.update({name: layer for name, layer in chosen.items() if name != delta.name})
        return chosen[delta.name]

    def note(self) -> str | None:
        """The report's line on what was chosen, or None when nothing differs from per-layer permutations."""
        parts = []
        if self.shared_groups:
            parts.append(f"{self.shared_groups} groups of layers reading the same input share one column permutation")
        if self.unpermuted:
            parts.append(f"{self.unpermuted} layers stored unpermuted (their permutations did not pay for their bytes)")
        return "; ".join(parts) + " (methods/shared_permutations.py)" if parts else None

    def _stored(self, delta: LayerDelta, budget: int, options: MethodOptions) -> CompressedLayer:
        return self.finish(get_method(self.method).compress(delta, budget, options), delta)

    def _own(self, delta: LayerDelta, budget: int) -> CompressedLayer:
        """The layer with its own permutations; at a bytes budget the plain layer instead when that is
        better at equal bytes (the permutations' bytes spent on values)."""
        permuted = self._stored(delta, budget, self.options)
        if not self.bytes_currency:
            return permuted
        extra = permutation_bytes(permuted) // value_bytes(self.method, self.options, delta)
        plain = self._stored(delta, budget + extra, replace(self.options, reorder=None))
        if plain.error_sq < permuted.error_sq:
            self.unpermuted += 1
            return plain
        return permuted

    def _group(self, group: PermutationGroup, deltas: dict[str, LayerDelta]) -> dict[str, CompressedLayer]:
        """Per-layer permutations or one shared column permutation for ``group``, whichever wins."""
        budgets = {name: self.budget_of(name) for name in group.members}
        own = {name: self._own(deltas[name], budgets[name]) for name in group.members}
        shared = self._shared(group, deltas, budgets, own)
        own_error = sum(layer.error_sq for layer in own.values())
        shared_error = sum(layer.error_sq for layer in shared.values())
        if shared_error < own_error or (shared_error == own_error and not self.bytes_currency):
            self.unpermuted -= sum(1 for layer in own.values() if "reorder" not in layer.meta)
            self.shared_groups += 1
            return shared
        return own

    def _shared(self, group: PermutationGroup, deltas: dict[str, LayerDelta], budgets: dict[str, int],
                own: dict[str, CompressedLayer]) -> dict[str, CompressedLayer]:
        """Every member with the group's shared column permutation, at the lowest-error ordering
        (one ordering for all: members must store the same columns). At a bytes budget each member
        gets an equal share of the bytes sharing saves against ``own``, as values."""
        columns = SharedColumns(group.owner, [layer_features(deltas[name])[1] for name in group.members])
        extra = dict.fromkeys(group.members, 0)
        if self.bytes_currency:
            probe = deltas[group.owner]
            per_value = value_bytes(self.method, self.options, probe)
            own_bytes = sum(permutation_bytes(layer) for layer in own.values())
            own_bytes += sum(layer.stored_values - min(budgets[name], layer.stored_values) for name, layer in own.items()) * per_value
            shared_bytes = sum(own_permutation_bytes(self.shapes[name], name == group.owner) for name in group.members)
            spare = max(own_bytes - shared_bytes, 0) // per_value
            for index, name in enumerate(group.members):
                extra[name] = spare // len(group.members) + (1 if index < spare % len(group.members) else 0)
        orderings = ORDERINGS if self.options.reorder == "best" else (self.options.reorder,)
        if any(max(self.shapes[name]) > GREEDY_MAX_SIZE for name in group.members):
            orderings = tuple(dict.fromkeys("svd" if o == "greedy" else o for o in orderings))
        best = None
        for ordering in orderings:
            options = replace(self.options, reorder=ordering)
            layers = {}
            for name in group.members:
                delta = deltas[name]
                delta.cache[SHARED_COLUMNS] = columns
                try:
                    layers[name] = self._stored(delta, budgets[name] + extra[name], options)
                finally:
                    del delta.cache[SHARED_COLUMNS]
            if best is None or sum(l.error_sq for l in layers.values()) < sum(l.error_sq for l in best.values()):
                best = layers
        return best


def own_permutation_bytes(shape: tuple[int, int], stores_columns: bool) -> int:
    """Bytes of a member's permutations when its group shares columns (the owner stores them)."""
    from ..transforms.reorder import permutation_dtype

    rows = shape[0] * torch.empty((), dtype=permutation_dtype(shape[0])).element_size()
    cols = shape[1] * torch.empty((), dtype=permutation_dtype(shape[1])).element_size()
    return rows + (cols if stores_columns else 0)

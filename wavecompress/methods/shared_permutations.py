"""Which permutations a reordered layer stores: its own, one column permutation shared with the
layers that read the same input (transforms/permutation_groups.py), or none at all.

Each choice is measured on what would be stored (after rounding to the output dtype), and the
sum of squared errors decides (it is what the overall relative error adds up):

- **values budget** (PEFT's meaning; permutations are fixed, not trained, and cost no values): every
  layer keeps its own permutations and the pipeline does not use this class (no extra work). Measured:
  at equal values a shared order lost in every group of both benchmark cases (fixture wara 3000,
  block 0 query+value 0.4637 → 0.4888 at the default ordering, tests/test_shared_permutations.py;
  full fine-tune q/k/v, e.g. 0.9020 → 0.9154 with the greedy ordering), since the bytes it saves buy
  nothing there. With ``bytes_share=None`` the class still measures it (a group
  shares when its error is no higher).
- **bytes budget** (``--max-size``): choices are compared within the same bytes. A layer's share is
  its planned k values plus, when the plan counted them (``bytes_share="permuted"``: the size limit
  holds every layer's permutations), the bytes of its permutations; when it did not
  (``"plain"``: the permutations alone exceed the limit) just the k values. (Planning every size
  the "plain" way was measured too, with the greedy ordering: on the fixture in bf16 better at 100 kB,
  waveft 0.7597 vs 0.8415, wara 0.6285 vs 0.6397, but far worse at 129 kB, wara 0.7539 vs 0.5904,
  and at 300 kB.) Within that share: the
  plain layer, the permuted layer with what its permutations leave, and a group sharing one column
  permutation (each member paying its rows and an equal part of the shared columns). The lowest
  error wins (a group shares when that beats its members' own best), so a permutation that does not
  pay for its bytes is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import torch

from ..deltas.layer_delta import LayerDelta
from ..transforms.permutation_groups import PermutationGroup, find_groups, shared_column_order
from ..transforms.reorder import ordering_candidates, permutation_dtype
from .compressed_layer import CompressedLayer
from .options import MethodOptions
from .precision import value_bytes
from .registry import get_method
from .wavelet_domain import SHARED_COLUMNS, layer_features

BYTES_SHARES = ("permuted", "plain")


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


def permutation_bytes(shape: tuple[int, int], stores_columns: bool = True) -> int:
    """Bytes of a layer's permutations: its rows, plus its columns when it stores them."""
    rows = shape[0] * torch.empty((), dtype=permutation_dtype(shape[0])).element_size()
    cols = shape[1] * torch.empty((), dtype=permutation_dtype(shape[1])).element_size()
    return rows + (cols if stores_columns else 0)


def bytes_share(shapes: Iterable[tuple[int, int]], room: float) -> str:
    """``BYTES_SHARES`` entry for a size limit leaving ``room`` bytes for layer tensors: "permuted" when
    every layer's permutations fit in it (then the plan holds them), else "plain"."""
    return "permuted" if sum(permutation_bytes(shape) for shape in shapes) < room else "plain"


@dataclass
class PermutationChoice:
    """Compresses the layers of one conversion with the permutations that win (see the module doc).

    ``fetch(name)`` gives another layer's delta (a group is compressed when its first member comes),
    ``budget_of(name)`` its planned budget, ``finish(layer, delta)`` the layer as stored (rounded);
    ``bytes_share`` None for a values budget, else one of ``BYTES_SHARES``."""

    method: str
    options: MethodOptions
    shapes: dict[str, tuple[int, int]]
    fetch: Callable[[str], LayerDelta]
    budget_of: Callable[[str], int]
    finish: Callable[[CompressedLayer, LayerDelta], CompressedLayer]
    bytes_share: str | None = None
    done: dict[str, CompressedLayer] = field(default_factory=dict)
    shared_groups: int = 0
    unpermuted: int = 0

    def __post_init__(self) -> None:
        if self.bytes_share not in (None, *BYTES_SHARES):
            raise ValueError(f"bytes_share must be None or one of {BYTES_SHARES}, not {self.bytes_share!r}")
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

    def _values_after(self, delta: LayerDelta, budget: int, permutation_cost: int) -> int:
        """Values left in the layer's byte share (planned ``budget``) once ``permutation_cost`` bytes are paid."""
        per_value = value_bytes(self.method, self.options, delta)
        if self.bytes_share == "permuted":  # the share already holds the layer's own permutations
            return budget + (permutation_bytes(delta.shape) - permutation_cost) // per_value
        return budget - (-(-permutation_cost // per_value))

    def _own(self, delta: LayerDelta, budget: int) -> CompressedLayer:
        """The layer with its own permutations; at a bytes budget the plain layer instead when that is
        better within the same bytes."""
        if self.bytes_share is None:
            return self._stored(delta, budget, self.options)
        plain = self._stored(delta, self._values_after(delta, budget, 0), replace(self.options, reorder=None))
        values = self._values_after(delta, budget, permutation_bytes(delta.shape))
        permuted = self._stored(delta, values, self.options) if values > 0 else None
        if permuted is None or plain.error_sq <= permuted.error_sq:
            self.unpermuted += 1
            return plain
        return permuted

    def _group(self, group: PermutationGroup, deltas: dict[str, LayerDelta]) -> dict[str, CompressedLayer]:
        """Per-layer permutations or one shared column permutation for ``group``, whichever wins."""
        budgets = {name: self.budget_of(name) for name in group.members}
        own = {name: self._own(deltas[name], budgets[name]) for name in group.members}
        shared = self._shared(group, deltas, budgets)
        if shared is None:
            return own
        own_error = sum(layer.error_sq for layer in own.values())
        shared_error = sum(layer.error_sq for layer in shared.values())
        if shared_error < own_error or (shared_error == own_error and self.bytes_share is None):
            self.unpermuted -= sum(1 for layer in own.values() if "reorder" not in layer.meta)
            self.shared_groups += 1
            return shared
        return own

    def _shared(self, group: PermutationGroup, deltas: dict[str, LayerDelta],
                budgets: dict[str, int]) -> dict[str, CompressedLayer] | None:
        """Every member with the group's shared column permutation, at the lowest-error ordering
        (one ordering for all: members must store the same columns); at a bytes budget each member
        pays its rows and an equal part of the shared columns out of its share (None: they do not fit)."""
        columns = SharedColumns(group.owner, [layer_features(deltas[name])[1] for name in group.members])
        values = dict(budgets)
        if self.bytes_share is not None:
            n = len(group.members)
            cols = permutation_bytes(self.shapes[group.owner]) - permutation_bytes(self.shapes[group.owner], False)
            for index, name in enumerate(group.members):
                cost = permutation_bytes(self.shapes[name], False) + cols // n + (cols % n if index == 0 else 0)
                values[name] = self._values_after(deltas[name], budgets[name], cost)
            if min(values.values()) <= 0:
                return None
        best = None
        for ordering in ordering_candidates(self.options.reorder, [self.shapes[name] for name in group.members]):
            options = replace(self.options, reorder=ordering)
            layers = {}
            for name in group.members:
                delta = deltas[name]
                delta.cache[SHARED_COLUMNS] = columns
                try:
                    layers[name] = self._stored(delta, values[name], options)
                finally:
                    del delta.cache[SHARED_COLUMNS]
            if best is None or sum(l.error_sq for l in layers.values()) < sum(l.error_sq for l in best.values()):
                best = layers
        return best

"""The budget: one object from the CLI to the methods, built and validated once.

Forms (exactly one): ``per_layer`` stored values in every layer (PEFT's ``n_frequency``), ``total``
values for the whole adapter, ``ratio`` of the input adapter's stored values, ``max_bytes`` of
``adapter_model.safetensors`` on disk (indices and carried-over tensors included), ``rank`` (every
layer what a rank-R LoRA of its shape stores, R·(d_out + d_in); kohya's --network_dim), or
``target_error`` (the smallest total, globally allocated, whose overall relative error is at most
it; wavecompress/pipeline.py fit_to_error). ``allocate``
says how a total is split across layers (methods/allocation.py): ``uniform`` or ``global``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from ..errors import InputError
from ..units import parse_size_text

Allocate = Literal["uniform", "global"]
ALLOCATIONS: tuple[Allocate, ...] = ("uniform", "global")
FORMS = ("per_layer", "total", "ratio", "max_bytes", "rank", "target_error")


def parse_size(text: str | int) -> int:
    """Bytes from ``2MB`` (10^6), ``1.5MiB`` (2^20), ``800kB`` or a plain integer."""
    if isinstance(text, int):
        size = text
    else:
        parsed = parse_size_text(str(text))
        if parsed is None:
            raise InputError(f"max size {text!r}: expected a number of bytes with an optional unit (B, kB, MB, GB, KiB, MiB, GiB)")
        size = parsed
    if size <= 0:
        raise InputError(f"max size must be positive, got {text!r}")
    return size


def validate_target(target: object) -> float:
    """A relative error in (0, 1), or InputError naming the option."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < float(target) < 1:
        raise InputError(f"--target-error must be a relative error between 0 and 1 (0.05 = 5%), got {target!r}")
    return float(target)


@dataclass(frozen=True)
class Budget:
    """One of the four budget forms, and how it is allocated; see the module docstring."""

    per_layer: int | None = None
    total: int | None = None
    ratio: float | None = None
    max_bytes: int | None = None
    rank: int | None = None
    target_error: float | None = None
    allocate: Allocate = "uniform"
    size_text: str | None = field(default=None, compare=False)  # --max-size as the user wrote it ("20kB")

    @classmethod
    def of(cls, budget: int | None = None, budget_total: int | None = None, budget_ratio: float | None = None,
           max_size: str | int | None = None, allocate: str = "uniform", rank: int | None = None,
           target_error: float | None = None) -> "Budget":
        """Validate that exactly one budget form is given and return it (InputError naming the option otherwise)."""
        given = [name for name, value in (("--budget", budget), ("--budget-total", budget_total),
                                          ("--budget-ratio", budget_ratio), ("--max-size", max_size), ("--rank", rank),
                                          ("--target-error", target_error)) if value is not None]
        if target_error is not None and len(given) > 1:
            raise InputError(f"give exactly one budget: --target-error or {given[0]}, not both")
        if len(given) != 1:
            raise InputError("give exactly one budget: --budget N (per layer), --budget-total N, --budget-ratio R, --max-size SIZE, "
                             "--rank R or --target-error E" + (f" (got {', '.join(given)})" if given else ""))
        if target_error is not None:
            return cls(target_error=validate_target(target_error), allocate="global")
        for value, what in ((budget, "budget"), (budget_total, "budget-total"), (rank, "rank")):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise InputError(f"{what} must be a positive integer number of stored values, got {value!r}")
        if budget_ratio is not None and not (isinstance(budget_ratio, (int, float)) and 0 < budget_ratio < math.inf):
            raise InputError(f"budget-ratio must be a positive fraction of the input's stored values, got {budget_ratio!r}")
        if allocate not in ALLOCATIONS:
            raise InputError(f"unknown allocation {allocate!r}; choose one of {', '.join(ALLOCATIONS)}")
        return cls(
            per_layer=budget,
            total=budget_total,
            ratio=float(budget_ratio) if budget_ratio is not None else None,
            max_bytes=parse_size(max_size) if max_size is not None else None,
            rank=rank,
            allocate=allocate,  # type: ignore[arg-type]
            size_text=str(max_size) if max_size is not None else None,
        )

    def with_total(self, total: int) -> "Budget":
        """The same allocation with a total of ``total`` stored values (how a size limit is met)."""
        return replace(self, per_layer=None, total=total, ratio=None, max_bytes=None, rank=None, target_error=None,
                       size_text=None)

    @property
    def form(self) -> str:
        for name in FORMS:
            if getattr(self, name) is not None:
                return name
        return "per_layer"

    def describe(self) -> str:
        form = self.form
        if form == "per_layer":
            return f"{self.per_layer} values per layer"
        if form == "total":
            return f"{self.total} values in total"
        if form == "ratio":
            return f"{self.ratio:g} of the input's stored values"
        if form == "rank":
            return f"rank {self.rank} per layer ({self.rank}·(d_out+d_in) values)"
        if form == "target_error":
            return f"relative error at most {self.target_error:g}"
        return f"at most {self.max_bytes} bytes on disk"

    def label(self) -> str:
        """Short tag for default output names: b3000, t90000, r0.25, s2000000, rank8, e0.05."""
        value = getattr(self, self.form)
        tags = {"per_layer": "b", "total": "t", "ratio": "r", "max_bytes": "s", "rank": "rank", "target_error": "e"}
        return tags[self.form] + f"{value:g}"

    def rank_budgets(self, names: Sequence[str], shapes: dict[str, tuple[int, int]]) -> dict[str, int]:
        """{layer: rank·(d_out + d_in)} for the ``rank`` form."""
        return {name: self.rank * (shapes[name][0] + shapes[name][1]) for name in names}


def budget_spec(budget: int | None = None, budget_total: int | None = None, budget_ratio: float | None = None,
                max_size: str | int | None = None, rank: int | None = None, allocate: str = "uniform") -> Budget:
    """:meth:`Budget.of` (the former name; positional order as before)."""
    return Budget.of(budget, budget_total, budget_ratio, max_size, allocate, rank=rank)


BudgetSpec = Budget  # the former name

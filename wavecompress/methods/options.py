"""Options shared by the methods; each method's default depths live in its registration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .registry import Method

# Row/column ordering used by default: "auto" keeps the lower-error of greedy and snake per layer
# (snake alone on layers with a side above 2048); "best" tries every ordering per layer and keeps the
# lowest error (transforms/reorder.py ordering_candidates; measured by benchmarks/ordering_table.py).
DEFAULT_REORDER = "auto"
REORDER_CHOICES = ("auto", "svd", "fiedler", "greedy", "snake", "best")


@dataclass(frozen=True)
class MethodOptions:
    """Wavelet family, decomposition depth (None takes the method's default) and row/column
    ordering (None: keep the model's order; see transforms/reorder.py)."""

    wavelet: str = "db1"
    levels: int | None = None
    reorder: str | None = None
    # waveft-seeded only: PEFT WaveFT's scaling and random_loc_seed (None: PEFT's defaults 25.0 and 777).
    scaling: float | None = None
    seed: int | None = None
    # Stored float precision: auto (each layer's input dtype), float32, bfloat16, float16 (methods/precision.py).
    dtype: str = "auto"

    def levels_for(self, method: "Method | str") -> int:
        """The decomposition depth: ``levels`` if given, else the method's default for this ordering."""
        if self.levels is not None:
            return self.levels
        if isinstance(method, str):
            from .registry import get_method

            method = get_method(method)
        return method.default_levels_reordered if self.reorder else method.default_levels


def reorder_choice(reorder: bool | str | None) -> str | None:
    """The row/column ordering to use: True → the default ordering, False/None/"none" → none."""
    if reorder is True:
        return DEFAULT_REORDER
    if reorder is False or reorder is None or reorder == "none":
        return None
    if reorder not in REORDER_CHOICES:
        from ..errors import InputError

        raise InputError(f"unknown reorder {reorder!r}; choose one of {', '.join(REORDER_CHOICES)} or none")
    return reorder

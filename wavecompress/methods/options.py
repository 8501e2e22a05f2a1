"""Options shared by the methods, with per-method defaults."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_LEVELS = {"waveft": 1, "wara": 3}
# Depths measured best once rows and columns are reordered (benchmarks/reorder_table.py):
# a reordered delta is smooth, so deeper approximation bands pay off.
DEFAULT_LEVELS_REORDERED = {"waveft": 5, "wara": 3}
# Row/column ordering used by default (greedy measured best on the MiniLM fixture, see
# benchmarks/reorder_table.py); "best" tries every ordering
# per layer and keeps the lowest error.
DEFAULT_REORDER = "greedy"
REORDER_CHOICES = ("svd", "fiedler", "greedy", "best")


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

    def levels_for(self, method: str) -> int:
        if self.levels is not None:
            return self.levels
        defaults = DEFAULT_LEVELS_REORDERED if self.reorder else DEFAULT_LEVELS
        return defaults.get(method, 1)
# Methods whose stored format carries row/column permutations (stock-seeded WaveFT cannot).
REORDERABLE = ("waveft", "wara")

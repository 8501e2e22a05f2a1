"""Options shared by the methods, with per-method defaults."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_LEVELS = {"waveft": 1, "wara": 3}


@dataclass(frozen=True)
class MethodOptions:
    """Wavelet family and decomposition depth; levels=None takes the method's default."""

    wavelet: str = "db1"
    levels: int | None = None

    def levels_for(self, method: str) -> int:
        return self.levels if self.levels is not None else DEFAULT_LEVELS.get(method, 1)

"""Keep-best: the held-out loss at every evaluation, a copy of the values at the lowest, early stopping.

Step 0 is the input itself, so the kept state is never worse than the input on the held-out texts;
when no step beats it, the input's values are returned unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class KeepBest:
    """Held-out losses by step; the parameters' values at the lowest; patience counted in evaluations."""

    params: list[nn.Parameter]
    patience: int | None = None
    history: list[tuple[int, float]] = field(default_factory=list)
    best_step: int = 0
    best_loss: float = math.inf
    stop_reason: str | None = None
    _best_values: list[torch.Tensor] | None = None

    def record(self, step: int, loss: float) -> bool:
        """Note the held-out loss after ``step`` steps; keep a copy of the values if it is a new lowest."""
        self.history.append((step, loss))
        if not (math.isfinite(loss) and loss < self.best_loss):
            return False
        self.best_step, self.best_loss = step, loss
        self._best_values = [p.detach().clone() for p in self.params]
        return True

    def should_stop(self) -> bool:
        """True once ``patience`` evaluations in a row brought no new lowest."""
        if self.patience is None:
            return False
        since = sum(1 for step, _ in self.history if step > self.best_step)
        if since >= self.patience:
            self.stop_reason = f"stopped early: {since} evaluations without a lower held-out loss"
            return True
        return False

    def restore(self) -> None:
        """Put the kept values back into the parameters."""
        if self._best_values is not None:
            with torch.no_grad():
                for param, value in zip(self.params, self._best_values):
                    param.copy_(value)

    def keep_last(self, steps: int) -> None:
        """Keep-best off: the values after the last of ``steps`` steps are the result, whatever their loss."""
        self.best_step = steps
        self.best_loss = next((loss for step, loss in reversed(self.history) if step == steps), math.nan)
        self._best_values = None
        self.stop_reason = (self.stop_reason + "; " if self.stop_reason else "") + "keep-best off: the last step is returned"

    @property
    def kept_input(self) -> bool:
        return self.best_step == 0

    def explain(self, name: str, trained_steps: int) -> str:
        """One line: which step was kept and why."""
        start = self.history[0][1] if self.history else math.nan
        evaluated = len(self.history)
        if self.kept_input:
            later = [loss for step, loss in self.history if step > 0 and math.isfinite(loss)]
            best_later = f"{min(later):.5g}" if later else "none finite"
            text = (f"kept the input's values unchanged: no step lowered the held-out {name} below the input's "
                    f"{start:.5g} (best after training {best_later}; {evaluated} evaluations over {trained_steps} steps)")
        else:
            text = (f"kept step {self.best_step} of {trained_steps}: lowest held-out {name} {self.best_loss:.5g} "
                    f"of {evaluated} evaluations (input {start:.5g})")
        return text + (f"; {self.stop_reason}" if self.stop_reason else "")

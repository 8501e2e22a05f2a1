"""Export any adapter wavecompress reads (its own outputs included) back to a plain PEFT LoRA.

Every layer's ΔŴ goes through the truncated-SVD path (methods/lora_svd): exact up to float
rounding at its numerical rank by default, or truncated to ``rank`` with the dropped singular
values reported as the error. The result loads in any LoRA consumer.
"""

from __future__ import annotations

from pathlib import Path

from .compress import DeltaSource, as_adapter_deltas
from .errors import InputError
from .formats import write_adapter
from .methods import MethodOptions, lora_svd
from .report import LayerReport, MethodSummary, Report


def export_lora(source: DeltaSource, out_dir: str | Path, rank: int | None = None, force: bool = False) -> Report:
    """Write ``source`` as a PEFT LoRA folder at ``out_dir``; ``rank`` caps each layer's rank (None: lossless)."""
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0):
        raise InputError(f"rank must be a positive integer, got {rank!r}")
    deltas = as_adapter_deltas(source)
    layers, rows = [], []
    for delta in deltas.layers:
        d_out, d_in = delta.shape
        budget = (rank if rank is not None else min(d_out, d_in)) * (d_out + d_in)
        kept = lora_svd.compress(delta, budget, MethodOptions())
        layers.append(kept)
        rows.append(LayerReport(delta.name, delta.shape, budget, kept.budget_clamped, MethodSummary.of(kept), {}))
    report = Report(method="lora", budget=max((row.budget for row in rows), default=0), source=deltas.source, layers=rows,
                    skipped=[{"name": s.name, "reason": s.reason} for s in deltas.skipped],
                    input_stored_values=deltas.stored_values)
    report.notes.append("exported to LoRA by truncated SVD of each layer's ΔŴ " +
                        (f"at rank ≤ {rank}" if rank is not None else "at its numerical rank (lossless up to float rounding)"))
    write_adapter(Path(out_dir), layers, deltas, report, force=force)
    return report

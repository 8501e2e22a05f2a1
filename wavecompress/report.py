"""Per-layer and overall reconstruction metrics for a method and its baselines; table and JSON.

Overall relative error is the Frobenius error over all layers together,
sqrt(Σ‖ΔW−ΔŴ‖² / Σ‖ΔW‖²), so large layers weigh as much as they matter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .methods.compressed_layer import CompressedLayer

REPORT_VERSION = 1


def format_bytes(count: int | float) -> str:
    """Bytes for people: 812 B, 459.1 kB, 2.00 MB, 1.35 GB (powers of 1000, as --max-size reads them)."""
    count = float(count)
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            value = count / size
            return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}"
    return f"{int(count)} B"


@dataclass
class MethodSummary:
    """One method's figures for one layer or for the whole adapter."""

    method: str
    stored_values: int
    bytes: int
    error_sq: float
    energy: float
    detail: dict[str, Any] = field(default_factory=dict)
    # Activation-weighted figures tr(E C Eᵀ), tr(ΔW C ΔWᵀ), present only with calibration data.
    act_error_sq: float | None = None
    act_energy: float | None = None

    @property
    def relative_error(self) -> float:
        return (self.error_sq / self.energy) ** 0.5 if self.energy > 0 else 0.0

    @property
    def activation_relative_error(self) -> float | None:
        """‖(ΔW − ΔŴ)C^{1/2}‖ / ‖ΔW C^{1/2}‖, or None without calibration data."""
        if self.act_error_sq is None or self.act_energy is None:
            return None
        return (self.act_error_sq / self.act_energy) ** 0.5 if self.act_energy > 0 else 0.0

    @property
    def energy_kept(self) -> float:
        return 1.0 - self.error_sq / self.energy if self.energy > 0 else 1.0

    @classmethod
    def of(cls, layer: CompressedLayer) -> "MethodSummary":
        detail = {"rank": layer.meta["rank"]} if "rank" in layer.meta else {}
        if "bands" in layer.meta:
            detail = {"bands": layer.meta["bands"], "levels": layer.meta["levels"]}
        elif "levels" in layer.meta:
            detail = {"levels": layer.meta["levels"]}
        if layer.meta.get("reorder"):
            detail["reorder"] = layer.meta["reorder"]
        return cls(layer.method, layer.stored_values, layer.stored_bytes, layer.error_sq, layer.energy, detail)

    def to_json(self) -> dict[str, Any]:
        out = {
            "method": self.method,
            "stored_values": self.stored_values,
            "bytes": self.bytes,
            "relative_error": self.relative_error,
            "energy_kept": self.energy_kept,
        }
        if self.activation_relative_error is not None:
            out["activation_relative_error"] = self.activation_relative_error
        out.update(self.detail)
        return out


@dataclass
class LayerReport:
    """Figures for one layer: the chosen method and each baseline at the same budget."""

    name: str
    shape: tuple[int, int]
    budget: int
    budget_clamped: bool
    result: MethodSummary
    baselines: dict[str, MethodSummary]

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "shape": list(self.shape), "budget": self.budget, "budget_clamped": self.budget_clamped}
        out.update(self.result.to_json())
        out["baselines"] = {name: summary.to_json() for name, summary in self.baselines.items()}
        return out


@dataclass
class Report:
    """The whole conversion: layers, skipped modules, and totals per method."""

    method: str
    budget: int
    source: str
    layers: list[LayerReport]
    skipped: list[dict[str, str]] = field(default_factory=list)
    input_stored_values: int = 0
    notes: list[str] = field(default_factory=list)
    # Budget form and allocation when not the plain per-layer budget (see methods/allocation.py).
    allocation: dict[str, Any] | None = None
    # Layers not selected by --include/--exclude, stored exactly: {"name", "shape", "stored_as", "stored_values", "bytes"}.
    kept: list[dict[str, Any]] = field(default_factory=list)
    # convert-many: the options the output was made with and their fingerprint (reused only when equal).
    options: dict[str, Any] | None = None

    def overall(self) -> dict[str, MethodSummary]:
        """Totals for the method and each baseline over all layers."""
        names = [self.method] + [b for b in (self.layers[0].baselines if self.layers else {})]
        totals = {}
        for name in names:
            rows = [layer.result if name == self.method else layer.baselines[name] for layer in self.layers]
            totals[name] = MethodSummary(
                name,
                sum(r.stored_values for r in rows),
                sum(r.bytes for r in rows),
                sum(r.error_sq for r in rows),
                sum(r.energy for r in rows),
            )
            if rows and all(r.act_error_sq is not None for r in rows):
                totals[name].act_error_sq = sum(r.act_error_sq for r in rows)
                totals[name].act_energy = sum(r.act_energy for r in rows)
        return totals

    @property
    def relative_error(self) -> float:
        return self.overall()[self.method].relative_error

    def to_json(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "source": self.source,
            "method": self.method,
            "budget": self.budget,
            "input_stored_values": self.input_stored_values,
            "layers": [layer.to_json() for layer in self.layers],
            "overall": {name: summary.to_json() for name, summary in self.overall().items()},
            "kept": self.kept,
            "skipped": self.skipped,
            "notes": self.notes,
        } | ({"allocation": self.allocation} if self.allocation else {}) | ({"options": self.options} if self.options else {})

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n"

    def format_table(self, max_name: int = 48) -> str:
        """A fixed-width text table: one row per layer and an overall row."""
        base_names = list(self.layers[0].baselines) if self.layers else []
        header = ["layer", "shape", "values", "bytes", "rel.err", "kept"]
        weighted = bool(self.layers) and self.layers[0].result.activation_relative_error is not None
        if weighted:
            header.append("act.err")
        for name in base_names:
            header += [f"{name} values", f"{name} err"]
        rows = []
        for layer in self.layers:
            name = layer.name if len(layer.name) <= max_name else "…" + layer.name[-(max_name - 1) :]
            row = [name, "×".join(map(str, layer.shape)), f"{layer.result.stored_values}", f"{layer.result.bytes}"]
            row.append(f"{layer.result.relative_error:.4f}")
            row.append(f"{layer.result.energy_kept:.4f}")
            if weighted:
                row.append(f"{layer.result.activation_relative_error:.4f}")
            for base in base_names:
                summary = layer.baselines[base]
                row += [f"{summary.stored_values}", f"{summary.relative_error:.4f}"]
            if layer.budget_clamped:
                row[2] += "*"
            rows.append(row)
        totals = self.overall()
        overall = ["OVERALL", f"{len(self.layers)} layers", f"{totals[self.method].stored_values}", f"{totals[self.method].bytes}"]
        overall += [f"{totals[self.method].relative_error:.4f}", f"{totals[self.method].energy_kept:.4f}"]
        if weighted:
            act = totals[self.method].activation_relative_error
            overall.append(f"{act:.4f}" if act is not None else "-")
        for base in base_names:
            overall += [f"{totals[base].stored_values}", f"{totals[base].relative_error:.4f}"]
        widths = [max(len(r[c]) for r in [header] + rows + [overall]) for c in range(len(header))]

        def line(cells: list[str]) -> str:
            return "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(cells, widths)))

        rule = "-" * len(line(header))
        title = f"method {self.method}, budget {self.budget} values per layer"
        if self.allocation:
            title = f"method {self.method}, budget {self.allocation['budget']}, allocated {self.allocation['mode']}"
        out = [title, line(header), rule]
        out += [line(r) for r in rows] + [rule, line(overall)]
        if any(layer.budget_clamped for layer in self.layers):
            out.append("* budget larger than this layer can use; clamped to what it holds")
        out.append("values: trainable stored values; bytes: on disk, indices and row/column permutations included")
        out.append("bytes per method: " + ", ".join(f"{name} {summary.bytes}" for name, summary in totals.items()))
        if weighted:
            out.append("act.err: ‖(ΔW−ΔŴ)C^½‖/‖ΔW C^½‖ on the calibration inputs; per method: " + ", ".join(
                f"{name} {summary.activation_relative_error:.4f}" for name, summary in totals.items()
                if summary.activation_relative_error is not None))
        if self.kept:
            values, size = sum(k["stored_values"] for k in self.kept), sum(k["bytes"] for k in self.kept)
            out.append(f"kept exactly (not selected by --include/--exclude; not in the figures above): {len(self.kept)} "
                       f"layers, {values} values, {size} bytes")
            out += [f"kept {k['name']}: {k['stored_as']}" for k in self.kept]
        for skipped in self.skipped:
            out.append(f"skipped {skipped['name']}: {skipped['reason']}")
        out += self.notes
        return "\n".join(out)

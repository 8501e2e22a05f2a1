"""Per-layer and overall reconstruction metrics for a method and its baselines; table and JSON.

Overall relative error is the Frobenius error over all layers together,
sqrt(Σ‖ΔW−ΔŴ‖² / Σ‖ΔW‖²), so large layers weigh as much as they matter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .methods.compressed_layer import CompressedLayer

REPORT_VERSION = 1


def _narrow_legend(headers: list[str], method: str) -> str:
    """What the 100-column table's baseline headers mean."""
    same_values = [h for h in headers if not h.endswith("@B")]
    same_bytes = [h for h in headers if h.endswith("@B")]
    text = f"{', '.join(same_values)}: error at the same values"
    if any(h in ("plain", "reordered") for h in headers):
        text += f" (plain/reordered: {method} in the other row/column order)"
    if same_bytes:
        text += f"; {', '.join(same_bytes)}: at the same bytes as the output, allocated globally"
    return text + "; --wide: every column"


def _short_name(name: str, method: str) -> str:
    """A baseline's column header in the 100-column table: ``plain`` for ``<method>-plain``, ``@B`` for ``@bytes``."""
    return name.replace(f"{method}-", "").replace("@bytes", "@B")


def _block_prefix(names: list[str]) -> str:
    """The part before the block index that every indexed name shares ("bert.encoder.layer." of
    "bert.encoder.layer.3.attention.self.query"), or "" when there is none."""
    import re

    prefixes = {m.group(1) for m in (re.match(r"^(.*?\.)\d+\.", name) for name in names) if m}
    return prefixes.pop() if len(prefixes) == 1 else ""


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


def same_error(a: MethodSummary, b: MethodSummary, digits: int = 4) -> bool:
    """True when two relative errors are equal at the ``digits`` decimals the verdict shows them in:
    a tie, which no method wins."""
    return f"{a.relative_error:.{digits}f}" == f"{b.relative_error:.{digits}f}"


def weight_bytes(path: str | Path | None) -> int | None:
    """Bytes of an adapter on disk: a file's size, or a folder's weight files (.safetensors, .bin, .pt,
    .pth); None when the path is not a local file or folder."""
    if path is None or not Path(path).exists():
        return None
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    files = [f for f in path.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".bin", ".pt", ".pth")]
    return sum(f.stat().st_size for f in files) if files else None


def size_note(output_bytes: int | None, input_bytes: int | None) -> str | None:
    """One line when an output's weights are larger than its input's (and by how much), else None."""
    if not output_bytes or not input_bytes or output_bytes <= input_bytes:
        return None
    return (f"note: the output ({format_bytes(output_bytes)}) is larger than its input ({format_bytes(input_bytes)}): "
            f"{output_bytes / input_bytes:.2f}x, +{format_bytes(output_bytes - input_bytes)}")


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
    # Modules whose delta cannot be formed from the input (deltas/adapter_deltas.py CarriedModule):
    # written verbatim, or dropped with --drop-unconvertible: {"name", "reason", "keys", "stored_values"}.
    carried: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)

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
            act_errors = [r.act_error_sq for r in rows]
            act_energies = [r.act_energy for r in rows]
            if rows and all(v is not None for v in act_errors):
                totals[name].act_error_sq = sum(v for v in act_errors if v is not None)
                totals[name].act_energy = sum(v for v in act_energies if v is not None)
        return totals

    @property
    def relative_error(self) -> float:
        return self.overall()[self.method].relative_error

    def verdict(self) -> str:
        """One line in both currencies: the method's figures, then who wins at equal trainable values
        (baselines at the same budget) and at equal bytes (``<baseline>@bytes``, see equal_bytes.py)."""
        return " | ".join(self.verdict_parts())

    def verdict_parts(self) -> list[str]:
        """The verdict's parts: the method's figures, then one part per currency that has a comparison."""
        totals = self.overall()
        own = totals[self.method]
        parts = [f"{self.method}: {own.stored_values} values, {own.bytes} B, relative error {own.relative_error:.4f}"]
        at_values = {n: s for n, s in totals.items() if not n.endswith("@bytes")}
        at_bytes = {self.method: own} | {n: s for n, s in totals.items() if n.endswith("@bytes")}
        for label, group in (("equal values", at_values), (f"equal bytes ({own.bytes} B)", at_bytes)):
            if len(group) < 2:
                continue
            best = min(group, key=lambda n: (group[n].relative_error, n != self.method))
            others = ", ".join(f"{n.removesuffix('@bytes')} {s.relative_error:.4f}" for n, s in group.items() if n != self.method)
            tied = [n.removesuffix("@bytes") for n in group if n != best and same_error(group[n], group[best])]
            if tied:  # equal within the shown rounding: nobody wins
                parts.append(f"{label}: {others} -> tie: {', '.join([best.removesuffix('@bytes'), *tied])}")
            else:
                parts.append(f"{label}: {others} -> {best.removesuffix('@bytes')} wins")
        return parts

    def carried_lines(self) -> list[str]:
        """One line each for the modules carried verbatim and dropped, with a few of their names."""
        lines = []
        for label, modules in (("carried verbatim (no ΔW without the base weights or a known form)", self.carried),
                               ("dropped by --drop-unconvertible", self.dropped)):
            if modules:
                names = ", ".join(m["name"] for m in modules[:3]) + (f", … ({len(modules) - 3} more)" if len(modules) > 3 else "")
                lines.append(f"{label}: {len(modules)} modules, {sum(m['stored_values'] for m in modules)} values: {names}")
        return lines

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
        } | ({"carried": self.carried} if self.carried else {}) | ({"dropped": self.dropped} if self.dropped else {}) \
          | ({"allocation": self.allocation} if self.allocation else {}) | ({"options": self.options} if self.options else {})

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n"

    def format_table(self, max_name: int = 48, wide: bool = False, width: int = 100) -> str:
        """A fixed-width text table: one row per layer and an overall row.

        By default it fits ``width`` columns: the method's values, size and error, and each baseline's
        error (long layer names are shortened from the left). ``wide``: every column, raw bytes included.
        """
        base_names = list(self.layers[0].baselines) if self.layers else []
        weighted = bool(self.layers) and self.layers[0].result.activation_relative_error is not None
        totals = self.overall()

        def cells(label: str, shape: str, result: MethodSummary, baselines: dict[str, MethodSummary], clamped: bool) -> list[str]:
            values = f"{result.stored_values}" + ("*" if clamped else "")
            row = [label, shape, values, f"{result.bytes}" if wide else format_bytes(result.bytes), f"{result.relative_error:.4f}"]
            if wide:
                row.append(f"{result.energy_kept:.4f}")
            if weighted:
                act = result.activation_relative_error
                row.append(f"{act:.4f}" if act is not None else "-")
            for base in base_names:
                row += ([f"{baselines[base].stored_values}"] if wide else []) + [f"{baselines[base].relative_error:.4f}"]
            return row

        header = ["layer", "shape", "values", "bytes" if wide else "size", "rel.err"] + (["kept"] if wide else [])
        header += ["act.err"] if weighted else []
        short = {name: _short_name(name, self.method) for name in base_names}
        for name in base_names:
            header += [f"{name} values", f"{name} err"] if wide else [short[name]]
        rows = [cells(layer.name, "×".join(map(str, layer.shape)), layer.result, layer.baselines, layer.budget_clamped)
                for layer in self.layers]
        overall = cells("OVERALL", f"{len(self.layers)} layers", totals[self.method],
                        {b: totals[b] for b in base_names}, False)
        widths = [max(len(r[c]) for r in [header] + rows + [overall]) for c in range(1, len(header))]
        room = max_name if wide else max(16, min(max_name, width - sum(widths) - 2 * (len(header) - 1)))
        prefix = _block_prefix([row[0] for row in rows]) if not wide and any(len(row[0]) > room for row in rows) else ""
        if prefix:
            for row in rows:
                if row[0].startswith(prefix):
                    row[0] = row[0][len(prefix):]  # "bert.encoder.layer." named once, below the table
        for row in rows:
            if len(row[0]) > room:  # keep the start (layer index) and the end (module), drop the middle
                head = room // 3
                row[0] = row[0][:head] + "…" + row[0][-(room - head - 1):]
        widths = [max(len(r[0]) for r in [header] + rows + [overall])] + widths

        def line(cells: list[str]) -> str:
            return "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(cells, widths)))

        rule = "-" * len(line(header))
        title = f"method {self.method}, budget {self.budget} values per layer"
        if self.allocation:
            title = f"method {self.method}, budget {self.allocation['budget']}, allocated {self.allocation['mode']}"
        out = [title, line(header), rule]
        out += [line(r) for r in rows] + [rule, line(overall)]
        table_lines = len(out)  # never wrapped: the notes below are
        if any(layer.budget_clamped for layer in self.layers):
            out.append("* budget larger than this layer can use; clamped to what it holds")
        if prefix:
            out.append(f"layers N.… are {prefix}N.…")
        out.append("values: trainable stored values; size: on disk, indices and row/column permutations included; "
                   + ("<baseline> err: its error at the same budget; <baseline>@bytes: at the same bytes as the output, "
                      "allocated globally" if wide else
                      _narrow_legend(list(short.values()), self.method)))
        out.append("size per method: " + ", ".join(f"{name} {format_bytes(summary.bytes)} ({summary.bytes} B)"
                                                    for name, summary in totals.items()))
        if weighted:
            out.append("act.err: ‖(ΔW−ΔŴ)C^½‖/‖ΔW C^½‖ on the calibration inputs; per method: " + ", ".join(
                f"{name} {summary.activation_relative_error:.4f}" for name, summary in totals.items()
                if summary.activation_relative_error is not None))
        if self.kept:
            values, size = sum(k["stored_values"] for k in self.kept), sum(k["bytes"] for k in self.kept)
            out.append(f"kept exactly (not selected by --include/--exclude; not in the figures above): {len(self.kept)} "
                       f"layers, {values} values, {format_bytes(size)}")
            out += [f"kept {k['name']}: {k['stored_as']}" for k in self.kept]
        out += self.carried_lines()
        for skipped in self.skipped:
            out.append(f"skipped {skipped['name']}: {skipped['reason']}")
        out += self.notes
        if wide:
            return "\n".join(out)
        import textwrap

        return "\n".join(wrapped for index, text in enumerate(out) for wrapped in (
            [text] if len(text) <= width or index < table_lines
            else textwrap.wrap(text, width, subsequent_indent="  ", break_on_hyphens=False)))

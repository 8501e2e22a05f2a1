"""Rate-distortion analysis: relative error vs budget for every method and layer group, plot + CSV + JSON.

Every number comes from the methods' own rate-distortion curves (methods/rate_distortion.py), so a
point at budget b is exactly what ``convert --budget b`` would report. Groups are the layer types
(the module path after the block index: ``attention.self.query``, ``intermediate.dense``, ...) plus
``all``; a group's error is the Frobenius error over its layers together. Thresholds are the
smallest per-layer budget at which a method's error reaches 10% / 5% / 1% (exact, by bisection).

``x="bytes"`` also measures every point's size: each layer compressed at each budget and rounded to
the output precision exactly as ``convert --dtype`` stores it (equal_bytes.stored_summary, the
function behind the report's columns), so a point's x is the report's bytes (Σ stored tensor bytes,
indices and permutations included; the safetensors header comes on top) and its error the report's.
A chosen budget (``--budget N`` or ``--max-size SIZE``) is drawn as a vertical marker.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .deltas.in_memory import DeltaSource, as_adapter_deltas
from .deltas.layer_delta import LayerDelta
from .errors import InputError
from .methods import all_methods, get_method
from .methods.budget import Budget
from .methods.options import MethodOptions, reorder_choice
from .methods.precision import layer_dtype, validate_dtype
from .methods.rate_distortion import LowestCurve, RDCurve, rd_curve
from .report import format_bytes
from .transforms import validate_wavelet
from .transforms.reorder import ordering_candidates

# Every method with its own exact curve (Method.rd_curve): waveft, wara, lora, sparse.
DEFAULT_METHODS = tuple(m.name for m in all_methods() if m.rd_curve is not None)
THRESHOLDS = (0.10, 0.05, 0.01)
TABLE_BUDGETS = (256, 768, 3000, 8192, 32768)
PNG_NAME, CSV_NAME, JSON_NAME = "rate_distortion.png", "rate_distortion.csv", "rate_distortion.json"
X_AXES = ("values", "bytes")
BYTES_POINTS = 24  # budgets measured per curve with x="bytes"
MARK_GID = "budget-mark"  # matplotlib gid of the chosen budget's marker lines


def layer_group(name: str) -> str:
    """The layer type: the module path after the last block index (``...layer.3.attention.self.query``
    → ``attention.self.query``), or the whole name when it has no index."""
    parts = name.split(".")
    index = max((i for i, part in enumerate(parts) if part.isdigit()), default=-1)
    return ".".join(parts[index + 1 :]) or name


@dataclass
class Analysis:
    """Curves per (method, group) at a grid of per-layer budgets, and the threshold budgets."""

    source: str
    methods: list[str]
    groups: dict[str, list[str]]
    budgets: list[int]
    errors: dict[str, dict[str, list[float]]]  # method → group → relative error per budget
    stored: dict[str, dict[str, list[int]]]  # method → group → stored values per budget
    thresholds: dict[str, dict[str, dict[str, int | None]]]  # group → method → "10%" → budget
    notes: list[str] = field(default_factory=list)
    # x="bytes": method → group → the report's bytes (stored tensors) per budget, and at each threshold budget
    bytes: dict[str, dict[str, list[int]]] | None = None
    threshold_bytes: dict[str, dict[str, dict[str, int | None]]] | None = None
    dtype: str | None = None  # the --dtype the bytes were measured in
    mark: Budget | None = None  # the chosen budget drawn on the plot (per_layer or max_bytes)

    @property
    def x(self) -> str:
        """The plot's x axis: ``bytes`` when sizes were measured, else ``values``."""
        return "bytes" if self.bytes is not None else "values"

    def rows(self) -> list[dict[str, Any]]:
        """One row per (group, method, budget): the CSV content."""
        out = []
        for group in self.groups:
            for method in self.methods:
                for i, budget in enumerate(self.budgets):
                    row = {"group": group, "method": method, "budget_per_layer": budget,
                           "stored_values": self.stored[method][group][i]}
                    if self.bytes is not None:
                        row["stored_bytes"] = self.bytes[method][group][i]
                    out.append({**row, "relative_error": self.errors[method][group][i]})
        return out

    def to_json(self) -> dict[str, Any]:
        out = {"source": self.source, "methods": self.methods, "x": self.x,
               "groups": {g: {"layers": names} for g, names in self.groups.items()},
               "budgets_per_layer": self.budgets, "relative_error": self.errors, "stored_values": self.stored,
               "thresholds": self.thresholds, "notes": self.notes}
        if self.bytes is not None:
            out.update(stored_bytes=self.bytes, threshold_bytes=self.threshold_bytes, dtype=self.dtype)
        if self.mark is not None:
            out["mark"] = {"per_layer": self.mark.per_layer, "max_bytes": self.mark.max_bytes, "label": mark_label(self.mark)}
        return out

    def csv_text(self) -> str:
        buffer = io.StringIO()
        columns = ["group", "method", "budget_per_layer", "stored_values"] + (["stored_bytes"] if self.bytes else [])
        writer = csv.DictWriter(buffer, [*columns, "relative_error"], lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({**row, "relative_error": f"{row['relative_error']:.6g}"})
        return buffer.getvalue()

    def error_at(self, method: str, group: str, budget: int) -> float:
        """Relative error of ``method`` on ``group`` at per-layer ``budget`` (must be on the grid)."""
        return self.errors[method][group][self.budgets.index(budget)]

    def error_within(self, method: str, group: str, size: int) -> tuple[float, int] | None:
        """(error, bytes) of the largest plotted budget whose stored bytes fit in ``size`` (x="bytes"), or None."""
        assert self.bytes is not None
        fitting = [i for i, b in enumerate(self.bytes[method][group]) if b <= size]
        if not fitting:
            return None
        i = max(fitting, key=lambda j: self.budgets[j])
        return self.errors[method][group][i], self.bytes[method][group][i]

    def table_sizes(self, group: str = "all", count: int = 5) -> list[int]:
        """Up to ``count`` sizes (1, 3, 10, 30 ... kB) across the plotted bytes, plus a --max-size mark."""
        assert self.bytes is not None
        sizes = [b for m in self.methods for b in self.bytes[m][group] if b > 0]
        ladder = [k * 10**e for e in range(2, 13) for k in (1, 3)]
        inside = [s for s in ladder if min(sizes) <= s <= max(sizes)] if sizes else []
        if len(inside) > count:
            inside = [inside[round(i * (len(inside) - 1) / (count - 1))] for i in range(count)]
        if self.mark is not None and self.mark.max_bytes is not None:
            inside = sorted({*inside, self.mark.max_bytes})
        return inside

    def format_table(self, budgets: Sequence[int] = TABLE_BUDGETS, group: str = "all") -> str:
        """Markdown table: relative error per method at a few per-layer budgets (x="bytes": at a few
        sizes), then thresholds (x="bytes": the size at the threshold budget)."""
        if self.bytes is not None:
            return self._format_bytes_table(group)
        shown = [b for b in budgets if b in self.budgets]
        lines = ["| method | " + " | ".join(f"{b} / layer" for b in shown) + " | 10% at | 5% at | 1% at |",
                 "|---|" + "---:|" * (len(shown) + 3)]
        for method in self.methods:
            cells = [f"{self.error_at(method, group, b):.4f}" for b in shown]
            cells += [str(self.thresholds[group][method][f"{int(t * 100)}%"] or "—") for t in THRESHOLDS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def _format_bytes_table(self, group: str) -> str:
        assert self.bytes is not None and self.threshold_bytes is not None
        sizes = self.table_sizes(group)
        lines = ["| method | " + " | ".join(f"≤ {format_bytes(s)}" for s in sizes) + " | 10% at | 5% at | 1% at |",
                 "|---|" + "---:|" * (len(sizes) + 3)]
        for method in self.methods:
            cells = []
            for size in sizes:
                found = self.error_within(method, group, size)
                cells.append(f"{found[0]:.4f}" if found is not None else "—")
            for t in THRESHOLDS:
                size = self.threshold_bytes[group][method][f"{int(t * 100)}%"]
                cells.append(format_bytes(size) if size is not None else "—")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def sizes_at(self, budget: int, group: str = "all") -> dict[str, int]:
        """{method: the report's bytes} at per-layer ``budget`` (a plotted budget; x="bytes")."""
        assert self.bytes is not None
        i = self.budgets.index(budget)
        return {method: self.bytes[method][group][i] for method in self.methods}


def mark_label(mark: Budget) -> str:
    """The marker's label: ``--budget 3000`` or ``--max-size 300kB``."""
    if mark.max_bytes is not None:
        return f"--max-size {mark.size_text or mark.max_bytes}"
    return f"--budget {mark.per_layer}"


def check_axis(x: str, dtype: str, mark: Budget | None) -> None:
    """InputError (naming the option) for an x axis, --dtype or marked budget analyze cannot draw."""
    if x not in X_AXES:
        raise InputError(f"unknown --x {x!r}; choose one of {', '.join(X_AXES)}")
    if x == "values" and dtype != "auto":
        raise InputError("--dtype sets the precision the sizes are measured in: use it with --x bytes")
    if mark is None:
        return
    if mark.form not in ("per_layer", "max_bytes") or mark.allocate != "uniform":
        raise InputError("analyze marks --budget N (values per layer) or --max-size SIZE on its curves, nothing else")
    if mark.max_bytes is not None and x != "bytes":
        raise InputError("--max-size marks a file size: use it with --x bytes")


def budget_grid(max_budget: int, points: int = 48, extra: Sequence[int] = TABLE_BUDGETS) -> list[int]:
    """Geometric per-layer budgets from 16 to ``max_budget``, plus the table's budgets."""
    grid = {int(round(b)) for b in np.geomspace(16, max(max_budget, 17), points)}
    grid.update(b for b in extra if b <= max_budget)
    return sorted(grid)


def _group_error(curves: list[RDCurve], budget: int) -> tuple[float, int]:
    error = sum(c.error_sq_at(budget) for c in curves)
    energy = sum(c.energy for c in curves)
    return ((error / energy) ** 0.5 if energy > 0 else 0.0), sum(c.stored_at(budget) for c in curves)


def threshold_budget(curves: list[RDCurve], target: float, high: int) -> int | None:
    """Smallest per-layer budget with group error ≤ ``target`` (errors only fall with budget), or None."""
    if _group_error(curves, high)[0] > target:
        return None
    low = 0
    while high - low > 1:
        mid = (low + high) // 2
        if _group_error(curves, mid)[0] <= target:
            high = mid
        else:
            low = mid
    return high


def layer_curve(delta: LayerDelta, method: str, options: MethodOptions, max_cost: int | None) -> RDCurve | LowestCurve:
    """The layer's curve; with several candidate orderings (auto, best) one curve per ordering, read
    as the lowest at each budget, since convert keeps the lowest-error ordering at the budget it runs."""
    if options.reorder and get_method(method).reorderable:
        candidates = ordering_candidates(options.reorder, [delta.shape])
        if len(candidates) > 1:
            return LowestCurve([rd_curve(delta, method, replace(options, reorder=o), max_cost=max_cost) for o in candidates])
    return rd_curve(delta, method, options, max_cost=max_cost)


def analyze(source: DeltaSource, methods: Sequence[str] = DEFAULT_METHODS, wavelet: str = "db1", levels: int | None = None,
            reorder: bool | str | None = True, plain_variants: bool = True, max_budget: int | None = None,
            progress: bool | None = False, x: str = "values", dtype: str = "auto", mark: Budget | None = None) -> Analysis:
    """Rate-distortion curves of every method (and each reorderable method's plain-order variant).

    ``progress=None`` shows a progress bar (one step per layer) only on a terminal. ``x="bytes"``
    measures each point's stored bytes (and error) in precision ``dtype``, as ``convert`` reports
    them; ``mark`` (a per-layer or max-size Budget) is drawn on the plot, a per-layer one is on the grid."""
    dtype = validate_dtype(dtype)
    check_axis(x, dtype, mark)
    for method in methods:
        get_method(method)
    marked = mark.per_layer if mark is not None and mark.per_layer is not None else None
    if marked is not None and max_budget is not None:
        max_budget = max(max_budget, marked)
    deltas = as_adapter_deltas(source)
    options = MethodOptions(wavelet=validate_wavelet(wavelet), levels=levels, reorder=reorder_choice(reorder))
    variants: dict[str, tuple[str, MethodOptions]] = {m: (m, options) for m in methods}
    if plain_variants and options.reorder:
        for m in methods:
            if get_method(m).reorderable:
                variants[f"{m}-plain"] = (m, MethodOptions(wavelet=options.wavelet, levels=levels, reorder=None))
    curves: dict[str, list[RDCurve | LowestCurve]] = {v: [] for v in variants}
    groups: dict[str, list[str]] = {}
    top = 0
    from tqdm.auto import tqdm

    bar = tqdm(deltas.layers, desc=f"analyze {len(variants)} curves per layer", unit="layer",
               disable=None if progress is None else not progress)
    for delta in bar:
        top = max(top, delta.shape[0] * delta.shape[1])
        groups.setdefault(layer_group(delta.name), []).append(delta.name)
        for variant, (method, opts) in variants.items():
            curves[variant].append(layer_curve(delta, method, opts, max_budget))
    if not groups:
        raise InputError(f"{deltas.source}: no layers to analyze")
    limit = max_budget or top
    # x=bytes compresses every layer at every budget (a large top-k takes a good fraction of a second): half the points
    grid = budget_grid(limit, points=48 if x == "values" else BYTES_POINTS,
                       extra=(*(TABLE_BUDGETS if x == "values" else ()), *([marked] if marked is not None else [])))
    if marked is not None and marked not in grid:  # above every layer's size: the top of the curves
        grid.append(marked)
    groups = {"all": [name for names in groups.values() for name in names], **dict(sorted(groups.items()))}
    errors: dict[str, dict[str, list[float]]] = {}
    stored: dict[str, dict[str, list[int]]] = {}
    thresholds: dict[str, dict[str, dict[str, int | None]]] = {g: {} for g in groups}
    for variant, layer_curves in curves.items():
        errors[variant], stored[variant] = {}, {}
        for group, names in groups.items():
            chosen = [c for c in layer_curves if c.name in set(names)]
            points = [_group_error(chosen, b) for b in grid]
            errors[variant][group] = [p[0] for p in points]
            stored[variant][group] = [p[1] for p in points]
            thresholds[group][variant] = {f"{int(t * 100)}%": threshold_budget(chosen, t, limit) for t in THRESHOLDS}
    notes = [f"{len(groups['all'])} layers; budgets are stored values per layer (convert --budget); "
             "group errors are Frobenius over the group's layers together; — = not reached by "
             f"{limit} values per layer"]
    if options.reorder:
        notes.append(f"waveft/wara rows and columns reordered ({options.reorder}); '-plain' keeps the model's order")
    result = Analysis(deltas.source, list(curves), groups, grid, errors, stored, thresholds, notes, mark=mark)
    if x == "bytes":
        measure_sizes(result, deltas, variants, curves, dtype, progress)
    return result


def measure_sizes(analysis: Analysis, deltas, variants: dict[str, tuple[str, MethodOptions]],
                  curves: dict[str, list[RDCurve | LowestCurve]], dtype: str, progress: bool | None) -> None:
    """Fill ``analysis.bytes`` (and its errors) with what ``convert --budget b --dtype dtype`` reports at
    every plotted budget, and the bytes at each threshold budget.

    A reordered method is converted by the pipeline itself at each budget (its layers may share a column
    permutation, chosen by measured error: methods/shared_permutations.py), which also gives its
    ``-plain`` column; any other curve is the report's per-layer summary (equal_bytes.stored_summary)."""
    from tqdm.auto import tqdm

    budgets = analysis.budgets
    wanted = {v: {*budgets, *(b for g in analysis.groups for b in analysis.thresholds[g][v].values() if b is not None)}
              for v in variants}
    # an exact curve holds every step its method can take: any larger budget stores the same layer
    full = {v: {c.name: int(c.costs.sum()) if get_method(variants[v][0]).rd_curve is not None else None for c in cs}
            for v, cs in curves.items()}
    converted = {v: f"{m}-plain" for v, (m, opts) in variants.items() if v == m and opts.reorder and get_method(m).reorderable}
    found: dict[str, dict[int, dict[str, Any]]] = {v: {} for v in variants}  # variant → budget → layer → summary
    runs = [(v, b) for v in converted for b in sorted(wanted[v] | wanted.get(converted[v], set()))]
    for variant, budget in tqdm(runs, desc="measure bytes: convert at each budget", unit="run",
                                disable=None if progress is None or not runs else not progress):
        _converted_sizes(found, deltas, variant, converted[variant], budget, variants[variant][1], dtype,
                         _saturation(full, variant, converted[variant]))
    seen = _per_layer_sizes(found, deltas, {v: variants[v] for v in variants if v not in converted and v not in converted.values()},
                            wanted, full, dtype, progress)
    if dtype == "auto":  # name what auto found: the input's dtype(s)
        dtype = "/".join(sorted(seen))
    analysis.bytes, analysis.threshold_bytes, analysis.dtype = {}, {g: {} for g in analysis.groups}, dtype
    for variant in variants:
        analysis.bytes[variant] = {}
        at = found[variant]
        for group, names in analysis.groups.items():
            analysis.bytes[variant][group] = [sum(at[b][name].bytes for name in names) for b in budgets]
            error_sq = [sum(at[b][name].error_sq for name in names) for b in budgets]
            energy = sum(at[budgets[0]][name].energy for name in names)
            analysis.errors[variant][group] = [(e / energy) ** 0.5 if energy > 0 else 0.0 for e in error_sq]
            analysis.threshold_bytes[group][variant] = {
                key: (sum(at[b][name].bytes for name in names) if b is not None else None)
                for key, b in analysis.thresholds[group][variant].items()}
    analysis.notes.append(f"x = stored bytes in {dtype} as convert's report counts them (tensors, indices and permutations; "
                          "the safetensors header comes on top); errors measured from the rounded values; "
                          "size columns: the largest plotted per-layer budget that fits")


def _saturation(full: dict[str, dict[str, int | None]], *variants: str) -> int | None:
    """The largest per-layer budget that changes any layer of these curves (None: not known, a sampled curve)."""
    sizes = [n for v in variants for n in full.get(v, {}).values()]
    return None if not sizes or None in sizes else max(sizes)


def _converted_sizes(found: dict, deltas, variant: str, plain: str, budget: int, options: MethodOptions, dtype: str,
                     saturated: int | None) -> None:
    """The report's per-layer summaries of ``convert --budget budget`` (and its -plain column) into ``found``."""
    from .pipeline import Job, run

    key = budget if saturated is None else min(budget, saturated)
    if key not in found[variant]:
        job = Job(method=get_method(variant), budget=Budget(per_layer=key), options=replace(options, dtype=dtype), baselines=())
        rows = run(deltas, job).report.layers
        found[variant][key] = {row.name: row.result for row in rows}
        if plain in found:
            found[plain][key] = {row.name: row.baselines[plain] for row in rows}
    found[variant][budget] = found[variant][key]
    if plain in found:
        found[plain][budget] = found[plain][key]


def _per_layer_sizes(found: dict, deltas, variants: dict[str, tuple[str, MethodOptions]], wanted: dict[str, set[int]],
                     full: dict[str, dict[str, int | None]], dtype: str, progress: bool | None) -> set[str]:
    """Each layer's report summary (equal_bytes.stored_summary) at every wanted budget into ``found``;
    returns the stored dtypes met."""
    from tqdm.auto import tqdm

    from .equal_bytes import stored_summary

    seen: set[str] = set()
    bar = tqdm(deltas.layers, desc=f"measure bytes of {len(variants)} curves per layer", unit="layer",
               disable=None if progress is None or not variants else not progress)
    for delta in bar:
        seen.add(str(layer_dtype(dtype, delta)).replace("torch.", ""))
        for variant, (method, opts) in variants.items():
            opts, limit, summaries = replace(opts, dtype=dtype), full[variant][delta.name], {}
            for budget in sorted(wanted[variant], reverse=True):  # largest first: a cached top-k serves the rest
                key = budget if limit is None else min(budget, limit)
                if key not in summaries:
                    summaries[key] = stored_summary(method, delta, key, opts, None)
                found[variant].setdefault(budget, {})[delta.name] = summaries[key]
    return seen


# (color, line style, marker, width, z-order): baselines drawn wide and pale underneath, plain-order variants
# dashed with markers on top, so coinciding curves (plain top-k often lies on the weight-domain one) stay visible.
STYLES = {"waveft": ("C0", "-", None, 1.8, 3), "wara": ("C1", "-", None, 1.8, 3), "lora": ("C2", "-", None, 1.8, 3),
          "sparse": ("0.55", "-", None, 4.5, 1), "waveft-plain": ("C0", "--", "o", 1.2, 4),
          "wara-plain": ("C1", "--", "s", 1.2, 4)}


def error_floor(analysis: Analysis) -> float:
    """The bottom of the error axis: below every positive error plotted (never clipping one), at most 1e-3."""
    positive = [v for method in analysis.methods for group in analysis.groups
                for v in analysis.errors[method][group] if v > 0]
    return max(min([1e-3, *[0.5 * v for v in positive]]), 1e-12)


def figure(analysis: Analysis, title: str | None = None):
    """The matplotlib figure: one panel per layer group, relative error vs per-layer budget, log-log.

    Errors of exactly 0 (lossless budgets) cannot sit on a log axis: they are drawn as ▼ on the bottom edge.
    The legend sits below the panels, clear of the 10%/5%/1% labels (drawn at the right edge).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(analysis.groups)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows + 0.6), squeeze=False)
    floor = error_floor(analysis)
    by_bytes = analysis.bytes is not None
    marked_zero = False
    for ax, group in zip(axes.flat, names):
        for rank, method in enumerate(analysis.methods):
            color, style, marker, width, order = STYLES.get(method, (None, "-.", "^", 1.4, 2))
            xs = np.asarray(analysis.bytes[method][group] if by_bytes else analysis.budgets, dtype=float)
            values = np.asarray(analysis.errors[method][group], dtype=float)
            shown = xs > 0  # a budget that stores nothing (LoRA below rank 1) has no place on a log byte axis
            xs, values = xs[shown], values[shown]
            ax.plot(xs, np.where(values > 0, values, np.nan), linestyle=style, color=color, lw=width, marker=marker,
                    markersize=3.5, markevery=max(len(xs) // 8, 1), zorder=order, label=method,
                    alpha=0.75 if order == 1 else 1.0)
            zero = values <= 0
            if zero.any():
                lift = floor * 1.15 * 1.25 ** rank  # one row per method, so coinciding exact points stay visible
                ax.plot(xs[zero], np.full(int(zero.sum()), lift), "v", color=color, markersize=4,
                        zorder=5, clip_on=False, label="_nolegend_")
                marked_zero = True
        if analysis.mark is not None:
            draw_mark(ax, analysis, group)
        for target in THRESHOLDS:
            ax.axhline(target, color="0.6", lw=0.8, ls="--", zorder=0)
            ax.text(0.99, target * 1.06, f"{int(target * 100)}%", color="0.4", fontsize=8, ha="right",
                    transform=ax.get_yaxis_transform())
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(floor, 1.2)
        ax.set_title(f"{group} ({len(analysis.groups[group])} layers)", fontsize=10)
        ax.set_xlabel(f"stored bytes ({analysis.dtype}, as the report counts them)" if by_bytes
                      else "budget: stored values per layer")
        ax.set_ylabel("relative error ‖ΔW−ΔŴ‖/‖ΔW‖")
        ax.grid(True, which="both", alpha=0.25)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    from matplotlib.lines import Line2D

    if marked_zero:
        handles.append(Line2D([], [], color="0.3", marker="v", linestyle="none"))
        labels.append("error 0 (exact)")
    if analysis.mark is not None:
        handles.append(Line2D([], [], color="0.15", linestyle=":"))
        each = by_bytes and analysis.mark.per_layer is not None
        labels.append(mark_label(analysis.mark) + (" (each method's size, its colour)" if each else ""))
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=8, frameon=False)
    source = Path(analysis.source)
    name = source.parent.name if source.suffix == ".safetensors" else source.name
    against = "stored bytes" if by_bytes else "budget"
    fig.suptitle(title or f"rate-distortion of {name}: relative error vs {against}, per layer group", fontsize=12)
    fig.tight_layout(rect=(0, 0.6 / (3.9 * rows + 0.6), 1, 1))
    return fig


def draw_mark(ax, analysis: Analysis, group: str) -> None:
    """The chosen budget on one panel: a --max-size line (whole adapter: the ``all`` panel only), or a
    --budget line (x=bytes: one per method, at that method's size in this group, in its colour)."""
    mark, label = analysis.mark, mark_label(analysis.mark)
    if mark.max_bytes is not None:
        if group != "all":
            return
        places = [(float(mark.max_bytes), "0.15")]
    elif analysis.bytes is not None:
        places = [(float(size), STYLES.get(method, (None,))[0] or "0.15")
                  for method, size in analysis.sizes_at(mark.per_layer, group).items() if size > 0]
    else:
        places = [(float(mark.per_layer), "0.15")]
    for x, color in places:
        ax.axvline(x, color=color, ls=":", lw=1.3, zorder=6, gid=MARK_GID)
    ax.text(min(x for x, _ in places), 0.03, label + " ", color="0.15", fontsize=8, ha="right", va="bottom",
            rotation=90, transform=ax.get_xaxis_transform())


def plot(analysis: Analysis, title: str | None = None) -> bytes:
    """PNG bytes of :func:`figure`."""
    import matplotlib.pyplot as plt

    fig = figure(analysis, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_analysis(analysis: Analysis, out_dir: str | Path, force: bool = False, title: str | None = None) -> Path:
    """Write the PNG, CSV and JSON into ``out_dir`` (atomically: all three or none)."""
    from .formats.atomic import atomic_directory

    png = plot(analysis, title)
    with atomic_directory(Path(out_dir), force=force) as staging:
        (staging / PNG_NAME).write_bytes(png)
        (staging / CSV_NAME).write_text(analysis.csv_text(), encoding="utf-8")
        (staging / JSON_NAME).write_text(json.dumps(analysis.to_json(), indent=1) + "\n", encoding="utf-8")
    return Path(out_dir)

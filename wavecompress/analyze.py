"""Rate-distortion analysis: relative error vs budget for every method and layer group, plot + CSV + JSON.

Every number comes from the methods' own rate-distortion curves (methods/rate_distortion.py), so a
point at budget b is exactly what ``convert --budget b`` would report. Groups are the layer types
(the module path after the block index: ``attention.self.query``, ``intermediate.dense``, ...) plus
``all``; a group's error is the Frobenius error over its layers together. Thresholds are the
smallest per-layer budget at which a method's error reaches 10% / 5% / 1% (exact, by bisection).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .deltas.in_memory import DeltaSource, as_adapter_deltas
from .errors import InputError
from .methods import all_methods, get_method
from .methods.options import MethodOptions, reorder_choice
from .methods.rate_distortion import RDCurve, rd_curve
from .transforms import validate_wavelet

# Every method with its own exact curve (Method.rd_curve): waveft, wara, lora, sparse.
DEFAULT_METHODS = tuple(m.name for m in all_methods() if m.rd_curve is not None)
THRESHOLDS = (0.10, 0.05, 0.01)
TABLE_BUDGETS = (256, 768, 3000, 8192, 32768)
PNG_NAME, CSV_NAME, JSON_NAME = "rate_distortion.png", "rate_distortion.csv", "rate_distortion.json"


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

    def rows(self) -> list[dict[str, Any]]:
        """One row per (group, method, budget): the CSV content."""
        out = []
        for group in self.groups:
            for method in self.methods:
                for i, budget in enumerate(self.budgets):
                    out.append({"group": group, "method": method, "budget_per_layer": budget,
                                "stored_values": self.stored[method][group][i],
                                "relative_error": self.errors[method][group][i]})
        return out

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "methods": self.methods,
                "groups": {g: {"layers": names} for g, names in self.groups.items()},
                "budgets_per_layer": self.budgets, "relative_error": self.errors, "stored_values": self.stored,
                "thresholds": self.thresholds, "notes": self.notes}

    def csv_text(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, ["group", "method", "budget_per_layer", "stored_values", "relative_error"], lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({**row, "relative_error": f"{row['relative_error']:.6g}"})
        return buffer.getvalue()

    def error_at(self, method: str, group: str, budget: int) -> float:
        """Relative error of ``method`` on ``group`` at per-layer ``budget`` (must be on the grid)."""
        return self.errors[method][group][self.budgets.index(budget)]

    def format_table(self, budgets: Sequence[int] = TABLE_BUDGETS, group: str = "all") -> str:
        """Markdown table: relative error per method at a few per-layer budgets, then thresholds."""
        shown = [b for b in budgets if b in self.budgets]
        lines = ["| method | " + " | ".join(f"{b} / layer" for b in shown) + " | 10% at | 5% at | 1% at |",
                 "|---|" + "---:|" * (len(shown) + 3)]
        for method in self.methods:
            cells = [f"{self.error_at(method, group, b):.4f}" for b in shown]
            cells += [str(self.thresholds[group][method][f"{int(t * 100)}%"] or "—") for t in THRESHOLDS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


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


def analyze(source: DeltaSource, methods: Sequence[str] = DEFAULT_METHODS, wavelet: str = "db1", levels: int | None = None,
            reorder: bool | str | None = True, plain_variants: bool = True, max_budget: int | None = None,
            progress: bool | None = False) -> Analysis:
    """Rate-distortion curves of every method (and each reorderable method's plain-order variant).

    ``progress=None`` shows a progress bar (one step per layer) only on a terminal."""
    for method in methods:
        get_method(method)
    deltas = as_adapter_deltas(source)
    options = MethodOptions(wavelet=validate_wavelet(wavelet), levels=levels, reorder=reorder_choice(reorder))
    variants: dict[str, tuple[str, MethodOptions]] = {m: (m, options) for m in methods}
    if plain_variants and options.reorder:
        for m in methods:
            if get_method(m).reorderable:
                variants[f"{m}-plain"] = (m, MethodOptions(wavelet=options.wavelet, levels=levels, reorder=None))
    curves: dict[str, list[RDCurve]] = {v: [] for v in variants}
    groups: dict[str, list[str]] = {}
    top = 0
    from tqdm.auto import tqdm

    bar = tqdm(deltas.layers, desc=f"analyze {len(variants)} curves per layer", unit="layer",
               disable=None if progress is None else not progress)
    for delta in bar:
        top = max(top, delta.shape[0] * delta.shape[1])
        groups.setdefault(layer_group(delta.name), []).append(delta.name)
        for variant, (method, opts) in variants.items():
            curves[variant].append(rd_curve(delta, method, opts, max_cost=max_budget))
    if not groups:
        raise InputError(f"{deltas.source}: no layers to analyze")
    limit = max_budget or top
    grid = budget_grid(limit)
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
    return Analysis(deltas.source, list(curves), groups, grid, errors, stored, thresholds, notes)


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
    budgets = np.asarray(analysis.budgets, dtype=float)
    marked_zero = False
    for ax, group in zip(axes.flat, names):
        for rank, method in enumerate(analysis.methods):
            color, style, marker, width, order = STYLES.get(method, (None, "-.", "^", 1.4, 2))
            values = np.asarray(analysis.errors[method][group], dtype=float)
            ax.plot(budgets, np.where(values > 0, values, np.nan), linestyle=style, color=color, lw=width, marker=marker,
                    markersize=3.5, markevery=max(len(budgets) // 8, 1), zorder=order, label=method,
                    alpha=0.75 if order == 1 else 1.0)
            zero = values <= 0
            if zero.any():
                lift = floor * 1.15 * 1.25 ** rank  # one row per method, so coinciding exact points stay visible
                ax.plot(budgets[zero], np.full(int(zero.sum()), lift), "v", color=color, markersize=4,
                        zorder=5, clip_on=False, label="_nolegend_")
                marked_zero = True
        for target in THRESHOLDS:
            ax.axhline(target, color="0.6", lw=0.8, ls="--", zorder=0)
            ax.text(0.99, target * 1.06, f"{int(target * 100)}%", color="0.4", fontsize=8, ha="right",
                    transform=ax.get_yaxis_transform())
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(floor, 1.2)
        ax.set_title(f"{group} ({len(analysis.groups[group])} layers)", fontsize=10)
        ax.set_xlabel("budget: stored values per layer")
        ax.set_ylabel("relative error ‖ΔW−ΔŴ‖/‖ΔW‖")
        ax.grid(True, which="both", alpha=0.25)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if marked_zero:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="0.3", marker="v", linestyle="none"))
        labels.append("error 0 (exact)")
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), fontsize=8, frameon=False)
    source = Path(analysis.source)
    name = source.parent.name if source.suffix == ".safetensors" else source.name
    fig.suptitle(title or f"rate-distortion of {name}: relative error vs budget, per layer group", fontsize=12)
    fig.tight_layout(rect=(0, 0.6 / (3.9 * rows + 0.6), 1, 1))
    return fig


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

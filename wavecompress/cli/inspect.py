"""``wavecompress inspect``: what an adapter file holds, read from headers only (no tensor data loaded).

Type, base model, layers with shapes, stored values (trainable) and index values (indices,
permutations), bytes, and the config — for every adapter wavecompress reads or writes: PEFT LoRA,
PEFT WaveFT, wavecompress's WAVECOMPRESS_* outputs, LyCORIS and single-file kohya LoRAs.
"""

from __future__ import annotations

import math

import json
import re
from pathlib import Path
from typing import Any

import click

from ..errors import InputError
from ..layout import CONFIG_NAME, strip_prefix
from .common import INPUT_PATH, debug_option, fit_lines, friendly_errors, summarise_list

_TYPES = {
    "LORA": "PEFT LoRA (loads in stock PEFT)",
    "WAVEFT": "PEFT WaveFT, seeded locations (loads in stock PEFT; locations regenerated from random_loc_seed)",
    "WAVECOMPRESS_WAVEFT": "wavecompress top-k WaveFT (loads in PEFT after `import wavecompress`; stock PEFT refuses it)",
    "WAVECOMPRESS_WARA": "wavecompress WaRA (loads in PEFT after `import wavecompress`; stock PEFT refuses it)",
    "LOHA": "PEFT LoHa", "LOKR": "PEFT LoKr",
}
# Where a tensor key's module name ends, for the adapter types with fixed tensor names.
_MODULE_END = re.compile(r"\.(lora_[A-Za-z_]+|hada_[a-z0-9_]+|lokr_[a-z0-9_]+|waveft_spectrum|lora_down|lora_up|alpha)(\..*)?$")


def _header(weights: Path) -> tuple[dict[str, tuple[list[int], str]], dict[str, str]]:
    """{key: (shape, safetensors dtype)} and the metadata of a safetensors file, without loading data."""
    from ..deltas.safetensors_file import open_safetensors

    with open_safetensors(weights) as reader:
        tensors = {}
        for key in reader.keys():
            piece = reader.get_slice(key)
            tensors[key] = (list(piece.get_shape()), piece.get_dtype())
        return tensors, reader.metadata()


def _module_of(key: str, known: list[str]) -> tuple[str, str]:
    """(module, tensor name) of a state-dict key."""
    stripped = strip_prefix(key)
    for name in known:
        if stripped.startswith(name + "."):
            return name, stripped[len(name) + 1:]
    match = _MODULE_END.search(stripped)
    if match:
        return stripped[: match.start()], stripped[match.start() + 1:]
    module, _, tensor = stripped.rpartition(".")
    return module, tensor


def describe_adapter(path: str | Path) -> dict[str, Any]:
    """A JSON-able description of the adapter at ``path`` (folder or weights file)."""
    from ..deltas import locate_adapter
    from ..deltas.safetensors_file import ITEMSIZE
    from ..deltas.safetensors_reader import read_json

    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors" and not (path.parent / CONFIG_NAME).exists():
        config, weights = {}, path
    else:
        config_path, weights = locate_adapter(path)
        config = read_json(config_path)
    tensors, metadata = _header(weights)
    peft_type = config.get("peft_type") or ("kohya/LyCORIS single file" if config == {} else None)
    layer_table = config.get("layers") if isinstance(config.get("layers"), dict) else {}
    shapes = {k: tuple(v) for k, v in json.loads(metadata.get("wavecompress.shapes", "{}")).items()}
    groups: dict[str, dict[str, tuple[list[int], str]]] = {}
    for key, spec in tensors.items():
        module, tensor = _module_of(key, sorted(layer_table, key=len, reverse=True))
        groups.setdefault(module, {})[tensor] = spec
    adapted = set(layer_table) | {m for m, parts in groups.items() if any(_MODULE_END.match("." + t) for t in parts)}
    layers, passthrough = [], []
    for module in sorted(groups):
        parts = groups[module]
        values = sum(_numel(s) for s, d in parts.values() if d in ("F64", "F32", "F16", "BF16"))
        indices = sum(_numel(s) for s, d in parts.values() if d not in ("F64", "F32", "F16", "BF16"))
        nbytes = sum(_numel(s) * ITEMSIZE.get(d, 4) for s, d in parts.values())
        row = {"name": module, "shape": _layer_shape(module, parts, layer_table, shapes, config), "stored_values": values,
               "index_values": indices, "bytes": nbytes,
               "tensors": {name: {"shape": s, "dtype": d} for name, (s, d) in sorted(parts.items())}}
        if "lora_A.weight" in parts:
            row["rank"] = parts["lora_A.weight"][0][0]
        if module in layer_table:
            row["meta"] = {k: v for k, v in layer_table[module].items() if k not in ("shape", "stored_tensors")}
        (layers if module in adapted else passthrough).append(row)
    return {
        "path": str(path),
        "weights": str(weights),
        "file_bytes": weights.stat().st_size,
        "peft_type": peft_type,
        "type": _TYPES.get(peft_type, str(peft_type)),
        "base_model": config.get("base_model_name_or_path"),
        "layers": layers,
        "passthrough": passthrough,
        "stored_values": sum(row["stored_values"] for row in layers),
        "index_values": sum(row["index_values"] for row in layers),
        "bytes": sum(row["bytes"] for row in layers),
        "config": {k: v for k, v in config.items() if k != "layers"},
        "metadata": metadata,
        "load": loading_line(peft_type, path),
    }


def loading_line(peft_type: Any, path: Path) -> str | None:
    """How to load this adapter in Python (None for single files that PEFT does not load)."""
    if not isinstance(peft_type, str) or peft_type not in _TYPES:
        return None
    folder = path.parent if path.is_file() else path
    line = f"import wavecompress; model = wavecompress.load_adapter(base_model, {str(folder)!r})"
    if peft_type.startswith("WAVECOMPRESS_"):
        line += f"  (without `import wavecompress` PEFT stops with KeyError: {peft_type!r})"
    return line


def _numel(shape: list[int]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def _layer_shape(module: str, parts: dict, layer_table: dict, shapes: dict, config: dict) -> list[int] | None:
    """d_out × d_in when the file says it: config table, our WaveFT header entry, or LoRA factor shapes."""
    if module in layer_table and "shape" in layer_table[module]:
        return list(layer_table[module]["shape"])
    if module in shapes:
        return list(shapes[module])
    for down_key, up_key in (("lora_A.weight", "lora_B.weight"), ("lora_down.weight", "lora_up.weight")):
        if down_key in parts and up_key in parts:  # a conv's factors give its (c_out, c_in·kh·kw) matrix
            down, up = parts[down_key][0], parts[up_key][0]
            return [up[0], math.prod(down[1:])] if len(down) >= 2 and len(up) >= 2 else None
    return None


def format_description(info: dict[str, Any], show_config: bool = True, wide: bool = False) -> str:
    """Human-readable text of :func:`describe_adapter`'s result."""
    lines = [f"adapter: {info['path']}", f"type: {info['peft_type']} — {info['type']}"]
    if info.get("load"):
        lines.append(f"load: {info['load']}")
    if info["base_model"]:
        lines.append(f"base model: {info['base_model']}")
    lines.append(f"layers: {len(info['layers'])}; stored values {info['stored_values']}, index values {info['index_values']}, "
                 f"{info['bytes']} bytes of layer tensors ({info['file_bytes']} bytes on disk)")
    if info["layers"]:
        rows = [["layer", "shape", "values", "index", "bytes", "tensors"]]
        for row in info["layers"]:
            shape = "×".join(map(str, row["shape"])) if row["shape"] else "?"
            tensors = ", ".join(f"{name} {'×'.join(map(str, t['shape'])) or 'scalar'} {t['dtype']}" for name, t in row["tensors"].items())
            rows.append([row["name"], shape, str(row["stored_values"]), str(row["index_values"]), str(row["bytes"]), tensors])
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        for r in rows:
            lines.append("  ".join([r[0].ljust(widths[0])] + [r[c].rjust(widths[c]) for c in range(1, 5)] + [r[5]]))
    for row in info["passthrough"]:
        lines.append(f"passthrough: {row['name']} ({', '.join(row['tensors'])}; {row['bytes']} bytes)")
    if show_config and info["config"]:
        lines.append("config:")
        for key, value in sorted(info["config"].items()):
            if value not in (None, {}, [], ""):
                shown = summarise_list(value) if isinstance(value, list) and not wide else json.dumps(value, sort_keys=True)
                lines.append(f"  {key}: {shown}")
    return "\n".join(lines)


@click.command()
@click.argument("path", type=INPUT_PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@click.option("--wide", is_flag=True, help="Print every column and list in full (default: lines fit 100 columns).")
@debug_option
@friendly_errors
def inspect(path: Path, as_json: bool, wide: bool, debug: bool) -> None:
    """Show what the adapter at PATH holds: type, layers, shapes, stored values, bytes, config.

    PATH is an adapter folder (or its adapter_model.safetensors), or a single-file kohya/LyCORIS
    LoRA. Only headers are read.

    \b
    Examples:
      wavecompress inspect fixtures/minilm-bbc-lora
      wavecompress inspect out/wara --json
    """
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    info = describe_adapter(path)
    click.echo(json.dumps(info, indent=2, sort_keys=True) if as_json else fit_lines(format_description(info, wide=wide), wide))

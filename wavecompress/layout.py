"""On-disk layout names, in one place: file names of an adapter folder, the tensor key prefix,
the safetensors header metadata carried from inputs to outputs, and the default output name.

Readers (deltas/), writers (formats/), the PEFT integration, the Hub and batch code all take
their names from here, so they cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .methods.budget import Budget

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
REPORT_NAME = "wavecompress_report.json"
CARD_NAME = "README.md"
# The files every complete wavecompress output folder holds (the atomic writer adds them together).
OUTPUT_FILES = (CONFIG_NAME, WEIGHTS_NAME, REPORT_NAME)
# adapter_config.json peft_type of the stock PEFT formats outputs may take (methods declare theirs).
LORA = "LORA"
WAVEFT = "WAVEFT"  # stock PEFT WaveFT: seeded locations, values only; loads in unmodified PEFT
# PEFT's key prefix in adapter_model.safetensors: ``base_model.model.<module>.<tensor>``.
PREFIX = "base_model.model."
# Header metadata kept from the input (kohya ss_* / modelspec.* training provenance).
CARRIED_METADATA_PREFIXES = ("ss_", "modelspec.")


def strip_prefix(key: str) -> str:
    """A tensor key without PEFT's ``base_model.model.`` prefix."""
    return key[len(PREFIX):] if key.startswith(PREFIX) else key


def carried_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The header metadata an output keeps from its input."""
    return {key: value for key, value in metadata.items() if key.startswith(CARRIED_METADATA_PREFIXES)}


def input_stem(source: str | Path) -> str:
    """The name an input is known by: its folder, the folder of an ``adapter_model.safetensors``, or
    a single-file adapter's file stem (``lora_kohya.safetensors`` → ``lora_kohya``)."""
    path = Path(source)
    if path.suffix == ".safetensors":
        stem = path.parent.name if path.name == WEIGHTS_NAME else path.stem
    else:
        stem = path.name
    return stem or "adapter"


def output_name(source: str | Path, method: str, budget: "Budget | str") -> str:
    """``<input>-<method>-<budget label>`` (``x-waveft-b3000``, ``x-wara-t90000``): the default output
    folder name of ``convert`` and of each ``convert-many`` input (``budget``: a Budget or its label)."""
    label = budget if isinstance(budget, str) else budget.label()
    return f"{input_stem(source)}-{method}-{label}"

"""wavecompress: compress fine-tuning deltas into wavelet-domain adapters, with honest baselines.

>>> import wavecompress
>>> result = wavecompress.compress("fixtures/minilm-bbc-lora", budget=3000, method="wara")
>>> result.report.relative_error, result.report.overall()["lora"].relative_error
>>> result.save("out/wara")
>>> deltas = wavecompress.reconstruct("out/wara")   # {module name: dense ΔŴ}
>>> model = wavecompress.load_adapter(base_model, "out/wara")   # a PeftModel, for every output format
"""

from __future__ import annotations

import os as _os
import sys as _sys

from .version import __version__


def _interrupt_quietly_while_starting() -> None:
    """Under the ``wavecompress`` command only: Ctrl-C while the heavy imports load prints one line and
    exits 130 instead of a 30-line traceback (the CLI group puts Python's own handler back once it runs)."""
    import signal

    if _os.path.basename(_sys.argv[0] or "") != "wavecompress" or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return

    def _wavecompress_startup_interrupt(signum: int, frame: object) -> None:
        _os.write(2, b"interrupted while starting; no output was written\n")
        _os._exit(130)

    try:
        signal.signal(signal.SIGINT, _wavecompress_startup_interrupt)
    except ValueError:  # not the main thread: leave signals alone
        pass


_interrupt_quietly_while_starting()

from pathlib import Path
from typing import Any

import torch

from .compress import CompressedAdapter, compress
from .deltas import AdapterDeltas, LayerDelta, load_deltas
from .errors import InputError, WavecompressError
from .peft_integration import load_adapter, load_peft_model, register as register_with_peft
from .peft_integration.hook import register_when_peft_is_imported
from .report import Report

# WAVECOMPRESS_* adapters load through PeftModel.from_pretrained once peft is imported (lazily: no peft import here).
register_when_peft_is_imported(register_with_peft)


def reconstruct(path: str | Path) -> dict[str, torch.Tensor]:
    """{module name: dense ΔW} of any adapter wavecompress reads (its outputs included)."""
    return {layer.name: layer.to_dense() for layer in load_deltas(path).layers}


to_delta = reconstruct

# Loaded on first use (they import peft / the fine-tune loop, which ``import wavecompress`` does not).
_LAZY = {"WaraConfig": ("peft_integration.fresh", "WaraConfig"),
         "WaveFTTopKConfig": ("peft_integration.fresh", "WaveFTTopKConfig"),
         "finetune": ("finetune", "")}  # the package, callable as finetune.finetune (finetune/__init__.py)


def __getattr__(name: str) -> Any:
    """``wavecompress.WaraConfig``, ``wavecompress.WaveFTTopKConfig`` and ``wavecompress.finetune`` on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'wavecompress' has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    found = importlib.import_module(f".{module}", __name__)
    return getattr(found, attribute) if attribute else found

__all__ = [
    "AdapterDeltas",
    "CompressedAdapter",
    "InputError",
    "LayerDelta",
    "Report",
    "WaraConfig",
    "WaveFTTopKConfig",
    "WavecompressError",
    "__version__",
    "compress",
    "finetune",
    "load_adapter",
    "load_deltas",
    "load_peft_model",
    "reconstruct",
    "register_with_peft",
    "to_delta",
]

"""Register with PEFT lazily: run ``register()`` right after ``peft`` is first imported.

Importing peft (and transformers behind it) takes seconds; ``import wavecompress`` should not pay
that when PEFT is never used. A post-import hook on the top-level ``peft`` module registers the
wavecompress adapter types the moment anyone imports peft, so ``PeftModel.from_pretrained`` works
in any order of imports.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any, Callable


class _RegisteringLoader(importlib.abc.Loader):
    """Delegates to peft's real loader, then calls ``on_loaded``."""

    def __init__(self, loader: Any, on_loaded: Callable[[], None]) -> None:
        self._loader = loader
        self._on_loaded = on_loaded

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        try:
            self._on_loaded()
        except Exception as exc:  # noqa: BLE001 - never break `import peft`
            warnings.warn(f"wavecompress could not register its adapter types with PEFT: {exc}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _PeftImportHook(importlib.abc.MetaPathFinder):
    """Finds ``peft`` with the other finders and wraps its loader (once)."""

    def __init__(self, on_loaded: Callable[[], None]) -> None:
        self._on_loaded = on_loaded

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        # Stay installed until peft actually executes: importlib.util.find_spec("peft") (transformers'
        # is_peft_available) also lands here without importing anything.
        if fullname != "peft" or "peft" in sys.modules:
            return None
        spec = None
        for finder in list(sys.meta_path):
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _RegisteringLoader(spec.loader, self._loaded)
        return spec

    def _loaded(self) -> None:
        remove_hook(self)
        self._on_loaded()


def remove_hook(hook: _PeftImportHook) -> None:
    if hook in sys.meta_path:
        sys.meta_path.remove(hook)


def register_when_peft_is_imported(on_loaded: Callable[[], None]) -> None:
    """Call ``on_loaded`` now if peft is imported, else right after its first import."""
    if "peft" in sys.modules:
        on_loaded()
        return
    if not any(isinstance(finder, _PeftImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PeftImportHook(on_loaded))

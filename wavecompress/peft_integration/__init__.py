"""Load wavecompress adapters (WAVECOMPRESS_WAVEFT, WAVECOMPRESS_WARA, any registered method's own
peft_type) with ``PeftModel.from_pretrained``.

``import wavecompress`` arranges registration with PEFT's registries the moment ``peft`` is
imported (or at once if it already is), so::

    import wavecompress
    from peft import PeftModel
    model = PeftModel.from_pretrained(base_model, "out/wara")   # merge_and_unload() works too

``register()`` does it explicitly. Stock PEFT without wavecompress does not know these peft_types
and refuses the files with an error instead of loading values at the wrong places.
"""

from __future__ import annotations

from .loader import LOADING_HINT, load_adapter
from .registration import load_peft_model, register

__all__ = ["LOADING_HINT", "load_adapter", "load_peft_model", "register"]

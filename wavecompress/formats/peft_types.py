"""Stock PEFT peft_type names that outputs may take; each method declares its own (``Method.peft_type``).

Top-k WaveFT and WaRA values sit at positions stock PEFT would not regenerate, so those methods
write their own ``WAVECOMPRESS_*`` peft_type: stock PEFT refuses an unknown type instead of loading
values at the wrong places. The names live in layout.py with the other on-disk names.
"""

from ..layout import LORA, WAVEFT

__all__ = ["LORA", "WAVEFT"]

"""Stock PEFT peft_type names that outputs may take; each method declares its own (``Method.peft_type``).

Top-k WaveFT and WaRA values sit at positions stock PEFT would not regenerate, so those methods
write their own ``WAVECOMPRESS_*`` peft_type: stock PEFT refuses an unknown type instead of loading
values at the wrong places.
"""

LORA = "LORA"
# Stock PEFT's own WaveFT (seeded locations, values only): loads in unmodified PEFT.
WAVEFT = "WAVEFT"

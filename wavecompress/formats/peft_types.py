"""peft_type names of wavecompress outputs.

Top-k WaveFT and WaRA values sit at positions stock PEFT would not regenerate, so they get their
own peft_type: stock PEFT refuses an unknown type instead of loading values at the wrong places.
"""

WAVEFT_TOPK = "WAVECOMPRESS_WAVEFT"
WARA = "WAVECOMPRESS_WARA"
LORA = "LORA"

PEFT_TYPE_OF_METHOD = {"waveft": WAVEFT_TOPK, "wara": WARA, "lora": LORA}
METHOD_OF_PEFT_TYPE = {value: key for key, value in PEFT_TYPE_OF_METHOD.items()}
# Stock PEFT's own WaveFT (seeded locations, values only): loads in unmodified PEFT. Not in
# METHOD_OF_PEFT_TYPE, which routes wavecompress's own formats to their reader.
WAVEFT = "WAVEFT"
PEFT_TYPE_OF_METHOD["waveft-seeded"] = WAVEFT

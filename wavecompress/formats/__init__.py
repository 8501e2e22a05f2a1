"""Output formats: PEFT-style adapter folders, their configs and model cards."""

from .adapter_writer import CONFIG_NAME, REPORT_NAME, WEIGHTS_NAME, write_adapter
from .peft_types import LORA, WAVEFT

__all__ = ["CONFIG_NAME", "LORA", "REPORT_NAME", "WAVEFT", "WEIGHTS_NAME", "write_adapter"]

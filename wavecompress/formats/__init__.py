"""Output formats: PEFT-style adapter folders, their configs and model cards."""

from .adapter_writer import CONFIG_NAME, REPORT_NAME, WEIGHTS_NAME, write_adapter
from .peft_types import METHOD_OF_PEFT_TYPE, PEFT_TYPE_OF_METHOD

__all__ = ["CONFIG_NAME", "METHOD_OF_PEFT_TYPE", "PEFT_TYPE_OF_METHOD", "REPORT_NAME", "WEIGHTS_NAME", "write_adapter"]

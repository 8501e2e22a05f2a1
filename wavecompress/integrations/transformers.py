"""A transformers ``TrainerCallback`` that compresses the adapter being trained (needs ``transformers``).

    from wavecompress.integrations.transformers import CompressCallback
    trainer = Trainer(model=peft_model, args=args, train_dataset=data,
                      callbacks=[CompressCallback(budget=3000, method="wara")])

At each checkpoint save (``on_save``) and/or at the end of training (``on_train_end``) the model's active
LoRA/DoRA adapter is compressed with :func:`wavecompress.compress` and written beside the checkpoint
(``<output_dir>/checkpoint-<step>/<folder>``, or ``<output_dir>/<folder>`` at the end); the report's numbers
(relative error, stored values, bytes, and each baseline's error) are added to the trainer's log history
as ``wavecompress/*`` metrics, and sent to its reporters when the callback knows the trainer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..compress import compress
from ..compressed_adapter import CompressedAdapter
from ..errors import InputError

logger = logging.getLogger(__name__)
PREFIX = "wavecompress/"


def report_metrics(result: CompressedAdapter) -> dict[str, float]:
    """The report's numbers as flat metrics: the method's error, values and bytes, each column's error."""
    totals = result.report.overall()
    own = totals[result.method]
    metrics = {f"{PREFIX}relative_error": own.relative_error, f"{PREFIX}stored_values": float(own.stored_values),
               f"{PREFIX}bytes": float(own.bytes)}
    for name, summary in totals.items():
        if name != result.method:
            metrics[f"{PREFIX}{name}/relative_error"] = summary.relative_error
    return metrics


class CompressCallback(TrainerCallback):
    """Compress the trained adapter at each save and/or at the end of training; log the report's numbers.

    ``compress_kwargs`` go to :func:`wavecompress.compress` (``budget=``, ``method=``, ``baselines=`` …;
    validated now, before any training). ``folder``: the output folder's name beside each checkpoint.
    ``trainer``: when given (or set later with ``callback.trainer = trainer``), metrics also go through
    ``trainer.log`` to every reporter.
    """

    def __init__(self, *, on_save: bool = True, on_train_end: bool = True, folder: str = "wavecompress",
                 trainer: Any = None, **compress_kwargs: Any) -> None:
        from ..compress import make_job

        if not on_save and not on_train_end:
            raise InputError("CompressCallback with on_save=False and on_train_end=False would never compress")
        if not folder or Path(folder).name != folder:
            raise InputError(f"folder= must be a plain folder name, got {folder!r}")
        checked = {key: value for key, value in compress_kwargs.items()
                   if key in ("budget", "method", "wavelet", "levels", "baselines", "reorder", "budget_total",
                              "budget_ratio", "max_size", "allocate", "dtype", "rank", "target_error")}
        make_job(checked.pop("budget", None), checked.pop("method", "waveft"), **checked)  # options errors now
        self.compress_on_save, self.compress_on_train_end = on_save, on_train_end
        self.folder, self.trainer, self.compress_kwargs = folder, trainer, compress_kwargs
        self.results: list[tuple[Path, CompressedAdapter]] = []

    def _compress(self, model: Any, out_dir: Path, state: TrainerState) -> None:
        if model is None:
            return
        result = compress(model, **self.compress_kwargs)
        path = result.save(out_dir / self.folder, force=True)
        self.results.append((path, result))
        metrics = report_metrics(result)
        logger.info("wavecompress: %s -> %s", result.report.verdict(), path)
        if self.trainer is not None:
            self.trainer.log(metrics)
        else:
            state.log_history.append({**metrics, "step": state.global_step})

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None,
                **kwargs: Any) -> None:
        if self.compress_on_save and state.is_world_process_zero:
            self._compress(model, Path(str(args.output_dir)) / f"checkpoint-{state.global_step}", state)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None,
                     **kwargs: Any) -> None:
        if self.compress_on_train_end and state.is_world_process_zero:
            self._compress(model, Path(str(args.output_dir)), state)


__all__ = ["CompressCallback", "report_metrics"]

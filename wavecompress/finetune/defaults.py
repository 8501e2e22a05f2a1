"""The fine-tune's default settings: the one place ``wavecompress finetune``, ``convert --finetune-*``
and :class:`~wavecompress.finetune.FinetuneConfig` read them from.

Chosen from measured sweeps on the BBC fixture (README, "Recovery fine-tune"): 300 steps at lr 3e-4
recovered waveft, wara and lora at 3000 values per layer on an H200, where 40 steps at lr 1e-3 made
the adapter worse. Keep-best makes any setting safe (never worse on the held-out texts), but only
good settings make it useful.
"""

from __future__ import annotations

STEPS = 300           # on CUDA
CPU_STEPS = 60        # on a CPU: a few minutes for a MiniLM-sized model on 2 free cores; still lowers the held-out KL
LR = 3e-4
WARMUP_FRACTION = 0.1
BATCH_SIZE = 16
MAX_LENGTH = 128

# Held-out slice of the distillation texts, scored before training, every EVAL_EVERY steps and at the end.
EVAL_FRACTION = 0.1
EVAL_MIN = 32          # at least this many held-out texts when the data has 4× as many
EVAL_MAX = 512         # an upper bound on the cost of one evaluation
EVALUATIONS = 10       # EVAL_EVERY default: steps // EVALUATIONS (at least EVAL_EVERY_MIN)
EVAL_EVERY_MIN = 10

# ``--steps auto``: train up to AUTO_MAX_STEPS, stopping after AUTO_PATIENCE evaluations without a new best.
AUTO_MAX_STEPS = 1000
AUTO_EVAL_EVERY = 25
AUTO_PATIENCE = 4


def default_steps(device_type: str) -> int:
    """Steps when not given: STEPS on a GPU, CPU_STEPS on a CPU."""
    return CPU_STEPS if device_type == "cpu" else STEPS


def default_eval_every(steps: int) -> int:
    """Steps between held-out evaluations when not given: about EVALUATIONS per run."""
    return max(EVAL_EVERY_MIN, steps // EVALUATIONS)


def eval_count(n_texts: int, fraction: float = EVAL_FRACTION, minimum: int = EVAL_MIN, maximum: int = EVAL_MAX) -> int:
    """How many of ``n_texts`` to hold out: ``fraction`` of them, at least ``minimum`` when there are 4× as many."""
    held = round(fraction * n_texts)
    held = max(held, min(minimum, n_texts // 4))
    return min(held, maximum, n_texts - 1) if n_texts > 1 else 0

"""Where the arithmetic runs: the conversion device (CPU or CUDA) and the CPU threading policy.

Small linear algebra (QR and SVD of n × r factors, r×r cores) is run with one intra-op thread:
at these sizes threads add an OpenMP barrier per op and gain nothing, and on a shared,
oversubscribed machine each barrier can cost a scheduler tick (measured 10-20× slower with 2
threads than with 1 under load). Independent layers are converted side by side instead, one
single-threaded layer per core (:func:`map_in_threads`); a single large stream (top-k over d_out·d_in
values) splits its rows across Python threads (``methods/topk.py``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

import torch

from .errors import InputError

if TYPE_CHECKING:
    from .deltas.layer_delta import LayerDelta
    from .methods.compressed_layer import CompressedLayer

CPU = torch.device("cpu")
SMALL_RANK = 128  # factors up to this rank: single-threaded linear algebra


def resolve_device(device: str | torch.device | None, fallback: bool = True) -> torch.device:
    """The torch device to compute on: ``None``/"cpu" → CPU; "auto" → CUDA when available, else CPU;
    "cuda[:N]" → that GPU. When CUDA is asked for but missing: with ``fallback`` (conversion: the
    result is the same, only slower) the CPU with a warning, else InputError (fine-tuning)."""
    if device is None:
        return CPU
    if device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else CPU
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use cpu or cuda (cuda:N)") from None
    if resolved.type == "cpu":
        return CPU
    if resolved.type != "cuda":
        raise InputError(f"device {device!r} is not supported; use cpu or cuda (cuda:N)")
    if not torch.cuda.is_available():
        if not fallback:
            raise InputError(f"device {device}: CUDA is not available on this machine (use --device cpu)")
        warnings.warn(f"--device {device}: CUDA is not available on this machine; converting on the CPU instead",
                      RuntimeWarning, stacklevel=2)
        return CPU
    if resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return resolved


def cuda_fallback_note(device: str | None) -> str | None:
    """The one-line note to print when ``device`` asks for CUDA on a machine without it, else None."""
    if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
        return f"note: --device {device}: CUDA is not available on this machine; converting on the CPU (same results, slower)"
    return None


def layer_to_device(delta: LayerDelta, device: torch.device) -> LayerDelta:
    """``delta`` with its tensors on ``device`` (the same object when already there)."""
    tensors = {name: getattr(delta, name) for name in ("left", "right", "dense")}
    if all(t is None or t.device == device for t in tensors.values()):
        return delta
    moved = {name: None if t is None else t.to(device, non_blocking=True) for name, t in tensors.items()}
    return dataclasses.replace(delta, **moved)


def layer_to_cpu(layer: CompressedLayer) -> CompressedLayer:
    """A compressed layer's stored tensors back on the CPU, where writers and reports expect them."""
    if any(t.device != CPU for t in layer.tensors.values()):
        layer.tensors = {key: value.to(CPU) for key, value in layer.tensors.items()}
    return layer


@contextlib.contextmanager
def one_thread(enabled: bool = True) -> Iterator[None]:
    """Run the body with a single intra-op thread in the calling thread, then restore the setting."""
    threads = torch.get_num_threads()
    if threads == 1 or not enabled:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


Item = TypeVar("Item")
Result = TypeVar("Result")


def layer_workers(layers: object, device: torch.device) -> int:
    """How many layers to convert side by side: every intra-op thread of the CPU for layers held in
    memory (a list), one otherwise (a GPU, or streamed layers: one ΔW alive at a time)."""
    if device.type != "cpu" or not isinstance(layers, (list, tuple)):
        return 1
    return max(1, min(torch.get_num_threads(), len(layers)))


@functools.lru_cache(maxsize=None)
def _thread_pool(workers: int) -> ThreadPoolExecutor:
    """One lasting pool per worker count: starting threads for every call cost ~4 ms each on a busy
    machine (a 7B-shaped convert spent 13% of its time there)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wavecompress")


def map_in_threads(work: Callable[[Item], Result], items: Iterable[Item], workers: int) -> Iterator[Result]:
    """``work(item)`` for every item, in order. With ``workers`` > 1 that many run at once in a lasting
    thread pool, each with one intra-op thread (torch releases the GIL), so a job never splits itself
    again. Used for whole layers side by side, which keep both cores busy where splitting one layer's
    stream between them did not (measured on four 7B-shaped top-k selections: 51 ms side by side
    against 80 ms split, 106 ms on one thread), and for the row ranges of a single large stream
    (methods/topk.py). At most ``workers`` items are taken ahead of the one returned."""
    if workers <= 1:
        for item in items:
            result = work(item)
            del item  # a streamed layer's ΔW goes before the next one is built
            yield result
        return

    def single(item: Item) -> Result:
        with one_thread():
            return work(item)

    pool, pending = _thread_pool(workers), collections.deque()
    for item in items:
        pending.append(pool.submit(single, item))
        if len(pending) >= workers:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()

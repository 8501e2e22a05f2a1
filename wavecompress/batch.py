"""Batch conversion: many adapters with one call, in a local process pool or as Ray tasks.

Each input becomes ``OUT_DIR/<input>-<method>-<budget>`` (the name ``convert`` would pick). The
writer is atomic, so an output folder that exists with its files is complete: it is skipped when
its report records the same options fingerprint (an output made with other options is refused, not
reused), which makes a rerun after a crash (or Ctrl-C) resume where the last run stopped and never
convert anything twice. A failing input never stops the others; each failure is reported in one
line with its cause.
"""

from __future__ import annotations

import glob
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError, WavecompressError
from .layout import CONFIG_NAME, OUTPUT_FILES, REPORT_NAME, output_name

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class InputOptions:
    """How to read each input (as ``convert`` would): base model, layer selection, NaN/Inf layers,
    and calibration (a saved activations file, or a text run through ``base_model`` per input)."""

    base: Path | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    drop_unselected: bool = False
    drop_unconvertible: bool = False
    allow_nonfinite: bool = False
    calibration: Path | None = None
    base_model: Path | None = None
    calibration_tokens: int = 512


@dataclass(frozen=True)
class BatchItem:
    """One input and the output folder it converts to."""

    source: Path
    target: Path


@dataclass
class ItemResult:
    """What happened to one input: converted, skipped (already done) or failed (with why)."""

    source: str
    target: str
    status: str
    seconds: float = 0.0
    layers: int = 0
    errors: dict[str, float] = field(default_factory=dict)
    message: str = ""
    exit_code: int = 0


def available_cores() -> int:
    """CPU cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def _is_input(path: Path) -> bool:
    return (path.is_dir() and (path / CONFIG_NAME).exists()) or (path.is_file() and path.suffix == ".safetensors")


def find_inputs(spec: str | Path) -> list[Path]:
    """Adapters named by ``spec``: a folder of adapter folders and/or .safetensors files, or a glob."""
    path = Path(spec)
    if path.is_dir():
        if (path / CONFIG_NAME).exists():
            return [path]
        found = [p for p in sorted(path.iterdir()) if not p.name.startswith(".") and _is_input(p)]
        if not found:
            raise InputError(f"{path}: no adapters in this folder (sub-folders with {CONFIG_NAME}, or .safetensors files)")
        return found
    matches = [Path(p) for p in sorted(glob.glob(str(spec)))]
    if not matches:
        raise InputError(f"{spec}: no such folder, and the pattern matches nothing")
    found = [p for p in matches if _is_input(p) or p.is_dir()]
    if not found:
        raise InputError(f"{spec}: the pattern matches no adapter folders or .safetensors files")
    return found


def plan(inputs: Iterable[Path], out_dir: Path, method: str, budget: Any) -> list[BatchItem]:
    """One BatchItem per input, named as ``convert`` names its output (layout.output_name; ``budget``:
    a Budget or its label); refuses two inputs that would write the same output folder."""
    items, seen = [], {}
    for source in inputs:
        target = Path(out_dir) / output_name(source, method, budget)
        if target in seen:
            raise InputError(f"{source} and {seen[target]} would both write {target}; rename one of them")
        seen[target] = source
        items.append(BatchItem(Path(source), target))
    return items


def check_batch_outputs(items: list[BatchItem], read: list[Path | None], out_dir: Path, report: Path | None,
                        force: bool) -> None:
    """Before any conversion, through the output guard: no output folder is, holds or lies in an input of
    the batch (or a base / calibration file); one that exists is a folder, and with ``force`` an earlier
    wavecompress output (never a folder of the user's own files); ``--out`` can be written; ``report`` is
    never an input, its folder's files, inside an output folder, or a file wavecompress did not write."""
    from .output_guard import check_earlier_output_folder, check_file_output, check_folder_output, resolve_output

    inputs = [item.source for item in items] + [path for path in read if path is not None]
    if not Path(out_dir).is_dir() or Path(out_dir).is_symlink():
        check_folder_output(out_dir, inputs, force=False, option="--out")  # README.md/x, /proc/x, a symlink: refused now
    for item in items:
        check_folder_output(item.target, inputs, force=True, probe=False, option="--out") if not os.path.lexists(item.target) else None
        real = resolve_output(item.target)
        for source in [resolve_output(path) for path in inputs if os.path.lexists(path)]:
            if real == source or real in source.parents or (source.is_dir() and source in real.parents):
                raise InputError(f"--out {out_dir}: the output {item.target} would be written over the input {source}; "
                                 "choose another --out")
        if os.path.lexists(item.target):
            if item.target.is_symlink() or not item.target.is_dir():
                raise InputError(f"{item.target}: exists and is not a folder (the output of {item.source.name})")
            if force:
                check_earlier_output_folder(real, item.target)
    if report is not None:
        real = resolve_output(report)
        for item in items:
            if resolve_output(item.target) in [real, *real.parents]:
                raise InputError(f"--report {report}: is inside the output folder {item.target}; choose a path outside it")
        check_file_output(report, inputs, force, option="--report")


def is_done(target: Path) -> bool:
    """True when ``target`` holds a complete output (the atomic writer never leaves a partial one)."""
    return target.is_dir() and all((target / name).is_file() for name in OUTPUT_FILES)


# Options that change what is written; the device only changes where it is computed.
_NOT_FINGERPRINTED = ("device",)


def options_record(options: dict[str, Any], inputs: InputOptions | None = None) -> dict[str, Any]:
    """The options an output is made with (how its input is read included), and their sha256
    fingerprint, as stored in its report."""
    options = {**options, **({"inputs": asdict(inputs)} if inputs is not None and inputs != InputOptions() else {})}
    kept = {key: options[key] for key in sorted(options) if key not in _NOT_FINGERPRINTED}
    text = json.dumps(kept, sort_keys=True, default=str)
    return {"values": json.loads(text), "fingerprint": hashlib.sha256(text.encode()).hexdigest()}


def stored_fingerprint(target: Path) -> str | None:
    """The options fingerprint in a complete output's report (None for outputs made without one)."""
    try:
        report = json.loads((target / REPORT_NAME).read_text(encoding="utf-8"))
        return str(report["options"]["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def convert_one(item: BatchItem, options: dict[str, Any], force: bool = False,
                inputs: InputOptions | None = None) -> ItemResult:
    """Convert one input (never raises: failures come back as a result with their message)."""
    start = time.perf_counter()
    result = ItemResult(str(item.source), str(item.target), "failed")
    try:
        if item.target.exists() and not force:
            raise InputError(f"{item.target}: exists but is incomplete (not written by wavecompress?); remove it or use --force")
        inputs = inputs or InputOptions()
        converted = _convert(item.source, options, inputs)
        converted.report.options = options_record(options, inputs)
        converted.save(item.target, force=force)
        totals = converted.report.overall()
        result.status = "converted"
        result.layers = len(converted.report.layers)
        result.errors = {name: summary.relative_error for name, summary in totals.items()}
    except WavecompressError as exc:
        result.message, result.exit_code = str(exc), exc.exit_code
    except Exception as exc:  # noqa: BLE001 - one bad input must not stop the batch
        result.message, result.exit_code = f"internal error: {type(exc).__name__}: {exc}", 1
    result.seconds = time.perf_counter() - start
    return result


def _convert(source: Path, options: dict[str, Any], inputs: InputOptions) -> Any:
    """:func:`wavecompress.compress` of one input, read with ``inputs``."""
    from .calibration import calibration_for
    from .compress import cli_words, compress
    from .errors import InputError
    from .deltas import read_input
    from .deltas.safetensors_reader import skip_nonfinite_layers

    with skip_nonfinite_layers(inputs.allow_nonfinite):
        _, deltas = read_input(source, inputs.base, None, inputs.include, inputs.exclude, inputs.drop_unselected)
        calibration = calibration_for(deltas, inputs.calibration, inputs.base_model, inputs.calibration_tokens)
        try:  # the CLI's columns (the plain-order one too) and its flag names in messages
            return compress(deltas, progress=False, calibration=calibration, drop_unconvertible=inputs.drop_unconvertible,
                            compare_orders=True, **options)
        except InputError as exc:
            raise InputError(cli_words(str(exc))) from None


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies (prctl PR_SET_PDEATHSIG): a ``kill -9`` of
    convert-many must not leave workers converting; elsewhere a thread watches the parent pid."""
    import sys
    import threading

    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0:  # PR_SET_PDEATHSIG = 1
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="wavecompress-parent-watch").start()


def _init_worker(threads: int) -> None:
    import torch

    die_with_parent()

    torch.set_num_threads(threads)


def _run_local(todo: list[BatchItem], options: dict[str, Any], force: bool, jobs: int,
               report: Callable[[ItemResult], None], inputs: InputOptions) -> list[ItemResult]:
    threads = max(1, available_cores() // jobs)
    if jobs == 1:
        results = []
        for item in todo:
            results.append(convert_one(item, options, force, inputs))
            report(results[-1])
        return results
    # spawn, not fork: forking a process whose torch thread pools are running can deadlock.
    context = multiprocessing.get_context("spawn")
    results: dict[BatchItem, ItemResult] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(convert_one, item, options, force, inputs): item for item in todo}
        for future in as_completed(futures):
            item = futures[future]
            try:
                results[item] = future.result()
            except BrokenProcessPool as exc:
                results[item] = ItemResult(str(item.source), str(item.target), "failed",
                                           message=f"worker process died ({exc}); out of memory?", exit_code=1)
            report(results[item])
    return [results[item] for item in todo]


def _run_ray(todo: list[BatchItem], options: dict[str, Any], force: bool, jobs: int,
             report: Callable[[ItemResult], None], inputs: InputOptions) -> list[ItemResult]:
    try:
        import ray
    except ImportError:
        raise InputError("--backend ray needs Ray on this machine: pip install 'wavecompress[ray]' (or 'ray>=2.9')") from None
    if not ray.is_initialized():
        # RAY_ADDRESS (e.g. ray://head:10001 or auto) joins a cluster; without it Ray starts a local instance.
        ray.init(address=os.environ.get("RAY_ADDRESS"), num_cpus=None if os.environ.get("RAY_ADDRESS") else jobs,
                 ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    task = ray.remote(num_cpus=1, max_retries=1)(convert_one)
    pending = {task.remote(item, options, force, inputs): item for item in todo}
    results: dict[BatchItem, ItemResult] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        item = pending.pop(done[0])
        try:
            results[item] = ray.get(done[0])
        except Exception as exc:  # noqa: BLE001 - a lost worker or node
            results[item] = ItemResult(str(item.source), str(item.target), "failed",
                                       message=f"ray task failed: {type(exc).__name__}: {exc}", exit_code=1)
        report(results[item])
    return [results[item] for item in todo]


def run_batch(items: list[BatchItem], options: dict[str, Any], jobs: int | None = None, backend: str = "local",
              force: bool = False, report: Callable[[ItemResult], None] | None = None,
              inputs: InputOptions | None = None) -> list[ItemResult]:
    """Convert every item not already done, ``jobs`` at a time; results in input order.

    ``options`` are :func:`wavecompress.compress` keyword arguments (budget, method, ...).
    ``report`` is called with each result as it finishes (skipped ones first).
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    jobs = available_cores() if jobs is None else jobs
    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}")
    report = report or (lambda result: None)
    fingerprint = options_record(options, inputs)["fingerprint"]
    complete = {item for item in items if not force and is_done(item.target)}
    done = {item for item in complete if stored_fingerprint(item.target) == fingerprint}
    results: dict[BatchItem, ItemResult] = {}
    for item in items:
        if item in done:
            results[item] = ItemResult(str(item.source), str(item.target), "skipped", message="already converted")
            report(results[item])
        elif item in complete:  # same folder name, other options: never reuse it, never replace it unasked
            results[item] = ItemResult(
                str(item.source), str(item.target), "failed", exit_code=2,
                message=f"{item.target}: exists but was made with other options (wavelet, levels, ordering, ...); "
                        "use --force to replace it, or another --out")
            report(results[item])
    todo = [item for item in items if item not in complete]
    if todo:
        runner = _run_ray if backend == "ray" else _run_local
        for item, result in zip(todo, runner(todo, options, force, min(jobs, len(todo)), report, inputs or InputOptions())):
            results[item] = result
    return [results[item] for item in items]


def format_summary(results: list[ItemResult], method: str) -> str:
    """One table for the whole batch: status, layers, relative errors (method and baselines), time."""
    baselines = sorted({name for r in results for name in r.errors if name != method})
    header = ["input", "status", "layers", method, *baselines, "seconds"]
    rows = []
    for r in results:
        errors = [f"{r.errors[name]:.4f}" if name in r.errors else "-" for name in [method, *baselines]]
        seconds = f"{r.seconds:.1f}" if r.status != "skipped" else "-"
        rows.append([Path(r.source).name, r.status, str(r.layers) if r.layers else "-", *errors, seconds])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    counts = {status: sum(r.status == status for r in results) for status in ("converted", "skipped", "failed")}
    lines.append(f"{counts['converted']} converted, {counts['skipped']} skipped (already done), "
                 f"{counts['failed']} failed, of {len(results)}")
    return "\n".join(lines)


def exit_code(results: list[ItemResult]) -> int:
    """0 when nothing failed; 1 if any failure was internal; else 2 (every failure was a bad input)."""
    codes = [r.exit_code for r in results if r.status == "failed"]
    if not codes:
        return 0
    return 1 if any(code != 2 for code in codes) else 2

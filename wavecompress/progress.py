"""Feedback on long work: one labelled progress line per phase, the same for every command.

On a terminal a phase that lasts over a second draws a bar on stderr, redrawn in place: what it
does in words, the count and an ETA where the work is countable (``choosing orderings 12/31 ... ETA
40 s``). When stderr is not a terminal (a log, CI) it prints a one-line heartbeat every
``WAVECOMPRESS_HEARTBEAT`` seconds (10 by default) instead, and a last line when the phase ends
after one. ``show=False`` (``--quiet``) silences both; the library's functions pass ``False`` unless
asked. A background thread keeps the line alive while one step takes long (a size-search try).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import IO

HEARTBEAT_ENV = "WAVECOMPRESS_HEARTBEAT"
BAR_DELAY = 1.0  # seconds before a terminal bar appears: short phases stay quiet
BAR_REFRESH = 0.25
WIDTH = 100  # the line never exceeds this many columns


def heartbeat_interval() -> float:
    """Seconds between heartbeat lines when stderr is not a terminal (``WAVECOMPRESS_HEARTBEAT``, default 10)."""
    try:
        return max(float(os.environ.get(HEARTBEAT_ENV, "10")), 0.001)
    except ValueError:
        return 10.0


def format_seconds(seconds: float) -> str:
    """``8 s``, ``2 min 05 s``, ``1 h 04 min``: a duration for a status line."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """One phase's progress line (a context manager): ``step()`` after each unit, ``describe()`` to
    change the words (``size search: try 3, 300 kB``). ``show``: None = a bar on a terminal and a
    heartbeat elsewhere, True = the same even in a library call, False = silent."""

    def __init__(self, label: str, total: int | None = None, unit: str = "", show: bool | None = None,
                 stream: IO[str] | None = None, interval: float | None = None) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = show is not False
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else heartbeat_interval()
        self.done = 0
        self.start = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False  # a terminal bar is on screen
        self._beats = 0  # heartbeat lines printed

    def __enter__(self) -> "Progress":
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="wavecompress-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(failed=exc[0] is not None)

    def step(self, count: int = 1) -> None:
        """Count ``count`` units done."""
        self.done += count

    def describe(self, label: str) -> None:
        """Change the words shown (the next redraw or heartbeat uses them)."""
        self.label = label

    def line(self) -> str:
        """The status line: label, count (and unit), percent and ETA when countable, elapsed time."""
        elapsed = time.monotonic() - self.start
        parts = [self.label]
        if self.total:
            unit = f" {self.unit}" if self.unit else ""
            parts.append(f"{self.done}/{self.total}{unit}")
            if self.done and self.done < self.total:
                parts.append(f"ETA {format_seconds(elapsed / self.done * (self.total - self.done))}")
        elif self.done:
            parts.append(f"{self.done} {self.unit}".rstrip())
        parts.append(f"{format_seconds(elapsed)} elapsed")
        text = ", ".join(parts[1:])
        line = f"{parts[0]} {text}" if text else parts[0]
        return line if len(line) <= WIDTH else line[: WIDTH - 1] + "…"

    def _bar(self) -> str:
        if not self.total:
            return self.line()
        filled = int(20 * min(self.done / self.total, 1.0))
        text = f"[{'#' * filled}{'.' * (20 - filled)}] {self.line()}"
        return text if len(text) <= WIDTH - 1 else text[: WIDTH - 2] + "…"

    def _run(self) -> None:
        if self.terminal:
            if self._stop.wait(BAR_DELAY):
                return
            while not self._stop.is_set():
                self._draw()
                self._stop.wait(BAR_REFRESH)
        else:
            while not self._stop.wait(self.interval):
                self._beat()

    def _draw(self) -> None:
        with self._lock:
            self.stream.write("\r\x1b[K" + self._bar())
            self.stream.flush()
            self._drawn = True

    def _beat(self) -> None:
        with self._lock:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._beats += 1

    def close(self, failed: bool = False) -> None:
        """End the phase: stop the thread, finish a drawn bar, and after heartbeats print one last line."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        elapsed = format_seconds(time.monotonic() - self.start)
        with self._lock:
            if self._drawn:
                self.stream.write("\r\x1b[K" + ("" if failed else f"{self.label}: done in {elapsed}\n"))
            elif self._beats and not failed:
                self.stream.write(f"{self.label}: done in {elapsed}\n")
            self.stream.flush()

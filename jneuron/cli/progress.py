"""A progress line for long streamed runs: tokens processed, throughput and time left, on stderr.

An analysis that reads the data several times says so: each pass is counted on its own (``pass 3/7,
12,000/25,021 tokens``), never as more tokens than there are.

>>> import io
>>> out = io.StringIO()
>>> bar = Progress(1000, stream=out, enabled=True, interval=0.0)
>>> bar(400); bar(600); bar.close()
>>> out.getvalue().splitlines()[-1].startswith("1,000/1,000 tokens (100%)")
True
>>> bar = Progress(1000, stream=out, enabled=True, interval=0.0, passes=3)
>>> bar(1000); bar(250)
>>> out.getvalue().splitlines()[-1].split(" | ")[0]
'pass 2/3, 250/1,000 tokens (42% of 3 passes)'
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Call with the rows of each chunk; redraws at most every ``interval`` seconds.

    Args:
      total: tokens of one pass over the data (``None`` when unknown: no percentage or time left).
      stream: where to draw (default ``sys.stderr``).
      enabled: ``None`` draws only when ``stream`` is a terminal; ``True``/``False`` force it.
      interval: least seconds between redraws (the final line is always drawn).
      unit: what is counted (``"tokens"``, ``"sentences"``).
      passes: passes over the data expected; a pass beyond them is shown by its number alone.
    """

    def __init__(self, total: int | None, *, stream: TextIO | None = None, enabled: bool | None = None,
                 interval: float = 0.25, unit: str = "tokens", passes: int = 1):
        self.total = total
        self.passes = passes
        self.stream = stream if stream is not None else sys.stderr
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = tty if enabled is None else enabled
        self.tty = tty
        self.interval = interval
        self.unit = unit
        self.done = 0
        self.start = time.perf_counter()
        self.last = -float("inf")
        self.drawn: int | None = None  # ``done`` when last drawn

    def __call__(self, rows: int) -> None:
        self.done += int(rows)
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.interval:
            self.last = now
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The current progress text."""
        elapsed = max((now or time.perf_counter()) - self.start, 1e-9)
        rate = self.done / elapsed
        whole = self.total * self.passes if self.total else None
        if not self.total:
            text = f"{self.done:,} {self.unit}"
        elif self.passes == 1 and self.done <= self.total:
            text = f"{self.done:,}/{self.total:,} {self.unit} ({100 * self.done / self.total:.0f}%)"
        else:
            step = max(1, -(-self.done // self.total))
            text = f"pass {step}{f'/{self.passes}' if step <= self.passes else ''}, " \
                   f"{self.done - (step - 1) * self.total:,}/{self.total:,} {self.unit}"
            if step <= self.passes:
                text += f" ({100 * self.done / whole:.0f}% of {self.passes} passes)"
        text += f" | {rate:,.0f} {self.unit}/s | {_clock(elapsed)} elapsed"
        if whole and rate > 0 and self.done < whole:
            text += f" | {_clock((whole - self.done) / rate)} left"
        return text

    def _draw(self, now: float) -> None:
        end = "" if self.tty else "\n"
        prefix = "\r\033[K" if self.tty else ""
        self.stream.write(prefix + self.line(now) + end)
        self.stream.flush()
        self.drawn = self.done

    def close(self) -> None:
        """Draw the final line (when enabled and not drawn yet) and end it; a run that reported no chunk finished
        them all."""
        if self.done == 0 and self.total:
            self.done = self.total * self.passes
        if self.enabled:
            if self.drawn != self.done:
                self._draw(time.perf_counter())
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()

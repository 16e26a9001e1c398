"""What a running search shows: a live panel on a terminal, quiet plain lines elsewhere."""

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table


@dataclass
class Counts:
    generated: int = 0
    training: int = 0
    scored: int = 0
    failed: int = 0
    duplicate: int = 0
    filtered: int = 0
    best_fitness: float | None = None
    best_id: int = 0
    round_index: int = 0
    rounds: int = 0
    phase: str = "starting"
    notices: list[str] = field(default_factory=list)


class Progress:
    """Thread-safe counters of one search, shown as they change.

    `note` lines are for events a user should see in a log (a round starting, a
    notice); counter updates only refresh the live panel.
    """

    def __init__(self, search_id: int, stream: TextIO | None = None, live: bool | None = None):
        self.search_id = search_id
        self.counts = Counts()
        self._lock = threading.Lock()
        self._stream = stream or sys.stderr
        self._console = Console(file=self._stream)
        self._started = time.monotonic()
        if live is None:
            live = self._console.is_terminal
        self._live: Live | None = None
        if live:
            self._live = Live(self._panel(), console=self._console, refresh_per_second=4)

    def __enter__(self) -> "Progress":
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._panel())
            self._live.stop()

    def note(self, message: str) -> None:
        """A line for the log (above the live panel on a terminal)."""
        line = f"[search {self.search_id}] {message}"
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self._stream, flush=True)

    def notice(self, message: str) -> None:
        with self._lock:
            self.counts.notices.append(message)
        self.note(f"notice: {message}")

    def update(self, **changes: int | float | str | None) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self.counts, key, value)
        self._refresh()

    def add(self, **deltas: int) -> None:
        with self._lock:
            for key, delta in deltas.items():
                setattr(self.counts, key, getattr(self.counts, key) + delta)
        self._refresh()

    def scored(self, candidate_id: int, fitness: float) -> bool:
        """Count a scored candidate; True when it is the best so far."""
        with self._lock:
            self.counts.scored += 1
            best = self.counts.best_fitness is None or fitness > self.counts.best_fitness
            if best:
                self.counts.best_fitness, self.counts.best_id = fitness, candidate_id
        self._refresh()
        return best

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._panel())

    def _panel(self) -> Table:
        c = self.counts
        table = Table(title=f"search {self.search_id}", show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column()
        elapsed = time.monotonic() - self._started
        table.add_row("round", f"{c.round_index} of {c.rounds}: {c.phase}")
        table.add_row(
            "candidates",
            f"{c.generated} generated, {c.training} training, {c.scored} scored, "
            f"{c.failed} failed, {c.duplicate} duplicate, {c.filtered} filtered",
        )
        best = "-" if c.best_fitness is None else f"{c.best_fitness:.1f} (candidate {c.best_id})"
        table.add_row("best fitness", best)
        table.add_row("elapsed", f"{elapsed:.0f} s")
        return table

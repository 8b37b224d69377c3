"""Progress records and cancellation, shared by training, generation and evaluation.

Long jobs take ``progress: Callable[[Progress], None] | None`` and ``cancel: CancelToken | None``.
``cancel`` is anything with ``is_set() -> bool`` (a ``threading.Event`` works); it is polled between
steps and the job raises :class:`engine.errors.Cancelled` without writing anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .errors import Cancelled


class CancelToken(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class Progress:
    """One progress report.

    fraction: 0..1 of the whole job; phase: short label ("sampling", "decoding", "training VAE");
    done/total: units of work in this job (cells, epochs, steps); rate: units per second
    (cells/s while generating); eta_s: seconds left, or None; loss: last training loss, or None.
    """

    fraction: float
    phase: str
    done: int = 0
    total: int = 0
    rate: float | None = None
    eta_s: float | None = None
    loss: float | None = None
    extra: dict = field(default_factory=dict)


ProgressFn = Callable[[Progress], None]


def check_cancel(cancel: CancelToken | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by the user; nothing was written")


#: A rate (and the time left) is reported once this much time has passed.
MIN_RATE_SECONDS = 0.25


class Reporter:
    """Turns (done, total) into Progress records with rate and time left."""

    def __init__(self, progress: ProgressFn | None, total: int, phase: str, *,
                 start: float = 0.0, span: float = 1.0) -> None:
        self.progress, self.total, self.phase = progress, max(int(total), 1), phase
        self.start, self.span = start, span
        self.t0 = time.perf_counter()

    def __call__(self, done: int, *, phase: str | None = None, loss: float | None = None,
                 **extra) -> None:
        if self.progress is None:
            return
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        # no rate from the first instants: a batch reported a few microseconds after the start
        # would read as millions of cells per second
        rate = done / elapsed if done and elapsed >= MIN_RATE_SECONDS else None
        eta = (self.total - done) / rate if rate else None
        frac = self.start + self.span * min(done / self.total, 1.0)
        self.progress(Progress(frac, phase or self.phase, done, self.total, rate, eta, loss, extra))

"""Background jobs: a QObject worker moved to a QThread, cancelled with a threading.Event.

A job is any callable ``fn(progress, cancel) -> result``. The worker reports throttled
:class:`engine.progress.Progress` records, then exactly one of ``finished(result)``,
``failed(message, details)`` or ``cancelled()``. The GUI thread never waits on a thread: it
sets the cancel event and reacts to signals.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

log = logging.getLogger(__name__)

JobFn = Callable[[Callable[[Any], None], threading.Event], Any]


def _lower_thread_priority(nice: int = 4) -> None:
    """Let the GUI thread win the CPU over background work (Linux: per-thread nice value;
    threads the job starts, such as torch's pool, inherit it). Best effort elsewhere."""
    import os

    if hasattr(os, "setpriority") and sys.platform.startswith("linux"):
        try:
            tid = threading.get_native_id()
            current = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(current + nice, 19))
        except OSError:
            pass


class Worker(QObject):
    progress = Signal(object)
    finished = Signal(object)
    failed = Signal(str, str)
    cancelled = Signal()
    done = Signal()  # after any of the three outcomes

    def __init__(self, fn: JobFn, *, name: str = "job", throttle_s: float = 0.1) -> None:
        super().__init__()
        self.fn, self.name, self.throttle_s = fn, name, throttle_s
        self.cancel_event = threading.Event()
        self._last_emit = 0.0
        self._last_frac = -1.0

    def _on_progress(self, p: Any) -> None:
        now = time.perf_counter()
        frac = getattr(p, "fraction", 0.0)
        if (now - self._last_emit >= self.throttle_s or frac >= 1.0
                or getattr(p, "phase", None) != getattr(self, "_last_phase", None)):
            self._last_emit, self._last_frac = now, frac
            self._last_phase = getattr(p, "phase", None)
            self.progress.emit(p)

    @Slot()
    def run(self) -> None:
        from engine.errors import Cancelled, PerturbStudioError

        _lower_thread_priority()

        t0 = time.perf_counter()
        try:
            result = self.fn(self._on_progress, self.cancel_event)
            if self.cancel_event.is_set():
                raise Cancelled("cancelled by the user; nothing was written")
        except Cancelled:
            log.info("%s cancelled after %.1f s", self.name, time.perf_counter() - t0)
            self.cancelled.emit()
        except PerturbStudioError as e:
            log.warning("%s failed: %s", self.name, e)
            self.failed.emit(str(e), traceback.format_exc())
        except MemoryError:
            log.exception("%s ran out of memory", self.name)
            self.failed.emit("The computer ran out of memory. Try fewer cells.",
                             traceback.format_exc())
        except Exception as e:  # noqa: BLE001 - shown to the user, logged with its traceback
            log.exception("%s failed unexpectedly", self.name)
            self.failed.emit(f"Something went wrong while running '{self.name}': {e}",
                             traceback.format_exc())
        else:
            log.info("%s finished in %.1f s", self.name, time.perf_counter() - t0)
            self.finished.emit(result)
        self.done.emit()


class Job(QObject):
    """A worker on its own thread. Keep a reference until the thread has finished.

    The job lives in the GUI thread and re-emits the worker's signals from there: callbacks
    connected to ``job.progress`` / ``finished`` / ``failed`` / ``cancelled`` always run in the
    GUI thread (a plain Python callable connected straight to the worker's signal would run in
    the worker thread, since it has no thread affinity of its own).
    """

    progress = Signal(object)
    finished = Signal(object)
    failed = Signal(str, str)
    cancelled = Signal()
    ended = Signal(object)  # self, after the thread has finished

    def __init__(self, fn: JobFn, *, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self.thread = QThread()
        self.thread.setObjectName(f"perturb-studio-{name}"[:60])
        self.worker = Worker(fn, name=name)
        self.worker.moveToThread(self.thread)
        self.thread.started.connect(self.worker.run)
        self.worker.done.connect(self.thread.quit)
        self.worker.progress.connect(self._on_progress)
        self.worker.finished.connect(self._on_finished)
        self.worker.failed.connect(self._on_failed)
        self.worker.cancelled.connect(self._on_cancelled)
        self.thread.finished.connect(self._on_thread_finished)
        self.slot = name

    @Slot()
    def _on_thread_finished(self) -> None:
        self.ended.emit(self)

    @Slot(object)
    def _on_progress(self, p) -> None:
        if not self.worker.cancel_event.is_set():
            self.progress.emit(p)

    @Slot(object)
    def _on_finished(self, result) -> None:
        self.finished.emit(result)

    @Slot(str, str)
    def _on_failed(self, msg: str, details: str) -> None:
        self.failed.emit(msg, details)

    @Slot()
    def _on_cancelled(self) -> None:
        self.cancelled.emit()

    def start(self) -> None:
        self.thread.start()

    def cancel(self) -> None:
        self.worker.cancel_event.set()

    @property
    def is_cancelling(self) -> bool:
        return self.worker.cancel_event.is_set()

    def is_running(self) -> bool:
        return self.thread.isRunning()


class JobRunner(QObject):
    """Owns running jobs by slot name; starting a job in a busy slot cancels the old one."""

    job_started = Signal(str)
    job_ended = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.jobs: dict[str, Job] = {}
        self._retired: set[Job] = set()
        self.closed = False

    def start(self, slot: str, fn: JobFn, *, name: str | None = None,
              on_progress: Callable | None = None, on_finished: Callable | None = None,
              on_failed: Callable | None = None, on_cancelled: Callable | None = None) -> Job:
        old = self.jobs.get(slot)
        if old is not None:
            old.cancel()
            self._retired.add(old)  # keep it alive until its thread has ended
        job = Job(fn, name=name or slot, parent=None)
        job.slot = slot
        for sig, cb in ((job.progress, on_progress), (job.finished, on_finished),
                        (job.failed, on_failed), (job.cancelled, on_cancelled)):
            if cb is not None:
                sig.connect(self._guard(cb))
        job.ended.connect(self._ended)
        self.jobs[slot] = job
        job.start()
        self.job_started.emit(slot)
        return job

    def _guard(self, cb: Callable) -> Callable:
        """Drop results that arrive after the window has closed (its widgets are gone)."""
        def call(*args):
            if not self.closed:
                cb(*args)
        return call

    @Slot(object)
    def _ended(self, job: Job) -> None:
        slot = job.slot
        if self.jobs.get(slot) is job:
            del self.jobs[slot]
        self._retired.discard(job)
        job.worker.deleteLater()
        job.thread.deleteLater()
        job.deleteLater()
        self.job_ended.emit(slot)

    def running(self, slot: str) -> Job | None:
        job = self.jobs.get(slot)
        return job if job is not None and job.is_running() else None

    def cancel(self, slot: str) -> None:
        job = self.jobs.get(slot)
        if job is not None:
            job.cancel()

    def busy(self) -> bool:
        return any(j.is_running() for j in self.jobs.values())

    def shutdown(self, timeout_ms: int = 5000) -> None:
        """On close: cancel every job, the current ones and those a newer job replaced (still
        running until they notice the cancel), ask their threads to quit, then wait for them,
        at most ``timeout_ms`` in all. Results that arrive later are dropped."""
        self.closed = True
        jobs = list(dict.fromkeys([*self.jobs.values(), *self._retired]))
        for job in jobs:
            job.cancel()
        deadline = time.perf_counter() + timeout_ms / 1000
        for job in jobs:
            job.thread.quit()
            left_ms = max(0, int(1000 * (deadline - time.perf_counter())))
            if not job.thread.wait(left_ms):
                log.warning("job %s still running after %d ms at shutdown", job.name, timeout_ms)

    def running_threads(self) -> int:
        """Threads of jobs (current or replaced) that have not finished yet."""
        return sum(j.is_running() for j in {*self.jobs.values(), *self._retired})


def warm_imports() -> None:
    """Import now, while a model loads, what generation and its analysis will need: a first
    import inside the generation worker holds the GIL long enough to freeze the window."""
    import importlib

    for name in ("anndata", "pandas", "scipy.sparse", "scipy.stats", "h5py", "engine.export",
                 "engine.analysis", "engine.data.io", "sklearn.decomposition",
                 "sklearn.neighbors"):
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover - reported when actually used
            pass

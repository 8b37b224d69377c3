"""The job runner (app.workers): a replaced job keeps running until it sees its cancel, and
shutdown waits for it too (issue 9 #2)."""

from __future__ import annotations

import threading

import pytest


def _slow_to_stop(started: threading.Event, release: threading.Event):
    """A job that, once cancelled, still needs ``release`` before it returns (like a long
    engine step that checks its cancel token only between steps)."""
    def fn(progress, cancel):
        started.set()
        cancel.wait(30)
        release.wait(30)
        return "late"
    return fn


def _running(job) -> bool:
    try:
        return job.thread.isRunning()
    except RuntimeError:  # the runner deleted the finished thread (deleteLater)
        return False


def test_shutdown_waits_for_a_replaced_job(qtbot):
    from app.workers import JobRunner

    runner = JobRunner()
    started, release = threading.Event(), threading.Event()
    results = []
    old = runner.start("run", _slow_to_stop(started, release), on_finished=results.append)
    assert started.wait(30)
    new = runner.start("run", lambda progress, cancel: "new")  # replaces (cancels) the old job
    assert old.is_cancelling and old.is_running()
    assert runner.jobs["run"] is new
    threading.Timer(0.3, release.set).start()  # the old job returns a moment after shutdown
    try:
        runner.shutdown(timeout_ms=30_000)
        assert not old.thread.isRunning(), "shutdown returned while a replaced job still ran"
        assert not new.thread.isRunning()
        assert runner.running_threads() == 0
        qtbot.wait(50)
        assert results == []  # a result that arrives after shutdown is dropped
    finally:
        release.set()
        qtbot.waitUntil(lambda: not _running(old), timeout=30_000)


def test_shutdown_is_bounded_and_says_which_job_is_left(qtbot, caplog):
    from app.workers import JobRunner

    runner = JobRunner()
    started, release = threading.Event(), threading.Event()
    job = runner.start("umap", _slow_to_stop(started, release), name="stubborn")
    assert started.wait(30)
    try:
        with caplog.at_level("WARNING", logger="app.workers"):
            runner.shutdown(timeout_ms=50)
        assert job.is_cancelling
        assert "job stubborn still running" in caplog.text
        assert runner.running_threads() == 1
    finally:
        release.set()
        qtbot.waitUntil(lambda: not _running(job), timeout=30_000)


@pytest.mark.parametrize("outcome", ["finished", "failed", "cancelled"])
def test_each_job_reports_exactly_one_outcome(qtbot, outcome):
    from app.workers import JobRunner
    from engine.errors import Cancelled, DataError

    def fn(progress, cancel):
        if outcome == "failed":
            raise DataError("x.h5ad: not an h5ad file")
        if outcome == "cancelled":
            raise Cancelled("stopped")
        return 42

    runner = JobRunner()
    seen = []
    job = runner.start("job", fn, on_finished=lambda r: seen.append(("finished", r)),
                       on_failed=lambda m, d: seen.append(("failed", m)),
                       on_cancelled=lambda: seen.append(("cancelled", None)))
    qtbot.waitUntil(lambda: bool(seen) and "job" not in runner.jobs, timeout=30_000)
    assert not _running(job)
    assert [s[0] for s in seen] == [outcome]
    if outcome == "finished":
        assert seen[0][1] == 42
    if outcome == "failed":
        assert seen[0][1] == "x.h5ad: not an h5ad file"

"""Hostile destinations for the writers (issue 15 #9, #10, #13): a full disk is refused before
writing (or is one ResourceError mid-write, never h5py noise or a crash), destinations are
checked before any work (``preflight_output``), and SIGTERM / SIGHUP / SIGKILL during a write
leave no temporary file behind (stale ones of ours are swept at the next write)."""

from __future__ import annotations

import collections
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import engine.export as export
from engine.errors import Cancelled, DataError, ResourceError
from engine.export import (
    OUTPUT_SUFFIXES,
    check_free_space,
    estimate_h5ad_bytes,
    preflight_output,
    sweep_stale_temp_files,
    write_csv,
    write_h5ad,
)

ROOT = Path(__file__).resolve().parents[2]
Usage = collections.namedtuple("Usage", "total used free")


def cells(n: int = 300, g: int = 40, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    counts = sp.random(n, g, density=0.3, format="csr", dtype=np.float32, random_state=seed)
    counts.data = rng.poisson(3, counts.nnz).astype(np.float32) + 1
    counts = counts.astype(np.int32)
    obs = pd.DataFrame({"condition": pd.Categorical(["T | A"] * n),
                        "is_control": np.zeros(n, bool)}, index=[f"gen{i}" for i in range(n)])
    a = ad.AnnData(X=sp.csr_matrix(np.log1p(counts.astype(np.float32))), obs=obs,
                   var=pd.DataFrame(index=[f"G{j}" for j in range(g)]))
    a.layers["counts"] = counts
    a.uns["perturb_studio"] = {"model": "m", "seed": 0}
    return a


def hidden(folder: Path) -> list[str]:
    return sorted(p for p in os.listdir(folder) if p.startswith("."))


def full_disk(monkeypatch, free: int = 1000):
    monkeypatch.setattr(export.shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - free, free))


# -- free space (issue 15 #9) -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["out.h5ad", "out.csv", "out.tsv"])
def test_too_little_space_is_refused_before_writing(tmp_path, monkeypatch, name):
    full_disk(monkeypatch)
    writer = write_h5ad if name.endswith(".h5ad") else write_csv
    with pytest.raises(ResourceError) as e:
        writer(cells(), tmp_path / name)
    msg = str(e.value)
    assert f"writing {tmp_path / name}" in msg
    assert f"of free space in {tmp_path}, but only 1000 bytes is free" in msg
    assert "choose another folder" in msg
    assert os.listdir(tmp_path) == []


def test_check_free_space_is_reusable_and_names_sizes(tmp_path, monkeypatch):
    full_disk(monkeypatch, free=5 * 2**20)
    check_free_space(tmp_path, 4 * 2**20, "saving the model")
    with pytest.raises(ResourceError, match=r"saving the model needs about 6\.0 MiB of free "
                                            r"space in .*, but only 5\.0 MiB is free"):
        check_free_space(tmp_path / "not-yet" / "model", 6 * 2**20, "saving the model")


def _failing(exc: BaseException):
    def write(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x89HDF\r\n\x1a\npartial")
        raise exc
    return write


def test_disk_filling_up_during_the_write_is_one_resource_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ad.AnnData, "write_h5ad",
                        _failing(OSError(errno.ENOSPC, "No space left on device")))
    (tmp_path / "out.h5ad").write_text("old results")
    with pytest.raises(ResourceError, match=r"out\.h5ad: the disk is full \(.* free in .*\); "
                                            "nothing was written"):
        write_h5ad(cells(), tmp_path / "out.h5ad")
    assert os.listdir(tmp_path) == ["out.h5ad"]
    assert (tmp_path / "out.h5ad").read_text() == "old results"


def test_disk_full_wrapped_by_anndata_is_still_a_resource_error(tmp_path, monkeypatch):
    # anndata re-raises OSError(str) and loses errno
    monkeypatch.setattr(ad.AnnData, "write_h5ad", _failing(OSError(
        "Driver write request failed (file write failed: errno = 28, error message = 'No space "
        "left on device')\n\nAbove error raised while writing key 'X'")))
    with pytest.raises(ResourceError, match="the disk is full"):
        write_h5ad(cells(), tmp_path / "out.h5ad")
    assert os.listdir(tmp_path) == []


def test_memory_error_while_writing_is_a_resource_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ad.AnnData, "write_h5ad", _failing(MemoryError()))
    with pytest.raises(ResourceError, match="ran out of memory while writing; nothing was"):
        write_h5ad(cells(), tmp_path / "out.h5ad")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_h5ad_estimate_is_an_upper_bound(tmp_path, compression):
    a = cells(2000, 80)
    a.obs["donor"] = [f"donor-ü-{i % 7}" for i in range(a.n_obs)]           # strings
    a.obs["score"] = np.linspace(0, 1, a.n_obs)
    a.obsm["X_pca"] = np.random.default_rng(0).normal(size=(a.n_obs, 10))
    a.uns["table"] = pd.DataFrame({"x": np.arange(50), "name": [f"n{i}" for i in range(50)]})
    a.uns["names"] = np.array([f"name{i}" for i in range(300)], dtype=object)
    a.raw = a.copy()
    est = estimate_h5ad_bytes(a)
    out = write_h5ad(a, tmp_path / "out.h5ad", compression=compression)
    assert out.stat().st_size <= est, (out.stat().st_size, est)
    b = ad.read_h5ad(out)
    np.testing.assert_array_equal(b.layers["counts"].toarray(), a.layers["counts"].toarray())
    np.testing.assert_array_equal(b.raw.X.toarray(), a.raw.X.toarray())
    assert list(b.uns["names"]) == list(a.uns["names"])


def _mount_tiny(folder: Path) -> bool:
    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    folder.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                       capture_output=True)
    return r.returncode == 0


@pytest.mark.parametrize("skip_check", [False, True])
def test_real_full_disk_gives_one_clean_line_and_no_crash(tmp_path, skip_check):
    """A 2 MB tmpfs: a ~20 MB h5ad and CSV are refused before writing. Before the fix: ~350
    lines of h5py noise and exit 139. With the check switched off, the CSV writer meets the
    full disk mid-write (one clean line); h5ad is then not tried (HDF5 would crash)."""
    tiny = tmp_path / "tiny"
    if not _mount_tiny(tiny):
        pytest.skip("needs root and tmpfs to make a small disk")
    try:
        code = textwrap.dedent(f"""
            import json, sys
            sys.path.insert(0, {str(ROOT / 'tests' / 'engine')!r})
            import engine.export as ex
            from engine.errors import PerturbStudioError
            from test_hostile_export import cells
            if {skip_check!r}:
                ex.check_free_space = lambda *a, **k: None
            res = {{}}
            for name in ("cells.csv",) if {skip_check!r} else ("cells.h5ad", "cells.csv"):
                try:
                    (ex.write_h5ad if name.endswith("h5ad") else ex.write_csv)(
                        cells(20000, 300), {str(tiny)!r} + "/" + name)
                    res[name] = "written"
                except PerturbStudioError as e:
                    res[name] = type(e).__name__ + ": " + str(e)
            print(json.dumps(res))
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=ROOT, timeout=300)
        assert out.returncode == 0, (out.returncode, out.stderr[-3000:])
        assert out.stderr.strip() == "", out.stderr[-3000:]
        res = json.loads(out.stdout.strip().splitlines()[-1])
        for name, got in res.items():
            assert got.startswith("ResourceError: "), (name, got)
            assert f"{tiny}/{name}" in got
            want = "the disk is full" if skip_check else "of free space in"
            assert want in got, got
        assert os.listdir(tiny) == []
    finally:
        subprocess.run(["umount", str(tiny)], capture_output=True)


# -- destinations checked before any work (issue 15 #10) ----------------------------------------


@pytest.mark.parametrize("suffix", OUTPUT_SUFFIXES)
def test_preflight_accepts_every_supported_suffix_and_leaves_nothing(tmp_path, suffix):
    p = tmp_path / f"cells{suffix.upper() if suffix == '.csv' else suffix}"
    assert preflight_output(p) == p
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["cells.xlsx", "cells", "cells.h5", "cells.gz", "cells.csv.zip"])
def test_preflight_refuses_unsupported_suffixes(tmp_path, name):
    with pytest.raises(DataError, match=r"the output file must end in \.h5ad, \.csv, \.csv\.gz, "
                                        rf"\.tsv, .*\(got '{name}'\)"):
        preflight_output(tmp_path / name)


def test_preflight_parent_that_is_a_file_is_named(tmp_path):
    (tmp_path / "results").write_text("a file")
    with pytest.raises(DataError, match=rf"{tmp_path / 'results'} is a file, not a folder"):
        preflight_output(tmp_path / "results" / "x.csv")
    with pytest.raises(DataError, match=rf"{tmp_path / 'results'} is a file, not a folder"):
        preflight_output(tmp_path / "results" / "sub" / "deeper" / "x.csv")
    assert (tmp_path / "results").read_text() == "a file"


def test_preflight_creates_missing_folders_and_refuses_a_folder_target(tmp_path):
    p = preflight_output(tmp_path / "new" / "sub" / "x.h5ad")
    assert p.parent.is_dir() and os.listdir(p.parent) == []
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError, match="is a folder; give a file name"):
        preflight_output(tmp_path / "dir.csv")


def test_preflight_unwritable_folder_is_refused(tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(export.tempfile, "mkstemp", denied)
    with pytest.raises(DataError, match=rf"cannot write in {tmp_path} \(Permission denied\)"):
        preflight_output(tmp_path / "x.csv")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root may write anywhere")
def test_preflight_read_only_folder_is_refused_for_real(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(DataError, match="cannot (write in|create or use the folder)"):
            preflight_output(ro / "sub" / "x.csv")
        with pytest.raises(DataError, match="cannot write in"):
            preflight_output(ro / "x.csv")
    finally:
        ro.chmod(0o700)


def test_preflight_read_only_file_system_is_refused_for_real(tmp_path):
    """The issue's ``-o /ro/sub/x.csv``: refused before any work, naming the folder and why."""
    ro = tmp_path / "ro"
    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a read-only file system")
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        with pytest.raises(DataError, match=rf"cannot create or use the folder {ro / 'sub'} "
                                            r"\(Read-only file system\)"):
            preflight_output(ro / "sub" / "x.csv")
        with pytest.raises(DataError, match=rf"cannot write in {ro} \(Read-only file system\)"):
            preflight_output(ro / "x.csv")
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_preflight_checks_free_space_when_asked(tmp_path, monkeypatch):
    full_disk(monkeypatch, free=2**20)
    preflight_output(tmp_path / "x.csv", need_bytes=1000)
    with pytest.raises(ResourceError, match=r"writing .*x\.csv needs about 2\.0 GiB of free "
                                            r"space in .*, but only 1\.0 MiB is free"):
        preflight_output(tmp_path / "x.csv", need_bytes=2 * 2**30)


# -- signals and stale temporary files (issue 15 #13) ---------------------------------------------


CHILD = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    # a terminal's default: under nohup the child would inherit SIGHUP as ignored, and the
    # exporter (rightly) leaves an ignored signal ignored
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    sys.path.insert(0, {tests!r})
    import engine.export as ex
    from test_hostile_export import cells
    folder, fmt = Path({folder!r}), {fmt!r}
    marker = folder / "writing.marker"

    def hold(*a, **k):
        marker.write_text("now")
        time.sleep(120)

    if fmt == "csv":
        ex.write_csv(cells(), folder / "out.csv", progress=hold)
    else:
        import anndata
        real = anndata.AnnData.write_h5ad
        def slow(self, *a, **k):
            real(self, *a, **k)
            hold()
        anndata.AnnData.write_h5ad = slow
        ex.write_h5ad(cells(), folder / "out.h5ad")
""")


def _start_writer(folder: Path, fmt: str) -> subprocess.Popen:
    code = CHILD.format(tests=str(ROOT / "tests" / "engine"), folder=str(folder), fmt=fmt)
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (folder / "writing.marker").exists():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise AssertionError(f"the writer did not start: {p.communicate()[1][-2000:]}")
        time.sleep(0.05)
    return p


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("fmt", ["csv", "h5ad"])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_mid_write_remove_the_temporary_file(tmp_path, fmt, sig):
    (tmp_path / f"out.{fmt}").write_text("previous results")
    p = _start_writer(tmp_path, fmt)
    assert any(n.startswith(f".out.{fmt}.") for n in hidden(tmp_path))
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=60)
    assert p.returncode == -getattr(signal, sig), err[-2000:]   # still ends by that signal
    assert "Traceback" not in err
    assert hidden(tmp_path) == []
    assert (tmp_path / f"out.{fmt}").read_text() == "previous results"


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sigkill_leftover_is_swept_at_the_next_write(tmp_path):
    p = _start_writer(tmp_path, "csv")
    p.kill()
    p.communicate(timeout=60)
    left = hidden(tmp_path)
    assert len(left) == 1 and left[0].startswith(".out.csv.") and left[0].endswith(".tmp")
    (tmp_path / "writing.marker").unlink()
    write_csv(cells(), tmp_path / "out.csv")
    assert sorted(os.listdir(tmp_path)) == ["out.csv"]


def test_previous_python_handler_runs_after_cleanup_then_cancelled(tmp_path):
    seen = []
    prev = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        def send(p):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)

        with pytest.raises(Cancelled, match=r"out\.csv: stopped by SIGTERM; nothing was written"):
            write_csv(cells(), tmp_path / "out.csv", progress=send)
        assert seen == [signal.SIGTERM]
        assert os.listdir(tmp_path) == []
        assert signal.getsignal(signal.SIGTERM) is not export._raise_signalled
    finally:
        signal.signal(signal.SIGTERM, prev)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP")
def test_ignored_sighup_stays_ignored_nohup(tmp_path):
    prev = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        write_csv(cells(), tmp_path / "out.csv",
                  progress=lambda p: os.kill(os.getpid(), signal.SIGHUP))
        assert os.listdir(tmp_path) == ["out.csv"]
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, prev)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_sweep_removes_only_stale_temporary_files_of_ours(tmp_path):
    host, dead, me = export._host_tag(), _dead_pid(), os.getpid()
    old = time.time() - 2 * 3600
    files = {
        f".out.csv.{host}-{dead}-abcd1234.tmp": True,           # killed writer
        f".out.csv.{host}-{dead}-abcd1234.tmp.h5ad": True,
        ".out.csv.abcd_234.tmp": False,                          # old naming, recent
        ".out.csv.zzzz9999.tmp": True,                           # old naming, 2 h old
        f".out.csv.{host}-{me}-abcd1234.tmp": False,             # this process
        f".out.csv.{host}-1-abcd1234.tmp": False,                # a live process
        f".out.csv.ffffff-{dead}-abcd1234.tmp": False,           # another host, recent
        f".other.csv.{host}-{dead}-abcd1234.tmp": False,         # another destination
        ".out.csv.notes": False,                                 # not our pattern
        f".out.csv.{host}-{dead}-abcd1234.tmp.bak": False,
        "out.csv": False,
    }
    if host == "ffffff":
        pytest.skip("host tag collides with the fake one")
    for name in files:
        (tmp_path / name).write_text("x")
    os.utime(tmp_path / ".out.csv.zzzz9999.tmp", (old, old))
    (tmp_path / f".out.csv.{host}-{dead}-dir12345.tmp").mkdir()             # a folder: kept
    removed = sweep_stale_temp_files(tmp_path, "out.csv")
    assert sorted(p.name for p in removed) == sorted(n for n, gone in files.items() if gone)
    for name, gone in files.items():
        assert (tmp_path / name).exists() is not gone, name
    assert (tmp_path / f".out.csv.{host}-{dead}-dir12345.tmp").is_dir()


def test_temporary_names_carry_host_and_pid(tmp_path):
    seen = []
    write_csv(cells(), tmp_path / "out.csv", progress=lambda p: seen.extend(hidden(tmp_path)))
    assert seen and all(export._tmp_pattern("out.csv").fullmatch(n) for n in seen)
    assert f"-{os.getpid()}-" in seen[0]

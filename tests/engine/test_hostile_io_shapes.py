"""Issue 15 #3: a header that declares 10^9 cells is refused before anything is allocated.

The hostile files are built with h5py directly: a few KB each, they declare a billion cells
through a shape attribute, through datasets that hold no data (read back as fill values: 7.5 GiB
for ``indptr``, 186 GiB for a dense ``X``), or through a Matrix Market size line. Each must give
a specific DataError (or ResourceError), with the peak memory of the reading process bounded.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from engine.data import io_common
from engine.data.io import read_dataset
from engine.errors import DataError, ResourceError

BILLION = 10**9
ROOT = Path(__file__).resolve().parents[2]


def _enc(obj, kind: str, version: str = "0.1.0") -> None:
    obj.attrs["encoding-type"] = kind
    obj.attrs["encoding-version"] = version


def _frame(f, key: str, n: int | None = None, *, names=None, unwritten: int | None = None):
    g = f.create_group(key)
    _enc(g, "dataframe", "0.2.0")
    g.attrs["_index"] = "_index"
    g.attrs["column-order"] = np.array([], dtype="S")
    if unwritten is not None:
        d = g.create_dataset("_index", shape=(unwritten,), dtype=h5py.string_dtype(),
                             chunks=(1 << 16,))
    else:
        names = names if names is not None else [f"{key}{i}" for i in range(n)]
        d = g.create_dataset("_index", data=np.array(names, dtype=object),
                             dtype=h5py.string_dtype())
    _enc(d, "string-array", "0.2.0")
    return g


def _anndata_file(path: Path, build_x, n_obs: int = 2, n_vars: int = 50, obs_unwritten=None):
    with h5py.File(path, "w") as f:
        _enc(f, "anndata")
        for k in ("layers", "obsm", "varm", "obsp", "varp", "uns"):
            _enc(f.create_group(k), "dict")
        build_x(f)
        _frame(f, "obs", n_obs, unwritten=obs_unwritten)
        _frame(f, "var", n_vars)
    return path


def _csr_group(f, key="X", shape=(2, 50), indptr=(0, 1, 2), indices=(0, 1), data=(1.0, 2.0)):
    g = f.create_group(key)
    _enc(g, "csr_matrix")
    g.attrs["shape"] = shape
    g["indptr"] = np.asarray(indptr, dtype=np.int64)
    g["indices"] = np.asarray(indices, dtype=np.int32)
    g["data"] = np.asarray(data, dtype=np.float32)
    return g


def shape_attr_file(path: Path) -> Path:
    """shape=(10^9, 50), tiny arrays."""
    return _anndata_file(path, lambda f: _csr_group(f, shape=(BILLION, 50)))


def unwritten_indptr_file(path: Path) -> Path:
    """A consistent CSR header: 10^9 + 1 indptr entries declared, none written."""
    def x(f):
        g = f.create_group("X")
        _enc(g, "csr_matrix")
        g.attrs["shape"] = (BILLION, 50)
        g.create_dataset("indptr", shape=(BILLION + 1,), dtype=np.int64, chunks=(1 << 20,),
                         compression="gzip")
        g["indices"] = np.zeros(0, np.int32)
        g["data"] = np.zeros(0, np.float32)
    return _anndata_file(path, x, n_obs=BILLION, obs_unwritten=BILLION)


def unwritten_dense_file(path: Path, chunked: bool = True) -> Path:
    """Dense X of 10^9 x 50 float32 (186 GiB) declared, nothing written."""
    def x(f):
        f.create_dataset("X", shape=(BILLION, 50), dtype=np.float32,
                         chunks=(1 << 14, 50) if chunked else None)
    return _anndata_file(path, x)


HOSTILE_H5AD = {
    "shape_attr": (shape_attr_file,
                   "X: a 1,000,000,000 x 50 CSR matrix needs 1,000,000,001 entries in indptr "
                   "but the file has 3"),
    "unwritten_indptr": (unwritten_indptr_file,
                         "dataset 'X/indptr' declares 7.5 GiB (1,000,000,001 values) but "
                         "stores only 0 bytes of data"),
    "unwritten_dense": (unwritten_dense_file,
                        "dataset 'X' declares 186.3 GiB (50,000,000,000 values) but stores only "
                        "0 bytes of data"),
    "unwritten_contiguous": (lambda p: unwritten_dense_file(p, chunked=False),
                             "dataset 'X' declares 186.3 GiB (50,000,000,000 values) but holds "
                             "no data"),
}


@pytest.mark.parametrize("name", list(HOSTILE_H5AD))
def test_billion_cell_h5ad_is_refused(tmp_path: Path, name: str):
    build, expected = HOSTILE_H5AD[name]
    p = build(tmp_path / f"{name}.h5ad")
    assert p.stat().st_size < 64_000
    with pytest.raises(DataError) as err:
        read_dataset(p)
    assert str(err.value).startswith(f"{p}: ")
    assert expected in str(err.value)


def _hostile_mtx_folder(folder: Path, n_genes=20_000, n_cells=50_000, nnz=BILLION,
                        gz=True) -> Path:
    """A real-sized features/barcodes pair and a matrix header declaring 10^9 entries."""
    folder.mkdir()
    with gzip.open(folder / "features.tsv.gz", "wt") as f:
        f.writelines(f"ENSG{i:011d}\tG{i}\tGene Expression\n" for i in range(n_genes))
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as f:
        f.writelines(f"C{i}-1\n" for i in range(n_cells))
    text = (f"%%MatrixMarket matrix coordinate integer general\n{n_genes} {n_cells} {nnz}\n"
            "1 1 1\n")
    if gz:
        with gzip.open(folder / "matrix.mtx.gz", "wt") as f:
            f.write(text)
    else:
        (folder / "matrix.mtx").write_text(text)
    return folder


def test_peak_memory_stays_bounded_on_hostile_files(tmp_path: Path):
    """Each hostile file read in a fresh process: peak RSS grows by under 150 MB."""
    files = {name: str(build(tmp_path / f"{name}.h5ad"))
             for name, (build, _) in HOSTILE_H5AD.items()}
    files["mtx_gz"] = str(_hostile_mtx_folder(tmp_path / "mtx_gz"))
    files["mtx_plain"] = str(_hostile_mtx_folder(tmp_path / "mtx_plain", gz=False))
    script = (
        "import json, resource, sys\n"
        "import anndata, h5py, scipy.io\n"
        "from engine.data.io import read_dataset\n"
        "out = {}\n"
        "for name, path in json.loads(sys.argv[1]).items():\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "    try:\n"
        "        read_dataset(path)\n"
        "        err = 'no error'\n"
        "    except Exception as e:\n"
        "        err = f'{type(e).__name__}: {e}'\n"
        "    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "    out[name] = [err, (after - before) / 1024]\n"
        "print(json.dumps(out))\n")
    for name, path in files.items():  # one process per file: ru_maxrss is a process peak
        res = subprocess.run([sys.executable, "-c", script, json.dumps({name: path})],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        err, delta_mb = json.loads(res.stdout.strip().splitlines()[-1])[name]
        print(f"{name}: peak RSS +{delta_mb:.1f} MB; {err[:120]}")
        assert err.startswith("DataError: "), err
        assert delta_mb < 150, (name, delta_mb)


def test_sparse_index_arrays_must_agree(tmp_path: Path):
    cases = {
        "lengths": (dict(indices=(0, 1, 2)), "X: 3 indices but 2 values"),
        "end": (dict(indptr=(0, 1, 3)), "X: indptr runs from 0 to 3 but there are 2 stored"),
        "start": (dict(indptr=(1, 1, 2)), "X: indptr runs from 1 to 2"),
        "rows": (dict(shape=(3, 50), indptr=(0, 1, 2, 2)),
                 "X has 3 rows but the file lists 2 cells for it"),
        "range": (dict(indices=(0, 99)), "X is not a valid sparse matrix"),
        "backwards": (dict(indptr=(0, 3, 2), indices=(0, 1)), "X is not a valid sparse matrix"),
    }
    for name, (kw, expected) in cases.items():
        p = _anndata_file(tmp_path / f"{name}.h5ad", lambda f, kw=kw: _csr_group(f, **kw))
        with pytest.raises(DataError) as err:
            read_dataset(p)
        assert str(err.value).startswith(f"{p}: "), name
        assert expected in str(err.value), (name, str(err.value))
    for name, kw in {"one_row_holds_all": dict(indptr=(0, 0, 2)),
                     "five_values": dict(indptr=(0, 1, 5), indices=(0, 1, 2, 3, 4),
                                         data=(1,) * 5)}.items():
        p = _anndata_file(tmp_path / f"{name}.h5ad", lambda f, kw=kw: _csr_group(f, **kw))
        assert read_dataset(p).shape == (2, 50)


def test_indptr_decreasing_inside_is_refused(tmp_path: Path):
    p = _anndata_file(tmp_path / "dec.h5ad", lambda f: _csr_group(
        f, shape=(3, 50), indptr=(0, 2, 1, 2), indices=(0, 1), data=(1, 1)), n_obs=3)
    with pytest.raises(DataError, match=r"X is not a valid sparse matrix.*corrupt"):
        read_dataset(p)


def test_dense_and_obs_shapes_must_agree(tmp_path: Path):
    p = _anndata_file(tmp_path / "dense.h5ad",
                      lambda f: f.create_dataset("X", data=np.ones((2, 40), np.float32)))
    with pytest.raises(DataError, match="X has 40 columns but the file lists 50 genes"):
        read_dataset(p)

    def with_column(f):
        _csr_group(f)
    p2 = _anndata_file(tmp_path / "col.h5ad", with_column)
    with h5py.File(p2, "a") as f:
        f["obs"]["batch"] = np.arange(3)
    with pytest.raises(DataError, match="column obs/batch has 3 values but obs has 2 rows"):
        read_dataset(p2)


def test_external_storage_is_refused(tmp_path: Path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"x" * 400)

    def x(f):
        f.create_dataset("X", shape=(2, 50), dtype=np.float32,
                         external=[(str(secret), 0, 400)])
    p = _anndata_file(tmp_path / "ext.h5ad", x)
    with pytest.raises(DataError, match="dataset 'X' keeps its data in another file"):
        read_dataset(p)


def test_memory_needed_is_checked_against_memory_available(tmp_path: Path, monkeypatch):
    a = ad.AnnData(np.ones((2000, 100), np.float32),
                   obs=pd.DataFrame(index=[f"c{i}" for i in range(2000)]),
                   var=pd.DataFrame(index=[f"g{i}" for i in range(100)]))
    p = tmp_path / "big.h5ad"
    a.write_h5ad(p)
    assert io_common.available_memory() > 0
    monkeypatch.setattr(io_common, "available_memory", lambda: 1 << 20)
    with pytest.raises(ResourceError) as err:
        read_dataset(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}: reading this file needs about ")
    assert "of memory, but only 1.0 MiB is available" in msg


def test_out_of_memory_while_reading_is_a_resource_error(tmp_path: Path, monkeypatch):
    import anndata

    p = tmp_path / "ok.h5ad"
    ad.AnnData(np.ones((3, 2), np.float32)).write_h5ad(p)

    def boom(*a, **k):
        raise MemoryError
    monkeypatch.setattr(anndata, "read_h5ad", boom)
    with pytest.raises(ResourceError, match=r"ok\.h5ad: ran out of memory while reading"):
        read_dataset(p)


# -- 10x .h5 ------------------------------------------------------------------------------------


def _tenx(path: Path, shape=(3, 4), n_ptr=None, barcodes=4, unwritten_indptr=False) -> Path:
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"] = np.ones(2, np.int32)
        g["indices"] = np.array([0, 1], np.int64)
        if unwritten_indptr:
            g.create_dataset("indptr", shape=(shape[1] + 1,), dtype=np.int64,
                             chunks=(1 << 20,), compression="gzip")
        else:
            g["indptr"] = np.array([0, 1, 2] + [2] * ((n_ptr or shape[1] + 1) - 3), np.int64)
        g["shape"] = np.array(shape, np.int32)
        g["barcodes"] = np.array([f"C{i}" for i in range(barcodes)], dtype="S")
        fe = g.create_group("features")
        for k in ("id", "name", "feature_type", "genome"):
            fe[k] = np.array([f"{k}{i}" for i in range(3)], dtype="S")
    return path


def test_10x_h5_billion_cells(tmp_path: Path):
    p = _tenx(tmp_path / "shape.h5", shape=(3, BILLION), n_ptr=5)
    with pytest.raises(DataError, match=r"matrix: a 3 x 1,000,000,000 CSC matrix needs "
                                        r"1,000,000,001 entries in indptr but the file has 5"):
        read_dataset(p)
    p2 = _tenx(tmp_path / "unwritten.h5", shape=(3, BILLION), unwritten_indptr=True)
    with pytest.raises(DataError, match=r"dataset 'matrix/indptr' declares 7\.5 GiB"):
        read_dataset(p2)
    p3 = _tenx(tmp_path / "barcodes.h5", barcodes=7)
    with pytest.raises(DataError, match=r"matrix/barcodes lists 7 entries but the matrix has "
                                        r"4 cells"):
        read_dataset(p3)
    with pytest.raises(DataError, match=r"matrix/shape is not two numbers >= 0"):
        read_dataset(_tenx(tmp_path / "neg.h5", shape=(3, -4), n_ptr=5))


# -- Matrix Market ------------------------------------------------------------------------------


def test_mtx_header_declaring_billions_is_refused(tmp_path: Path):
    gz = _hostile_mtx_folder(tmp_path / "gz")
    with pytest.raises(DataError, match=r"declares 1,000,000,000 entries, more than a \d+-byte "
                                        r"gzip file can hold"):
        read_dataset(gz)
    plain = _hostile_mtx_folder(tmp_path / "plain", gz=False)
    with pytest.raises(DataError, match=r"declares 1,000,000,000 entries but the file has only "
                                        r"6 bytes after its header.*truncated"):
        read_dataset(plain)
    over = _hostile_mtx_folder(tmp_path / "over", n_genes=3, n_cells=4, nnz=10**12)
    with pytest.raises(DataError, match=r"declares 1,000,000,000,000 entries but a 3 x 4 matrix "
                                        r"has only 12 positions"):
        read_dataset(over)
    rows = _hostile_mtx_folder(tmp_path / "rows", n_genes=3, n_cells=4, nnz=1)
    (rows / "matrix.mtx.gz").unlink()
    (rows / "matrix.mtx").write_text("%%MatrixMarket matrix coordinate integer general\n"
                                     f"{BILLION} 4 1\n1 1 1\n")
    with pytest.raises(DataError, match=r"has 1000000000 rows but features\.tsv\.gz lists 3"):
        read_dataset(rows)


def test_mtx_header_errors(tmp_path: Path):
    folder = _hostile_mtx_folder(tmp_path / "m", n_genes=3, n_cells=4, nnz=1, gz=False)
    m = folder / "matrix.mtx"
    for text, expected in [
        ("hello\n", "not a Matrix Market file"),
        ("%%MatrixMarket matrix coordinate integer general\n% only a comment\n",
         "ends before its size line"),
        ("%%MatrixMarket matrix coordinate integer general\n3 x 1\n", "is not 3 numbers"),
        ("%%MatrixMarket matrix coordinate complex general\n3 4 1\n1 1 1 0\n",
         "complex numbers"),
        ("%%MatrixMarket matrix weird integer general\n3 4 1\n1 1 1\n", "unsupported Matrix"),
    ]:
        m.write_text(text)
        with pytest.raises(DataError, match=expected):
            read_dataset(folder)
    m.write_text("%%MatrixMarket matrix coordinate integer general\n" + "%" * 100 + "\n"
                 "3 4 2\n1 1 5\n3 4 7\n")
    a = read_dataset(folder)
    assert a.shape == (4, 3) and a.X[0, 0] == 5 and a.X[3, 2] == 7


def test_mtx_memory_check(tmp_path: Path, monkeypatch):
    folder = _hostile_mtx_folder(tmp_path / "m", n_genes=3, n_cells=4, nnz=2, gz=False)
    (folder / "matrix.mtx").write_text("%%MatrixMarket matrix coordinate integer general\n"
                                       "3 4 2\n1 1 5\n3 4 7\n")
    monkeypatch.setattr(io_common, "available_memory", lambda: 10)
    with pytest.raises(ResourceError, match=r"reading this matrix needs about .* only 10 bytes"):
        read_dataset(folder)


def test_real_files_pass_the_checks(data_dir: Path):
    from engine.data.io_hdf5 import check_h5ad

    for name in ("kang2018_ifnb_pbmc_train.h5ad", "norman2019_tiny_50x50.h5ad",
                 "papalexi2021_thp1_crispr_ko_train.h5ad"):
        with h5py.File(data_dir / name, "r") as f:
            check_h5ad(f, data_dir / name)


def test_valid_sparse_file_still_reads(tmp_path: Path):
    a = ad.AnnData(sp.random(300, 80, density=0.1, format="csr", dtype=np.float32,
                             random_state=0))
    a.X.data[:] = np.ceil(a.X.data * 5)
    a.obs_names = [f"c{i}" for i in range(300)]
    p = tmp_path / "ok.h5ad"
    a.write_h5ad(p, compression="gzip")
    assert read_dataset(p).shape == (300, 80)


def test_10x_indices_out_of_range_are_refused(tmp_path: Path):
    """Found by the fuzz suite: scanpy subset such a matrix and scipy segfaulted."""
    p = _tenx(tmp_path / "idx.h5")
    with h5py.File(p, "a") as f:
        f["matrix/indices"][1] = 3000
    with pytest.raises(DataError, match=r"idx\.h5: /matrix/indices point outside the 3 genes"):
        read_dataset(p)


@pytest.mark.parametrize("probe, expected", [
    ("import os, signal, sys\nprint('ready', flush=True)\nsys.stdin.readline()\n"
     "os.kill(os.getpid(), signal.SIGSEGV)\n", r"crashes the HDF5 library \(exit -11\)"),
    ("import sys, time\nprint('ready', flush=True)\nsys.stdin.readline()\ntime.sleep(60)\n",
     r"did not finish in 2 s"),
])
def test_a_file_that_crashes_or_hangs_hdf5_is_a_data_error(tmp_path: Path, monkeypatch,
                                                            probe: str, expected: str):
    """Found by the fuzz suite: a flipped byte in an attribute message segfaults libhdf5 when
    anndata reads it. The headers are read in a child process first, so this process survives."""
    from engine.data import io_hdf5

    p = tmp_path / "ok.h5ad"
    ad.AnnData(np.ones((3, 2), np.float32)).write_h5ad(p)
    monkeypatch.setattr(io_hdf5, "_PROBE", probe)
    monkeypatch.setattr(io_hdf5, "_PROBE_TIMEOUT", 2)
    monkeypatch.setattr(io_hdf5, "_PROBER", io_hdf5._Prober())
    with pytest.raises(DataError, match=rf"ok\.h5ad: reading the structure of this HDF5 file "
                                        rf"{expected}; the file is corrupt"):
        read_dataset(p)


def test_probe_child_is_reused_and_restarted(tmp_path: Path, monkeypatch):
    from engine.data import io_hdf5

    p = tmp_path / "ok.h5ad"
    ad.AnnData(np.ones((3, 2), np.float32)).write_h5ad(p)
    prober = io_hdf5._Prober()
    monkeypatch.setattr(io_hdf5, "_PROBER", prober)
    read_dataset(p)
    first = prober.proc.pid
    read_dataset(p)
    assert prober.proc.pid == first  # one child for many files
    prober.proc.kill()
    prober.proc.wait()
    assert read_dataset(p).shape == (3, 2)  # a dead child is replaced
    assert prober.proc.pid != first

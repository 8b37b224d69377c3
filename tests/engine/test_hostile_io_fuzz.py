"""Issue 15, "keep it fixed": property-based fuzzing of the data readers.

- CSV / TSV / TXT (optionally gzipped) in random dialects: separators, quoting, header variants
  (corner cell, R's missing corner, no cell names), ragged rows, non-numeric and missing cells,
  blank lines, CRLF, BOM, trailing separators, stray bytes;
- truncated and byte-flipped h5ad and 10x .h5 files (run in a child process, so that a crash of
  the HDF5 C library fails this test instead of killing pytest, under a memory limit).

Either :func:`read_dataset` returns a valid AnnData (cells and genes, unique names, finite float32
CSR counts, categorical or numeric ``obs``) or it raises :class:`DataError` naming the file;
never another exception.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.data.io import get_counts, read_dataset
from engine.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SEPS = [",", "\t", ";", "|"]
EXTS = [".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz"]
NAME = st.one_of(
    st.sampled_from(["A", "B", "GATA1", "gene", "cell", "dose", "n_counts", "batch", "", "A",
                     "ENSG00000000001", '"q"', 'x"y', "a,b", "x;y", "t\tu", "p|q", "é", " ",
                     "ACGTACGTAC-1", "Unnamed: 0", "nan", "1", "2.5"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=6))
NUMBER = st.integers(0, 50).map(str)
VALUE = st.one_of(
    NUMBER, NUMBER, NUMBER,
    st.sampled_from(["", "NA", "nan", "inf", "-inf", "1e3", "0.5", "1,5", "-1", "True", "text",
                     '"3"', '"a\nb"', " 7 ", "1e400", "0x10", "١", "3.0"]),
    st.floats().map(str),
    st.text(max_size=4))
MUTATIONS = ["none"] * 8 + ["drop", "add", "blank", "trailing"]


def _field(value: str, sep: str, quote_all: bool) -> str:
    if quote_all:
        return '"' + value.replace('"', '""') + '"'
    return value


@st.composite
def tables(draw):
    sep = draw(st.sampled_from(SEPS))
    ext = draw(st.sampled_from(EXTS))
    n_genes = draw(st.integers(0, 5))
    n_rows = draw(st.integers(0, 6))
    index = draw(st.sampled_from(["names", "names", "numbers", "none"]))
    corner = draw(st.sampled_from([None, "", "cell", "barcode", "gene", "index", "X"]))
    genes = draw(st.lists(NAME, min_size=n_genes, max_size=n_genes))
    header = ([] if index == "none" or corner is None else [corner]) + genes
    lines = []
    quote_all = draw(st.booleans())
    for i in range(n_rows):
        vals = draw(st.lists(VALUE, min_size=n_genes, max_size=n_genes))
        name = str(i) if index == "numbers" else draw(st.one_of(st.just(f"c{i}"), NAME))
        row = ([] if index == "none" else [name]) + vals
        mut = draw(st.sampled_from(MUTATIONS))
        if mut == "drop" and row:
            row = row[:-1]
        elif mut == "add":
            row = row + [draw(VALUE)]
        elif mut == "trailing":
            row = row + [""]
        if mut == "blank":
            lines.append("")
        lines.append(sep.join(_field(v, sep, quote_all) for v in row))
    head = sep.join(_field(v, sep, quote_all) for v in header)
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    text = newline.join([head, *lines]) + draw(st.sampled_from(["", newline, newline * 2]))
    data = (("\ufeff" if draw(st.booleans()) else "") + text).encode("utf-8")
    if draw(st.integers(0, 9)) == 0:  # stray bytes somewhere
        pos = draw(st.integers(0, len(data)))
        data = data[:pos] + draw(st.binary(min_size=1, max_size=6)) + data[pos:]
    return ext, data


def assert_valid(a, table: bool = True) -> None:
    """A table reads as finite float32 CSR; any file's counts are found or refused cleanly."""
    assert a.n_obs >= 1 and a.n_vars >= 1
    assert a.obs_names.is_unique and a.var_names.is_unique
    assert a.X.shape == (a.n_obs, a.n_vars)
    if table:
        assert sp.issparse(a.X) and a.X.format == "csr" and a.X.dtype == np.float32
        assert np.isfinite(a.X.data).all()
        for c in a.obs.columns:
            dt = a.obs[c].dtype
            assert isinstance(dt, pd.CategoricalDtype) or pd.api.types.is_numeric_dtype(dt) \
                or pd.api.types.is_bool_dtype(dt), (c, dt)
    try:
        counts, _ = get_counts(a)
    except DataError:
        return
    assert counts.format == "csr" and counts.dtype == np.float32 and counts.shape == a.shape
    assert np.isfinite(counts.data).all() and (counts.data >= 0).all()
    assert (counts.data == np.round(counts.data)).all()


def read_or_refuse(path: Path):
    try:
        a = read_dataset(path)
    except DataError as e:
        assert str(path) in str(e), str(e)
        return None
    assert_valid(a)
    return a


@FUZZ
@given(case=tables())
def test_fuzz_table_dialects(case):
    ext, data = case
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"table{ext}"
        p.write_bytes(gzip.compress(data) if ext.endswith(".gz") else data)
        read_or_refuse(p)


@settings(max_examples=60, deadline=None, database=None)
@given(data=st.binary(max_size=300), ext=st.sampled_from(EXTS + [".mtx", ".mtx.gz"]))
def test_fuzz_random_bytes_as_text_files(data, ext):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"junk{ext}"
        p.write_bytes(data)
        if ext.startswith(".mtx"):  # a 10x folder needs its two lists next to the matrix
            (Path(d) / "features.tsv").write_text("G1\tA\nG2\tB\n")
            (Path(d) / "barcodes.tsv").write_text("c1\nc2\nc3\n")
        read_or_refuse(p)


def test_fuzz_finds_valid_tables_too():
    """Guards the fuzz strategy: plain tables in every dialect read as expected."""
    with tempfile.TemporaryDirectory() as d:
        for sep in SEPS:
            for ext in EXTS:
                p = Path(d) / f"t{ext}"
                text = sep.join(["cell", "A", "B"]) + "\n" + sep.join(["x", "1", "2"]) + "\n"
                p.write_bytes(gzip.compress(text.encode()) if ext.endswith(".gz")
                              else text.encode())
                a = read_or_refuse(p)
                assert a is not None and list(a.var_names) == ["A", "B"], (sep, ext)


# -- corrupted HDF5 files, in a child process ---------------------------------------------------

WORKER = textwrap.dedent(r'''
    import resource, sys, time
    from pathlib import Path

    import anndata as ad
    import h5py
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    import engine.data.io_hdf5
    from engine.data.io import read_dataset
    from engine.errors import DataError

    engine.data.io_hdf5._PROBE_TIMEOUT = 10  # a file that hangs the HDF5 library: fail faster
    out, n_examples = Path(sys.argv[1]), int(sys.argv[2])
    sys.path.insert(0, sys.argv[3])
    from test_hostile_io_fuzz import assert_valid

    rng = np.random.default_rng(0)
    x = sp.random(40, 12, density=0.3, format="csr", random_state=0, dtype=np.float32)
    x.data[:] = np.ceil(x.data * 5)
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["T", "B"], 40)),
                        "dose": rng.random(40)}, index=[f"c{i}" for i in range(40)])
    a = ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(12)]))
    a.layers["counts"] = a.X.copy()
    files = {}
    a.write_h5ad(out / "base_sparse.h5ad")
    files["sparse.h5ad"] = (out / "base_sparse.h5ad").read_bytes()
    b = a.copy()
    b.X = b.X.toarray()
    del b.layers["counts"]
    b.write_h5ad(out / "base_dense.h5ad", compression="gzip")
    files["dense.h5ad"] = (out / "base_dense.h5ad").read_bytes()
    m = sp.csc_matrix(x.T.astype(np.int32))
    with h5py.File(out / "base.h5", "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = m.data, m.indices.astype(np.int64), m.indptr
        g["shape"] = np.array(m.shape, np.int32)
        g["barcodes"] = np.array([f"C{i}-1" for i in range(40)], dtype="S")
        fe = g.create_group("features")
        fe["id"] = np.array([f"ENSG{i:011d}" for i in range(12)], dtype="S")
        fe["name"] = np.array([f"G{i}" for i in range(12)], dtype="S")
        fe["feature_type"] = np.array(["Gene Expression"] * 12, dtype="S")
        fe["genome"] = np.array(["GRCh38"] * 12, dtype="S")
        fe["_all_tag_keys"] = np.array([b"genome"])
    files["tenx.h5"] = (out / "base.h5").read_bytes()

    # bounded memory: 2 GiB more address space than after the imports
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + (2 << 30), resource.RLIM_INFINITY))

    @settings(max_examples=n_examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(name=st.sampled_from(sorted(files)),
           cut=st.one_of(st.none(), st.none(), st.integers(0, 1 << 20)),
           flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=8),
           near_start=st.booleans())
    def fuzz(name, cut, flips, near_start):
        data = bytearray(files[name])
        n = len(data)
        for pos, val in flips:
            data[pos % (min(n, 4096) if near_start else n)] = val
        if cut is not None:
            data = data[:cut % (n + 1)]
        p = out / f"current.{name.split('.', 1)[1]}"
        p.write_bytes(bytes(data))
        case = f"{name} cut={cut} flips={flips} near={near_start}"
        (out / "current.txt").write_text(case)
        t0 = time.perf_counter()
        try:
            result = read_dataset(p)
        except DataError as e:
            assert str(p) in str(e), str(e)
            return
        finally:
            if time.perf_counter() - t0 > 5:
                print(f"slow ({time.perf_counter() - t0:.0f} s): {case}", flush=True)
        assert_valid(result, table=False)

    fuzz()
    print("fuzzed", n_examples)
''')


def test_fuzz_truncated_and_corrupted_hdf5(tmp_path: Path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    res = subprocess.run([sys.executable, str(worker), str(tmp_path), "150",
                          str(Path(__file__).parent)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    last = (tmp_path / "current.txt").read_text() if (tmp_path / "current.txt").exists() else ""
    assert res.returncode == 0, (
        f"exit {res.returncode} (a negative code is a crash signal) on {last}\n"
        f"{res.stdout[-3000:]}\n{res.stderr[-6000:]}")
    assert "fuzzed 150" in res.stdout
    print(res.stdout)  # lists any slow case (a file that made the HDF5 library hang)

"""Issue 15 #14 (data files) and #3 (tables): CSV / TSV separators, ragged rows, bounded reading.

- a semicolon CSV used to say "no gene columns found": the separator is now detected, and the
  message says which one was used when it still fails;
- a row with fewer fields used to end as "X holds NaN values", and a row with more fields at the
  start of a 2000-row chunk was silently cut short by pandas: both now name the file and line;
- ``.csv.gz``, ``.tsv``, ``.tsv.gz``, a BOM, CRLF line ends and R's header without a corner cell
  are read;
- a line longer than 32 MiB (a 100 KB gzip bomb) and a table larger than the memory left are
  refused with bounded memory.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.data import io_common
from engine.data.io import read_dataset
from engine.errors import DataError, ResourceError

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, text: str | bytes) -> Path:
    data = text.encode("utf-8") if isinstance(text, str) else text
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def test_semicolon_csv_is_detected(tmp_path: Path):
    a = read_dataset(write(tmp_path / "excel.csv", "cell;cell_type;A;B\nx;T;1;2\ny;B;3;4\n"))
    assert list(a.var_names) == ["A", "B"] and list(a.obs_names) == ["x", "y"]
    assert list(a.obs["cell_type"]) == ["T", "B"]
    np.testing.assert_array_equal(a.X.toarray(), [[1, 2], [3, 4]])


def test_semicolon_csv_with_decimal_commas(tmp_path: Path):
    a = read_dataset(write(tmp_path / "eu.csv", "cell;dose;A\nx;0,5;1\ny;2,5;3\n"))
    assert list(a.var_names) == ["A"] and a.obs["dose"].tolist() == [0.5, 2.5]


def test_other_separators_and_encodings(tmp_path: Path):
    cases = {
        "pipe.txt": "cell|A|B\nx|1|2\ny|3|4\n",
        "tabs.tsv": "cell\tA\tB\nx\t1\t2\ny\t3\t4\n",
        "tabs.tsv.gz": "cell\tA\tB\nx\t1\t2\ny\t3\t4\n",
        "comma.csv.gz": "cell,A,B\nx,1,2\ny,3,4\n",
        "bom.csv": "\ufeffcell,A,B\nx,1,2\ny,3,4\n",
        "crlf.csv": "cell,A,B\r\nx,1,2\r\n\r\ny,3,4\r\n",
        "r_style.csv": '"A","B"\n"x",1,2\n"y",3,4\n',
        "trailing.csv": "cell,A,B,\nx,1,2,\ny,3,4,\n",
        "trailing2.csv": "cell,A,B\nx,1,2,\ny,3,4,\n",
        "quoted.csv": 'cell,note,A,B\nx,"a, ""b""\nc",1,2\ny,plain,3,4\n',
        "blank_lines.csv": "\ncell,A,B\n\nx,1,2\n\ny,3,4\n\n",
    }
    for name, text in cases.items():
        a = read_dataset(write(tmp_path / name, text))
        assert list(a.var_names) == ["A", "B"], name
        assert list(a.obs_names) == ["x", "y"], name
        np.testing.assert_array_equal(a.X.toarray(), [[1, 2], [3, 4]], err_msg=name)


def test_no_gene_columns_says_which_separator(tmp_path: Path):
    p = write(tmp_path / "text.csv", "a;b\nx;y\nz;w\n")
    with pytest.raises(DataError, match=r"text\.csv: no gene columns found \(no numeric "
                                        r"columns; read as semicolon-separated \(detected\), "
                                        r"the columns are 'a', 'b'\)"):
        read_dataset(p)
    p2 = write(tmp_path / "labels.csv", "cell,cell_type\nx,T\ny,B\n")
    with pytest.raises(DataError, match=r"read as comma-separated \(from the file extension\)"):
        read_dataset(p2)


def test_ragged_rows_name_the_file_and_line(tmp_path: Path):
    short = write(tmp_path / "short.csv", ",A,B\nx,1,2\ny,1\nz,3,4\n")
    with pytest.raises(DataError) as err:
        read_dataset(short)
    assert str(err.value) == (
        f"{short}: cannot read this table: line 3 (cell 'y') has 2 fields but the header has 3 "
        "(a ragged row; read as comma-separated); every row needs one value per column")
    long = write(tmp_path / "long.tsv", "\tA\tB\nx\t1\t2\ny\t1\t2\t3\t4\n")
    with pytest.raises(DataError, match=r"long\.tsv: cannot read this table: line 3 has 5 "
                                        r"fields but the header has 3 \(a ragged row; read as "
                                        r"tab-separated\)"):
        read_dataset(long)


@pytest.mark.parametrize("before", [0, 1999, 2000, 4000])
def test_ragged_row_at_a_chunk_boundary_is_not_cut_short(tmp_path: Path, before: int):
    """pandas' chunked parser drops the extra fields of a chunk's first row without a word."""
    rows = "".join(f"c{i},1,2\n" for i in range(before))
    p = write(tmp_path / "edge.csv.gz", ",A,B\n" + rows + "bad,1,2,3\n" + "z,1,2\n" * 3)
    with pytest.raises(DataError, match=rf"edge\.csv\.gz: cannot read this table: line "
                                        rf"{before + 2:,} has 4 fields but the header has 3"):
        read_dataset(p)


def test_empty_or_na_count_names_line_cell_and_gene(tmp_path: Path):
    for name, text in {"empty.csv": ",A,B\nx,1,2\ny,,2\n", "na.csv": ",A,B\nx,1,2\ny,NA,2\n"}.items():
        p = write(tmp_path / name, text)
        with pytest.raises(DataError) as err:
            read_dataset(p)
        assert str(err.value) == (f"{p}: line 3 (cell 'y') has no value for gene 'A' (an empty "
                                  "field or NA); every gene column needs a number in every row")
        assert "holds NaN" not in str(err.value)


def test_value_after_a_trailing_separator_is_not_dropped(tmp_path: Path):
    p = write(tmp_path / "t.csv", "cell,A,B\n" + "".join(f"c{i},1,2,\n" for i in range(40))
              + "z,1,2,9\n")
    with pytest.raises(DataError, match=r"t\.csv: cell 'z' has a value after the last column"):
        read_dataset(p)


def test_odd_quote_inside_a_field_still_reads(tmp_path: Path):
    a = read_dataset(write(tmp_path / "q.csv", 'cell,A,B\nx5"UTR,1,2\ny,3,4\n'))
    assert list(a.obs_names) == ['x5"UTR', "y"]


def test_text_errors(tmp_path: Path):
    with pytest.raises(DataError, match=r"latin\.csv: not UTF-8 text \(byte 8 is b'\\xe9'\)"):
        read_dataset(write(tmp_path / "latin.csv", "cell,A\nx\xe9,1\n".encode("latin-1")))
    with pytest.raises(DataError, match=r"bad\.csv\.gz: cannot read this gzip file; it may be "
                                        r"truncated or corrupt"):
        read_dataset(_raw(tmp_path / "bad.csv.gz", b"\x1f\x8b\x08\x00garbage"))
    with pytest.raises(DataError, match=r"blank\.csv: the file is empty"):
        read_dataset(write(tmp_path / "blank.csv", "  \n\n  \n"))
    good = gzip.compress(("cell,A\n" + "x,1\n" * 50_000).encode())
    with pytest.raises(DataError, match=r"cut\.csv\.gz: .*(truncated or corrupt|EOFError)"):
        read_dataset(_raw(tmp_path / "cut.csv.gz", good[: len(good) // 2]))


def _raw(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _bomb(path: Path, header_line: bool) -> Path:
    """A ~100 KB gzip file holding a 100 MB line, as the header or as the second row."""
    with gzip.open(path, "wb", compresslevel=9) as f:
        if not header_line:
            f.write(b"cell,A,B\nx,1,2\ny,")
        else:
            f.write(b"cell,")
        block = b"0" * (1 << 20)
        for _ in range(100):
            f.write(block)
        f.write(b"\n")
    return path


def test_long_line_gzip_bomb_is_refused_with_bounded_memory(tmp_path: Path):
    files = {"header": str(_bomb(tmp_path / "header.csv.gz", True)),
             "row": str(_bomb(tmp_path / "row.csv.gz", False))}
    assert all(Path(p).stat().st_size < 200_000 for p in files.values())
    script = (
        "import json, resource, sys\n"
        "import anndata, pandas, scipy.sparse\n"
        "from engine.data.io import read_dataset\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    read_dataset(sys.argv[1])\n"
        "    err = 'no error'\n"
        "except Exception as e:\n"
        "    err = f'{type(e).__name__}: {e}'\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps([err, (after - before) / 1024]))\n")
    for name, path in files.items():
        res = subprocess.run([sys.executable, "-c", script, path], capture_output=True,
                             text=True, cwd=ROOT, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        err, delta_mb = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{name}: peak RSS +{delta_mb:.1f} MB; {err[:150]}")
        assert err.startswith(f"DataError: {path}: a line is longer than 32 MiB"), err
        assert delta_mb < 250, (name, delta_mb)


def test_wide_row_with_too_many_fields_stops_early(tmp_path: Path):
    p = tmp_path / "wide.csv.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"cell,A,B\nx,1,2\ny,")
        f.write(b"1," * (8 << 20))
        f.write(b"1\n")
    with pytest.raises(DataError, match=r"wide\.csv\.gz: cannot read this table: line 3 has "
                                        r"8,388,610 fields but the header has 3"):
        read_dataset(p)


def test_table_larger_than_memory_left_is_a_resource_error(tmp_path: Path, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.poisson(3.0, size=(5000, 40)) + 1
    text = "cell," + ",".join(f"G{j}" for j in range(40)) + "\n" + "".join(
        f"c{i}," + ",".join(map(str, row)) + "\n" for i, row in enumerate(x))
    p = write(tmp_path / "big.csv", text)
    assert read_dataset(p).shape == (5000, 40)
    monkeypatch.setattr(io_common, "available_memory", lambda: 1 << 20)
    with pytest.raises(ResourceError, match=r"big\.csv: after 2,000 rows this table holds "
                                            r".* in memory and only 1\.0 MiB is left"):
        read_dataset(p)


def test_metadata_file_separator_is_detected(tmp_path: Path):
    data = write(tmp_path / "cells.csv", "cell,A\nx,1\ny,2\n")
    meta = write(tmp_path / "meta.csv", "cell;cell_type\nx;T\ny;B\n")
    a = read_dataset(data, metadata=meta)
    assert list(a.obs["cell_type"]) == ["T", "B"]

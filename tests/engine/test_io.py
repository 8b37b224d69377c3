"""engine.data.io: reading every supported format, finding counts, summarising, and errors."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from engine.data.io import get_counts, read_dataset, summarize_dataset
from engine.errors import DataError

REAL_FILES = ["kang2018_ifnb_pbmc_train.h5ad", "norman2019_mcfaline2023_crispr_train.h5ad",
              "papalexi2021_thp1_crispr_ko_train.h5ad", "pbmc68k_reduced_counts.h5ad",
              "norman2019_tiny_50x50.h5ad"]

_CACHE: dict[str, ad.AnnData] = {}


def synthetic(n_cells: int = 30, n_genes: int = 12) -> ad.AnnData:
    """Small seeded count dataset (cached, handed out as a copy)."""
    key = f"{n_cells}x{n_genes}"
    if key not in _CACHE:
        rng = np.random.default_rng(0)
        counts = rng.poisson(1.5, size=(n_cells, n_genes)).astype(np.float32)
        obs = pd.DataFrame({
            "cell_type": pd.Categorical(rng.choice(["T", "B"], n_cells)),
            "perturbation": pd.Categorical(rng.choice(["control", "GATA1", "GATA1+KLF1"],
                                                      n_cells)),
        }, index=[f"cell{i}" for i in range(n_cells)])
        var = pd.DataFrame(index=[f"G{j}" for j in range(n_genes)])
        _CACHE[key] = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    return _CACHE[key].copy()


def counts_array(adata: ad.AnnData) -> np.ndarray:
    return get_counts(adata)[0].toarray()


# -- CSV / TSV ----------------------------------------------------------------------------------


def test_csv_cells_by_genes_moves_text_columns_to_obs(tmp_path: Path):
    p = tmp_path / "cells.csv"
    p.write_text("cell,cell_type,GATA1,KLF1,dose\n"
                 "c1,T,1,0,0.5\n"
                 "c2,B,0,3,1\n"
                 "c3,T,2,2,1\n")
    a = read_dataset(p)
    assert a.shape == (3, 2)
    assert list(a.var_names) == ["GATA1", "KLF1"]
    assert list(a.obs_names) == ["c1", "c2", "c3"]
    assert isinstance(a.obs["cell_type"].dtype, pd.CategoricalDtype)
    assert a.obs["dose"].tolist() == [0.5, 1.0, 1.0]  # a numeric metadata name stays in obs
    np.testing.assert_array_equal(counts_array(a), [[1, 0], [0, 3], [2, 2]])
    assert get_counts(a)[1] == "X"


def test_tsv_gz_and_separate_metadata(tmp_path: Path):
    p = tmp_path / "m.tsv.gz"
    with gzip.open(p, "wt") as f:
        f.write("\tA\tB\nx\t1\t2\ny\t3\t4\n")
    meta = tmp_path / "meta.csv"
    meta.write_text("cell,perturbation\ny,control\nx,A\nz,B\n")  # extra row z is ignored
    a = read_dataset(p, metadata=meta)
    assert list(a.obs_names) == ["x", "y"]
    assert a.obs["perturbation"].tolist() == ["A", "control"]
    np.testing.assert_array_equal(counts_array(a), [[1, 2], [3, 4]])


def test_metadata_missing_cells_is_an_error(tmp_path: Path):
    p = tmp_path / "m.csv"
    p.write_text(",A\nx,1\ny,2\n")
    meta = tmp_path / "meta.csv"
    meta.write_text("cell,perturbation\nx,A\n")
    with pytest.raises(DataError, match=r"meta\.csv.*no metadata row for 1 of 2 cells.*'y'"):
        read_dataset(p, metadata=meta)


def test_transposed_csv_genes_by_cells(tmp_path: Path):
    p = tmp_path / "genes_x_cells.csv"
    p.write_text("gene,AAACCTGAGAAACCAT-1,AAACCTGAGAAACCGC-1,AAACCTGAGAAACCTA-1\n"
                 "GATA1,1,0,2\nKLF1,0,5,0\n")
    a = read_dataset(p)
    assert a.shape == (3, 2)
    assert list(a.var_names) == ["GATA1", "KLF1"]
    assert a.obs_names[0] == "AAACCTGAGAAACCAT-1"
    np.testing.assert_array_equal(counts_array(a), [[1, 0], [0, 5], [2, 0]])


def test_txt_separator_is_sniffed(tmp_path: Path):
    p = tmp_path / "m.txt"
    p.write_text("cell\tA\tB\nx\t1\t2\n")
    a = read_dataset(p)
    assert list(a.var_names) == ["A", "B"] and list(a.obs_names) == ["x"]


def test_csv_without_cell_names_numbers_the_cells(tmp_path: Path):
    p = tmp_path / "plain.csv"
    p.write_text("A,B\n1,2\n3,4\n")
    a = read_dataset(p)
    assert a.shape == (2, 2)
    assert list(a.obs_names) == ["0", "1"]


def test_csv_errors_name_the_file(tmp_path: Path):
    dup = tmp_path / "dup.csv"
    dup.write_text(",A\nx,1\nx,2\n")
    with pytest.raises(DataError, match=r"dup\.csv.*unique.*'x'"):
        read_dataset(dup)
    nogenes = tmp_path / "nogenes.csv"
    nogenes.write_text("cell,cell_type\nx,T\ny,B\n")
    with pytest.raises(DataError, match=r"nogenes\.csv.*no gene columns"):
        read_dataset(nogenes)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text(",A,B\nx,1,2\ny,1,2,3,4\n")
    with pytest.raises(DataError, match=r"ragged\.csv: cannot read this table"):
        read_dataset(ragged)
    header_only = tmp_path / "header.csv"
    header_only.write_text(",A,B\n")
    with pytest.raises(DataError, match=r"header\.csv.*no cells"):
        read_dataset(header_only)
    late_text = tmp_path / "late.csv"
    late_text.write_text(",A\n" + "".join(f"c{i},1\n" for i in range(2100)) + "cX,oops\n")
    with pytest.raises(DataError, match=r"late\.csv.*'A'.*holds text in row 'cX'"):
        read_dataset(late_text)


# -- 10x ----------------------------------------------------------------------------------------


def _write_mtx_folder(folder: Path, counts: np.ndarray, genes, barcodes, *, v3=True, gz=True,
                      prefix="", feature_types=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    mpath = folder / f"{prefix}matrix.mtx"
    scipy.io.mmwrite(str(mpath), sp.coo_matrix(counts.T))  # genes x cells on disk
    if gz:
        with open(mpath, "rb") as src, gzip.open(str(mpath) + ".gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        mpath.unlink()
    opener = gzip.open if gz else open
    ids = [f"ENSG{i:011d}" for i in range(len(genes))]
    if v3:
        types = feature_types or ["Gene Expression"] * len(genes)
        with opener(folder / f"{prefix}features.tsv{ext}", "wt") as f:
            f.writelines(f"{i}\t{g}\t{t}\n" for i, g, t in zip(ids, genes, types, strict=True))
    else:
        with opener(folder / f"{prefix}genes.tsv{ext}", "wt") as f:
            f.writelines(f"{i}\t{g}\n" for i, g in zip(ids, genes, strict=True))
    with opener(folder / f"{prefix}barcodes.tsv{ext}", "wt") as f:
        f.writelines(f"{b}\n" for b in barcodes)
    return folder


COUNTS = np.array([[1, 0, 2], [0, 0, 5], [3, 1, 0], [0, 4, 1]], dtype=np.float32)
BARCODES = ["AAAC-1", "AAAG-1", "AAAT-1", "AACA-1"]


def test_10x_mtx_v3_gz_folder_and_file(tmp_path: Path):
    folder = _write_mtx_folder(tmp_path / "v3", COUNTS, ["GATA1", "KLF1", "GATA1"], BARCODES)
    a = read_dataset(folder)
    assert a.shape == (4, 3)
    assert a.var_names.is_unique and list(a.var_names)[:2] == ["GATA1", "KLF1"]
    assert a.var["gene_ids"].iloc[0] == "ENSG00000000000"
    assert list(a.obs_names) == BARCODES
    np.testing.assert_array_equal(counts_array(a), COUNTS)
    b = read_dataset(folder / "matrix.mtx.gz")
    np.testing.assert_array_equal(counts_array(b), COUNTS)


def test_10x_mtx_v2_plain_with_prefix(tmp_path: Path):
    folder = _write_mtx_folder(tmp_path / "v2", COUNTS, ["A", "B", "C"], BARCODES, v3=False,
                               gz=False, prefix="GSM1_")
    a = read_dataset(folder / "GSM1_matrix.mtx")
    assert list(a.var_names) == ["A", "B", "C"]
    np.testing.assert_array_equal(counts_array(a), COUNTS)


def test_10x_mtx_keeps_gene_expression_features_only(tmp_path: Path):
    folder = _write_mtx_folder(tmp_path / "cite", COUNTS, ["A", "B", "CD4_ADT"], BARCODES,
                               feature_types=["Gene Expression", "Gene Expression",
                                              "Antibody Capture"])
    a = read_dataset(folder)
    assert list(a.var_names) == ["A", "B"]
    np.testing.assert_array_equal(counts_array(a), COUNTS[:, :2])


def test_10x_mtx_errors(tmp_path: Path):
    folder = _write_mtx_folder(tmp_path / "bad", COUNTS, ["A", "B", "C"], BARCODES[:3])
    with pytest.raises(DataError, match=r"matrix\.mtx\.gz.*4 columns.*3 barcodes"):
        read_dataset(folder)
    (folder / "barcodes.tsv.gz").unlink()
    with pytest.raises(DataError, match="barcodes.tsv"):
        read_dataset(folder)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty_folder.*no matrix\.mtx"):
        read_dataset(empty)
    broken = _write_mtx_folder(tmp_path / "broken", COUNTS, ["A", "B", "C"], BARCODES, gz=False)
    (broken / "matrix.mtx").write_text("%%MatrixMarket matrix coordinate integer general\n"
                                       "3 4 100\n1 1 1\n")
    with pytest.raises(DataError, match=r"matrix\.mtx.*truncated or corrupt"):
        read_dataset(broken)


def _write_10x_h5(path: Path, counts: np.ndarray, genes, barcodes) -> Path:
    m = sp.csc_matrix(counts.T.astype(np.int32))  # genes x cells, CSC over cells
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("data", data=m.data)
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(m.shape, dtype=np.int32))
        g.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        fe = g.create_group("features")
        fe.create_dataset("id", data=np.array([f"ENSG{i:011d}" for i in range(len(genes))],
                                              dtype="S"))
        fe.create_dataset("name", data=np.array(genes, dtype="S"))
        fe.create_dataset("feature_type", data=np.array(["Gene Expression"] * len(genes),
                                                        dtype="S"))
        fe.create_dataset("genome", data=np.array(["GRCh38"] * len(genes), dtype="S"))
        fe.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
    return path


def test_10x_h5_v3(tmp_path: Path):
    p = _write_10x_h5(tmp_path / "filtered_feature_bc_matrix.h5", COUNTS,
                      ["GATA1", "KLF1", "GATA1"], BARCODES)
    a = read_dataset(p)
    assert a.shape == (4, 3)
    assert a.var_names.is_unique and a.var_names[1] == "KLF1"
    assert a.var["gene_ids"].iloc[1] == "ENSG00000000001"
    assert list(a.obs_names) == BARCODES
    np.testing.assert_array_equal(counts_array(a), COUNTS)


def test_10x_h5_errors(tmp_path: Path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(DataError, match=r"bad\.h5.*truncated or corrupt"):
        read_dataset(bad)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("something", data=np.arange(3))
    with pytest.raises(DataError, match=r"other\.h5.*not a readable 10x"):
        read_dataset(other)


# -- h5ad and general errors --------------------------------------------------------------------


def test_h5ad_errors(tmp_path: Path):
    with pytest.raises(DataError, match=r"nope\.h5ad: file not found"):
        read_dataset(tmp_path / "nope.h5ad")
    empty = tmp_path / "empty.h5ad"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.h5ad: the file is empty"):
        read_dataset(empty)
    wrong = tmp_path / "data.xlsx"
    wrong.write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match=r"data\.xlsx: unsupported file type \.xlsx"):
        read_dataset(wrong)
    junk = tmp_path / "junk.h5ad"
    junk.write_text("hello")
    with pytest.raises(DataError, match=r"junk\.h5ad: not an h5ad file"):
        read_dataset(junk)


def test_truncated_h5ad(tmp_path: Path):
    good = tmp_path / "good.h5ad"
    synthetic(200, 50).write_h5ad(good)
    data = good.read_bytes()
    bad = tmp_path / "truncated.h5ad"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"truncated\.h5ad.*truncated or corrupt"):
        read_dataset(bad)


def test_h5ad_duplicate_cells_and_no_genes(tmp_path: Path):
    a = synthetic()
    a.obs_names = ["same"] * a.n_obs
    p = tmp_path / "dups.h5ad"
    a.write_h5ad(p)
    with pytest.raises(DataError, match=r"dups\.h5ad: cell names must be unique.*'same'"):
        read_dataset(p)
    b = synthetic()[:, []].copy()
    p2 = tmp_path / "nogenes.h5ad"
    b.write_h5ad(p2)
    with pytest.raises(DataError, match=r"nogenes\.h5ad: the dataset has no genes"):
        read_dataset(p2)


def test_h5ad_ensembl_ids_become_symbols(tmp_path: Path):
    a = synthetic(10, 3)
    a.var_names = ["ENSG00000000001", "ENSG00000000002", "ENSG00000000003"]
    a.var["feature_name"] = ["GATA1", "KLF1", "GATA1"]
    p = tmp_path / "ens.h5ad"
    a.write_h5ad(p)
    b = read_dataset(p)
    assert list(b.var_names) == ["GATA1", "KLF1", "GATA1-1"]
    assert list(b.var["gene_ids"]) == list(a.var_names)


def test_progress_is_reported(tmp_path: Path):
    p = tmp_path / "s.h5ad"
    synthetic().write_h5ad(p)
    seen = []
    read_dataset(p, progress=seen.append)
    assert seen[0].fraction == 0.0 and seen[-1].fraction == 1.0
    assert all(r.phase == "reading" for r in seen)


# -- counts -------------------------------------------------------------------------------------


def test_get_counts_prefers_counts_layer_then_x_then_raw():
    a = synthetic()
    raw = a.X.copy()
    a.layers["counts"] = raw.copy()
    a.X = sp.csr_matrix(np.log1p(raw.toarray()))
    m, src = get_counts(a)
    assert src == "layers['counts']" and m.dtype == np.float32 and sp.isspmatrix_csr(m)
    np.testing.assert_array_equal(m.toarray(), raw.toarray())

    b = synthetic()
    b.raw = b.copy()
    b.X = sp.csr_matrix(np.log1p(b.X.toarray()))
    m, src = get_counts(b)
    assert src == "raw.X"
    np.testing.assert_array_equal(m.toarray(), b.raw.X.toarray())

    c = synthetic()
    c.X = c.X.toarray().astype(np.int64)  # dense integers are fine
    assert get_counts(c)[1] == "X"


def test_get_counts_refuses_log_normalised_data():
    a = synthetic()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))
    with pytest.raises(DataError) as err:
        get_counts(a)
    msg = str(err.value)
    assert "X holds non-integer values (e.g. 0.693)" in msg
    assert "log-normalised" in msg and "layers['counts']" in msg


def test_get_counts_nan_negative_and_non_numeric():
    a = synthetic()
    x = a.X.toarray()
    x[3, 2] = np.nan
    a.layers["counts"] = sp.csr_matrix(x)
    with pytest.raises(DataError, match=r"layers\['counts'\] holds NaN"):
        get_counts(a)
    b = synthetic()
    b.X = sp.csr_matrix(b.X.toarray() - 3)
    with pytest.raises(DataError, match="X holds negative values"):
        get_counts(b)
    c = synthetic()
    x = c.X.toarray()
    x[0, 0] = np.inf
    c.X = x
    with pytest.raises(DataError, match="X holds infinite"):
        get_counts(c)


def test_summarize_dataset_synthetic_problem():
    a = synthetic()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))
    a.obs["n_counts"] = np.arange(a.n_obs, dtype=float)
    s = summarize_dataset(a)
    assert s.counts_source is None and "log-normalised" in s.counts_problem
    kinds = {c.name: c.kind for c in s.columns}
    assert kinds == {"cell_type": "categorical", "perturbation": "categorical",
                     "n_counts": "numeric"}


# -- real data ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_read_with_integer_counts(data_dir: Path, name: str):
    a = read_dataset(data_dir / name)
    assert a.n_obs > 0 and a.n_vars > 0 and a.var_names.is_unique
    m, src = get_counts(a)
    assert src == "layers['counts']"
    assert m.shape == a.shape
    assert np.all(m.data == np.round(m.data)) and m.data.min() >= 0


def test_real_tiny_file_gets_symbols_and_log_x_is_refused(data_dir: Path):
    a = read_dataset(data_dir / "norman2019_tiny_50x50.h5ad")
    assert not a.var_names[0].startswith("ENSG")
    assert a.var["gene_ids"].str.startswith("ENSG").all()
    del a.layers["counts"]
    with pytest.raises(DataError, match="X holds non-integer values"):
        get_counts(a)


def test_summarize_kang(data_dir: Path):
    s = summarize_dataset(read_dataset(data_dir / "kang2018_ifnb_pbmc_train.h5ad"))
    assert (s.n_cells, s.n_genes) == (2421, 4805)
    assert s.counts_source == "layers['counts']" and s.counts_problem is None
    cols = {c.name: c for c in s.columns}
    assert cols["cell_type"].kind == "categorical" and cols["cell_type"].n_unique == 7
    assert cols["cell_type"].top[0] == ("CD4T", 1023)
    assert cols["condition"].top == [("stimulated", 1217), ("control", 1204)]


def test_summarize_papalexi_numeric_column(data_dir: Path):
    s = summarize_dataset(read_dataset(data_dir / "papalexi2021_thp1_crispr_ko_train.h5ad"))
    cols = {c.name: c for c in s.columns}
    assert cols["grna_top_umis"].kind == "numeric"
    assert cols["perturbation"].top[0] == ("unassigned", 4537)

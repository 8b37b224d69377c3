"""engine.export: atomic h5ad / CSV writing, uns round trip, chunked CSV."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import engine.export as export
from engine.data.io import get_counts, read_dataset
from engine.errors import Cancelled, DataError
from engine.export import restore_uns, sanitize_uns, write_csv, write_h5ad

_CACHE: dict[str, ad.AnnData] = {}


def generated(n: int = 40, g: int = 25) -> ad.AnnData:
    """Looks like model output: int counts layer, log-normalised X, condition columns, provenance."""
    key = f"{n}x{g}"
    if key not in _CACHE:
        rng = np.random.default_rng(1)
        counts = sp.csr_matrix(rng.poisson(0.8, size=(n, g)).astype(np.int32))
        lib = np.maximum(np.asarray(counts.sum(1)).ravel(), 1)
        x = sp.csr_matrix(np.log1p(counts.toarray() / lib[:, None] * 1e4).astype(np.float32))
        obs = pd.DataFrame({
            "is_control": np.arange(n) % 2 == 0,
            "tissue": pd.Categorical(["blood"] * n),
            "dose": np.where(np.arange(n) % 2 == 0, 0.0, 1.5),
            "perturbation_type": pd.Categorical(["CRISPRa"] * n),
            "perturbation": pd.Categorical(np.where(np.arange(n) % 2 == 0, "control", "A+B")),
            "cell_type": pd.Categorical(["K562"] * n),
            "condition": pd.Categorical(np.where(np.arange(n) % 2 == 0, "K562 | control",
                                                 "K562 | A + B")),
        }, index=[f"gen{i}" for i in range(n)])
        var = pd.DataFrame(index=[f"GENE{j}" for j in range(g)])
        a = ad.AnnData(X=x, obs=obs, var=var, layers={"counts": counts})
        a.uns["perturb_studio"] = {
            "model": "kang-ifnb-pbmc", "seed": 0, "steps": 30, "guidance": None,
            "condition": {"cell_type": "K562", "perturbations": [
                {"target": "A", "type": "CRISPRa", "dose": None},
                {"target": "B", "type": "CRISPRa", "dose": 1.5}], "context": {}},
            "genes_missing": ["X1", "X2"], "shape": (n, g), "flags": [True, False],
        }
        _CACHE[key] = a
    return _CACHE[key].copy()


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# -- h5ad ---------------------------------------------------------------------------------------


def test_write_h5ad_round_trip_with_provenance(tmp_path: Path):
    a = generated()
    before = {k: v for k, v in a.uns["perturb_studio"].items()}
    out = write_h5ad(a, tmp_path / "gen.h5ad")
    assert out == tmp_path / "gen.h5ad"
    assert listing(tmp_path) == ["gen.h5ad"]  # no temp file left behind
    assert a.uns["perturb_studio"] == before  # the caller's uns is untouched
    b = read_dataset(out)
    np.testing.assert_array_equal(b.layers["counts"].toarray(), a.layers["counts"].toarray())
    np.testing.assert_allclose(b.X.toarray(), a.X.toarray())
    assert list(b.obs.columns) == list(a.obs.columns)
    assert b.obs["perturbation"].tolist() == a.obs["perturbation"].tolist()
    prov = restore_uns(b.uns["perturb_studio"])
    assert prov["model"] == "kang-ifnb-pbmc" and prov["steps"] == 30
    assert "guidance" not in prov  # None values are dropped (h5ad cannot store None)
    assert prov["condition"]["perturbations"] == [
        {"target": "A", "type": "CRISPRa", "dose": None},
        {"target": "B", "type": "CRISPRa", "dose": 1.5}]
    assert list(prov["genes_missing"]) == ["X1", "X2"]
    assert list(prov["shape"]) == [40, 25]
    assert list(prov["flags"]) == [True, False]


def test_sanitize_uns_rules():
    s = sanitize_uns({"a": None, "b": {"c": None, "d": 1}, "e": [], "f": [1, "x"],
                      "g": Path("/tmp/x"), "h": [[1, 2], [3]]})
    assert s["b"] == {"d": 1} and "a" not in s
    assert s["f"] == 'json:[1, "x"]' and s["g"] == "/tmp/x"
    assert restore_uns(s)["h"] == [[1, 2], [3]]
    assert len(s["e"]) == 0


def _failing_writer(fail_with: BaseException):
    def write(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x89HDF\r\n\x1a\npartial")  # half-written
        raise fail_with
    return write


@pytest.mark.parametrize("exc, expected", [
    (RuntimeError("boom"), DataError),
    (OSError(5, "Input/output error"), DataError),
    (KeyboardInterrupt(), KeyboardInterrupt),
])
def test_write_h5ad_failure_leaves_nothing(tmp_path: Path, monkeypatch, exc, expected):
    monkeypatch.setattr(ad.AnnData, "write_h5ad", _failing_writer(exc))
    with pytest.raises(expected):
        write_h5ad(generated(), tmp_path / "out.h5ad")
    assert listing(tmp_path) == []


def test_write_h5ad_failure_keeps_existing_file(tmp_path: Path, monkeypatch):
    target = tmp_path / "out.h5ad"
    target.write_bytes(b"old contents")
    monkeypatch.setattr(ad.AnnData, "write_h5ad", _failing_writer(RuntimeError("boom")))
    with pytest.raises(DataError, match=r"out\.h5ad.*nothing was written"):
        write_h5ad(generated(), target)
    assert target.read_bytes() == b"old contents"
    assert listing(tmp_path) == ["out.h5ad"]


def test_write_h5ad_replaces_existing_file(tmp_path: Path):
    target = tmp_path / "out.h5ad"
    target.write_bytes(b"old contents")
    write_h5ad(generated(), target)
    assert read_dataset(target).n_obs == 40


def test_write_to_missing_folder(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        write_h5ad(generated(), tmp_path / "nope" / "x.h5ad")
    with pytest.raises(DataError, match="does not exist"):
        write_csv(generated(), tmp_path / "nope" / "x.csv")


# -- CSV ----------------------------------------------------------------------------------------


def test_write_csv_counts_layout_and_round_trip(tmp_path: Path):
    a = generated()
    p = write_csv(a, tmp_path / "gen.csv")
    header = p.read_text().splitlines()[0].split(",")
    assert header[:6] == ["cell", "condition", "cell_type", "perturbation",
                          "perturbation_type", "dose"]
    assert header[6:8] == ["is_control", "tissue"]
    assert header[8:] == list(a.var_names)
    first = p.read_text().splitlines()[1].split(",")
    assert first[0] == "gen0" and all("." not in v for v in first[8:])  # integers, no decimals
    df = pd.read_csv(p, index_col=0)
    np.testing.assert_array_equal(df[list(a.var_names)].to_numpy(),
                                  a.layers["counts"].toarray())
    b = read_dataset(p)  # our own reader puts the condition columns back into obs
    assert list(b.var_names) == list(a.var_names)
    assert b.obs["perturbation"].tolist() == a.obs["perturbation"].tolist()
    np.testing.assert_array_equal(get_counts(b)[0].toarray(), a.layers["counts"].toarray())


def test_write_csv_x_layer_and_tsv_gz(tmp_path: Path):
    a = generated()
    p = write_csv(a, tmp_path / "gen.tsv.gz", layer="X")
    df = pd.read_csv(p, sep="\t", index_col=0)
    np.testing.assert_allclose(df[list(a.var_names)].to_numpy(), a.X.toarray(), rtol=1e-5)
    with pytest.raises(DataError, match="layer 'spliced' is not in this dataset; available: X, "
                                        "counts"):
        write_csv(a, tmp_path / "x.csv", layer="spliced")
    assert not (tmp_path / "x.csv").exists()


def test_write_csv_in_chunks_never_densifies_everything(tmp_path: Path, monkeypatch):
    a = generated(103, 25)
    monkeypatch.setattr(export, "_CSV_CHUNK_VALUES", 25 * 10)  # 10 cells per chunk
    dense_rows = []
    real_toarray = sp.csr_matrix.toarray

    def spy(self, *args, **kwargs):
        dense_rows.append(self.shape[0])
        return real_toarray(self, *args, **kwargs)

    monkeypatch.setattr(sp.csr_matrix, "toarray", spy)
    seen = []
    write_csv(a, tmp_path / "chunks.csv", progress=seen.append)
    monkeypatch.setattr(sp.csr_matrix, "toarray", real_toarray)
    assert max(dense_rows) == 10 and sum(dense_rows) == 103
    assert seen[-1].done == 103 and seen[-1].fraction == 1.0
    df = pd.read_csv(tmp_path / "chunks.csv", index_col=0)
    assert df.shape[0] == 103
    np.testing.assert_array_equal(df[list(a.var_names)].to_numpy(),
                                  a.layers["counts"].toarray())


def test_write_csv_cancel_and_failure_leave_nothing(tmp_path: Path, monkeypatch):
    a = generated(100, 25)
    monkeypatch.setattr(export, "_CSV_CHUNK_VALUES", 25 * 10)
    cancel = threading.Event()

    def progress(p):
        if p.done >= 30:
            cancel.set()

    with pytest.raises(Cancelled):
        write_csv(a, tmp_path / "c.csv", progress=progress, cancel=cancel)
    assert listing(tmp_path) == []

    calls = []
    real_to_csv = pd.DataFrame.to_csv

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_to_csv(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", flaky)
    (tmp_path / "c.csv").write_text("keep me")
    with pytest.raises(KeyboardInterrupt):
        write_csv(a, tmp_path / "c.csv")
    assert listing(tmp_path) == ["c.csv"]
    assert (tmp_path / "c.csv").read_text() == "keep me"


def test_write_csv_real_file(tmp_path: Path, data_dir: Path):
    a = read_dataset(data_dir / "norman2019_tiny_50x50.h5ad")
    p = write_csv(a, tmp_path / "tiny.csv")
    b = read_dataset(p)
    assert b.shape == a.shape and list(b.obs_names) == list(a.obs_names)
    np.testing.assert_array_equal(get_counts(b)[0].toarray(), get_counts(a)[0].toarray())
    assert b.obs["condition"].tolist() == a.obs["condition"].tolist()

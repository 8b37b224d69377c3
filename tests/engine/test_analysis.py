"""engine.analysis: differential expression, heatmap genes, UMAP (headless, no Qt)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.sparse as sp

ad = pytest.importorskip("anndata")

from engine.analysis import (  # noqa: E402
    differential_expression,
    embed_umap,
    gene_values,
    log_normalized,
    top_changed_genes,
)
from engine.errors import Cancelled, DataError  # noqa: E402


def _cells(n=200, g=40, shift=None, seed=0, names=None):
    rng = np.random.default_rng(seed)
    lam = np.full((n, g), 2.0)
    if shift:
        for j, f in shift.items():
            lam[:, j] *= f
    x = sp.csr_matrix(rng.poisson(lam).astype(np.float32))
    a = ad.AnnData(X=x)
    a.var_names = names or [f"G{j}" for j in range(g)]
    a.obs_names = [f"c{seed}_{i}" for i in range(n)]
    return a


def test_log_normalized_counts_and_log_values():
    a = _cells()
    m = log_normalized(a)
    tot = np.asarray(a.X.sum(axis=1)).ravel()
    expect = np.log1p(a.X.toarray()[0] / tot[0] * 1e4)
    np.testing.assert_allclose(m[0].toarray().ravel(), expect, rtol=1e-5)
    b = ad.AnnData(X=sp.csr_matrix(m))  # already log values: used as they are
    np.testing.assert_allclose(log_normalized(b).toarray(), m.toarray(), rtol=1e-6)


def test_differential_expression_finds_the_shifted_gene():
    ctrl = _cells(seed=1)
    pert = _cells(seed=2, shift={3: 8.0, 7: 0.1})
    df = differential_expression(pert, ctrl)
    assert list(df.columns) == ["gene", "mean_a", "mean_b", "log2fc", "pval", "padj"]
    assert set(df["gene"][:2]) == {"G3", "G7"}
    row3 = df.set_index("gene").loc["G3"]
    assert row3.log2fc > 1 and row3.padj < 1e-10
    assert df.set_index("gene").loc["G7"].log2fc < -1
    assert (np.diff(np.abs(df["log2fc"].to_numpy())) <= 1e-6).all()  # sorted by |log2fc|
    assert df["padj"].between(0, 1).all() and (df["padj"] >= df["pval"] - 1e-12).all()
    # identical groups: nothing significant
    same = differential_expression(ctrl, ctrl)
    assert (same["padj"] > 0.5).all()


def test_differential_expression_uses_shared_genes_and_refuses_empty():
    a = _cells(g=10)
    b = _cells(g=10, names=[f"G{j}" for j in range(5, 15)], seed=3)
    df = differential_expression(a, b)
    assert sorted(df["gene"]) == [f"G{j}" for j in range(5, 10)]
    with pytest.raises(DataError):
        differential_expression(a[:0], b)


def test_top_changed_genes_per_group_controls():
    ctrl = _cells(seed=1)
    ctrl2 = _cells(seed=5, shift={0: 4.0})
    g1 = _cells(seed=2, shift={3: 8.0})
    g2 = _cells(seed=3, shift={0: 4.0, 9: 6.0})  # gene 0 is also up in its own control
    genes, m = top_changed_genes({"g1": g1, "g2": g2}, {"g1": ctrl, "g2": ctrl2}, n=3)
    assert m.shape == (2, 3) and m.dtype == np.float32
    assert "G3" in genes and "G9" in genes and "G0" not in genes
    genes1, m1 = top_changed_genes({"g1": g1}, ctrl, n=5)
    assert genes1[0] == "G3" and m1[0, 0] > 1


def test_gene_values():
    a = _cells()
    v = gene_values(a, "G2")
    np.testing.assert_allclose(v, log_normalized(a)[:, 2].toarray().ravel())
    assert (gene_values(a, "NOPE") == 0).all()


def test_embed_umap_subsamples_and_places_everyone():
    a = _cells(n=300, seed=1)
    b = _cells(n=500, seed=2, shift={1: 10.0, 2: 10.0, 3: 10.0})
    coords, labels = embed_umap({"gen": a, "ref": b}, max_fit_cells=400)
    assert coords.shape == (800, 2) and np.isfinite(coords).all()
    assert list(labels[:300]) == ["gen"] * 300 and list(labels[300:]) == ["ref"] * 500
    # the two populations separate
    ca, cb = coords[:300].mean(0), coords[300:].mean(0)
    spread = coords.std(0).mean()
    assert np.linalg.norm(ca - cb) > spread
    coords2, _ = embed_umap({"gen": a, "ref": b}, max_fit_cells=400)
    np.testing.assert_allclose(coords, coords2)  # fixed random_state


def test_embed_umap_cancel_and_progress():
    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled):
        embed_umap({"a": _cells()}, cancel=ev)
    seen = []
    embed_umap({"a": _cells(n=60)}, progress=lambda p: seen.append(p.fraction))
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)


def test_real_kang_de(data_dir):
    k = ad.read_h5ad(data_dir / "kang2018_ifnb_pbmc_train.h5ad")
    stim = k[k.obs["condition"] == "stimulated"]
    ctrl = k[k.obs["condition"] == "control"]
    df = differential_expression(stim, ctrl)
    top = set(df["gene"][:20])
    assert {"ISG15", "IFI6", "IFIT3"} <= top  # the interferon response

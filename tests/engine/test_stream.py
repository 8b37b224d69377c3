"""Training at scale: streaming from a backed h5ad, the budget rule, resume after a cancel, and a
two-process data-parallel run (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from engine.data.stream import BackedDataset, BlockShuffler, H5adCounts, hvg_seurat, scan
from engine.errors import Cancelled

from .conftest import TINY, make_synthetic

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("PERTURB_STUDIO_DATA", ROOT.parent / "shared" / "data"))
KANG = DATA / "kang2018_ifnb_pbmc_train.h5ad"
FAST = {**TINY, "ae_max_steps": 60, "flow_steps": 60, "members": 2}


@pytest.fixture()
def small_h5ad(tmp_path):
    """The synthetic dataset (320 cells x 60 genes) as an h5ad file, counts in X and layers."""
    a = make_synthetic(n_per=40)
    path = tmp_path / "small.h5ad"
    a.write_h5ad(path)
    return a, path


def test_streaming_gives_the_same_conditions_and_statistics(small_h5ad, schema):
    a, path = small_h5ad
    ds = BackedDataset.open(path)
    codes_m, uniq_m = schema.condition_codes(a)
    codes_s, uniq_s = schema.condition_codes(ds)
    assert [c.label for c in uniq_s] == [c.label for c in uniq_m]
    assert np.array_equal(codes_s, codes_m)
    x = sp.csr_matrix(a.layers["counts"]).astype(np.float64)
    st = scan(H5adCounts(path))
    assert np.allclose(st.lib, np.asarray(x.sum(1)).ravel())
    norm = sp.diags(1e4 / np.asarray(x.sum(1)).ravel()) @ x
    assert np.allclose(st.gene_sum, np.asarray(norm.sum(0)).ravel())
    assert np.allclose(st.gene_sumsq, np.asarray(norm.multiply(norm).sum(0)).ravel())
    # rows read from disk are the rows in memory, in the order asked
    pos = np.array([5, 3, 4, 200, 0, 319])
    assert np.array_equal(ds.counts.take(pos).toarray(), x[pos].toarray())
    mem = ds.to_memory(pos)
    assert list(mem.obs_names) == [a.obs_names[i] for i in pos]


def test_chunked_gene_selection_matches_scanpy(small_h5ad):
    from engine.data.io import get_counts
    from engine.train import select_genes

    a, path = small_h5ad
    counts = get_counts(a)[0].tocsr().astype(np.float32)
    want = select_genes(a, counts, 20)
    got = hvg_seurat(scan(H5adCounts(path)), 20)
    assert len(set(want) & set(got)) >= 19


@pytest.mark.skipif(not KANG.exists(), reason="needs ../shared/data")
def test_chunked_gene_selection_matches_scanpy_on_kang():
    from engine.data.io import get_counts, read_dataset
    from engine.train import select_genes

    a = read_dataset(KANG)
    counts = get_counts(a)[0].tocsr().astype(np.float32)
    st = scan(H5adCounts(KANG))
    for n in (500, 2000):
        assert set(select_genes(a, counts, n)) == set(hvg_seurat(st, n))


def test_block_shuffler_shards_cover_each_row_at_most_once():
    n, bs = 10_000, 128
    seen = []
    for rank in range(2):
        sh = BlockShuffler(n, bs, rank=rank, world=2, seed=3)
        batches = list(sh.batches(0))
        assert all(len(b) == bs and np.all(np.diff(b) > 0) for b in batches)
        seen.append(np.concatenate(batches))
        assert np.array_equal(np.concatenate(list(sh.batches(0))), seen[-1])   # deterministic
    both = np.concatenate(seen)
    assert len(np.unique(both)) == len(both) > 0.9 * n              # disjoint shards
    assert not np.array_equal(np.concatenate(list(BlockShuffler(n, bs, seed=3).batches(1))),
                              np.concatenate(list(BlockShuffler(n, bs, seed=3).batches(0))))


def test_budget_keeps_todays_rule_and_grows_with_the_data():
    from engine.config import TrainConfig
    from engine.train import training_budget

    tc = TrainConfig()
    for n in (300, 2421, 11_000, 90_000):
        per = max(n // min(256, n), 1)
        old = max(5, min(600, -(-10_000 // per))) * per
        b = training_budget(tc, n)
        assert (b.ae_steps, b.flow_steps) == (old, 3000)
    big = [training_budget(tc, n) for n in (400_000, 2_000_000, 5_000_000)]
    assert big[0].flow_steps == 6000 and big[1].flow_steps > big[0].flow_steps
    assert big[2].ae_steps == 50_000 and big[1].ae_steps == 5 * (2_000_000 // 256)
    fixed = TrainConfig(ae_steps=123, flow_steps=77, scale_budget=False)
    assert (training_budget(fixed, 5_000_000).ae_steps,
            training_budget(fixed, 5_000_000).flow_steps) == (123, 77)
    assert training_budget(TrainConfig(ae_epochs=2), 25_600).ae_steps == 200


def test_streaming_training_writes_a_valid_model(small_h5ad, schema, tmp_path):
    from engine import PerturbModel
    from engine.conditions.spec import Condition
    from engine.train import train_model

    _, path = small_h5ad
    out = tmp_path / "m"
    train_model(BackedDataset.open(path), schema, out, device="cpu", seed=0,
                **{**FAST, "max_genes": 40})
    m = PerturbModel.load(out)
    tr = m.config["training"]
    assert tr["streaming"] is True and tr["world_size"] == 1 and len(m.genes) >= 40
    assert m.reference.n_cells == 320
    cells = m.generate(Condition.parse("T", "A", "CRISPRa"), 20, seed=0)
    assert cells.shape == (20, len(m.genes)) and cells.layers["counts"].sum() > 0


def _cancel_at(phase_word: str, step: int):
    ev = threading.Event()

    def progress(p):
        if phase_word in p.phase and p.done >= step:
            ev.set()
    return ev, progress


def test_resume_after_cancel_continues_from_the_checkpoint(synthetic, schema, tmp_path):
    from engine import PerturbModel
    from engine.resume import Checkpointer
    from engine.train import train_model

    full = train_model(synthetic, schema, None, device="cpu", seed=0, **FAST)
    for word, at in (("autoencoder", 30), ("member 2", 20)):
        out = tmp_path / word.replace(" ", "")
        part = out.with_name(out.name + ".partial")
        ev, progress = _cancel_at(word, at)
        with pytest.raises(Cancelled):
            train_model(synthetic, schema, out, device="cpu", seed=0, progress=progress,
                        cancel=ev, checkpoint_dir=part, checkpoint_every=1e9, **FAST)
        meta, _ = Checkpointer(part).load()
        assert meta["phase"] == ("autoencoder" if word == "autoencoder" else "flow")
        assert meta["step"] == at
        assert not out.exists()
        model = train_model(synthetic, schema, out, device="cpu", seed=0, resume=True,
                            checkpoint_dir=part, **FAST)
        assert model.config["training"]["resumed_from"] == {"phase": meta["phase"], "step": at}
        assert not part.exists()                       # spent once the model is written
        loaded = PerturbModel.load(out)
        # on CPU with every generator restored, the resumed run is the uninterrupted one
        for a, b in zip(loaded.autoencoder.state_dict().values(),
                        full.autoencoder.state_dict().values(), strict=True):
            assert np.allclose(a.numpy(), b.numpy(), atol=1e-6)
        for na, nb in zip(loaded.nets, full.nets, strict=True):
            for a, b in zip(na.state_dict().values(), nb.state_dict().values(), strict=True):
                assert np.allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_resume_refuses_another_runs_checkpoint(synthetic, schema, tmp_path):
    from engine.errors import ModelError
    from engine.train import train_model

    part = tmp_path / "m.partial"
    ev, progress = _cancel_at("autoencoder", 20)
    with pytest.raises(Cancelled):
        train_model(synthetic, schema, tmp_path / "m", device="cpu", seed=0, progress=progress,
                    cancel=ev, checkpoint_dir=part, **FAST)
    with pytest.raises(ModelError, match="another run"):
        train_model(synthetic, schema, tmp_path / "m", device="cpu", seed=1, resume=True,
                    checkpoint_dir=part, **FAST)


def test_two_process_gloo_run_writes_one_model(small_h5ad, tmp_path):
    from engine import PerturbModel

    _, path = small_h5ad
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29500 + os.getpid() % 1000),
           "-m", "engine", "train", str(path), "--out", str(out), "--streaming",
           "--cell-type-key", "cell_type", "--perturbation-key", "perturbation",
           "--perturbation-type-key", "ptype", "--control", "control",
           "--ae-steps", "30", "--flow-steps", "30", "--members", "1", "--holdout", "0",
           "--device", "cpu"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "world size 2" in r.stderr
    assert r.stdout.count("trained ddp") == 1            # rank 0 alone reports
    m = PerturbModel.load(out)
    assert m.config["training"]["world_size"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "small.h5ad"]


def test_sparse_encoding_equals_the_dense_encoder(synthetic):
    import torch

    from engine.models.autoencoder import NBAutoencoder
    from engine.train import encode_sparse

    torch.manual_seed(0)
    ae = NBAutoencoder(synthetic.n_vars, latent_dim=4, hidden=16).eval()
    m = sp.csr_matrix(synthetic.layers["counts"]).astype(np.float32)
    with torch.no_grad():
        mu, logvar = ae.encode(torch.as_tensor(m.toarray()))
        mu_s, logvar_s, lib = encode_sparse(ae, m, "cpu")
    assert torch.allclose(mu, mu_s, atol=1e-5) and torch.allclose(logvar, logvar_s, atol=1e-5)
    assert torch.allclose(lib[:, 0], torch.log(torch.as_tensor(m.sum(1)).ravel().float()))


def test_open_dataset_backed_summarises_every_cell_and_samples_the_views(small_h5ad,
                                                                          monkeypatch):
    import engine
    from engine.data import stream

    a, path = small_h5ad
    in_memory = engine.open_dataset(path)
    assert in_memory.backed is None and in_memory.adata.n_obs == 320
    monkeypatch.setattr(stream, "VIEW_SAMPLE_CELLS", 100)
    opened = engine.open_dataset(path, backed=True)
    assert isinstance(opened.backed, engine.BackedDataset) and opened.backed.n_obs == 320
    assert opened.summary.n_cells == 320 and opened.summary.counts_source == "layers['counts']"
    assert [c.name for c in opened.summary.columns] == \
        [c.name for c in in_memory.summary.columns]
    assert {c.name: c.top for c in opened.summary.columns} == \
        {c.name: c.top for c in in_memory.summary.columns}
    assert opened.adata.n_obs == 100 and opened.schema == in_memory.schema
    assert set(opened.adata.obs_names) <= set(a.obs_names)


def test_training_benchmark_reports_cells_per_second():
    from engine.bench import train_speed

    r = train_speed("cpu", threads=1, genes=200, steps=3, batch=32)
    assert r["train_cells_per_s"] > 0 and r["mixed_precision"] == "fp32"

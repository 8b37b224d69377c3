"""Hostile generation requests (issue 15 #4, #12): the memory guard counts every copy and refuses
with numbers and advice, running out of memory mid-run is one ResourceError, sampling arguments
(steps, guidance, cell count, seed) are checked before any work, and ``perturb`` refuses cells
without counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import engine.model as model_mod
from engine import Condition, PerturbStudioError, ResourceError
from engine.errors import DataError
from engine.memory import (
    BYTES_PER_NONZERO,
    CsrBuilder,
    check_generation_memory,
    generation_estimate,
    is_out_of_memory,
    max_cells_within,
)

ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30


def cond(ct="T", pert="A"):
    return Condition.parse(ct, pert, "CRISPRa")


# -- the guard ----------------------------------------------------------------------------------


def test_guard_refuses_with_cells_gib_available_and_advice(tiny_model, monkeypatch):
    monkeypatch.setattr(model_mod, "_available_memory", lambda: 1 * GIB)
    with pytest.raises(ResourceError) as e:
        tiny_model.generate(cond(), 4_000_000)
    msg = str(e.value)
    assert "generating 4,000,000 cells" in msg
    assert "GiB of memory, but only 1.0 GiB is available" in msg
    assert "generate fewer cells per run (at most about" in msg and "split the experiment" in msg


def test_guard_counts_all_conditions_and_perturb_inputs(tiny_model, monkeypatch, synthetic):
    monkeypatch.setattr(model_mod, "_available_memory", lambda: 1 * GIB)
    with pytest.raises(ResourceError, match="generating 4,500,000 cells"):
        tiny_model.generate_many([cond("T", "A"), cond("T", "B")], 1_500_000)
    monkeypatch.setattr(model_mod, "_available_memory", lambda: 10 * 2**20)
    cells = synthetic[:30].copy()
    with pytest.raises(ResourceError, match="perturbing 30 cells"):
        tiny_model.perturb(cells, cond(), seed=0)


def test_estimate_for_the_issue_case_counts_every_copy():
    # generate -n 5000000 on the 299-gene papalexi model: the old guard said ~5 GiB
    n, g, density = 5_000_000, 299, 0.2258
    est = generation_estimate(n, g, density)
    assert est.parts["result matrices"] == int(n * g * density * BYTES_PER_NONZERO)
    assert {"cell names and labels", "dense blocks", "libraries", "writing"} <= set(est.parts)
    assert 6.0 * GIB < est.total < 8.0 * GIB
    # h5ad and CSV writes are both covered by the guard's default
    assert est.total >= generation_estimate(n, g, density, write="h5ad").total
    assert est.total >= generation_estimate(n, g, density, write="csv").total


def test_max_cells_within_matches_the_check():
    budget = 3 * GIB
    fit = max_cells_within(budget, 299, 0.2258)
    assert generation_estimate(fit, 299, 0.2258).total <= budget
    assert generation_estimate(fit + 1, 299, 0.2258).total > budget
    check_generation_memory(fit, 299, 0.2258, what="x", available=int(budget / 0.9) + 1)
    with pytest.raises(ResourceError, match=f"at most about {fit:,} cells fit now"):
        check_generation_memory(fit * 2, 299, 0.2258, what="generating",
                                available=int(budget / 0.9) + 1)


# -- the builder that replaced the concatenating assembly ------------------------------------------


@pytest.mark.parametrize("hint", [0, 10**6])
def test_csr_builder_equals_whole_matrix_normalisation(hint):
    rng = np.random.default_rng(0)
    g, batches = 37, [50, 7, 1, 64]
    dense = []
    b = CsrBuilder(sum(batches), g, hint)          # hint 0: the buffers must grow
    for rows in batches:
        block = rng.poisson(0.7, size=(rows, g)).astype(np.int32)
        block[0] = 0                                       # an empty row
        dense.append(block)
        idx = np.flatnonzero(block.ravel())
        b.add(idx, block.ravel()[idx], rows)
    counts, x = b.finish()
    full = np.vstack(dense)
    np.testing.assert_array_equal(counts.toarray(), full)
    assert counts.dtype == np.int32 and x.dtype == np.float32
    lib = np.maximum(full.sum(1, keepdims=True), 1.0)
    expect = np.log1p(full * (1e4 / lib)).astype(np.float32)
    np.testing.assert_array_equal(x.toarray(), expect)
    assert x.indices is not counts.indices                 # X owns its own structure
    counts.data[:] = 0
    assert x.data.sum() > 0


# -- running out of memory mid-run ---------------------------------------------------------------


@pytest.mark.parametrize("exc", [
    MemoryError("Unable to allocate 3.2 GiB for an array"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough "
                 "memory: you tried to allocate 3221225472 bytes."),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
])
def test_out_of_memory_mid_run_is_one_resource_error(tiny_model, monkeypatch, exc):
    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(tiny_model, "_decode_counts", boom)
    with pytest.raises(ResourceError) as e:
        tiny_model.generate(cond(), 40, seed=0)
    assert "ran out of memory while generating 40 cells" in str(e.value)
    assert "fewer cells per run" in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_other_runtime_errors_are_not_called_memory(tiny_model, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(tiny_model, "_decode_counts", boom)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        tiny_model.generate(cond(), 40, seed=0)
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_real_allocation_failure_under_an_address_space_limit(tiny_model_dir, tmp_path):
    """A child process with RLIMIT_AS and the guard switched off runs into a real allocation
    failure (numpy or torch) and gets one ResourceError, not a traceback."""
    resource = pytest.importorskip("resource")
    del resource
    code = textwrap.dedent(f"""
        import json, resource, sys
        import torch
        torch.set_num_threads(1)
        import engine.model as m
        from engine import Condition, PerturbModel, ResourceError
        model = PerturbModel.load({str(tiny_model_dir)!r}, device="cpu")
        model.generate(Condition.parse("T", "A", "CRISPRa"), 64, seed=0)   # warm up
        m._available_memory = lambda: 10**15                                 # no guard
        size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + 400 * 2**20, resource.RLIM_INFINITY))
        try:
            model.generate(Condition.parse("T", "A", "CRISPRa"), 4_000_000, seed=0)
            print(json.dumps({{"result": "finished"}}))
        except ResourceError as e:
            print(json.dumps({{"result": "ResourceError", "message": str(e)}}))
    """)
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["result"] == "ResourceError", r
    assert "ran out of memory while generating 4,000,000 cells" in r["message"]


# -- sampling arguments (issue 15 #12) -----------------------------------------------------------


@pytest.mark.parametrize("steps, match", [
    (0, "sampling steps must be between 1 and 1,000, got 0"),
    (-3, "sampling steps must be between 1 and 1,000, got -3"),
    (10**6, "sampling steps must be between 1 and 1,000, got 1,000,000"),
    (2.5, "sampling steps must be a whole number"),
    (True, "sampling steps must be a whole number"),
    ("10", "sampling steps must be a whole number"),
])
def test_bad_steps_are_refused_not_replaced_by_the_default(tiny_model, steps, match):
    with pytest.raises(PerturbStudioError, match=match):
        tiny_model.generate(cond(), 5, steps=steps)


def test_steps_zero_is_refused_in_perturb_before_any_work(tiny_model, synthetic, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("encoded cells before checking the arguments")

    monkeypatch.setattr(tiny_model, "_encode_counts", no_work)
    with pytest.raises(PerturbStudioError, match="sampling steps must be between 1 and"):
        tiny_model.perturb(synthetic[:10].copy(), cond(), steps=0)


@pytest.mark.parametrize("guidance", [float("nan"), float("inf"), -float("inf"), -0.5, 21.0,
                                      "abc", True])
def test_bad_guidance_is_refused(tiny_model, guidance):
    with pytest.raises(PerturbStudioError, match="guidance must be a number between 0 and 20"):
        tiny_model.generate(cond(), 5, guidance=guidance)


@pytest.mark.parametrize("n, match", [
    (0, "number of cells must be at least 1, got 0"),
    (-5, "number of cells must be at least 1, got -5"),
    (2.5, "the number of cells must be a whole number"),
    (True, "the number of cells must be a whole number"),
    ("100", "the number of cells must be a whole number"),
    (float("nan"), "the number of cells must be a whole number"),
])
def test_bad_cell_counts_are_refused(tiny_model, n, match):
    with pytest.raises(PerturbStudioError, match=match):
        tiny_model.generate(cond(), n)


def test_integral_float_cell_count_is_accepted(tiny_model):
    assert tiny_model.generate(cond(), 7.0, seed=0).n_obs == 7


@pytest.mark.parametrize("seed", [2**64, 10**23, -(2**63) - 1, 1.5, "7"])
def test_bad_seeds_are_refused(tiny_model, seed):
    with pytest.raises(PerturbStudioError, match="the seed must be"):
        tiny_model.generate(cond(), 5, seed=seed)


def test_largest_and_negative_seeds_work_and_are_reproducible(tiny_model):
    for seed in (2**64 - 1, -1):
        a = tiny_model.generate(cond(), 6, seed=seed).layers["counts"].toarray()
        b = tiny_model.generate(cond(), 6, seed=seed).layers["counts"].toarray()
        np.testing.assert_array_equal(a, b)


def test_bad_batch_size_in_config_is_a_model_error(tiny_model):
    from engine.errors import ModelError

    tiny_model.config = dict(tiny_model.config, sampling={"batch_size": 0})
    with pytest.raises(ModelError, match="sampling.batch_size"):
        tiny_model.generate(cond(), 5)


# -- all-zero --from-cells input (issue 15 #12) -------------------------------------------------


def test_perturb_refuses_an_all_zero_matrix(tiny_model, synthetic):
    cells = synthetic[:30].copy()
    cells.X = sp.csr_matrix(cells.shape, dtype=np.float32)
    cells.layers["counts"] = cells.X.copy()
    with pytest.raises(DataError, match="all 30 given cells have no counts in the 60 model "
                                        "genes found in the data; nothing can be encoded"):
        tiny_model.perturb(cells, cond(), seed=0)


def test_perturb_refuses_a_few_empty_cells_naming_count_and_first(tiny_model, synthetic):
    cells = synthetic[:30].copy()
    m = cells.layers["counts"].tolil()
    for i in (5, 17):
        m[i, :] = 0
    cells.layers["counts"] = m.tocsr()
    cells.X = cells.layers["counts"].copy()
    with pytest.raises(DataError, match=r"2 of 30 given cells have no counts .* \(first: 'c5'\); "
                                        "they cannot be encoded"):
        tiny_model.perturb(cells, cond(), seed=0)


def test_perturb_counts_only_model_genes(tiny_model, synthetic):
    """A cell whose only counts are in genes the model does not know cannot be encoded."""
    import anndata as ad

    cells = synthetic[:10].copy()
    extra = sp.csr_matrix(np.ones((10, 1), np.float32))
    m = cells.layers["counts"].tolil()
    m[3, :] = 0
    counts = sp.hstack([m.tocsr(), extra]).tocsr()
    wide = ad.AnnData(counts, obs=cells.obs.copy())
    wide.var_names = [*cells.var_names, "NOT_A_MODEL_GENE"]
    wide.layers["counts"] = counts.copy()
    with pytest.raises(DataError, match=r"1 of 10 given cells have no counts .*first: 'c3'"):
        tiny_model.perturb(wide, cond(), seed=0)

"""Build large test h5ad files by resampling real Kang 2018 cells, chunk by chunk.

Every new cell is a random Kang cell (``../shared/data/kang2018_ifnb_pbmc_train.h5ad``, raw counts)
whose counts are thinned binomially (each UMI kept with a probability drawn per cell from
U(0.5, 1)), with that cell's ``condition``, ``cell_type``, ``stim`` and ``donor``. The file is
written with h5py in anndata's on-disk format (CSR ``X`` of integer counts as float32,
categorical ``obs``), ``--chunk`` cells at a time: the whole matrix is never in memory.

    PYTHONPATH=$PWD .venv/bin/python build_scripts/make_large.py --cells 500000 2000000 5000000 \
        --out /work/large

writes ``/work/large/kang_resampled_500k.h5ad`` etc. (about 1.6 KB a cell on disk).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

DATA = Path(os.environ.get("PERTURB_STUDIO_DATA", Path(__file__).resolve().parents[2] / "shared"
                           / "data"))
COLUMNS = ("condition", "cell_type", "stim", "donor")


def _label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def _strings(g, name: str, values, chunk: int | None = None):
    ds = g.create_dataset(name, data=np.asarray(values, dtype=object),
                          dtype=h5py.string_dtype())
    ds.attrs["encoding-type"] = "string-array"
    ds.attrs["encoding-version"] = "0.2.0"
    return ds


def _empty_dict(f, name: str) -> None:
    g = f.create_group(name)
    g.attrs["encoding-type"] = "dict"
    g.attrs["encoding-version"] = "0.1.0"


def make(n_cells: int, out: Path, *, chunk: int = 100_000, seed: int = 0) -> Path:
    import anndata as ad
    from anndata.io import write_elem

    src = ad.read_h5ad(DATA / "kang2018_ifnb_pbmc_train.h5ad")
    counts = sp.csr_matrix(src.layers["counts"]).astype(np.int64)
    obs = {c: src.obs[c].astype("category") for c in COLUMNS}
    rng = np.random.default_rng(seed)
    path = out / f"kang_resampled_{_label(n_cells)}.h5ad"
    tmp = path.with_suffix(".h5ad.tmp")
    t0 = time.perf_counter()
    with h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        x = f.create_group("X")
        x.attrs["encoding-type"] = "csr_matrix"
        x.attrs["encoding-version"] = "0.1.0"
        x.attrs["shape"] = np.array([n_cells, src.n_vars], np.int64)
        data = x.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32,
                                chunks=(1 << 20,))
        indices = x.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32,
                                   chunks=(1 << 20,))
        indptr = x.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64)
        indptr[0] = 0
        g = f.create_group("obs")
        g.attrs["encoding-type"] = "dataframe"
        g.attrs["encoding-version"] = "0.2.0"
        g.attrs["_index"] = "_index"
        g.attrs["column-order"] = np.array(COLUMNS, dtype=object)
        idx = g.create_dataset("_index", shape=(n_cells,), dtype=h5py.string_dtype())
        idx.attrs["encoding-type"] = "string-array"
        idx.attrs["encoding-version"] = "0.2.0"
        codes_ds = {}
        for c in COLUMNS:
            cg = g.create_group(c)
            cg.attrs["encoding-type"] = "categorical"
            cg.attrs["encoding-version"] = "0.2.0"
            cg.attrs["ordered"] = False
            _strings(cg, "categories", [str(v) for v in obs[c].cat.categories])
            codes_ds[c] = cg.create_dataset("codes", shape=(n_cells,), dtype=np.int8)
        write_elem(f, "var", src.var[[]])
        for name in ("uns", "obsm", "varm", "obsp", "varp", "layers"):
            _empty_dict(f, name)
        nnz = 0
        for lo in range(0, n_cells, chunk):
            hi = min(lo + chunk, n_cells)
            pick = rng.integers(0, src.n_obs, hi - lo)
            keep_p = rng.uniform(0.5, 1.0, hi - lo)
            m = counts[pick]
            m.data = rng.binomial(m.data, np.repeat(keep_p, np.diff(m.indptr)))
            m.eliminate_zeros()
            data.resize((nnz + m.nnz,))
            indices.resize((nnz + m.nnz,))
            data[nnz:] = m.data.astype(np.float32)
            indices[nnz:] = m.indices.astype(np.int32)
            indptr[lo + 1:hi + 1] = nnz + m.indptr[1:]
            nnz += m.nnz
            idx[lo:hi] = np.array([f"r{i}" for i in range(lo, hi)], dtype=object)
            for c in COLUMNS:
                codes_ds[c][lo:hi] = obs[c].cat.codes.to_numpy()[pick].astype(np.int8)
            print(f"  {hi:,} / {n_cells:,} cells, {nnz:,} stored counts, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    os.replace(tmp, path)
    print(f"{path}: {n_cells:,} cells x {src.n_vars} genes, {path.stat().st_size / 1e9:.2f} GB "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, nargs="+", default=[500_000, 2_000_000, 5_000_000])
    p.add_argument("--out", type=Path, default=Path("/work/large"))
    p.add_argument("--chunk", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for n in a.cells:
        make(n, a.out, chunk=a.chunk, seed=a.seed)


if __name__ == "__main__":
    main()

"""``perturb-studio --selftest``: prove that an installed (frozen) Perturb Studio works, offline.

Run by CI on the PyInstaller bundle (tests/bundle/test_bundle.py) and by a user or an IT department
after installing. Each check prints one line; the exit status is 0 only when every check passed.

Checks: the bundle's resources are where the engine looks; every installed model loads and
generates a few cells on CPU for one condition it knows; the cells survive an h5ad round trip;
a training step runs (torch autograd + optimiser); scanpy imports and runs; UMAP runs in the
app's helper process (multiprocessing spawn of the frozen executable; numba compiles and caches
into a writable folder); the heatmap renders off-screen to a PNG.

Nothing here needs a display, a GPU or the network. Heavy imports happen inside the checks so
that a missing library fails one check with its name rather than the whole self-test.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

N_CELLS = 16  # per model: enough to exercise batching, small enough to take a second
MAX_STEPS = 8  # integration steps for the self-test (models default to more)


class _Runner:
    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.results: list[tuple[str, bool]] = []

    def check(self, name: str, fn: Callable[[], str]) -> bool:
        t = time.perf_counter()
        try:
            with warnings.catch_warnings():
                if not self.verbose:  # library chatter is not a result; -v shows it
                    warnings.simplefilter("ignore")
                detail = fn()
            ok = True
        except Exception as exc:  # noqa: BLE001 - every failure becomes one FAIL line
            ok = False
            detail = f"{type(exc).__name__}: {exc}"
            if self.verbose:
                traceback.print_exc()
        dt = time.perf_counter() - t
        mark = "PASS" if ok else "FAIL"
        print(f"[{mark}] {name} ({dt:.1f} s){': ' + detail if detail else ''}", flush=True)
        self.results.append((name, ok))
        return ok


def _condition_for(space):
    """One valid condition from a model's vocabulary: the first cell type, the first target (with
    its first perturbation type), the first value of each context level. Falls back to the first
    perturbed condition seen in training if that combination is refused."""
    from engine import Condition, ConditionError, Perturbation

    perts = []
    if space.targets:
        target = space.targets[0]
        types = space.target_types.get(target) or space.perturbation_types or [None]
        perts.append(Perturbation(target, types[0]))
    context = {level: space.context_values[level][0] for level in space.context_levels
               if space.context_values.get(level)}
    cond = space.complete(Condition.make(space.cell_types[0] if space.cell_types else None,
                                         perts, context))
    try:
        space.validate(cond)
        return cond
    except ConditionError:
        seen = [s for s in space.seen if s.get("perturbations")] or list(space.seen)
        if not seen:
            raise
        cond = space.complete(Condition.from_dict(seen[0]))
        space.validate(cond)
        return cond


def run(argv: list[str] | None = None) -> int:
    """Run every check; print one line per check; return 0 if all passed, else 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    r = _Runner(verbose)
    frozen = bool(getattr(sys, "frozen", False))
    print(f"Perturb Studio self-test: python {platform.python_version()}, "
          f"{platform.system()} {platform.machine()}, "
          f"{'frozen bundle at ' + str(getattr(sys, '_MEIPASS', '?')) if frozen else 'from source'}",
          flush=True)

    state: dict = {}

    def imports() -> str:
        import anndata
        import torch

        import engine

        torch.set_num_threads(min(4, os.cpu_count() or 1))
        state["torch"] = torch
        return (f"engine {engine.__version__}, torch {torch.__version__}, "
                f"anndata {anndata.__version__}")

    if not r.check("import engine, torch, anndata", imports):
        return _summary(r)

    def models() -> str:
        from engine import list_models, shipped_models_dir

        shipped = shipped_models_dir()
        infos = list_models()
        state["models"] = infos
        if not infos:
            raise RuntimeError(f"no model found (shipped models folder: {shipped})")
        if frozen and not any(i.source == "shipped" for i in infos):
            raise RuntimeError(f"the bundle ships no model in {shipped}")
        return f"{len(infos)} model(s) in {shipped}: " + ", ".join(i.name for i in infos)

    r.check("find installed models", models)

    tmp = Path(tempfile.mkdtemp(prefix="perturb-studio-selftest-"))
    generated = []
    for info in state.get("models", []):
        holder: dict = {}

        def load(info=info, holder=holder) -> str:
            from engine import PerturbModel

            m = PerturbModel.load(info.path, device="cpu")
            holder["model"] = m
            return f"{len(m.genes)} genes, {len(m.space.cell_types)} cell types, " \
                   f"{len(m.space.targets)} targets"

        if not r.check(f"load model {info.name}", load):
            continue

        def generate(info=info, holder=holder) -> str:
            import numpy as np

            m = holder["model"]
            cond = _condition_for(m.space)
            t = time.perf_counter()
            adata = m.generate(cond, N_CELLS, seed=0, steps=min(m.default_steps, MAX_STEPS))
            dt = time.perf_counter() - t
            counts = adata.layers["counts"]
            if adata.n_obs != N_CELLS or adata.n_vars != len(m.genes):
                raise RuntimeError(f"expected {N_CELLS} x {len(m.genes)}, got {adata.shape}")
            total = float(counts.sum())
            if not np.isfinite(total) or total <= 0:
                raise RuntimeError(f"generated counts are empty or not finite (sum={total})")
            generated.append((info.name, adata))
            return f"{adata.n_obs} cells of '{cond.label}' on CPU in {dt:.1f} s"

        r.check(f"generate with {info.name}", generate)

    def h5ad_roundtrip() -> str:
        import anndata
        import numpy as np

        from engine import write_h5ad

        if not generated:
            raise RuntimeError("no generated cells to write (see the checks above)")
        name, adata = generated[0]
        path = tmp / f"{name}.h5ad"
        write_h5ad(adata, path)
        back = anndata.read_h5ad(path)
        if back.shape != adata.shape or list(back.var_names) != list(adata.var_names):
            raise RuntimeError(f"read back {back.shape}, wrote {adata.shape}")
        a = adata.layers["counts"]
        b = back.layers["counts"]
        a = a.toarray() if hasattr(a, "toarray") else np.asarray(a)
        b = b.toarray() if hasattr(b, "toarray") else np.asarray(b)
        if not np.array_equal(a, b):
            raise RuntimeError("counts differ after the round trip")
        return f"{path.name}: {path.stat().st_size / 1024:.0f} KiB, identical after re-reading"

    r.check("write and re-read h5ad", h5ad_roundtrip)

    def train_step() -> str:
        # Training from the app needs autograd and an optimiser; in a frozen build the optimiser
        # pulls in torch._dynamo and sympy lazily, so exercise that path too.
        torch = state["torch"]
        g = torch.Generator().manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.SiLU(), torch.nn.Linear(16, 8))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
        x = torch.randn(32, 8, generator=g)
        losses = []
        for _ in range(5):
            loss = ((net(x) - x) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        if not losses[-1] < losses[0]:
            raise RuntimeError(f"loss did not decrease: {losses}")
        return f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"

    r.check("torch training step", train_step)

    def scanpy_check() -> str:
        # scanpy reads package metadata at import (a frozen build without the .dist-info folders
        # dies here) and runs numba code.
        from importlib.metadata import version

        import anndata
        import numpy as np
        import scanpy as sc

        rng = np.random.default_rng(0)
        a = anndata.AnnData(rng.poisson(2.0, size=(120, 40)).astype(np.float32))
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
        sc.pp.pca(a, n_comps=8)
        if a.obsm["X_pca"].shape != (120, 8):
            raise RuntimeError(f"bad PCA output {a.obsm['X_pca'].shape}")
        return f"scanpy {version('scanpy')}, umap-learn {version('umap-learn')}"

    r.check("scanpy import + PCA", scanpy_check)

    def umap_check() -> str:
        # The app's real path: engine.analysis.embed_umap in the spawn helper process
        # (app.embed_process). In a frozen build the child is the bundle's own executable
        # (multiprocessing.freeze_support), and numba compiles into NUMBA_CACHE_DIR.
        import anndata
        import numpy as np

        from app.embed_process import EmbedServer

        rng = np.random.default_rng(0)
        x = rng.poisson(2.0, size=(150, 40)).astype(np.float32)
        x[75:, :10] += 6
        srv = EmbedServer()
        try:
            coords, labels = srv.embed({"a": anndata.AnnData(x[:75]),
                                        "b": anndata.AnnData(x[75:])})
            in_helper = srv._proc is not None and srv._proc.is_alive() and not srv.disabled
        finally:
            srv.shutdown()
        if coords.shape != (150, 2) or not np.isfinite(coords).all():
            raise RuntimeError(f"bad UMAP output {coords.shape}")
        if not in_helper:
            raise RuntimeError("the UMAP helper process did not run (fell back to a thread)")
        return (f"150 cells embedded in the helper process; numba cache "
                f"{os.environ.get('NUMBA_CACHE_DIR', '(numba default)')}")

    r.check("UMAP in the helper process (numba)", umap_check)

    def heatmap() -> str:
        import numpy as np
        from PySide6.QtWidgets import QApplication

        from app.plots.heatmap import HeatmapPlot

        qapp = QApplication.instance() or QApplication(["perturb-studio"])
        if generated:
            labels, rows = [], []
            _, adata = generated[0]
            genes = list(adata.var_names[:20])
            x = adata[:, genes].X
            x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
            for i in range(0, adata.n_obs, max(1, adata.n_obs // 4)):
                rows.append(x[i:i + 4].mean(axis=0))
                labels.append(f"cells {i}-{i + 3}")
            matrix = np.asarray(rows, dtype=np.float32)
        else:
            genes = [f"gene{i}" for i in range(20)]
            labels = [f"group{i}" for i in range(4)]
            matrix = np.random.default_rng(0).normal(size=(4, 20)).astype(np.float32)
        plot = HeatmapPlot()
        plot.set_data(matrix, labels, genes)
        out = tmp / "heatmap.png"
        plot.export(str(out))
        qapp.processEvents()
        if not out.is_file() or out.stat().st_size == 0:
            raise RuntimeError(f"{out} was not written")
        plot.deleteLater()
        return f"{matrix.shape[0]} x {matrix.shape[1]} heatmap -> {out.name} " \
               f"({out.stat().st_size / 1024:.0f} KiB, Qt platform {qapp.platformName()})"

    r.check("render heatmap off-screen", heatmap)

    try:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    except Exception:  # noqa: BLE001
        pass
    return _summary(r)


def _summary(r: _Runner) -> int:
    failed = [name for name, ok in r.results if not ok]
    if failed:
        print(f"self-test FAILED: {len(failed)} of {len(r.results)} checks failed "
              f"({', '.join(failed)})", flush=True)
        return 1
    print(f"self-test passed: {len(r.results)} checks", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run())

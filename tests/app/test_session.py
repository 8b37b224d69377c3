"""The session model, the UMAP table and the controller's writers, without the window
(issue 9 #2, #4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_session_is_qt_free_and_tells_its_observers():
    code = ("import sys, app.session, app.messages, app.umap_table;"
            "qt=[m for m in sys.modules if m.startswith(('PySide6','pyqtgraph'))];"
            "print(qt); sys.exit(1 if qt else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout + r.stderr

    from app.messages import DiffExpr, LoadedDataset
    from app.session import Session

    s = Session()
    seen = []
    for name in ("dataset", "schema", "experiment", "de", "busy"):
        getattr(s.events, name).connect(lambda n=name: seen.append((n, s.busy)))
    s.set_dataset("/data/x.h5ad", LoadedDataset("adata", "summary", "guess"))
    assert (s.adata, s.data_path, s.guessed_schema) == ("adata", "/data/x.h5ad", "guess")
    s.set_schema("schema", True)
    s.set_de(DiffExpr("A", None))
    s.set_experiment(SimpleNamespace(saved_to="/out/a.h5ad"))
    assert s.de is None and s.analysis is None and s.embedding is None  # cleared with it
    assert s.last_saved == "/out/a.h5ad"
    s.set_busy("run")
    s.set_busy("run")   # no change: no event
    s.set_busy(None)
    assert seen == [("dataset", None), ("schema", None), ("de", None), ("experiment", None),
                    ("busy", "run"), ("busy", None)]


def _experiment(n=6):
    import anndata as ad
    import pandas as pd

    from app.experiment import Experiment

    obs = pd.DataFrame({"condition": ["A"] * (n // 2) + ["ctrl"] * (n - n // 2),
                        "cell_type": "T", "perturbation": ["A"] * (n // 2) + ["control"] *
                        (n - n // 2)}, index=[f"g{i}" for i in range(n)])
    adata = ad.AnnData(np.ones((n, 3), dtype=np.float32), obs=obs)
    adata.var_names = ["ISG15", "CD3E", "MS4A1"]
    return Experiment.from_generated(adata, model_name="m")


def test_umap_parts_labels_every_cell_and_subsamples_real_ones():
    import anndata as ad
    import pandas as pd

    from app.umap_table import category_order, describe_point, find_gene, umap_parts

    exp = _experiment()
    real = ad.AnnData(np.ones((50, 3), dtype=np.float32),
                      obs=pd.DataFrame({"stim": ["ctrl", "stim"] * 25, "ct": "B"},
                                       index=[f"r{i}" for i in range(50)]))
    real.var_names = ["ISG15", "CD3E", "MS4A1"]
    schema = SimpleNamespace(perturbation_key="stim", cell_type_key="ct")
    parts, meta = umap_parts(exp, real, schema, max_real=20)
    assert list(parts) == ["generated", "real"] and parts["real"].n_obs == 20
    assert len(meta) == 6 + 20 and list(meta.columns) == ["source", "condition", "cell type"]
    assert set(meta["condition"][6:]) <= {"real: ctrl", "real: stim"}
    again = umap_parts(exp, real, schema, max_real=20)[0]["real"]
    assert list(again.obs_names) == list(parts["real"].obs_names)  # the same sample each time
    order, grey = category_order(meta["condition"].to_numpy(), "condition")
    assert order[:2] == ["A", "ctrl"] and grey == {"real: ctrl", "real: stim"}
    assert "generated · A · cell type T" in describe_point(meta, 0)
    assert describe_point(meta, 1, ("ISG15", np.arange(26.0))).endswith("ISG15 = 1.00")
    assert find_gene("isg15", parts, exp.adata.var_names) == "ISG15"
    assert find_gene("NOTAGENE", parts, exp.adata.var_names) is None
    # no dataset open: only the generated cells
    parts, meta = umap_parts(exp)
    assert list(parts) == ["generated"] and set(meta["source"]) == {"generated"}


def test_export_table_is_atomic_and_names_the_file(qtbot, tmp_path):
    import pandas as pd

    from app.controller import Controller

    c = Controller()
    errors, saved = [], []
    c.error.connect(lambda m, d, t: errors.append(m))
    c.exported.connect(saved.append)
    df = pd.DataFrame({"gene": ["A", "B"], "log2fc": [1.0, -1.0]})
    out = tmp_path / "tables" / "de.csv"
    assert c.export_table(df, str(out)) == str(out)
    assert saved == [str(out)] and pd.read_csv(out).equals(df)

    class Boom:
        def to_csv(self, path, index=False):
            Path(path).write_text("half a tab")
            raise OSError(28, "No space left on device")

    target = tmp_path / "tables" / "full.csv"
    assert c.export_table(Boom(), str(target)) is None
    assert not target.exists()
    assert not [p.name for p in target.parent.iterdir() if p.name != "de.csv"]  # no temp file
    assert len(errors) == 1 and "full.csv" in errors[0] and "disk is full" in errors[0]


def test_autosave_keeps_the_cells_when_saving_fails(tmp_path):
    from app.controller import autosave

    exp = _experiment()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    r = autosave(exp.adata, blocker / "x.h5ad")
    assert r.adata is exp.adata and r.saved_to is None
    assert r.save_error is not None and "not-a-folder" in r.save_error.message
    ok = autosave(exp.adata, tmp_path / "out" / "x.h5ad")
    assert ok.save_error is None and Path(ok.saved_to).is_file()
    assert autosave(exp.adata, None).saved_to is None


@pytest.mark.parametrize("module", ["app.tour", "app.application", "app.main_window"])
def test_no_module_imports_the_entry_point(module):
    """app.__main__ only parses argv and dispatches: nothing imports it back (issue 9 #3)."""
    code = (f"import sys, {module}; "
            "sys.exit(1 if 'app.__main__' in sys.modules else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "QT_QPA_PLATFORM": "offscreen"})
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_app_source_file_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "app").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert not long, long


def _with_donors(levels=None, *, missing: bool = False):
    """Generated cells of condition A and their controls, from two donors."""
    import anndata as ad
    import pandas as pd

    obs = pd.DataFrame({"condition": ["A", "A", "ctrl", "ctrl"], "cell_type": "T",
                        "perturbation": ["A", "A", "control", "control"],
                        "is_control": [False, False, True, True],
                        "donor": ["d1", "d2", "d1", "d2"],
                        "batch": ["b1", "b1", "b2", "b2"]}, index=list("abcd"))
    adata = ad.AnnData(np.ones((4, 2), dtype=np.float32), obs=obs)
    if not missing:
        adata.uns["perturb_studio"] = {"model": "m", "context_levels": levels}
    return adata


@pytest.mark.parametrize("levels, expected", [
    (["donor"], ["donor"]),                       # what the engine writes
    (np.array(["donor"], dtype=object), ["donor"]),  # after an h5ad round trip
    ("donor", ["donor"]),                         # a single name
    ([], []),                                     # the model has no context levels
    (["donor", "not-a-column"], ["donor"]),
])
def test_context_levels_are_read_from_the_provenance(levels, expected):
    from app.experiment import _context_columns

    assert _context_columns(_with_donors(levels)) == expected


@pytest.mark.parametrize("levels", [None, 3, [1, 2], {"x": 1}])
def test_context_levels_absent_or_odd_are_guessed_from_the_columns(levels):
    from app.experiment import Experiment, _context_columns

    assert _context_columns(_with_donors(levels)) == ["donor", "batch"]
    assert _context_columns(_with_donors(missing=True)) == ["donor", "batch"]
    exp = Experiment.from_generated(_with_donors(levels))
    assert list(exp.groups) == ["A"]


def test_a_control_matches_its_condition_on_the_context_levels():
    from app.experiment import Experiment

    exp = Experiment.from_generated(_with_donors(["donor"]))
    # the first A cell is from donor d1: its control is the d1 control cell only
    assert exp.controls["A"].tolist() == [2]


def test_plot_export_is_atomic_through_the_engine_writer(qtbot, tmp_path, monkeypatch):
    """A plot that fails half-way leaves neither the file nor a temporary one (the engine's
    atomic_path, not a copy of it in the app: issue 9 #4)."""
    from app.plots import common
    from app.plots.heatmap import HeatmapPlot
    from engine.errors import DataError

    h = HeatmapPlot()
    qtbot.addWidget(h)
    h.set_data(np.eye(3, dtype=np.float32), ["G1", "G2", "G3"], ["A", "B", "C"])

    def broken(item, path):
        Path(path).write_text("<svg")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(common, "_render_svg", broken)
    plots = tmp_path / "plots"
    with pytest.raises(DataError, match=r"heat\.svg: cannot write the file \(Input/output"):
        h.export(plots / "heat.svg")
    assert list(plots.iterdir()) == []
    monkeypatch.undo()
    assert h.export(plots / "heat.svg").stat().st_size > 1000

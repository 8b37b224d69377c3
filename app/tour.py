"""``perturb-studio --screenshot-tour DIR``: run the main flow on the shipped Kang model and save a
PNG of each screen (data, model card, composer, progress, heatmap, UMAP, DE table, dot plot,
violins, per-cell heatmap, gene-set score, history, a combination grid and a double against the
additive expectation on the CRISPR model, a session saved, closed and reopened, ...). Every
figure it shows is also exported with matplotlib to ``DIR/figures/`` as SVG and PDF.

It drives the real window exactly as a user would (same slots, same worker threads) and waits
on the window's signals, so it doubles as an end-to-end smoke test. Exit status 0 on success.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

KANG_FILE = "kang2018_ifnb_pbmc_train.h5ad"
#: A dataset whose genes are mostly not the Kang model's (457 of 4,805): the UMAP must not embed
#: the generated cells among them (issue 10).
OTHER_FILE = "pbmc68k_reduced_counts.h5ad"
MODEL = "kang-ifnb-pbmc"
#: A CRISPRa model with measured pairs: the combination grid and the additive comparison.
CRISPR_MODEL = "crispr-k562-glioblastoma"
CRISPR_CELL = "k562"
CRISPR_TARGETS = ("PTPN12", "SAMD1", "BPGM", "ZBTB10")
CRISPR_PAIRS = (("BPGM", "SAMD1"), ("PTPN12", "SAMD1"), ("PTPN12", "ZBTB10"),
                ("PTPN12", "BPGM"))


def data_dir() -> Path:
    env = os.environ.get("PERTURB_STUDIO_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _wait(app, pred, timeout: float, what: str) -> None:
    t0 = time.perf_counter()
    while not pred():
        app.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"screenshot tour: timed out waiting for {what}")


class _Flag:
    def __init__(self, signal) -> None:
        self.hit = False
        signal.connect(self.set)

    def set(self, *_a) -> None:
        self.hit = True


def run_tour(out_dir: str, *, n_cells: int = 1500, model: str = MODEL) -> int:
    from app.application import make_app

    app = make_app([])
    from app.main_window import MainWindow

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    win = MainWindow()
    win.act_autosave.setChecked(False)
    _place(app, win)
    win.show()
    shots: list[Path] = []

    figures = out / "figures"

    def shot(name: str, w=None) -> None:
        for _ in range(5):
            app.processEvents()
            time.sleep(0.02)
        p = out / f"{name}.png"
        (w or win).grab().save(str(p))
        shots.append(p)
        print(f"saved {p}", flush=True)

    def export(name: str, tab: str, w=None) -> None:
        """The figure of a Results tab as SVG and PDF in DIR/figures (fails the tour if not)."""
        w = w or win
        for suffix in (".svg", ".pdf"):
            if not w.save_figure(str(figures / f"{name}{suffix}"), tab):
                raise RuntimeError(f"could not export {name}{suffix}: {w.last_error}")

    def view(kind: str, w=None) -> None:
        """Show the Results tab of an app.views kind and wait until it is drawn."""
        from app.views import KINDS

        w = w or win
        drawn = _Flag(w.view_updated)
        failed = _Flag(w.controller.view_failed)
        w.results_page.tabs.setCurrentIndex(3 + KINDS.index(kind))
        if w.results_page.views[kind].figure is None:
            _wait(app, lambda: drawn.hit or failed.hit, 180, f"the {kind} view")
        if failed.hit and w.results_page.views[kind].figure is None:
            raise RuntimeError(f"the {kind} view failed: "
                               f"{w.results_page.views[kind].image.text()}")

    errors = _Flag(win.error_shown)
    try:
        listed = _Flag(win.models_listed)
        _wait(app, lambda: listed.hit, 60, "the model list")
        # 1. data
        loaded = _Flag(win.dataset_loaded)
        win.load_dataset(str(data_dir() / KANG_FILE))
        _wait(app, lambda: loaded.hit or errors.hit, 120, "the Kang dataset")
        if errors.hit:
            raise RuntimeError(win.last_error)
        win.nav.setCurrentRow(0)
        shot("01-data")
        # 2. model card
        win.nav.setCurrentRow(1)
        if not win.models_page.select(model):
            names = [i.name for i in win.models_page.infos]
            kang = [n for n in names if "kang" in n.lower()]
            if not names:
                raise RuntimeError("no models installed")
            win.models_page.select(kang[0] if kang else names[0])
        info = win.models_page.current()
        in_use = win.session.model_info
        if win.model is None or in_use is None or in_use.name != info.name:
            got = _Flag(win.model_loaded)
            win.use_model(info)
            _wait(app, lambda: got.hit or errors.hit, 120, "the model to load")
        shot("02-model-card")
        # 3. composer: two cell types stimulated with IFN-beta, plus their controls
        c = win.compose_page
        win.nav.setCurrentRow(2)
        space = win.model.space
        cts = [t for t in ("CD14+Mono", "CD4T") if t in space.cell_types] or space.cell_types[:2]
        target = "stimulated" if "stimulated" in space.targets else (space.targets[:1] or [""])[0]
        c.n_cells.setValue(n_cells)
        for ct in cts or [None]:
            if ct is not None:
                c.cell_type.setCurrentText(ct)
            if target and c.perts.rows:
                c.perts.rows[0].target.setText(target)
            c.add_current()
        shot("03-composer")
        # 4. progress
        done, cancelled = _Flag(win.generation_finished), _Flag(win.generation_cancelled)
        c.generate_btn.click()
        _wait(app, lambda: win.run_bar.bar.value() >= 250 or done.hit or errors.hit, 300,
              "generation progress")
        win.nav.setCurrentRow(2)
        shot("04-progress")
        _wait(app, lambda: done.hit or cancelled.hit or errors.hit, 600, "generation")
        if errors.hit:
            raise RuntimeError(win.last_error)
        # 5. heatmap, 6. UMAP, 7. DE
        heat, umap, de = (_Flag(win.heatmap_updated), _Flag(win.umap_updated),
                          _Flag(win.de_updated))
        r = win.results_page
        _wait(app, lambda: heat.hit, 120, "the heatmap")
        r.tabs.setCurrentIndex(0)
        shot("05-heatmap")
        export("05-heatmap", "heatmap")
        if r.heat_extras.isEnabled():
            r.heat_extras.setChecked(True)
            shot("05b-heatmap-baselines")
            r.heat_extras.setChecked(False)
        _wait(app, lambda: umap.hit or errors.hit, 300, "the UMAP")
        r.tabs.setCurrentIndex(1)
        r.color_by.setCurrentText("condition")
        shot("06-umap")
        export("06-umap", "umap")
        r.gene.setText("ISG15" if "ISG15" in win.experiment.adata.var_names else
                       str(win.experiment.adata.var_names[0]))
        r._gene_entered()
        shot("06b-umap-gene")
        _wait(app, lambda: de.hit, 120, "the DE table")
        r.tabs.setCurrentIndex(2)
        if r.proxy.rowCount():
            r.table.selectRow(0)
        shot("07-de-table")
        export("07-effects", "effects")
        if r.compare.count() > 1:
            de2 = _Flag(win.de_updated)
            r.compare.setCurrentIndex(1)
            _wait(app, lambda: de2.hit or errors.hit, 120, "the second effect table")
            shot("07b-effects-second")
        # 8-11. the figure views on the generated cells
        view("dotplot")
        shot("08-dotplot")
        export("08-dotplot", "dotplot")
        view("violin")
        shot("09-violins")
        export("09-violins", "violin")
        view("cells")
        shot("10-cells-heatmap")
        export("10-cells-heatmap", "cells")
        view("genesets")
        shot("11-geneset-violins")
        export("11-geneset-violins", "genesets")
        scored = _Flag(win.controller.umap_scores_ready)
        r.gs_umap.click()
        _wait(app, lambda: scored.hit or errors.hit, 120, "the gene-set score on the UMAP")
        shot("11b-geneset-umap")
        export("11b-geneset-umap", "umap")
        # 12. a second experiment: the history keeps both
        win.nav.setCurrentRow(2)
        c.queue.clear()
        c.n_cells.setValue(min(n_cells, 500))
        c.cell_type.setCurrentText("B" if "B" in space.cell_types else space.cell_types[-1])
        c.add_current()
        done = _Flag(win.generation_finished)
        heat = _Flag(win.heatmap_updated)
        c.generate_btn.click()
        _wait(app, lambda: (done.hit and heat.hit) or errors.hit, 600, "a second experiment")
        if errors.hit:
            raise RuntimeError(win.last_error)
        r.tabs.setCurrentIndex(0)
        r.history.setCurrentRow(0)
        shot("12-history")
        # 13-14. a CRISPRa model: combination grid and a double vs the additive expectation
        if _use(app, win, CRISPR_MODEL, errors):
            import engine

            space = win.model.space
            conds = [engine.Condition.make(CRISPR_CELL, [engine.Perturbation(t)])
                     for t in CRISPR_TARGETS]
            conds += [engine.Condition.make(CRISPR_CELL, [engine.Perturbation(a),
                                                          engine.Perturbation(b)])
                      for a, b in CRISPR_PAIRS]
            win.nav.setCurrentRow(2)
            c.queue.clear()
            c.cell_type.setCurrentText(CRISPR_CELL)
            for cond in conds:
                c.add_condition(space.complete(cond))
            c.n_cells.setValue(300)
            done, heat = _Flag(win.generation_finished), _Flag(win.heatmap_updated)
            c.generate_btn.click()
            _wait(app, lambda: (done.hit and heat.hit) or errors.hit, 600, "the CRISPR pairs")
            if errors.hit:
                raise RuntimeError(win.last_error)
            view("sweep")
            shot("13-combination-grid")
            export("13-combination-grid", "sweep")
            view("compare")
            shot("14-double-vs-additive")
            export("14-double-vs-additive", "compare")
            _use(app, win, model, errors)
        # 15-16. the session: saved, the window closed, a new one reopens it
        session_dir = out / "session"
        saved = _Flag(win.session_saved)
        r.tabs.setCurrentIndex(3)
        win.save_session(str(session_dir))
        _wait(app, lambda: saved.hit or errors.hit, 300, "the session to be saved")
        if errors.hit:
            raise RuntimeError(win.last_error)
        win.nav.setCurrentRow(5)
        shot("15-session-saved")
        win.close()
        win = MainWindow()
        win.act_autosave.setChecked(False)
        _place(app, win)
        win.show()
        errors = _Flag(win.error_shown)
        listed = _Flag(win.models_listed)
        _wait(app, lambda: listed.hit, 60, "the model list (new window)")
        opened, heat = _Flag(win.session_opened), _Flag(win.heatmap_updated)
        win.open_session(str(session_dir))
        _wait(app, lambda: (opened.hit and heat.hit) or errors.hit, 300, "the session to open")
        if errors.hit:
            raise RuntimeError(win.last_error)
        view(win.results_page.current_plot_name()) \
            if win.results_page.current_plot_name() not in ("heatmap", "umap", "effects") \
            else None
        shot("16-session-restored")
        _wait(app, lambda: win.session.adata is not None or errors.hit, 180,
              "the session's dataset")
        r = win.results_page
        c = win.compose_page
        space = win.model.space if win.model is not None else space
        if win.model is None or win.model.name != model:
            _use(app, win, model, errors)
            space = win.model.space
        # 17. perturb my cells, 18. train
        win.nav.setCurrentRow(3)
        p = win.perturb_page
        if p.perts.rows and target:
            p.perts.rows[0].target.setText(target)
        shot("17-perturb")
        if p.run_btn.isEnabled():     # perturb your own cells: effects without an interval
            p.n_cells.setValue(min(p.n_cells.value(), 300))
            done, de = _Flag(win.generation_finished), _Flag(win.de_updated)
            p.run_btn.click()
            _wait(app, lambda: (done.hit and de.hit) or errors.hit, 600, "perturbing cells")
            if errors.hit:
                raise RuntimeError(win.last_error)
            r.tabs.setCurrentIndex(2)
            shot("17b-perturb-effects")
        win.nav.setCurrentRow(4)
        shot("18-train")
        # 19. a dataset with other genes: the UMAP shows the model's own reference cells (or
        # the generated cells alone) and says why
        other = data_dir() / OTHER_FILE
        if other.exists():
            loaded = _Flag(win.dataset_loaded)
            win.load_dataset(str(other))
            _wait(app, lambda: loaded.hit or errors.hit, 120, "the other dataset")
            done, umap = _Flag(win.generation_finished), _Flag(win.umap_updated)
            win.nav.setCurrentRow(2)
            if not c.queue.count():
                c.add_current()
            c.generate_btn.click()
            _wait(app, lambda: (done.hit and umap.hit) or errors.hit, 600,
                  "generation and the UMAP beside the other dataset")
            if errors.hit:
                raise RuntimeError(win.last_error)
            r.tabs.setCurrentIndex(1)
            r.color_by.setCurrentText("source")
            shot("19-umap-other-dataset")
    except Exception as e:  # noqa: BLE001
        print(f"screenshot tour failed: {e}", file=sys.stderr)
        shot("error")
        win.close()
        return 1
    win.close()
    print(f"{len(shots)} screenshots in {out}; {len(list(figures.glob('*')))} figures in "
          f"{figures}")
    return 0


def _place(app, win) -> None:
    """1440 x 900 off screen (the README's screenshots); on a real or virtual display (Xvfb at
    1280x800 or 1920x1080) the window fills the screen, as a user's maximised window would."""
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen" or app.primaryScreen() is None:
        win.resize(1440, 900)
        return
    win.setGeometry(app.primaryScreen().availableGeometry())


def _use(app, win, name: str, errors) -> bool:
    """Load the installed model ``name`` in ``win`` (False when it is not installed)."""
    info = next((i for i in win.models_page.infos if i.name == name), None)
    if info is None:
        print(f"model {name} is not installed: skipped", flush=True)
        return False
    if win.session.model_info is not None and win.session.model_info.name == name:
        return True
    got = _Flag(win.model_loaded)
    win.use_model(info)
    _wait(app, lambda: got.hit or errors.hit, 120, f"the model {name}")
    if errors.hit:
        raise RuntimeError(win.last_error)
    return True

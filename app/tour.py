"""``perturb-studio --screenshot-tour DIR``: run the main flow on the shipped Kang model and save a
PNG of each screen (data, model card, composer, progress, heatmap, UMAP, DE table, ...).

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
    win.resize(1440, 900)
    win.show()
    shots: list[Path] = []

    def shot(name: str) -> None:
        for _ in range(5):
            app.processEvents()
            time.sleep(0.02)
        p = out / f"{name}.png"
        win.grab().save(str(p))
        shots.append(p)
        print(f"saved {p}", flush=True)

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
        if r.heat_extras.isEnabled():
            r.heat_extras.setChecked(True)
            shot("05b-heatmap-baselines")
            r.heat_extras.setChecked(False)
        _wait(app, lambda: umap.hit or errors.hit, 300, "the UMAP")
        r.tabs.setCurrentIndex(1)
        r.color_by.setCurrentText("condition")
        shot("06-umap")
        r.gene.setText("ISG15" if "ISG15" in win.experiment.adata.var_names else
                       str(win.experiment.adata.var_names[0]))
        r._gene_entered()
        shot("06b-umap-gene")
        _wait(app, lambda: de.hit, 120, "the DE table")
        r.tabs.setCurrentIndex(2)
        if r.proxy.rowCount():
            r.table.selectRow(0)
        shot("07-de-table")
        if r.compare.count() > 1:
            de2 = _Flag(win.de_updated)
            r.compare.setCurrentIndex(1)
            _wait(app, lambda: de2.hit or errors.hit, 120, "the second effect table")
            shot("07b-effects-second")
        # 8. perturb my cells, 9. train
        win.nav.setCurrentRow(3)
        p = win.perturb_page
        if p.perts.rows and target:
            p.perts.rows[0].target.setText(target)
        shot("08-perturb")
        if p.run_btn.isEnabled():     # perturb your own cells: effects without an interval
            p.n_cells.setValue(min(p.n_cells.value(), 300))
            done, de = _Flag(win.generation_finished), _Flag(win.de_updated)
            p.run_btn.click()
            _wait(app, lambda: (done.hit and de.hit) or errors.hit, 600, "perturbing cells")
            if errors.hit:
                raise RuntimeError(win.last_error)
            r.tabs.setCurrentIndex(2)
            shot("08b-perturb-effects")
        win.nav.setCurrentRow(4)
        shot("09-train")
        # 10. a dataset with other genes: the UMAP shows the model's own reference cells (or
        # the generated cells alone) and says why
        other = data_dir() / OTHER_FILE
        if other.exists():
            loaded = _Flag(win.dataset_loaded)
            win.load_dataset(str(other))
            _wait(app, lambda: loaded.hit or errors.hit, 120, "the other dataset")
            done, umap = _Flag(win.generation_finished), _Flag(win.umap_updated)
            win.nav.setCurrentRow(2)
            c.generate_btn.click()
            _wait(app, lambda: (done.hit and umap.hit) or errors.hit, 600,
                  "generation and the UMAP beside the other dataset")
            if errors.hit:
                raise RuntimeError(win.last_error)
            r.tabs.setCurrentIndex(1)
            r.color_by.setCurrentText("source")
            shot("10-umap-other-dataset")
    except Exception as e:  # noqa: BLE001
        print(f"screenshot tour failed: {e}", file=sys.stderr)
        shot("error")
        win.close()
        return 1
    win.close()
    print(f"{len(shots)} screenshots in {out}")
    return 0

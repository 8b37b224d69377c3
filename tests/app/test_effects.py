"""Issue 10 on the Results page and the composer: effects with their interval, baseline and real
effect instead of p-values between generated cells; the effect plot; the UMAP's real cells;
evidence labels. Hand-made engine results first (no model), then the real window with a small
3-member ensemble (tests/app/conftest.py) and the shipped single-member Kang model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from PySide6.QtCore import Qt

GENES = ["UP1", "DOWN1", "FLAT", "UNSURE"]


def _result(members: int = 3, *, baseline: bool = True, below: bool = False):
    from engine.conditions.spec import Condition, Perturbation
    from engine.effects import Baseline, EffectResult, Evidence, interval_from_members

    cond = Condition.make("T", [Perturbation("A", "CRISPRa")])
    per = np.array([[1.0, -0.8, 0.0, 0.3], [1.1, -0.7, 0.0, -0.2], [0.9, -0.9, 0.0, 0.4]])
    per = per[:members]
    effect, low, high = interval_from_members(per, np.zeros_like(per), 1.0)
    ev = Evidence("measured", "measured in training", {"r2_top100": 0.6},
                  {"name": "mean_shift", "r2_top100": 0.8} if below else None, below,
                  "Measured in training: <b>careful</b>.")
    base = Baseline("mean_shift", np.array([0.5, -0.5, 0.1, 0.0]), "average elsewhere") \
        if baseline else None
    return EffectResult(cond, cond.control(), list(GENES), effect, low, high, per,
                        np.ones(4), np.ones(4), ev, base, n_cells=300)


def _real():
    from engine.effects import RealEffect

    return RealEffect(np.array([0.7, -0.6, np.nan, 0.0]), np.full(4, 0.1), 40, 41)


# -- the table and the plot from hand-made results -----------------------------------------------
def test_effect_frame_has_plain_names_and_no_p_values():
    from app.effect_table import effect_frame

    res, real = _result(), _real()
    df = effect_frame(res, real)
    assert list(df.columns) == [
        "gene", "predicted_log2fc", "interval90_low_log2fc", "interval90_high_log2fc",
        "members_agree_on_sign", "fraction_of_members_with_this_sign",
        "confidence_abs_effect_over_interval_width", "baseline_mean_shift_log2fc",
        "real_log2fc", "real_log2fc_standard_error", "predicted_mean_log1p_condition",
        "predicted_mean_log1p_control"]
    assert not any("p" == c or "pval" in c or "padj" in c or "mean_a" in c for c in df.columns)
    # largest |effect| first, log2 units, the real effect aligned by gene
    assert list(df["gene"][:2]) == ["UP1", "DOWN1"]
    row = df.set_index("gene").loc["UP1"]
    assert row["predicted_log2fc"] == pytest.approx(1.0 / math.log(2))
    assert row["real_log2fc"] == pytest.approx(0.7 / math.log(2))
    assert row["baseline_mean_shift_log2fc"] == pytest.approx(0.5 / math.log(2))
    assert row["interval90_low_log2fc"] < row["predicted_log2fc"] < row["interval90_high_log2fc"]
    assert row["members_agree_on_sign"] is True or row["members_agree_on_sign"] == True  # noqa: E712
    assert df.set_index("gene").loc["UNSURE", "members_agree_on_sign"] == False  # noqa: E712


def test_columns_and_tooltips_with_an_ensemble_baseline_and_real_cells():
    from app.effect_table import effect_columns

    cols = effect_columns(_result(), _real(), data_name="mine.h5ad")
    heads = [c.header for c in cols]
    assert heads == ["gene", "effect (log2 FC)", "90% interval", "members agree", "confidence",
                     "mean shift baseline", "real (log2 FC)"]
    tips = {c.header: c.tooltip for c in cols}
    assert "3 members" in tips["90% interval"]
    assert "average elsewhere" in tips["mean shift baseline"]
    assert "mine.h5ad" in tips["real (log2 FC)"] and "40 cells" in tips["real (log2 FC)"]
    assert all(len(c.tooltip) > 10 for c in cols)


def test_single_member_has_no_interval_columns_and_says_so():
    from app.effect_table import SINGLE_MEMBER, effect_columns, effect_frame, effect_notes

    res = _result(members=1)
    assert not res.has_interval
    heads = [c.header for c in effect_columns(res, None)]
    assert heads == ["gene", "effect (log2 FC)", "mean shift baseline"]
    df = effect_frame(res)
    assert df["members_agree_on_sign"].isna().all()
    assert df["interval90_low_log2fc"].isna().all()
    notes = effect_notes(res)
    assert notes[0] == SINGLE_MEMBER and "single member: no uncertainty estimate" in notes[0]


def test_effect_plot_is_effect_vs_confidence_never_a_p_value():
    from app.effect_table import CONFIDENT, effect_plot

    res = _result()
    spec = effect_plot(res, title="T | A")
    assert spec.message == ""
    assert spec.xlabel == "predicted effect (log2 fold change)"
    assert spec.ylabel == "confidence: |effect| / 90% interval width"
    assert "p" not in spec.ylabel.split() and "log10" not in spec.ylabel
    np.testing.assert_allclose(spec.x, res.effect / math.log(2))
    width = res.high - res.low
    np.testing.assert_allclose(spec.y[:2], np.abs(res.effect[:2]) / width[:2])
    assert spec.hlines == (CONFIDENT,)
    cls = dict(zip(GENES, spec.classes, strict=True))
    assert cls["UP1"] == "up" and cls["DOWN1"] == "down"
    assert cls["UNSURE"] == "ns" and cls["FLAT"] == "ns"   # members disagree / no change


def test_effect_plot_single_member_vs_baseline_real_or_a_message():
    from app.effect_table import effect_plot

    spec = effect_plot(_result(members=1))
    assert spec.diagonal and spec.message == ""
    assert spec.xlabel == "mean shift baseline's effect (log2 fold change)"
    assert spec.ylabel == "predicted effect (log2 fold change)"
    np.testing.assert_allclose(spec.x, np.array([0.5, -0.5, 0.1, 0.0]) / math.log(2))
    spec = effect_plot(_result(members=1, baseline=False), _real())
    assert spec.xlabel.startswith("real effect")
    assert spec.classes[2] == "ns"           # the gene missing from the real data
    spec = effect_plot(_result(members=1, baseline=False))
    assert spec.x is None and "single member: no uncertainty estimate" in spec.message


def test_table_model_formats_sorts_missing_last_and_explains_headers(qtbot):
    from app.effect_table import effect_columns, effect_frame
    from app.panels.effect_model import DASH, EffectTableModel

    res, real = _result(), _real()
    m = EffectTableModel()
    m.set_frame(effect_frame(res, real), effect_columns(res, real))
    heads = [m.headerData(i, Qt.Orientation.Horizontal) for i in range(m.columnCount())]
    assert "90% interval" in heads and "p-value" not in heads
    tip = m.headerData(heads.index("members agree"), Qt.Orientation.Horizontal,
                       Qt.ItemDataRole.ToolTipRole)
    assert "same direction" in tip
    iv = m.column_of("interval90_low_log2fc")
    assert " – " in m.index(0, iv).data()
    assert m.index(0, m.column_of("members_agree_on_sign")).data() == "yes"
    real_col = m.column_of("real_log2fc")
    flat = [m.index(r, 0).data() for r in range(m.rowCount())].index("FLAT")
    assert m.index(flat, real_col).data() == DASH
    for order in (Qt.SortOrder.AscendingOrder, Qt.SortOrder.DescendingOrder):
        m.sort(real_col, order)
        assert m.index(m.rowCount() - 1, 0).data() == "FLAT"   # missing last either way
    m.sort(real_col, Qt.SortOrder.DescendingOrder)
    assert m.index(0, 0).data() == "UP1"


def test_results_page_shows_evidence_in_a_warning_colour_when_below_baseline(qtbot):
    from app.effect_table import EffectView, effect_columns, effect_frame, effect_plot
    from app.messages import DiffExpr
    from app.panels.results import WARN, ResultsPanel

    p = ResultsPanel()
    qtbot.addWidget(p)
    for below in (False, True):
        res = _result(below=below)
        view = EffectView("T | A", effect_frame(res), effect_columns(res), effect_plot(res),
                          "T | A vs its control", res.evidence, 3, ("three members",), res)
        p.set_de(DiffExpr("T | A", view.frame, view))
        text = p.evidence.text()
        assert "measured in training" in text and "&lt;b&gt;careful&lt;/b&gt;" in text
        assert (WARN in text) is below and ("⚠" in text) is below
    assert "held-out R2 0.60 vs mean shift baseline 0.80" in p.evidence.text()
    assert p.volcano.ylabel() == "confidence: |effect| / 90% interval width"
    assert p.de_model.rowCount() == 4 and "three members" in p.de_note.text()


# -- the UMAP's real cells ------------------------------------------------------------------------
class _FakeModel:
    def __init__(self, n_ref: int) -> None:
        import anndata as ad

        self.genes = [f"G{i}" for i in range(500)]
        self.n_reference_cells = n_ref
        self._ref = ad.AnnData(np.zeros((n_ref, 500), np.float32)) if n_ref else None

    def gene_mapping(self, adata):
        import engine

        return engine.PerturbModel.gene_mapping(self, adata)

    def reference_cells(self):
        return self._ref


def _dataset(genes):
    import anndata as ad

    return ad.AnnData(np.zeros((5, len(genes)), np.float32),
                      var=__import__("pandas").DataFrame(index=genes))


def test_umap_uses_the_open_dataset_only_when_its_genes_match():
    from app.umap_table import choose_real_cells

    schema = SimpleNamespace(cell_type_key="ct", perturbation_key="p")
    model = _FakeModel(2000)
    good = _dataset([f"G{i}" for i in range(400)] + ["X"])       # 80% of the model's genes
    c = choose_real_cells(model, good, schema, data_name="mine.h5ad")
    assert c.kind == "dataset" and c.adata is good and c.perturbation_key == "p"
    assert c.status(100, 5) == "100 generated cells with 5 real cells from mine.h5ad."
    bad = _dataset([f"G{i}" for i in range(51)] + [f"Y{i}" for i in range(900)])
    c = choose_real_cells(model, bad, schema, data_name="pbmc.h5ad")
    assert c.kind == "reference" and c.adata is model._ref
    assert c.perturbation_key == "perturbation" and c.cell_type_key == "cell_type"
    s = c.status(3000, 2000)
    assert "model's own 2,000 reference cells" in s and "pbmc.h5ad shares only 51 of 500" in s
    c = choose_real_cells(model, None, None)
    assert c.kind == "reference" and "no dataset is open" in c.status(10, 2000)
    c = choose_real_cells(_FakeModel(0), bad, schema, data_name="pbmc.h5ad")
    assert c.kind == "none" and c.adata is None
    s = c.status(3000, 0)
    assert s.startswith("3,000 generated cells alone") and "51 of 500" in s
    assert "no reference cells" in s


def test_notes_say_the_cards_coverage_and_survive_malformed_cards():
    from app.effect_table import coverage_text, effect_notes, score_text

    card = {"evidence": {"measured": {"coverage": {"coverage": 0.81,
                                                   "coverage_noise_aware": 0.9}}}}
    notes = effect_notes(_result(), card=card)
    assert any("held the real effect for 90% of the top-100 changed genes" in n and "81%" in n
               for n in notes)
    for bad in (None, [], {"evidence": []}, {"evidence": {"measured": {"coverage": "x"}}},
                {"evidence": {"measured": {"coverage": {"coverage": "NaN?"}}}}):
        assert coverage_text(bad, "measured") == ""
    ev = SimpleNamespace(score={"r2_top100": "abc"}, baseline_score=None)
    assert score_text(ev) == "not scored on held-out cells"
    ev = SimpleNamespace(score={"r2_top100": 0.5}, baseline_score={"name": "control",
                                                                    "r2_top100": 0.1})
    assert score_text(ev) == "held-out R2 0.50 vs no-change baseline 0.10"
    ev = SimpleNamespace(score={"r2_top100": 0.87, "n": 56}, baseline_score={
        "name": "additive", "r2_top100": 0.92, "n": 3, "model_r2_on_same": 0.96})
    assert score_text(ev) == ("held-out R2 0.87; on the 3 conditions the additive baseline "
                              "covers, model 0.96 vs baseline 0.92")
    ev = SimpleNamespace(score={"r2_top100": 0.9, "r2_top100_nested": 0.86},
                         baseline_score={"name": "mean_shift", "r2_top100": 0.72})
    assert score_text(ev).startswith("held-out R2 0.86 (0.90 on the folds its rule was chosen")


def test_model_card_opens_with_plain_words_and_the_evidence_table():
    from PySide6.QtGui import QTextDocument

    from app.panels.models import safe_card_html
    from engine.conditions.spec import ConditionSpace

    card = {"members": 5, "plain": ["For conditions seen in training, <it> matches.",
                                    "Prefer the baseline for new cell types."],
            "evidence": {
                "measured": {"model": {"r2_top100": 0.93}, "baseline": {
                    "name": "mean_shift", "r2_top100": 0.6}, "coverage": {
                    "coverage": 0.8, "coverage_noise_aware": 0.9}, "source": "card split"},
                "new_cell_type": {"model": {"r2_top100": 0.65}, "baseline": {
                    "name": "mean_shift", "r2_top100": 0.79}, "source": "Kang <LOO>"},
                "beyond_evidence": {"model": {"r2_top100": "high"}},    # skipped
                "odd": [1, 2]}}                                          # skipped
    info = SimpleNamespace(name="m", path="/x/m", source="shipped", card=card,
                           space=ConditionSpace(), n_genes=3, backbone="mlp")
    html = safe_card_html(info)
    doc = QTextDocument()
    doc.setHtml(html)
    text = doc.toPlainText()
    assert text.index("<it> matches") < text.index("What it conditions on")
    assert "ensemble of 5 members" in text
    assert "How far to trust each kind of condition" in text
    assert "measured in training" in text and "0.93" in text and "90% (80% raw)" in text
    assert "⚠ new cell type for this perturbation" in text and "Kang <LOO>" in text
    assert "#a15c00" in html and html.count("#a15c00") == 1    # only the row below baseline
    assert "beyond the training evidence" not in text
    single = dict(card, members=1, evidence=None)
    text = safe_card_html(SimpleNamespace(**{**info.__dict__, "card": single}))
    assert "a single member (no uncertainty estimate)" in text
    # a rule chosen on the scored folds: the nested figure leads, the in-sample one beside it,
    # and the warning colour follows the lower of the two
    nested = dict(card, evidence={"new_cell_type": {
        "model": {"r2_top100": 0.90, "r2_top100_nested": 0.70},
        "baseline": {"name": "mean_shift", "r2_top100": 0.72}, "source": "Kang LOO"}})
    html = safe_card_html(SimpleNamespace(**{**info.__dict__, "card": nested}))
    doc.setHtml(html)
    text = doc.toPlainText()
    assert "0.70 (0.90 on the folds its rule was chosen on)" in text
    assert "⚠ new cell type for this perturbation" in text
    # a metric the card lists as below the baseline flags the row, as the results page does
    listed = dict(card, evidence={"new_cell_type": {
        "model": {"r2_top100": 0.91, "metrics_below_baseline": ["pearson_delta_top100_split"]},
        "baseline": {"name": "mean_shift", "r2_top100": 0.83}, "source": "CRISPR held out"}})
    doc.setHtml(safe_card_html(SimpleNamespace(**{**info.__dict__, "card": listed})))
    assert "⚠ new cell type for this perturbation" in doc.toPlainText()
    assert "below the baseline on Pearson delta with control cells not shared" in \
        doc.toPlainText()
    # a baseline that covers 3 of the 56 conditions is compared on those 3
    partial = dict(card, evidence={"measured": {
        "model": {"r2_top100": 0.87, "n": 56},
        "baseline": {"name": "additive", "r2_top100": 0.92, "n": 3,
                     "model_on_same": {"r2_top100": 0.96}}, "source": "card split"}})
    html = safe_card_html(SimpleNamespace(**{**info.__dict__, "card": partial}))
    doc.setHtml(html)
    assert "additive 0.92 (on 3 conditions; model 0.96 there)" in doc.toPlainText()
    assert "#a15c00" not in html


def test_effect_view_falls_back_to_the_change_of_the_mean_and_says_why():
    """When the engine cannot compute the effects (here: the model refuses the condition), the
    DE tab still shows the change of the mean, with no p-value, and says why."""
    from app.effect_table import effect_view
    from app.experiment import Experiment
    from engine.conditions.spec import Condition, Perturbation
    from engine.errors import DataError
    from tests.app.conftest import make_synthetic

    a = make_synthetic(n_per=10)
    a = a[a.obs["cell_type"] == "T"].copy()
    pert = a.obs["perturbation"].astype(str)
    a.obs["condition"] = np.where(pert == "control", "T | control", "T | " + pert)
    a.obs["is_control"] = (pert == "control").to_numpy()
    cond = Condition.make("T", [Perturbation("A")])
    exp = Experiment.from_generated(a, model_name="m", conditions=[])
    exp.conditions = {"T | A": cond}

    def refuse(_c):
        raise DataError("the model was trained without <that>")

    model = SimpleNamespace(check_condition=refuse, evidence=lambda c: None)
    view = effect_view(model, exp, "T | A")
    assert view.result is None and view.members == 0
    assert "No effect with an interval: the model was trained without <that>." in view.notes[0]
    assert list(view.frame.columns) == ["gene", "change_log2fc", "mean_log1p_condition",
                                        "mean_log1p_control"]
    assert view.plot.message and "its generated control" in view.comparison
    up = view.frame.set_index("gene").loc[[f"G{i}" for i in range(10, 20)], "change_log2fc"]
    assert (up > 1).all()

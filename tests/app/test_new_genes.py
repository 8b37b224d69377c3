"""The composer accepts a gene never perturbed in training when the model has gene-set target
priors: it offers the priors' genes after the trained targets, marks the condition, and queues
it with the new-gene evidence; a gene the priors lack is refused with the reason."""

from __future__ import annotations

import pytest

from tests.engine.conftest import TINY
from tests.engine.test_target_priors import _gene_data


@pytest.fixture(scope="module")
def prior_model():
    from engine import Schema, train_model

    schema = Schema(cell_type_key="cell_type", perturbation_key="perturbation",
                    perturbation_type_key="ptype", control_label="control")
    return train_model(_gene_data(), schema, None, seed=0, device="cpu", **TINY)


def test_composer_accepts_a_never_perturbed_gene(qtbot, prior_model):
    from app.panels.composer import EVIDENCE_ROLE, ComposerPanel

    c = ComposerPanel()
    qtbot.addWidget(c)
    c.set_model(prior_model)
    row = c.perts.rows[0]
    words = row.words.stringList()
    assert row.target.completer().model() is row.words
    assert words[:2] == ["IRF1", "STAT1"]                 # the trained targets first
    assert "STAT2" in words and len(words) > 10_000       # then the genes of the priors
    assert "other genes of the gene-set priors" in c.perts.note.text()
    row.target.setText("STAT2")
    assert "STAT2: never perturbed in training" in row.status.text()      # a mark, no error
    assert "never perturbed in training: predicted from gene-set priors" in c.check.text()
    assert c.add_btn.isEnabled()
    c.add_current()
    ev = c.queue.item(0).data(EVIDENCE_ROLE)
    assert ev.kind == "new_gene"
    assert "never perturbed in training" in c.queue.item(0).text()
    # an alias is read as the priors' symbol once the entry is complete
    row.target.setText("MARCH8")
    row.target.editingFinished.emit()
    assert row.target.text() == "MARCHF8"
    row.target.setText("NOTAGENE1")
    assert "not in the gene-set priors" in row.status.text()
    assert "✖" in c.check.text()
    assert not c.add_btn.isEnabled()

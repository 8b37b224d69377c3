"""Dose conditioning on SIMULATED data with a known dose-response (no real drug + dose data is
available to us): the effect must grow with dose, and an unseen dose must land in between."""

from __future__ import annotations

import pytest

from engine import Condition, Perturbation, Schema, train_model

from .conftest import TINY, make_synthetic


@pytest.fixture(scope="module")
def dose_model(tmp_path_factory):
    data = make_synthetic(seed=1, n_per=50, dose=True)
    schema = Schema(cell_type_key="cell_type", perturbation_key="perturbation",
                    perturbation_type_key="ptype", dose_key="dose", control_label="control")
    return train_model(data, schema, tmp_path_factory.mktemp("dose") / "m", seed=0,
                       device="cpu", **{**TINY, "flow_steps": 500})


def effect(model, dose: float) -> float:
    c = Condition.make("T", [Perturbation("A", "CRISPRa", dose)])
    x = model.generate(c, 400, seed=0).X.toarray()
    ctrl = model.generate(Condition.make("T"), 400, seed=0).X.toarray()
    return float(x[:, 10:20].mean() - ctrl[:, 10:20].mean())


def test_dose_response_is_monotone_and_interpolates(dose_model):
    assert dose_model.space.has_dose and dose_model.space.dose_range == (0.1, 10.0)
    e = {d: effect(dose_model, d) for d in (0.1, 1.0, 3.0, 10.0)}
    assert e[0.1] < e[1.0] < e[10.0], e
    assert e[1.0] - 0.1 < e[3.0] < e[10.0] + 0.1, e      # unseen dose 3 lands in between
    assert e[10.0] > 0.5


def test_dose_appears_in_obs(dose_model):
    a = dose_model.generate(Condition.make("T", [Perturbation("A", "CRISPRa", 2.5)]), 5)
    assert set(a.obs["dose"]) == {"2.5"}

"""Off-screen screenshot of the Results page's "Pathway tokens" tab for a saved model.

    QT_QPA_PLATFORM=offscreen python build_scripts/pathway_view_shot.py MODEL_DIR CELL_TYPE \\
        PERTURBATION OUT.png [CONTEXT] [--kang]

e.g. a fold of ``build_scripts/kang_loo.py --backbone pathway-transformer --save-models DIR``:
``DIR/CD4T CD4T stimulated shot.png organism=human,tissue=blood``. Prints the view's note and
the ranked changes. With ``--kang``, also the real change of each token's set in the Kang
file (mean log normalised expression of the set's model genes, the cell type's stimulated
minus control cells: for a fold's model, cells it never saw stimulated), beside the model's.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import torch
    from PySide6.QtWidgets import QApplication

    argv = list(sys.argv[1:] if argv is None else argv)
    real = "--kang" in argv
    argv = [a for a in argv if a != "--kang"]
    model_dir, ct, pert, out = argv[:4]
    context = argv[4] if len(argv) > 4 else None
    torch.set_num_threads(1)
    app = QApplication.instance() or QApplication([])
    from app import figures
    from app.experiment import Experiment
    from app.panels.results import ResultsPanel
    from app.views import KINDS, build_view
    from engine import Condition, PerturbModel

    model = PerturbModel.load(model_dir, device="cpu")
    cond = Condition.parse(ct, pert, context=context)
    cells = model.generate_many([cond], 100, seed=0)
    exp = Experiment.from_generated(cells, model_name=model.name, conditions=[cond], model=model)
    panel = ResultsPanel()
    panel.resize(1100, 800)
    panel.set_experiment(exp)
    panel.show()
    panel.tabs.setCurrentIndex(3 + KINDS.index("pathways"))
    app.processEvents()
    res = build_view("pathways", exp, {"label": exp.labels[0]})
    res.png = figures.render_png(res.figure, dpi=90)
    panel.set_view("pathways", res)
    for _ in range(5):
        app.processEvents()
    panel.grab().save(out)
    print(res.note)
    truth = real_changes(model, ct, pert) if real else {}
    for name, change, sd in res.data.get("ranked", []):
        print(f"{change:+.3f} (sd {sd:.3f})  {name}"
              + (f"   real {truth[name]:+.3f}" if name in truth else ""))
    if truth:
        import numpy as np

        names = res.data["names"]
        r = np.corrcoef(res.data["change"], [truth[n] for n in names])[0, 1]
        print(f"Pearson r of model vs real changes over the {len(names)} tokens: {r:.3f}")
    return 0


def real_changes(model, ct: str, pert: str) -> dict:
    """Set name -> real change of the set's mean log normalised expression in the Kang file."""

    from build_scripts.train_models import kang
    from engine.analysis import log_normalized
    from engine.genesets import collections

    adata, _schema, _card = kang()
    a = adata[:, [g for g in model.genes if g in set(adata.var_names)]]
    x = log_normalized(a).toarray()
    obs = adata.obs
    cell = (obs["cell_type"].astype(str) == ct).to_numpy()
    stim = cell & (obs["condition"].astype(str) == pert).to_numpy()
    ctrl = cell & (obs["condition"].astype(str) == "control").to_numpy()
    col = {g: i for i, g in enumerate(a.var_names)}
    genes = {s.name: s.genes for sets in collections().values() for s in sets}
    out = {}
    for s in model.config["pathway_tokens"]["sets"]:
        idx = [col[g] for g in genes[s["name"]] if g in col]
        out[s["name"]] = float(x[stim][:, idx].mean() - x[ctrl][:, idx].mean())
    return out


if __name__ == "__main__":
    sys.exit(main())

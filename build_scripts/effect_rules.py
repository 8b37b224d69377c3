"""Which latent effect transfers stimulation to a Kang cell type never seen stimulated?
(issue 14; the exploratory screen behind engine.anchor's ``magnitude="mean_norm"``)

For every fold model (``kang_loo.py --members 1 --guidance 2 --save-models FOLDS``), the
held-out type's real control cells are encoded, shifted by each rule's latent effect and
decoded (NB means: no sampling, no flow), then scored against the real held-out stimulated
cells. The other six types' effects (stimulated mean minus control mean, VAE means) are
combined by:

- ``uniform`` / ``kernel<tau>``: their plain / kernel-weighted mean (weights from the distance
  between control means, as engine.anchor);
- ``ridge<lam>``: a linear map from control mean to effect (ridge, lam x the mean kernel
  diagonal);
- ``normridge<lam>``: the uniform direction at a length regressed (ridge) on the control mean;
- ``A*B``: A's direction at B's length; ``knorm`` / ``unorm``: the kernel-weighted / plain mean
  of the effects' own lengths; ``udir``: the mean of unit directions;
- ``oracle_true``: the real held-out effect; ``uniform_best_scale``: the uniform mean at the
  best of five scales chosen on the held-out cells (an oracle, for reference).

Per rule and cell type: R2 top-100, Pearson delta top-100, cosine to the real effect, length
over the real effect's.

    python build_scripts/effect_rules.py FOLDS        (output: docs/results/effect_rules.txt)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CELL_TYPES = ["B", "CD14+Mono", "CD4T", "CD8T", "Dendritic", "FCGR3A+Mono", "NK"]
SCALES = (0.75, 1.0, 1.25, 1.5, 2.0)


def unit(v):
    import numpy as np

    return v / np.linalg.norm(v)


def kernel(d2, tau):
    import numpy as np

    w = np.exp(-(d2 - d2.min()) / (np.median(d2) * tau))
    return w / w.sum()


def ridge(K, y, lam):
    """Dual ridge coefficients for centred targets ``y`` on the centred Gram matrix ``K``."""
    import numpy as np

    return np.linalg.solve(K + lam * np.trace(K) / len(K) * np.eye(len(K)), y)


def rules_for(C, D, ch, true_d) -> dict:
    """Each rule's latent effect for the held-out type (control mean ``ch``) from the other
    types' control means ``C`` and effects ``D``."""
    import numpy as np

    nrm = np.linalg.norm(D, axis=1)
    d2 = ((C - ch) ** 2).sum(1)
    w5, w25 = kernel(d2, 0.5), kernel(d2, 0.25)
    Cc, Dc = C - C.mean(0), D - D.mean(0)
    K = Cc @ Cc.T
    x = (ch - C.mean(0)) @ Cc.T                     # the held-out type against the others
    r = {"uniform": D.mean(0), "kernel0.5": w5 @ D, "kernel0.25": w25 @ D}
    for lam in (0.1, 0.3, 1.0, 3.0):
        r[f"ridge{lam}"] = D.mean(0) + x @ ridge(K, Dc, lam)
    lengths = {lam: nrm.mean() + x @ ridge(K, nrm - nrm.mean(), lam) for lam in (0.3, 1.0)}
    for lam, length in lengths.items():
        r[f"normridge{lam}"] = unit(D.mean(0)) * length
    for lam, length in lengths.items():
        r[f"ridge0.3*nr{lam}"] = unit(r["ridge0.3"]) * length
        r[f"kernel0.5*nr{lam}"] = unit(r["kernel0.5"]) * length
    r["kernel0.5*knorm"] = unit(r["kernel0.5"]) * (w5 @ nrm)
    U = D / nrm[:, None]
    r["udir*unorm"] = unit(U.mean(0)) * nrm.mean()
    r["uniform*unorm"] = unit(D.mean(0)) * nrm.mean()
    r["kudir*knorm"] = unit(w5 @ U) * (w5 @ nrm)
    r["kernel0.25*knorm0.25"] = unit(r["kernel0.25"]) * (w25 @ nrm)
    r["oracle_true"] = true_d
    return r


def main(argv=None) -> int:
    import numpy as np
    import scipy.sparse as sp
    import torch

    from build_scripts.train_models import kang, kang_fold_parser, kang_labels, load_kang_fold
    from engine.data.io import get_counts
    from engine.evaluate import fit_pca, lognorm, score

    p = kang_fold_parser(__doc__, cell_types=False)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    adata, _, _ = kang()
    ctype, stim = kang_labels(adata)
    res = {}
    for ct in CELL_TYPES:
        model = load_kang_fold(args.folds, ct)
        ae = model.autoencoder
        counts = get_counts(adata)[0].tocsr()[:, model.gene_mapping(adata).index]
        counts = counts.astype(np.float32)
        with torch.no_grad():
            Z = torch.cat([ae.encode(torch.as_tensor(counts[s:s + 4096].toarray()))[0]
                           for s in range(0, counts.shape[0], 4096)]).numpy()
        lib = np.log(np.maximum(np.asarray(counts.sum(1)).ravel(), 1))[:, None]
        held, ctrl = (ctype == ct) & stim, (ctype == ct) & ~stim
        X_t, X_c = lognorm(counts[held]), lognorm(counts[ctrl])
        degs = np.argsort(-np.abs(X_t.mean(0) - X_c.mean(0)))[:100]
        pca = fit_pca(counts)
        others = [o for o in CELL_TYPES if o != ct]
        C = np.stack([Z[(ctype == o) & ~stim].mean(0) for o in others])
        D = np.stack([Z[(ctype == o) & stim].mean(0) for o in others]) - C
        ch = Z[ctrl].mean(0)
        true_d = Z[held].mean(0) - ch

        def decoded(shift, ctrl=ctrl, X_t=X_t, X_c=X_c, degs=degs, pca=pca, ae=ae, Z=Z,
                    lib=lib):
            with torch.no_grad():
                mu = ae.nb_params(torch.as_tensor((Z[ctrl] + shift).astype(np.float32)),
                                  torch.as_tensor(lib[ctrl], dtype=torch.float32))[0]
            s = score(lognorm(sp.csr_matrix(mu.exp().numpy())), X_t, X_c, degs, pca)
            return s["r2_top100"], s["pearson_delta_top100"]

        out = {}
        for name, v in rules_for(C, D, ch, true_d).items():
            out[name] = (*decoded(v), float(unit(v) @ unit(true_d)),
                         float(np.linalg.norm(v) / np.linalg.norm(true_d)))
        scale, best = max(((s, decoded(s * D.mean(0))) for s in SCALES),
                          key=lambda t: t[1][0])
        out["uniform_best_scale"] = (*best, float("nan"), scale)
        res[ct] = out
        print(ct + "  (rule: R2 top-100, PD top-100, cosine to the real effect, length / "
              "real; uniform_best_scale: the scale instead of the length)")
        for name, v in out.items():
            print(f"  {name:<22} " + " ".join(f"{x:.3f}" for x in v))
        sys.stdout.flush()
    print("\nmeans over the 7 folds, then R2 top-100 per type (" + " ".join(CELL_TYPES) + ")")
    for name in res[CELL_TYPES[0]]:
        print(f"{name:<22} R2 {np.mean([res[c][name][0] for c in CELL_TYPES]):.3f} "
              f"PD {np.mean([res[c][name][1] for c in CELL_TYPES]):.3f}   "
              + " ".join(f"{res[c][name][0]:.3f}" for c in CELL_TYPES))
    return 0


if __name__ == "__main__":
    sys.exit(main())

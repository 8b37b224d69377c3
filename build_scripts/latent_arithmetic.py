"""Does the autoencoder's latent space transfer an effect to a cell type never seen with it?
(issue 14; the reason for engine.anchor)

For each Kang fold model (trained without one cell type's stimulated cells), scores against the
real held-out stimulated cells, on the decoder's NB means (no sampling):

- reconstruction: the real held-out stimulated cells encoded and decoded;
- latent arithmetic: the type's real control cells encoded, plus the mean latent effect of
  stimulation in the other six types (uniform), decoded;
- the same with the effect's length kept (engine.anchor ``magnitude="mean_norm"``: the mean
  effect's direction at the mean of the six effects' own lengths).

Also printed: the length of each shift over the length of the real held-out effect (the real
stimulated cells' mean latent minus the controls'). A mean of effects that point different ways
is shorter than they are.

    python build_scripts/kang_loo.py --members 1 --guidance 2 --save-models FOLDS
    python build_scripts/latent_arithmetic.py FOLDS [--cell-types CD4T B ...]

Writes nothing; the output is kept in docs/results/latent_arithmetic.txt.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CELL_TYPES = ["B", "CD14+Mono", "CD4T", "CD8T", "Dendritic", "FCGR3A+Mono", "NK"]


def one_fold(ae, counts, ctype, stim, ct):
    """(reconstruction scores, latent-arithmetic scores, length-kept scores, length ratios of
    the two shifts to the real effect) for held-out cell type ``ct``."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    from engine.evaluate import fit_pca, lognorm, score

    held, ctrl = (ctype == ct) & stim, (ctype == ct) & ~stim
    X_t, X_c = lognorm(counts[held]), lognorm(counts[ctrl])
    degs = np.argsort(-np.abs(X_t.mean(0) - X_c.mean(0)))[:100]
    pca = fit_pca(counts)

    def encode(mask):
        with torch.no_grad():
            x = torch.as_tensor(counts[mask].toarray())
            return ae.encode(x)[0], torch.log(x.sum(1, keepdim=True).clamp_min(1))

    def decoded(z, lib):
        with torch.no_grad():
            mu = ae.nb_params(z, lib)[0].exp().numpy()
        return score(lognorm(sp.csr_matrix(mu)), X_t, X_c, degs, pca)

    effects = torch.stack([encode((ctype == o) & stim)[0].mean(0) -
                           encode((ctype == o) & ~stim)[0].mean(0)
                           for o in sorted(set(ctype) - {ct})])
    shift = effects.mean(0)
    kept = shift * (effects.norm(dim=1).mean() / shift.norm())
    zc, lc = encode(ctrl)
    zh = encode(held)
    real = (zh[0].mean(0) - zc.mean(0)).norm()
    return (decoded(*zh), decoded(zc + shift, lc), decoded(zc + kept, lc),
            (float(shift.norm() / real), float(kept.norm() / real)))


def main(argv=None) -> int:
    import numpy as np
    import torch

    from build_scripts.train_models import kang, kang_labels, load_kang_fold
    from engine.data.io import get_counts

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("folds", type=Path)
    p.add_argument("--cell-types", nargs="*", default=CELL_TYPES)
    p.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", 1)))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    adata, _, _ = kang()
    ctype, stim = kang_labels(adata)
    print(f"{'cell type':<12} {'reconstruction R2 / PD':>24} {'latent arithmetic R2 / PD':>27}"
          f" {'length kept R2 / PD':>21} {'length / real: mean, kept':>27}")
    for ct in args.cell_types:
        model = load_kang_fold(args.folds, ct)
        counts = get_counts(adata)[0].tocsr()[:, model.gene_mapping(adata).index]
        rec, ari, kept, (lm, lk) = one_fold(model.autoencoder, counts.astype(np.float32),
                                            ctype, stim, ct)
        print(f"{ct:<12} {rec['r2_top100']:>14.3f} / {rec['pearson_delta_top100']:.3f} "
              f"{ari['r2_top100']:>17.3f} / {ari['pearson_delta_top100']:.3f} "
              f"{kept['r2_top100']:>11.3f} / {kept['pearson_delta_top100']:.3f} "
              f"{lm:>17.2f}, {lk:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

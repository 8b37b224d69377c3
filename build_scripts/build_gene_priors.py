"""Build the gene-set prior resource: a fixed embedding per human gene symbol, from gene sets.

    python build_scripts/build_gene_priors.py [--genesets DIR] [--out resources/priors]
        [--dims 64] [--evaluate docs/results/gene_priors.txt] [--orgdb org.Hs.eg.sqlite]

Reads the GMT files of ``../shared/genesets`` (or ``$PERTURB_STUDIO_GENESETS``, or
``--genesets``): MSigDB Hallmark v7.5.1, Reactome, GO biological process / molecular function /
cellular component (annotations propagated up the ontology, sets of 10-500 genes) and
WikiPathways. All of them allow redistribution with attribution (CC BY 4.0; WikiPathways CC0),
so every one is used and shipped, derived, with the citations (resources/priors/README.md).

The embedding: a gene x set membership matrix M (one column per set, a gene is in a set or not),
each column weighted by ``1 / sqrt(set size)`` (a set's genes share a unit of weight, so a
500-gene GO term does not outweigh a 15-gene pathway) and each source's columns by
``1 / sqrt(number of sets in the source) x sqrt(mean number of sets per source)`` raised to
``--source-balance`` (0: no balancing; 1: every source weighs the same; default 0.5), then a
truncated SVD, M ~ U S V^T, and a gene's embedding is its row of U S (``--dims`` columns).
Deterministic: ARPACK started from a fixed vector, components ordered by singular value and
sign-fixed (the largest-magnitude gene loading of each component is positive), written as
float16 in a fixed order (genes sorted), so building twice gives the same bytes.

Writes ``gene_priors.safetensors`` (``embedding`` float16 genes x dims; memberships as CSR:
``member_indptr`` int32, ``member_indices`` int16 set numbers; ``singular_values`` float32) and
``gene_priors.json`` (genes, sets with source / id / name / size, sources with version, licence,
citation and the input file's sha256, build parameters). With ``--orgdb`` (or
``$PERTURB_STUDIO_ORGDB``): the SQLite file of Bioconductor's org.Hs.eg.db 3.16, as the Debian
package ships it (``apt-get download r-bioc-org.hs.eg.db``, ``dpkg-deb -x``, then
``usr/lib/R/site-library/org.Hs.eg.db/extdata/org.Hs.eg.sqlite``), it also writes
``gene_aliases.json.gz``: alias symbols (MARCH8 -> MARCHF8) and Ensembl gene ids that name
exactly one gene of the priors (an alias that is itself a symbol of the priors is left out).
``--evaluate`` also measures, for each
source, how well an embedding built without that source ranks gene pairs that share one of its
sets above random pairs (AUC), the check behind the weighting.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GENESETS = Path(os.environ.get("PERTURB_STUDIO_GENESETS", ROOT / ".." / "shared" /
                                       "genesets"))
OUT = ROOT / "resources" / "priors"

GO_VERSION = ("GO release 2022-07-01 (Bioconductor 3.16 GO.db), gene symbols from org.Hs.eg.db "
              "2022-09-12; annotations propagated up the ontology, evidence code ND dropped, "
              "sets of 10-500 genes")
GO_CITATION = ("Ashburner M, et al. Gene Ontology: tool for the unification of biology. Nat "
               "Genet 25:25-29 (2000). doi:10.1038/75556; The Gene Ontology Consortium. The Gene "
               "Ontology knowledgebase in 2023. Genetics 224(1):iyad031 (2023). "
               "doi:10.1093/genetics/iyad031")
CC_BY = "CC BY 4.0"

# source key -> (file, version, licence, citation); the order is the order of the sets
SOURCES: dict[str, tuple[str, str, str, str]] = {
    "hallmark": ("h.all.v7.5.1.symbols.gmt", "MSigDB Hallmark v7.5.1", CC_BY,
                 "Liberzon A, Birger C, Thorvaldsdottir H, Ghandi M, Mesirov JP, Tamayo P. The "
                 "Molecular Signatures Database (MSigDB) hallmark gene set collection. Cell "
                 "Systems 1(6):417-425 (2015). doi:10.1016/j.cels.2015.12.004"),
    "reactome": ("ReactomePathways.gmt", "Reactome human pathways (ReactomePathways.gmt)", CC_BY,
                 "Milacic M, Beavers D, Conley P, et al. The Reactome Pathway Knowledgebase "
                 "2024. Nucleic Acids Research 52(D1):D672-D678 (2024). doi:10.1093/nar/gkad1025"),
    "go_bp": ("GO_BP_propagated_human_symbols_10to500.gmt", f"GO biological process; "
              f"{GO_VERSION}", CC_BY, GO_CITATION),
    "go_mf": ("GO_MF_propagated_human_symbols_10to500.gmt", f"GO molecular function; "
              f"{GO_VERSION}", CC_BY, GO_CITATION),
    "go_cc": ("GO_CC_propagated_human_symbols_10to500.gmt", f"GO cellular component; "
              f"{GO_VERSION}", CC_BY, GO_CITATION),
    "wikipathways": ("wikipathway.v7.2.symbols.gmt", "WikiPathways as distributed in MSigDB C2 "
                     "v7.2", "CC0 1.0",
                     "Martens M, Ammar A, Riutta A, et al. WikiPathways: connecting communities. "
                     "Nucleic Acids Research 49(D1):D613-D621 (2021). doi:10.1093/nar/gkaa1024"),
}


def read_gmt(path: Path) -> list[tuple[str, str, list[str]]]:
    """(first field, second field, unique genes in file order) per line; empty fields dropped.
    Reactome's lines are (name, R-HSA id, genes); the others' (id, description or URL, genes)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.rstrip("\n").split("\t")
        if len(fields) < 3:
            continue
        genes = list(dict.fromkeys(g.strip() for g in fields[2:] if g.strip()))
        if genes:
            out.append((fields[0].strip(), fields[1].strip(), genes))
    return out


def read_sources(folder: Path, sources=tuple(SOURCES)) -> tuple[list[dict], dict]:
    """The sets of every source (dicts: source, id, name, genes) and the source records."""
    sets, records = [], {}
    for key in sources:
        file, version, licence, citation = SOURCES[key]
        path = folder / file
        if not path.is_file():
            raise SystemExit(f"{path} is missing: the gene sets are read from {folder} (set "
                             "PERTURB_STUDIO_GENESETS or --genesets)")
        n = 0
        for a, b, genes in read_gmt(path):
            if key == "reactome":
                set_id, name = b, a
            elif key.startswith("go_"):
                set_id, name = a, b
            else:
                set_id, name = a, a.replace("_", " ")
            sets.append({"source": key, "id": set_id, "name": name, "genes": genes})
            n += 1
        records[key] = {"file": file, "version": version, "licence": licence,
                        "citation": citation, "sets": n,
                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return sets, records


def membership(sets: list[dict]):
    """Genes (sorted) and the gene x set CSR matrix of 0/1 memberships."""
    import scipy.sparse as sp

    genes = sorted({g for s in sets for g in s["genes"]})
    index = {g: i for i, g in enumerate(genes)}
    rows = np.fromiter((index[g] for s in sets for g in s["genes"]), dtype=np.int64)
    cols = np.repeat(np.arange(len(sets)), [len(s["genes"]) for s in sets])
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)),
                      shape=(len(genes), len(sets)))
    m.sum_duplicates()
    m.data[:] = 1.0
    m.sort_indices()
    return genes, m


def _weighted(m, sources: list[str], source_balance: float):
    """Columns weighted by 1/sqrt(set size) x the per-source balance (module docstring)."""
    import scipy.sparse as sp

    size = np.asarray(m.sum(axis=0)).ravel()
    src = np.asarray(sources)
    counts = {s: int((src == s).sum()) for s in dict.fromkeys(sources)}
    mean = np.mean(list(counts.values()))
    per_source = np.array([(mean / counts[s]) ** (0.5 * source_balance) for s in sources])
    return (m @ sp.diags(per_source / np.sqrt(size))).tocsr()


def embed(m, sources: list[str], dims: int, source_balance: float = 0.5):
    """Rows of U S of the weighted membership matrix (see the module docstring), sign-fixed;
    and the singular values."""
    from scipy.sparse.linalg import svds

    mw = _weighted(m, sources, source_balance)
    k = min(dims, min(mw.shape) - 1)
    v0 = np.ones(min(mw.shape)) / np.sqrt(min(mw.shape))      # fixed start: deterministic
    u, s, _ = svds(mw, k=k, solver="arpack", v0=v0, random_state=0)
    order = np.argsort(-s, kind="stable")
    u, s = u[:, order], s[order]
    big = np.argmax(np.abs(u), axis=0)
    u = u * np.sign(u[big, np.arange(u.shape[1])])            # sign-fixed
    return u * s, s


def build(folder: Path, dims: int = 64, source_balance: float = 0.5) -> dict:
    """Everything the resource holds, as arrays and a JSON-able record."""
    sets, records = read_sources(folder)
    genes, m = membership(sets)
    emb, s = embed(m, [x["source"] for x in sets], dims, source_balance)
    assert len(sets) < 2**15, "set numbers are stored as int16"
    # C order: safetensors writes the raw buffer, and svds' U (so U S) comes in Fortran order
    tensors = {"embedding": np.ascontiguousarray(emb, dtype=np.float16),
               "member_indptr": m.indptr.astype(np.int32),
               "member_indices": m.indices.astype(np.int16),
               "singular_values": s.astype(np.float32)}
    meta = {"format": "perturb-studio-gene-priors", "format_version": 1,
            "dims": int(emb.shape[1]), "n_genes": len(genes), "n_sets": len(sets),
            "method": ("truncated SVD (ARPACK, fixed start vector) of the gene x set membership "
                       "matrix, columns weighted 1/sqrt(set size) x per-source balance "
                       f"(n_sets_mean / n_sets_source)^(0.5 x {source_balance}); embedding = "
                       "U S, sign-fixed (largest-magnitude loading positive), float16"),
            "source_balance": source_balance,
            "sources": records,
            "sets": [{"source": x["source"], "id": x["id"], "name": x["name"],
                      "size": len(x["genes"])} for x in sets],
            "genes": genes}
    return {"tensors": tensors, "meta": meta}


def write(result: dict, out: Path) -> None:
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(result["tensors"], str(out / "gene_priors.safetensors"),
              metadata={"format": "perturb-studio-gene-priors/1"})   # one key: the header's
    # order of several metadata keys varies between runs, which would break identical bytes
    (out / "gene_priors.json").write_text(json.dumps(result["meta"], separators=(",", ":"),
                                                     ensure_ascii=False) + "\n",
                                          encoding="utf-8")


# -- aliases and Ensembl ids (org.Hs.eg.db) ----------------------------------------------------
ORGDB_VERSION = "org.Hs.eg.db 3.16.0 (Bioconductor 3.16; NCBI Gene 2022-09-12)"
ORGDB_CITATION = ("Carlson M. org.Hs.eg.db: Genome wide annotation for Human. R package "
                  "version 3.16.0 (2022). doi:10.18129/B9.bioc.org.Hs.eg.db; gene symbols, aliases "
                  "and Ensembl ids from NCBI Gene (https://www.ncbi.nlm.nih.gov/gene)")


def build_aliases(sqlite: Path, genes: list[str]) -> dict:
    """Alias -> symbol and Ensembl gene id -> symbol, for the genes of the priors: only names
    that lead to exactly one of them, and no alias that is itself one of their symbols."""
    import sqlite3

    known = set(genes)
    con = sqlite3.connect(f"file:{sqlite}?mode=ro", uri=True)
    try:
        symbol = {i: sym for i, sym in con.execute("select _id, symbol from gene_info")}
        pairs = {"aliases": con.execute("select _id, alias_symbol from alias").fetchall(),
                 "ensembl": con.execute("select _id, ensembl_id from ensembl").fetchall()}
    finally:
        con.close()
    out: dict = {"format": "perturb-studio-gene-aliases", "format_version": 1,
                 "source": ORGDB_VERSION, "licence": "Artistic-2.0 (org.Hs.eg.db); NCBI Gene "
                 "data carry no restrictions", "citation": ORGDB_CITATION,
                 "sha256": hashlib.sha256(Path(sqlite).read_bytes()).hexdigest()}
    for key, rows in pairs.items():
        targets: dict[str, set[str]] = {}
        for i, name in rows:
            sym = symbol.get(i)
            if sym in known and name and name not in known:
                targets.setdefault(name, set()).add(sym)
        out[key] = {n: next(iter(t)) for n, t in sorted(targets.items()) if len(t) == 1}
        out[f"{key}_ambiguous"] = sum(len(t) > 1 for t in targets.values())
    return out


def write_aliases(aliases: dict, out: Path) -> None:
    """gene_aliases.json.gz, byte-identical for the same content (no time stamp, no name)."""
    import gzip
    import io

    raw = (json.dumps(aliases, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(raw)
    (out / "gene_aliases.json.gz").write_bytes(buf.getvalue())


# -- evaluation: leave one source out ------------------------------------------------------------
def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    from scipy.stats import rankdata

    r = rankdata(np.concatenate([pos, neg]))
    return float((r[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _cos(e: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x, y = e[a], e[b]
    return (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-12)


def _sparse_cos(m, pairs: np.ndarray) -> np.ndarray:
    a, b = m[pairs[:, 0]], m[pairs[:, 1]]
    dot = np.asarray(a.multiply(b).sum(1)).ravel()
    na = np.sqrt(np.asarray(a.multiply(a).sum(1)).ravel())
    nb = np.sqrt(np.asarray(b.multiply(b).sum(1)).ravel())
    return dot / (na * nb + 1e-12)


def _held_membership(held: list[list[int]], n_genes: int):
    import scipy.sparse as sp

    rows = np.fromiter((g for s in held for g in s), dtype=np.int64)
    cols = np.repeat(np.arange(len(held)), [len(s) for s in held])
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_genes, len(held)))


def _row_unit(m):
    import scipy.sparse as sp

    norm = np.sqrt(np.asarray(m.multiply(m).sum(1)).ravel())
    return (sp.diags(1 / np.maximum(norm, 1e-12)) @ m).tocsr()


def _precision(similarity, queries: np.ndarray, share) -> float:
    hits = []
    for g in queries:
        s = similarity(g)
        s[g] = -np.inf
        top = np.argsort(-s, kind="stable")[:10]
        hits.append(np.mean(share[g, top].toarray() > 0))
    return float(np.mean(hits))


def evaluate(folder: Path, dims: int, balances=(0.0, 0.5, 1.0), pairs: int = 20_000,
             held_out=("hallmark", "reactome", "wikipathways")) -> list[str]:
    """AUC of cosine similarity: gene pairs sharing a set of the held-out source vs random pairs
    of genes, with the embedding built from the other sources (genes in both only)."""
    rng = np.random.default_rng(0)
    lines = [f"{'held-out source':<16} {'balance':>8} {'AUC':>7}  (pairs sharing a held-out set "
             f"vs random pairs; {pairs:,} each; embedding of the other sources, {dims} dims)"]
    for out in held_out:
        held, _ = read_sources(folder, (out,))
        rest, _ = read_sources(folder, tuple(k for k in SOURCES if k != out))
        genes, m = membership(rest)
        index = {g: i for i, g in enumerate(genes)}
        held = [[index[g] for g in s["genes"] if g in index] for s in held]
        held = [s for s in held if len(s) >= 2]
        covered = np.unique(np.concatenate([np.asarray(s) for s in held]))
        pick = rng.integers(0, len(held), pairs)
        pos = np.array([rng.choice(held[i], 2, replace=False) for i in pick])
        neg = rng.choice(covered, (pairs, 2))
        neg = neg[neg[:, 0] != neg[:, 1]]
        for bal in balances:
            e, _ = embed(m, [x["source"] for x in rest], dims, bal)
            auc = _auc(_cos(e, pos[:, 0], pos[:, 1]), _cos(e, neg[:, 0], neg[:, 1]))
            lines.append(f"{out:<16} {bal:>8.1f} {auc:>7.3f}")
        # reference: cosine of the full weighted membership rows (no SVD), balance 0.5
        full = _weighted(m, [x["source"] for x in rest], 0.5)
        auc = _auc(_sparse_cos(full, pos), _sparse_cos(full, neg))
        lines.append(f"{out:<16} {'0.5':>8} {auc:>7.3f}  full membership rows, no SVD")
        # nearest neighbours: of each query gene's 10 nearest among all genes, the fraction
        # that shares a held-out set with it (query: 300 genes in a held-out set)
        share = _held_membership(held, len(genes))
        share = (share @ share.T).tocsr()
        queries = rng.choice(covered, 300, replace=False)
        e, _ = embed(m, [x["source"] for x in rest], dims, 0.5)
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        f = _row_unit(full)
        p_emb = _precision(lambda g, e=e: e @ e[g], queries, share)
        p_full = _precision(lambda g, f=f: (f @ f[g].T).toarray().ravel(), queries, share)
        lines.append(f"{out:<16} {'0.5':>8} precision@10 of nearest genes: embedding "
                     f"{p_emb:.3f}, full membership rows {p_full:.3f}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genesets", type=Path, default=DEFAULT_GENESETS)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--dims", type=int, default=64)
    p.add_argument("--source-balance", type=float, default=0.5)
    p.add_argument("--evaluate", type=Path, help="also write the leave-one-source-out check here")
    p.add_argument("--orgdb", type=Path, default=os.environ.get("PERTURB_STUDIO_ORGDB"),
                   help="org.Hs.eg.sqlite: also write gene_aliases.json.gz")
    args = p.parse_args(argv)
    result = build(args.genesets, args.dims, args.source_balance)
    write(result, args.out)
    meta = result["meta"]
    print(f"{meta['n_genes']:,} genes x {meta['dims']} dims from {meta['n_sets']:,} sets -> "
          f"{args.out}")
    if args.orgdb:
        aliases = build_aliases(args.orgdb, meta["genes"])
        write_aliases(aliases, args.out)
        print(f"{len(aliases['aliases']):,} aliases ({aliases['aliases_ambiguous']:,} ambiguous "
              f"left out) and {len(aliases['ensembl']):,} Ensembl ids -> "
              f"{args.out / 'gene_aliases.json.gz'}")
    if args.evaluate:
        lines = evaluate(args.genesets, args.dims)
        text = "\n".join([f"# python build_scripts/build_gene_priors.py --evaluate {args.evaluate}",
                          *lines]) + "\n"
        args.evaluate.write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

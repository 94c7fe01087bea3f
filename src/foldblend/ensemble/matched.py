"""The test-matched CV estimate: OOF rows reweighted so their neighbour similarity looks like the test's.

An OOF image whose nearest training image is a near-sibling is easier than a test image whose nearest
training image is a stranger. Binning the similarity (`folds/similarity.npz`: OOF image -> nearest
image in the other folds, test image -> nearest train image) and weighting each OOF row by
test share / OOF share of its bin gives the score CV would have had on rows as far from their training
data as the test's are (importance weighting under covariate shift). Its uncertainty comes from a
bootstrap over groups (a group's images are not independent) and over test images.

What it cannot repair: rows the test has and OOF lacks (a bin with no OOF row; `coverage` < 1), and a
difficulty the similarity does not see (a sibling the model remembers although the nearest image is
far). An effective sample size much smaller than the rows (`ess`) says the weights do the heavy
lifting; then folds that already look like the test (`dedup: auto`) are the better fix.
"""
from __future__ import annotations

import numpy as np

from foldblend.metrics import macro_f1

MAX_BINS = 10
MIN_PER_BIN = 30       # test images per bin, at least (fewer bins for small test sets)
N_BOOTSTRAP = 200
LOW_ESS_SHARE = 0.25   # weights concentrated on under a quarter of the rows: say the estimate is fragile


def bin_edges(test_sim: np.ndarray, n_bins: int | None = None) -> np.ndarray:
    """Bin edges at quantiles of the test similarities (equal test mass per bin), the test's smallest
    and largest similarity included: OOF rows outside that range are like no test image."""
    test_sim = np.asarray(test_sim, np.float64)
    n_bins = n_bins or int(np.clip(len(test_sim) // MIN_PER_BIN, 1, MAX_BINS))
    edges = np.unique(np.quantile(test_sim, np.linspace(0, 1, n_bins + 1)))
    return edges if len(edges) > 1 else np.r_[edges - 1e-6, edges + 1e-6]


def _bin(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index 0..len(edges)-2 (the last bin includes its upper edge), -1 outside the edges."""
    index = np.searchsorted(edges, values, side="right") - 1
    index[values == edges[-1]] = len(edges) - 2
    index[(values < edges[0]) | (values > edges[-1])] = -1
    return index


def importance_weights(oof_sim: np.ndarray, test_sim: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, float]:
    """(weight per OOF row, coverage): test share / OOF share of each row's bin (0 outside the test's
    range), normalised to mean 1 over the rows; coverage = the test's share in bins with an OOF row."""
    ob, tb = _bin(np.asarray(oof_sim, np.float64), edges), _bin(np.asarray(test_sim, np.float64), edges)
    k = len(edges) - 1
    oof_share = np.bincount(ob[ob >= 0], minlength=k) / max(len(ob), 1)
    test_share = np.bincount(tb[tb >= 0], minlength=k) / max(len(tb), 1)
    ratio = np.divide(test_share, oof_share, out=np.zeros(k), where=oof_share > 0)
    weights = np.where(ob >= 0, ratio[np.maximum(ob, 0)], 0.0)
    coverage = float(test_share[oof_share > 0].sum())
    if weights.sum() > 0:
        weights = weights * len(weights) / weights.sum()
    return weights, coverage


def group_draws(groups: np.ndarray, n_boot: int, rng: np.random.Generator):
    """`n_boot` bootstrap samples of row indices, each drawing len(groups' distinct values) whole groups
    with replacement (a group's rows are not independent, so they are resampled together)."""
    codes, members = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(members, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(members, minlength=len(codes)))]
    for _ in range(n_boot):
        yield np.concatenate([order[starts[g]:starts[g + 1]] for g in rng.integers(0, len(codes), len(codes))])


def matched_score(y: np.ndarray, probs: np.ndarray, oof_sim: np.ndarray, test_sim: np.ndarray,
                       groups: np.ndarray, n_classes: int, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """The test-matched macro-F1 of OOF probabilities, with a bootstrap standard deviation.

    Each bootstrap draw resamples whole groups of OOF rows and the test images, then recomputes the
    bins, the weights and the score, so the spread includes the weights' own noise.
    """
    y, pred = np.asarray(y), np.asarray(probs).argmax(axis=1)
    oof_sim, test_sim, groups = (np.asarray(a) for a in (oof_sim, test_sim, groups))
    edges = bin_edges(test_sim)
    weights, coverage = importance_weights(oof_sim, test_sim, edges)
    score = macro_f1(y, pred, n_classes, sample_weight=weights)
    rng = np.random.default_rng(seed)
    draws = []
    for rows in group_draws(groups, n_boot, rng):
        t = test_sim[rng.integers(0, len(test_sim), len(test_sim))]
        e = bin_edges(t)
        w, _ = importance_weights(oof_sim[rows], t, e)
        draws.append(macro_f1(y[rows], pred[rows], n_classes, sample_weight=w))
    ess = float(weights.sum() ** 2 / max((weights ** 2).sum(), 1e-12))
    return {"macro_f1": score, "std": float(np.std(draws)) if draws else None,
            "unweighted_macro_f1": macro_f1(y, pred, n_classes),
            "n_bins": int(len(edges) - 1), "coverage": round(coverage, 4), "ess": round(ess, 1), "n_rows": int(len(y)),
            "fragile": bool(ess < LOW_ESS_SHARE * len(y) or coverage < 0.9), "n_bootstrap": int(n_boot)}


def describe(matched: dict) -> str:
    """'test-matched 0.67 ± 0.02' plus a note when the weights are fragile."""
    text = f"test-matched {matched['macro_f1']:.4f}"
    if matched.get("std") is not None:
        text += f" ± {matched['std']:.4f}"
    if matched.get("fragile"):
        text += (f" (fragile: effective sample {matched['ess']:.0f} of {matched['n_rows']} rows, test coverage "
                 f"{matched['coverage']:.0%}; folds that look like the test, `dedup: auto`, are the better fix)")
    return text


def load_similarity(similarity_npz, folds_csv, ids: np.ndarray) -> tuple[dict | None, str]:
    """({oof_sim, test_sim, groups} aligned with the blend's OOF `ids`, "") or (None, why not)."""
    if not similarity_npz.exists():
        return None, ("no folds/similarity.npz (embeddings: false, or folds made before it existed: "
                      "rerun `foldblend folds`)")
    with np.load(similarity_npz, allow_pickle=False) as z:
        sim_ids, oof_sim, test_sim = z["ids"].astype(str), z["oof_similarity"], z["test_similarity"]
    if len(sim_ids) != len(ids) or (sim_ids != np.asarray(ids).astype(str)).any():
        return None, "folds/similarity.npz was made for another split; rerun `foldblend folds`"
    test_sim = test_sim[np.isfinite(test_sim)]  # unreadable test images have no neighbour
    if not len(test_sim):
        return None, "no test set to match"
    return {"oof_sim": oof_sim, "test_sim": test_sim, "groups": read_groups(folds_csv, sim_ids)}, ""


def read_groups(folds_csv, ids) -> np.ndarray | None:
    """folds.csv's group of each of `ids` (what a bootstrap resamples whole); None when it has no such
    column or misses an id."""
    import pandas as pd

    if not folds_csv.exists():
        return None
    folds = pd.read_csv(folds_csv, dtype={"image": str}, keep_default_na=False)
    if "group" not in folds:
        return None
    group = dict(zip(folds["image"], folds["group"]))
    if any(str(i) not in group for i in ids):
        return None
    return np.array([group[str(i)] for i in ids], np.int64)

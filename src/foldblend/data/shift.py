"""Does CV see what the test will see? A train <-> test shift check, and folds chosen to look like the test.

Two views of the question, both at scan time, before any model exists:

- **Adversarial validation**: a classifier told to separate train images from test images, on image
  statistics and on embeddings; its cross-validated ROC AUC is ~0.5 when the two look alike.
- **Neighbour similarity**: each test image's similarity to its nearest train image, beside each OOF
  image's similarity to its nearest image in the *other* folds (the model that predicts an OOF image
  trains on those). When OOF images have much closer relatives in training than test images do (the
  same concept in another style, the same patient in another scan), CV is optimistic. The measure is
  the share of (OOF, test) pairs where the OOF image's neighbour is the closer one: 0.5 means the
  same situation, and the scan warns from `OPTIMISTIC_SHARE` on.

When it warns, `match_threshold` searches the semantic-grouping threshold (one number) whose folds
bring the OOF similarities closest to the test's (Wasserstein distance), which `dedup: auto` uses.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import mannwhitneyu, wasserstein_distance
from tqdm.auto import tqdm

from foldblend.data.neighbours import nearest_similarity, other_fold_similarity, top_neighbours
from foldblend.data.semantic import GroupTree, group_tree, groups_added, union_groups

OPTIMISTIC_SHARE = 0.6   # OOF neighbour closer than the test's in >= 60% of pairs: CV sees easier cases
P_VALUE = 0.01           # ... and not by chance (one-sided Mann-Whitney U)
LOOKUP_NEIGHBOURS = 32   # listed neighbours per image; beyond them the other-fold search is exhaustive
N_CANDIDATES = 24        # thresholds tried per round of the search (merge levels of the tree)
REFINE_ROUNDS = 4        # rounds, each between the best threshold's evaluated neighbours
MATCH_TOLERANCE = 0.1   # distances within 10% of the best match count as equally good
MAX_GROUP_SHARE = 0.5    # a group may hold at most half a fold's images, or stratification breaks down
ADVERSARIAL_MAX = 4000   # images per side the adversarial classifiers see (a random subset beyond)


def closer_share(oof_sim: np.ndarray, test_sim: np.ndarray) -> tuple[float, float]:
    """(share, p): the share of (OOF, test) pairs whose OOF similarity is the higher (ties count half),
    and the one-sided Mann-Whitney p-value of "OOF neighbours are closer". (0.5, 1.0) when either is empty."""
    oof_sim, test_sim = np.asarray(oof_sim, np.float64), np.asarray(test_sim, np.float64)
    if len(oof_sim) == 0 or len(test_sim) == 0:
        return 0.5, 1.0
    result = mannwhitneyu(oof_sim, test_sim, alternative="greater")
    return float(result.statistic / (len(oof_sim) * len(test_sim))), float(result.pvalue)


def is_optimistic(share: float, p: float) -> bool:
    return share >= OPTIMISTIC_SHARE and p < P_VALUE


def adversarial_auc(train_x: np.ndarray, test_x: np.ndarray, kind: str, seed: int = 0) -> float | None:
    """Cross-validated ROC AUC of a classifier separating train rows from test rows (None: too few).

    `kind` "statistics": gradient-boosted trees on a few image statistics (NaN allowed); "embeddings":
    logistic regression on the features' first principal components.
    """
    from sklearn.decomposition import PCA
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    parts = [x[rng.permutation(len(x))[:ADVERSARIAL_MAX]] for x in (np.asarray(train_x), np.asarray(test_x))]
    if min(len(p) for p in parts) < 10:
        return None
    x = np.concatenate(parts).astype(np.float64)
    y = np.r_[np.zeros(len(parts[0])), np.ones(len(parts[1]))]
    if kind == "statistics":
        model = HistGradientBoostingClassifier(max_iter=50, random_state=seed)
    else:
        components = min(32, x.shape[1], len(x) // 5)
        model = make_pipeline(StandardScaler(), PCA(components, random_state=seed),
                              LogisticRegression(C=0.1, max_iter=1000))
    cv = StratifiedKFold(3, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proba = cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, proba))


def summary_of(values: np.ndarray) -> dict:
    """Median and quartiles of a similarity distribution, for JSON and one-line messages."""
    values = np.asarray(values, np.float64)
    if not len(values):
        return {"n": 0}
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return {"n": int(len(values)), "median": round(float(med), 4), "q1": round(float(q1), 4),
            "q3": round(float(q3), 4)}


def quick_folds(groups: np.ndarray, n_splits: int, seed: int = 0) -> np.ndarray:
    """Whole groups shuffled into folds (scikit-learn's GroupKFold): what the search splits with.

    StratifiedGroupKFold balances classes group by group, ~10 s per split of 25k images; the search
    splits dozens of times and only needs who shares a fold with whom, so it uses this, and the folds
    stage then makes the stratified split once."""
    from sklearn.model_selection import GroupKFold

    fold = np.zeros(len(groups), np.int64)
    for k, (_, rows) in enumerate(GroupKFold(n_splits, shuffle=True, random_state=seed).split(groups, groups=groups)):
        fold[rows] = k
    return fold


def match_threshold(feats: np.ndarray, base_groups: np.ndarray, test_sim: np.ndarray, n_splits: int,
                    seed: int = 0, top: tuple[np.ndarray, np.ndarray] | None = None,
                    tree: GroupTree | None = None, progress: bool = False) -> dict:
    """The semantic threshold whose folds make the OOF neighbour similarities look most like the test's.

    Thresholds are the tree's merge levels (where the grouping changes), tried coarse to fine: a spread
    over all of them, then rounds between the best one's neighbours; each cut of the average-linkage tree \
is joined with `base_groups`, split by
    `quick_folds`, and scored by the Wasserstein distance between the OOF and the test
    similarities. Cuts where a group would exceed half a fold are not tried. The candidate "no semantic
    groups" (threshold None) competes too, so an i.i.d. split keeps its plain folds; of the candidates
    within `MATCH_TOLERANCE` of the best distance, the strictest (fewest images joined) wins.
    """
    top = top if top is not None else top_neighbours(feats, LOOKUP_NEIGHBOURS)
    tree = tree or group_tree(feats)
    limit = max(2, int(MAX_GROUP_SHARE * len(feats) / n_splits))
    # a cut changes only at a merge of the tree: the candidates are its merge levels, strictest first
    levels = np.unique(tree.levels)[::-1]
    rows: dict[int, tuple] = {}  # position in `levels` (-1: no semantic groups) -> (row, groups, oof_sim)
    stop = len(levels)           # positions from here on make a group too large (or unsplittable)
    candidates = []
    bar = tqdm(total=1 + REFINE_ROUNDS * N_CANDIDATES, desc="shift check: try semantic thresholds", unit="split",
               disable=not progress)

    def evaluate(position: int) -> None:
        nonlocal stop
        bar.update()
        threshold = None if position < 0 else float(levels[position])
        groups = base_groups if threshold is None else union_groups(base_groups, tree.cut(threshold))
        largest = int(np.bincount(groups).max())
        try:
            if threshold is not None and largest > limit:
                raise ValueError("group too large")
            fold = quick_folds(groups, n_splits, seed)
        except ValueError as e:  # too few groups to split, or one too large: looser cuts only get worse
            stop = min(stop, position)
            candidates.append({"threshold": threshold, "largest_group": largest, "stopped": str(e)})
            return
        oof_sim = other_fold_similarity(feats, fold, top)
        share, _ = closer_share(oof_sim, test_sim)
        row = {"threshold": threshold, "distance": round(float(wasserstein_distance(oof_sim, test_sim)), 5),
               "closer_share": round(share, 4), "oof_median": round(float(np.median(oof_sim)), 4),
               "n_groups": int(groups.max() + 1), "largest_group": largest}
        candidates.append(row)
        rows[position] = (row, groups, oof_sim)

    # coarse to fine: a spread of positions, then again between the best one's evaluated neighbours
    evaluate(-1)
    lo, hi = 0, len(levels) - 1
    for _ in range(REFINE_ROUNDS):
        for position in np.unique(np.linspace(lo, hi, N_CANDIDATES).round().astype(int)):
            if position not in rows and position < stop and hi >= 0:
                evaluate(int(position))
        best = min(rows, key=lambda k: rows[k][0]["distance"])
        done = sorted(k for k in rows if k >= 0)
        lo = max([k for k in done if k < best], default=0)
        hi = min([k for k in done if k > best], default=min(stop, len(levels)) - 1)
        if all(k in rows for k in range(lo, hi + 1)):
            break
    bar.close()
    tried = [rows[k] for k in sorted(rows)]
    candidates.sort(key=lambda c: -np.inf if c["threshold"] is None else -c["threshold"])
    # the strictest threshold within a whisker of the best match: looser cuts that match no better only
    # merge more images (and make the folds coarser) for nothing
    best = min(row["distance"] for row, _, _ in tried)
    row, groups, oof_sim = next(t for t in tried if t[0]["distance"] <= best * (1 + MATCH_TOLERANCE) + 1e-3)
    added = groups_added(base_groups, groups)
    return {"threshold": row["threshold"], "distance": row["distance"], "closer_share": row["closer_share"],
            "groups_added": added["n_groups"], "images_in_added": added["n_images"],
            "largest_group": added["largest"], "candidates": candidates,
            "groups": groups, "oof_similarity": oof_sim}


def check_shift(train_feats: np.ndarray, test_feats: np.ndarray, base_groups: np.ndarray, fold: np.ndarray,
                n_splits: int, *, search: str = "if_optimistic", train_stats: np.ndarray | None = None,
                test_stats: np.ndarray | None = None, seed: int = 0, progress: bool = False) -> tuple[dict, dict]:
    """(result for shift.json, arrays for plots and groups) of train rows against test rows.

    `base_groups` are the groups the folds would use without semantic ones (pHash, or the user's), and
    `fold` the folds made of them; `search` ("never", "if_optimistic", "always") says when the matching
    semantic threshold is searched. `progress`: a bar saying which step runs (and the steps' own bars
    on large sets).
    """
    steps = tqdm(total=4, desc="shift check", unit="step", disable=not progress)
    steps.set_postfix_str("each train image's nearest train images")
    top = top_neighbours(train_feats, LOOKUP_NEIGHBOURS, progress)
    oof_sim = other_fold_similarity(train_feats, fold, top)
    steps.update()
    steps.set_postfix_str("each test image's nearest train image")
    test_sim = nearest_similarity(test_feats, train_feats, progress)
    steps.update()
    steps.set_postfix_str("adversarial validation (train vs test classifiers)")
    share, p = closer_share(oof_sim, test_sim)
    result = {"n_train": int(len(train_feats)), "n_test": int(len(test_feats)),
              "oof_similarity": summary_of(oof_sim), "test_similarity": summary_of(test_sim),
              "closer_share": round(share, 4), "p_value": float(f"{p:.3g}"),
              "distance": round(float(wasserstein_distance(oof_sim, test_sim)), 5) if len(test_sim) else None,
              "optimistic": is_optimistic(share, p),
              "adversarial_auc": {"embeddings": _rounded(adversarial_auc(train_feats, test_feats, "embeddings", seed))},
              "match": None}
    if train_stats is not None and test_stats is not None:
        result["adversarial_auc"]["statistics"] = _rounded(adversarial_auc(train_stats, test_stats, "statistics",
                                                                           seed))
    arrays = {"oof_similarity": oof_sim, "test_similarity": test_sim}
    steps.update()
    if len(test_sim) and (search == "always" or (search == "if_optimistic" and result["optimistic"])):
        steps.set_postfix_str("semantic groups matched to the test")
        tree = group_tree(train_feats, progress=progress)
        match = match_threshold(train_feats, base_groups, test_sim, n_splits, seed, top, tree, progress)
        arrays["tree_children"], arrays["tree_similarity"] = tree.children, tree.similarity
        arrays["matched_similarity"] = match.pop("oof_similarity")
        arrays["matched_groups"] = match.pop("groups")
        result["match"] = match
    steps.update()
    steps.close()
    return result, arrays


def _rounded(v: float | None) -> float | None:
    return None if v is None else round(v, 4)

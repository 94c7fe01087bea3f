"""The train/test shift check with its files: run by the scan, used by the folds stage, read by blend, summary,
report.

- scan: `run_shift_check` extracts (or reads cached) embeddings, compares train with test (`shift`),
  searches the matching semantic threshold when CV looks optimistic, prints the verdict and writes
  `folds/shift.json` (+ `folds/shift.npz`, the similarity arrays and semantic groups for the EDA page).
  Both carry a key of everything they were computed from, so a rescan of unchanged data is a no-op.
- folds: `fold_groups` returns the groups the split uses (the user's win; then pHash, joined with the
  semantic groups when `dedup` says so), and `write_similarity` records, for the split it made, each
  OOF image's similarity to its nearest image in the other folds and each test (and held-out) image's
  similarity to its nearest train image: `folds/similarity.npz`, what the test-matched CV weighs by.

`dedup: auto` (the default) is `group` (pHash) unless the check finds CV optimistic; then it adds the
semantic groups at the threshold matched to the test. An i.i.d. competition is never regrouped.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from foldblend.artifacts import write_json, write_npz
from foldblend.data.competition_config import CompetitionConfig
from foldblend.data.dedup import duplicate_groups
from foldblend.data.find import Competition
from foldblend.data.groups import user_groups, with_user_groups
from foldblend.data.neighbours import nearest_similarity, other_fold_similarity
from foldblend.data.ood import STAT_COLUMNS
from foldblend.data.semantic import GroupTree, group_tree, groups_added, union_groups
from foldblend.data.shift import check_shift
from foldblend.data.split import HOLDOUT, FoldsError, assign_folds, folds_fingerprint
from foldblend.paths import Project
from foldblend.safety import remove
from foldblend.scanning.embeddings import features_of_files, spec_key
from foldblend.scanning.shift_files import describe_shift, read_shift, shift_json, similarity_npz

VERSION = 1  # bump when the check changes, so cached results are recomputed
# Below these, two similarity distributions say little (and the backbone pass is not worth it)
MIN_TRAIN = 50
MIN_TEST = 20


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:20]


def _stats(rows: pd.DataFrame) -> np.ndarray:
    """Image statistics for the adversarial check: the scan's, plus the image's size (a common shift)."""
    size = np.log(np.maximum(rows[["width", "height"]].to_numpy(np.float64), 1))
    return np.concatenate([rows[STAT_COLUMNS].to_numpy(np.float64), size], axis=1)


def _search_mode(settings: CompetitionConfig, has_user_groups: bool) -> str:
    if has_user_groups or settings.dedup not in ("auto", "semantic"):
        return "never"  # the user's groups win; other modes only report
    if settings.semantic_threshold is not None:
        return "never"
    return "always" if settings.dedup == "semantic" else "if_optimistic"


def run_shift_check(project: Project, comp: Competition, table: pd.DataFrame, progress: bool = True,
                    quiet_if_current: bool = False) -> tuple[dict | None, dict]:
    """The scan's shift check (see the module docstring); (None, {}) with `embeddings: false` or too few
    images. The folds stage calls it too: a no-op (and, with `quiet_if_current`, silent) when current."""
    settings = comp.settings
    train = table[table["split"] == "train"].reset_index(drop=True)
    test = table[table["split"] == "test"].reset_index(drop=True)
    n_train, n_test = int(train["ok"].sum()), int(test["ok"].sum())
    semantic_only = n_test == 0 and settings.dedup == "semantic" and settings.semantic_threshold is not None
    why = ("embeddings: off (competition.yaml): no semantic groups, no train/test neighbour check"
           if not settings.embeddings else
           f"train/test shift: not checked ({n_train} readable train images; it needs {MIN_TRAIN})"
           if n_train < MIN_TRAIN else
           "train/test shift: no test set to compare with" if n_test == 0 and not semantic_only else
           f"train/test shift: not checked ({n_test} readable test images; it needs {MIN_TEST})"
           if 0 < n_test < MIN_TEST else None)
    if why:
        return _not_checked(project, why, quiet_if_current)
    user = user_groups(comp)
    key = _digest(VERSION, spec_key(), settings.n_splits, settings.fold_seed, settings.dedup, settings.dedup_distance,
                  settings.semantic_threshold,
                  *train["image"], *train["md5"], *train["ok"], *train["label"], *test["image"], *test["md5"],
                  *test["ok"], *([] if user is None else user))
    cached = read_shift(project)
    if cached is not None and cached.get("key") == key and (project.folds_dir / "shift.npz").exists():
        with np.load(project.folds_dir / "shift.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if not quiet_if_current:
            print("\n".join(describe_shift(cached, settings.dedup)))
        return cached, arrays

    train_feats, train_ok = features_of_files(project, comp.root, train["image"].tolist(), progress)
    test_feats, test_ok = features_of_files(project, comp.root, test["image"].tolist(), progress)
    rows = np.flatnonzero(train["ok"].to_numpy(bool) & train_ok)
    test_rows = np.flatnonzero(test["ok"].to_numpy(bool) & test_ok) if len(test) else np.zeros(0, np.int64)
    if len(rows) < MIN_TRAIN:
        return _not_checked(project, f"train/test shift: not checked ({len(rows)} train images the backbone could "
                                     f"read; it needs {MIN_TRAIN})", quiet_if_current)
    kept = train.iloc[rows].reset_index(drop=True)
    phash = duplicate_groups(kept, settings.dedup_distance)
    base = with_user_groups(phash, None if user is None else user[rows])
    labels = kept["label"].astype(str).to_numpy()

    feats = train_feats[rows]
    try:
        fold = assign_folds(labels, base, settings.n_splits, settings.fold_seed)
    except ValueError as e:  # the folds stage will say the same, with its fix
        return _not_checked(project, f"train/test shift: not checked ({e})", quiet_if_current)
    result, arrays = check_shift(feats, test_feats[test_rows] if len(test_rows) else np.zeros((0, feats.shape[1])),
                                 base, fold, settings.n_splits, search=_search_mode(settings, user is not None),
                                 train_stats=_stats(kept), test_stats=_stats(test.iloc[test_rows]),
                                 seed=settings.fold_seed, progress=progress)
    result["user_groups"] = user is not None
    result["dedup"] = settings.dedup
    result["semantic"] = _semantic_summary(result, arrays, feats, phash, settings, user is not None)
    arrays["rows"] = rows
    arrays["phash_groups"] = phash
    result["key"] = key
    write_npz(project.folds_dir / "shift.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    write_json(shift_json(project), result)
    print("\n".join(describe_shift(result, settings.dedup)))
    return result, arrays


def _not_checked(project: Project, why: str, quiet: bool) -> tuple[None, dict]:
    """No check: and no stale verdict outlives its data."""
    for path in (shift_json(project), project.folds_dir / "shift.npz"):
        remove(path, project.folds_dir)
    if not quiet:
        print(why)
    return None, {}


def _tree(arrays: dict, feats: np.ndarray) -> GroupTree:
    """The semantic tree the check built (shift.npz), else built now (and kept in `arrays`)."""
    if "tree_children" not in arrays:
        tree = group_tree(feats)
        arrays["tree_children"], arrays["tree_similarity"] = tree.children, tree.similarity
    return GroupTree(len(feats), np.asarray(arrays["tree_children"]), np.asarray(arrays["tree_similarity"]))


def _semantic_summary(result: dict, arrays: dict, feats: np.ndarray, phash: np.ndarray,
                      settings: CompetitionConfig, has_user_groups: bool) -> dict | None:
    """The semantic groups the folds would use (or would with `dedup: auto`), and what they add to pHash."""
    threshold, how = settings.semantic_threshold, "semantic_threshold in competition.yaml"
    if threshold is None and result.get("match"):
        threshold, how = result["match"]["threshold"], "matched to the test's neighbour similarities"
    if threshold is None:
        return None
    if result.get("match") and result["match"]["threshold"] == threshold and "matched_groups" in arrays:
        groups = arrays["matched_groups"]
    else:
        groups = union_groups(phash, _tree(arrays, feats).cut(threshold))
    arrays["semantic_groups"] = groups
    added = groups_added(phash, groups)
    mode = settings.dedup
    applied = not has_user_groups and (mode == "semantic" or (mode == "auto" and result["optimistic"]))
    return {"threshold": threshold, "how": how, "groups_added": added["n_groups"],
            "images_in_added": added["n_images"], "largest_group": added["largest"], "applied": applied}


# ----------------------------------------------------------------------------- the folds stage


def semantic_threshold(comp: Competition, shift: dict | None) -> float | None:
    """The similarity at which the folds join semantic groups, or None (pHash only)."""
    s = comp.settings
    if s.dedup not in ("auto", "semantic") or not s.embeddings:
        return None
    if s.dedup == "auto" and not (shift or {}).get("optimistic"):
        return None
    if s.semantic_threshold is not None:
        return float(s.semantic_threshold)
    threshold = ((shift or {}).get("match") or {}).get("threshold")
    if threshold is None and s.dedup == "semantic":
        raise FoldsError(f"{comp.root / 'competition.yaml'}: dedup: semantic needs a threshold and none was matched "
                         f"to the test (no test set, too few images, or embeddings: false); set semantic_threshold "
                         f"(a cosine similarity such as 0.85)")
    return threshold


def fold_groups(project: Project, comp: Competition, kept: pd.DataFrame, automatic: np.ndarray | None,
                progress: bool = True) -> tuple[np.ndarray | None, dict]:
    """(groups, how) of the split over `kept` train rows: user groups win, else `automatic` (pHash or
    None) joined with the semantic groups when `dedup` asks for them; `how` goes to folds/folds.json."""
    users = user_groups(comp)
    row_of = {image: i for i, image in enumerate(comp.train["image"])}
    index = np.array([row_of[i] for i in kept["image"]], np.int64)
    user = None if users is None else users[index]
    groups = automatic
    threshold = None if users is not None else semantic_threshold(comp, read_shift(project))
    if threshold is not None:
        tree = _saved_tree(project, index)
        if tree is None:
            feats, _ = features_of_files(project, comp.root, comp.train["image"].tolist(), progress)
            tree = group_tree(feats[index], progress=progress)
        semantic = tree.cut(threshold)
        groups = union_groups(semantic if groups is None else groups, semantic)
        print(f"semantic groups at similarity {threshold:.4f} (dedup: {comp.settings.dedup}): "
              f"{int(groups.max()) + 1} groups over {len(kept)} images")
    if user is not None:
        groups = with_user_groups(np.arange(len(kept)) if groups is None else groups, user)
        print(f"user groups: {int(pd.notna(user).sum())} of {len(kept)} images in "
              f"{len(set(user[pd.notna(user)]))} groups (they win over duplicate and semantic groups)")
    return groups, {"dedup": comp.settings.dedup, "semantic_threshold": threshold,
                    "user_groups": int(pd.notna(user).sum()) if user is not None else 0}


def _saved_tree(project: Project, index: np.ndarray) -> GroupTree | None:
    """The scan's semantic tree when it was built over exactly these train rows (the usual case: nothing
    left out after the scan), so the folds stage does not build it again."""
    path = project.folds_dir / "shift.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        if "tree_children" not in z.files or not np.array_equal(z["rows"], index):
            return None
        return GroupTree(len(index), z["tree_children"], z["tree_similarity"])


def write_similarity(project: Project, comp: Competition, folds: pd.DataFrame, progress: bool = True) -> None:
    """folds/similarity.npz for the split `folds` (a no-op while split, test set and backbone are unchanged)."""
    path = similarity_npz(project)
    if not comp.settings.embeddings or read_shift(project) is None:  # no check, no weights (too few images)
        remove(path, project.folds_dir)
        return

    key = _digest(VERSION, spec_key(), folds_fingerprint(folds), *comp.test["id"], *comp.test["image"])
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return
    feats, _ = features_of_files(project, comp.root, comp.train["image"].tolist(), progress)
    row_of = {image: i for i, image in enumerate(comp.train["image"])}
    feats = feats[np.array([row_of[i] for i in folds["image"]], np.int64)]
    cv = folds["fold"].to_numpy() != HOLDOUT
    test_feats, test_ok = features_of_files(project, comp.root, comp.test["image"].tolist(), progress)
    base = feats[cv]  # one array for the three questions: above EXACT_UP_TO they share one neighbour graph
    oof_sim = other_fold_similarity(base, folds["fold"].to_numpy()[cv])
    test_sim = nearest_similarity(test_feats, base, progress) if len(comp.test) else np.zeros(0, np.float32)
    test_sim = np.where(test_ok, test_sim, np.nan) if len(comp.test) else test_sim
    write_npz(path, key=np.asarray(key), ids=folds["image"].to_numpy(str)[cv], oof_similarity=oof_sim,
              test_ids=comp.test["id"].to_numpy(str), test_similarity=test_sim,
              holdout_ids=folds["image"].to_numpy(str)[~cv],
              holdout_similarity=nearest_similarity(feats[~cv], base, progress))

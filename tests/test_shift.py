"""Neighbour similarities, semantic groups and the train/test shift check, on generated embeddings.

Embeddings here are concept centres plus noise (L2-normalised): images of one concept are siblings
(similarity ~0.9), images of different concepts strangers (~0.3), as a frozen backbone sees several
drawings of one object against other objects. The pipeline-level tests with a real backbone live in
test_cv_honesty.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from foldblend.data import neighbours, semantic
from foldblend.data.neighbours import nearest_similarity, other_fold_similarity, top_neighbours
from foldblend.data.semantic import group_tree, groups_added, union_groups
from foldblend.data.shift import OPTIMISTIC_SHARE, check_shift, closer_share, match_threshold
from foldblend.data.split import assign_folds


def concept_embeddings(n_concepts=48, per=5, dim=48, noise=0.3, n_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_concepts, dim))
    concept = np.repeat(np.arange(n_concepts), per)
    x = centres[concept] + noise * rng.normal(size=(len(concept), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), concept, (concept % n_classes).astype(str)


def brute_other_fold(x, fold):
    s = x @ x.T
    s[fold[:, None] == fold[None, :]] = -np.inf
    return s.max(1)


def test_top_neighbours_and_nearest_match_brute_force():
    x, _, _ = concept_embeddings(20, 4)
    index, sims = top_neighbours(x, 5)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    assert (index[:, 0] == s.argmax(1)).all()
    np.testing.assert_allclose(sims, -np.sort(-s, axis=1)[:, :5], atol=1e-6)
    np.testing.assert_allclose(nearest_similarity(x[:7], x[7:]), (x[:7] @ x[7:].T).max(1), atol=1e-6)
    assert nearest_similarity(x[:3], x[:0]).tolist() == [-1, -1, -1]


def test_other_fold_similarity_with_and_without_lists_equals_brute_force():
    x, concept, _ = concept_embeddings(30, 6)
    fold = concept % 3  # whole concepts share a fold: every listed neighbour of a row is in its own fold
    expected = brute_other_fold(x, fold)
    np.testing.assert_allclose(other_fold_similarity(x, fold), expected, atol=1e-6)
    top = top_neighbours(x, 3)  # shorter than a concept: the exhaustive fallback must kick in
    np.testing.assert_allclose(other_fold_similarity(x, fold, top), expected, atol=1e-6)
    assert (other_fold_similarity(x, np.zeros(len(x), int)) == -1).all()  # one fold: no other fold


def test_semantic_groups_join_siblings_and_not_strangers():
    x, concept, _ = concept_embeddings(40, 5)
    groups = group_tree(x).cut(0.6)
    # the partition is exactly the concepts
    assert len(np.unique(groups)) == 40
    assert all(len(np.unique(concept[groups == g])) == 1 for g in np.unique(groups))


def test_cuts_are_nested_from_strict_to_loose():
    x, _, _ = concept_embeddings(30, 4, noise=0.8)
    tree = group_tree(x)
    previous = tree.cut(0.95)
    for t in (0.8, 0.6, 0.4, 0.2, 0.0):
        groups = tree.cut(t)
        assert len(np.unique(groups)) <= len(np.unique(previous))
        for g in np.unique(previous):  # each stricter group sits inside one looser group
            assert len(np.unique(groups[previous == g])) == 1
        previous = groups


def test_average_linkage_does_not_chain_where_thresholded_links_do():
    """Points along a great circle: each is 0.95-similar to the next, the ends are strangers. Linking every
    pair above 0.9 joins the whole chain into one component; average linkage keeps short stretches."""
    from scipy.sparse.csgraph import connected_components

    angles = np.arange(60) * np.arccos(0.95)
    x = np.stack([np.cos(angles), np.sin(angles)] + [np.zeros(60)] * 6, 1).astype(np.float32)
    s = x @ x.T
    n_components, _ = connected_components(s >= 0.9, directed=False)
    assert n_components == 1
    groups = group_tree(x).cut(0.9)
    sizes = np.bincount(groups)
    assert sizes.max() <= 6 and len(sizes) >= 10
    for g in np.unique(groups):  # within a group, every pair is still fairly similar
        members = np.flatnonzero(groups == g)
        assert s[np.ix_(members, members)].min() > 0.5


def test_union_and_added_groups():
    a = np.array([0, 0, 1, 2, 3, 4])
    b = np.array([0, 1, 1, 2, 2, 5])
    u = union_groups(a, b)
    assert u.tolist() == [0, 0, 0, 1, 1, 2]
    added = groups_added(a, u)
    assert added["n_groups"] == 2 and added["n_images"] == 5 and added["largest"] == 3


def test_closer_share_is_the_probability_of_superiority():
    assert closer_share(np.array([0.9, 0.8]), np.array([0.1, 0.2]))[0] == 1.0
    share, p = closer_share(np.full(50, 0.5), np.full(50, 0.5))
    assert share == 0.5 and p > 0.1
    assert closer_share(np.zeros(0), np.ones(3)) == (0.5, 1.0)


def _check(x, labels, test, **kw):
    train = ~test

    base = np.arange(train.sum())
    return check_shift(x[train], x[test], base, assign_folds(labels[train], base, 5, 42), 5, **kw)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shift_check_is_silent_on_an_iid_split(seed):
    x, _, labels = concept_embeddings(seed=seed)
    test = np.random.default_rng(seed).random(len(x)) < 0.25
    result, arrays = _check(x, labels, test)
    assert not result["optimistic"]
    assert abs(result["closer_share"] - 0.5) < 0.1
    assert result["match"] is None  # nothing searched: an i.i.d. competition keeps its folds
    assert 0.3 < result["adversarial_auc"]["embeddings"] < 0.7


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shift_check_fires_on_a_concept_split_and_the_matched_folds_look_like_the_test(seed):
    x, concept, labels = concept_embeddings(seed=seed)
    test = concept >= 36  # a quarter of the concepts, never seen in train
    result, arrays = _check(x, labels, test)
    assert result["optimistic"] and result["closer_share"] > OPTIMISTIC_SHARE
    match = result["match"]
    assert match["threshold"] is not None
    # matched: OOF neighbours now about as far as the test's
    assert abs(match["closer_share"] - 0.5) < abs(result["closer_share"] - 0.5)
    assert match["distance"] < result["distance"] / 3
    # the groups are the concepts, nearly: most concepts whole in one group (what makes the folds honest),
    # a few split or joined where the target is noisy (36 concepts here), never the data swallowed
    groups, train_concept = arrays["matched_groups"], concept[~test]
    whole = [len(np.unique(groups[train_concept == c])) == 1 for c in np.unique(train_concept)]
    assert np.mean(whole) >= 0.8
    assert len(np.unique(groups)) >= 0.8 * len(np.unique(train_concept))


def test_the_search_stops_before_one_group_swallows_the_data():
    x, concept, labels = concept_embeddings(40, 5, noise=1.5)  # weak structure: loose cuts merge a lot
    test_sim = np.full(50, -0.5)  # a target so far away that only absurd groupings would reach it
    match = match_threshold(x, np.arange(len(x)), test_sim, 5, top=top_neighbours(x, 32))
    assert match["largest_group"] <= 0.5 * len(x) / 5
    assert match["candidates"][-1].get("stopped")


def test_average_linkage_equals_scipy_on_small_data():
    """The nearest-neighbour chain on group means is exact average linkage: same partitions as scipy's."""
    from scipy.cluster.hierarchy import fcluster, linkage

    x, _, _ = concept_embeddings(12, 4, noise=0.7, seed=3)
    reference = linkage(x.astype(np.float64), method="average", metric="cosine")
    tree = group_tree(x, floor=-1.0)
    assert len(tree.children) == len(x) - 1
    np.testing.assert_allclose(np.sort(tree.similarity), np.sort(1 - reference[:, 2]), atol=1e-5)
    for t in (0.9, 0.6, 0.3, 0.1):
        ours = tree.cut(t)
        theirs = fcluster(reference, 1 - t, criterion="distance")
        assert len(set(zip(ours, theirs))) == len(set(ours)) == len(set(theirs))


def test_neighbour_graph_above_the_exact_size_finds_what_brute_force_finds(monkeypatch):
    """The HNSW path (forced on a small set) returns exact similarities and, on concept-structured
    features, the same nearest neighbours as the all-pairs product."""
    x, concept, _ = concept_embeddings(60, 8)
    x = np.ascontiguousarray(x, np.float32)
    fold = concept % 3
    exact_top = top_neighbours(x, 5)
    exact_near = nearest_similarity(x[:100], x[100:])
    exact_other = other_fold_similarity(x, fold, top_neighbours(x, 3))
    monkeypatch.setattr(neighbours, "EXACT_UP_TO", 10)
    index, sims = top_neighbours(x, 5)
    assert (index != np.arange(len(x))[:, None]).all()
    np.testing.assert_allclose(sims, np.take_along_axis(x @ x.T, index, 1), atol=1e-5)  # exact values
    assert (index[:, 0] == exact_top[0][:, 0]).mean() > 0.98
    np.testing.assert_allclose(sims, exact_top[1], atol=1e-5)
    np.testing.assert_allclose(nearest_similarity(x[:100], x[100:]), exact_near, atol=1e-5)
    # lists of 3 share their concept's fold: the deeper graph search finds the other folds' best
    np.testing.assert_allclose(other_fold_similarity(x, fold, top_neighbours(x, 3)), exact_other, atol=1e-5)
    np.testing.assert_allclose(other_fold_similarity(x, fold), exact_other, atol=1e-5)


def test_semantic_tree_by_graph_joins_the_same_concepts(monkeypatch):
    """Above GRAPH_FROM the chain searches an HNSW graph of group means: on concept-structured features
    its cut is the concepts, as the exact tree's is, and the tree is complete and nested."""
    x, concept, _ = concept_embeddings(40, 5)
    x = np.ascontiguousarray(x, np.float32)
    exact = group_tree(x)
    monkeypatch.setattr(semantic, "GRAPH_FROM", 10)
    tree = group_tree(x)
    assert len(tree.children) == len(exact.children)  # merges above the floor (0) only, as exact
    np.testing.assert_allclose(np.sort(tree.similarity)[-150:], np.sort(exact.similarity)[-150:], atol=1e-4)
    groups = tree.cut(0.6)
    assert len(np.unique(groups)) == 40
    assert all(len(np.unique(concept[groups == g])) == 1 for g in np.unique(groups))
    floored = semantic.average_linkage(x, floor=0.6)
    assert len(np.unique(floored.cut(0.6))) == 40

"""The report's "nearest training images" panel: test images beside their most similar training images.

Similarity is the cosine of frozen-backbone features, the very features an embedding member fitted its
heads on (read from the feature cache, so the panel costs a matrix product, not a forward pass). It
shows a few test images at random and the test images least like any training image, which is where a
train/test shift or a class missing from training shows itself.

The same features serve the web app's "most similar training images" (`neighbours.find_feature_index`
returns `embedding_feature_index`).
"""
from __future__ import annotations

import html

import numpy as np

from foldblend.config import ConfigError
from foldblend.data.neighbours import nearest_similarity
from foldblend.inference.similar import _member_features, embedding_member, nearest
from foldblend.members.features import features_of
from foldblend.paths import Project

N_RANDOM, N_NOVEL, N_NEIGHBOURS = 8, 4, 4


def pick_test_images(top1: np.ndarray, readable: np.ndarray, seed: int = 0) -> tuple[list[int], list[int]]:
    """(random test rows, test rows least like any training image), disjoint, readable only."""
    rows = np.flatnonzero(readable)
    novel = [int(i) for i in rows[np.argsort(top1[rows], kind="stable")][:N_NOVEL]]
    rest = np.setdiff1d(rows, novel)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(rest, size=min(N_RANDOM, len(rest)), replace=False) if len(rest) else []
    return sorted(int(i) for i in chosen), novel


def _blend_predictions(project: Project, test_ids: np.ndarray) -> dict[str, str]:
    path = project.oof / "_blend" / "blend.npz"
    if not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as z:
        if "test_probs" not in z.files or list(z["test_ids"].astype(str)) != list(test_ids):
            return {}
        classes = [str(c) for c in z["classes"]]
        return {str(i): classes[j] for i, j in zip(test_ids, z["test_probs"].argmax(1))}


def neighbours_section(project: Project, thumbnail, missing) -> str:
    """The panel's HTML (`thumbnail(path)` and `missing(text)` are the report's helpers)."""
    found = embedding_member(project)
    if found is None:
        return missing("no embedding member yet: a fold config with `kind: embedding` (see docs/configs.md) gives its "
                       "features to this panel")
    name, config = found

    try:
        cfg, comp, data, spec, train = _member_features(project, name, config)
        test = features_of(data.test_images, spec, ["identity"], project.feature_cache_dir, device=cfg.device,
                           batch_size=cfg.batch_size, amp=cfg.amp, progress=False)["identity"]
    except (ConfigError, OSError, ValueError, RuntimeError) as e:
        return missing(f"nearest training images unavailable: {e}")
    if not len(test):
        return missing("no test images")
    # every test image's nearest similarity (an HNSW graph on large sets), then the full lists of the few
    # shown: sorting every test row's similarities to every train row would grow as test x train
    chosen, novel = pick_test_images(nearest_similarity(test, train), data.test_ok)
    shown = {j: i for i, j in enumerate(novel + chosen)}
    sims, idx = nearest(test[novel + chosen], train, N_NEIGHBOURS) if shown else (None, None)
    predicted = _blend_predictions(project, data.test_ids)
    test_paths = [comp.root / p for p in comp.test["image"]]

    def row(j: int) -> str:
        pred = predicted.get(str(data.test_ids[j]))
        cards = [f"<figure>{thumbnail(test_paths[j])}<figcaption><div><b>test</b> {html.escape(str(data.test_ids[j]))}"
                 f"</div>" + (f"<div>blend: {html.escape(pred)}</div>" if pred else "") + "</figcaption></figure>"]
        for s, i in zip(sims[shown[j]], idx[shown[j]]):
            cards.append(f"<figure>{thumbnail(comp.root / data.ids[i])}<figcaption>"
                         f"<div>{html.escape(data.classes[data.labels[i]])}</div><div>cos {s:.3f}</div>"
                         f'<div class="path">{html.escape(str(data.ids[i]))}</div></figcaption></figure>')
        return "<div class='grid' style='margin-bottom:14px'>" + "".join(cards) + "</div>"

    return (f'<p class="meta">features of {html.escape(name)} ({html.escape(cfg.model)}, {cfg.img_size} px, '
            f"{html.escape(str(cfg.pretrained))}); each row: a test image, then its {N_NEIGHBOURS} most similar "
            f"training images with their labels and cosine similarity</p>"
            f"<h3>Test images least like any training image</h3>" + "".join(row(j) for j in novel)
            + "<h3>Test images at random</h3>" + "".join(row(j) for j in chosen))

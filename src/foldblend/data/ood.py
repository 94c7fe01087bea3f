"""Out-of-domain suspects: images that do not look like the rest of the set.

Scraped competition sets carry strays - a photograph among illustrations, a screenshot, a scanned page.
No labels say which, so this is unsupervised: a few cheap statistics that separate "kinds" of image
(flat vs. noisy, few vs. many colours, sharp vs. smooth) and an IsolationForest over them. A high score
is a prompt to look, not a verdict; the EDA page shows thumbnails of the top suspects.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from foldblend.data.read import ImageReadError, load_rgb

# Statistics are computed at one fixed size so they compare images, not resolutions.
STAT_SIZE = 128
STAT_NAMES = ["colourfulness", "log_distinct_colours", "top_colour_share", "edge_density", "laplacian_energy",
              "noise_level", "saturation_mean", "saturation_std", "value_mean", "value_std"]
STAT_COLUMNS = [f"stat_{name}" for name in STAT_NAMES]  # as the scan table stores them


def image_stats(rgb: np.ndarray) -> np.ndarray:
    """`len(STAT_NAMES)` float64 statistics of one RGB uint8 image (any size; squashed to STAT_SIZE)."""
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if h * w >= STAT_SIZE * STAT_SIZE else cv2.INTER_LINEAR
    img = cv2.resize(np.ascontiguousarray(rgb), (STAT_SIZE, STAT_SIZE), interpolation=interp)
    f = img.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b  # Hasler & Suesstrunk (2003) colourfulness
    colourfulness = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    # Distinct colours after quantising to 5 bits a channel: illustrations have tens, photographs thousands.
    q = (img >> 3).astype(np.int32)
    codes = (q[..., 0] << 10) | (q[..., 1] << 5) | q[..., 2]
    counts = np.bincount(codes.ravel(), minlength=1 << 15)
    distinct = np.count_nonzero(counts)
    top_share = counts.max() / codes.size
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, 100, 200).mean() / 255.0
    laplacian = np.abs(cv2.Laplacian(gray, cv2.CV_32F)).mean() / 255.0
    # Noise: what a 3x3 median removes; zero on flat colour, large on sensor noise and fine texture.
    noise = np.median(np.abs(gray.astype(np.float32) - cv2.medianBlur(gray, 3).astype(np.float32)))
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32) / 255.0
    s, v = hsv[..., 1], hsv[..., 2]
    return np.array([colourfulness / 255.0, np.log1p(distinct), top_share, edges, laplacian, noise / 255.0,
                     s.mean(), s.std(), v.mean(), v.std()], dtype=np.float64)


def _stats_or_nan(item) -> np.ndarray:
    try:
        rgb = load_rgb(item, draft_size=STAT_SIZE) if isinstance(item, (str, Path)) else np.asarray(item)
        return image_stats(rgb)
    except ImageReadError:
        return np.full(len(STAT_NAMES), np.nan)


def stats_table(images, ok: np.ndarray | None = None, workers: int | None = None,
                progress: bool = True) -> np.ndarray:
    """(N, len(STAT_NAMES)) statistics; NaN rows for unreadable files and rows where `ok` is False."""
    n = len(images)
    ok = np.ones(n, bool) if ok is None else np.asarray(ok, bool)
    out = np.full((n, len(STAT_NAMES)), np.nan)
    todo = np.flatnonzero(ok)
    with ThreadPoolExecutor(workers) as pool:  # cv2 and Pillow release the GIL
        rows = pool.map(lambda i: _stats_or_nan(images[i]), todo)
        for i, row in tqdm(zip(todo, rows), total=len(todo), desc="image stats", unit="img", disable=not progress):
            out[i] = row
    return out


def ood_scores(images, ok: np.ndarray | None = None, *, workers: int | None = None, progress: bool = True,
               random_state: int = 0, n_estimators: int = 300) -> np.ndarray:
    """Out-of-domain score per image, higher = more suspicious; NaN where the image is unreadable or not ok.

    `images`: paths, a list of RGB arrays, or an (N, H, W, 3) array such as `cache.cached_images`' output
    (fastest: nothing is decoded again). Deterministic for a given `random_state`.
    """
    stats = stats_table(images, ok, workers=workers, progress=progress)
    return scores_from_stats(stats, random_state=random_state, n_estimators=n_estimators)


def scores_from_stats(stats: np.ndarray, random_state: int = 0, n_estimators: int = 300) -> np.ndarray:
    """The IsolationForest score of each row of `image_stats` values (NaN rows stay NaN).

    The scan computes the statistics while it decodes each file for its hashes, so scoring a folder
    needs no second decode.
    """
    stats = np.asarray(stats, dtype=np.float64)
    valid = ~np.isnan(stats).any(axis=1)
    scores = np.full(len(stats), np.nan)
    if valid.sum() < 3:  # nothing to compare against
        scores[valid] = 0.0
        return scores
    x = StandardScaler().fit_transform(stats[valid])
    forest = IsolationForest(n_estimators=n_estimators, random_state=random_state).fit(x)
    scores[valid] = -forest.score_samples(x)  # sklearn: lower = more abnormal; we flip it
    return scores


def ood_threshold(scores: np.ndarray) -> float:
    """The threshold chosen from the data: Tukey's far-out fence, Q3 + 3 x IQR of the finite scores.

    IsolationForest's own boundary (score 0.5, `contamination="auto"`) flags 10-30% of homogeneous
    generated sets, so it cannot drop anything unattended; the far-out fence flags 0-1 of 400 on
    such sets and every photograph when a few percent are mixed into flat illustrations. Infinite
    (nothing flagged) with fewer than MIN_FOR_THRESHOLD scores: too few to call anything unusual.
    """
    values = np.asarray(scores, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < MIN_FOR_THRESHOLD:
        return float("inf")
    q1, q3 = np.percentile(values, [25, 75])
    return float(q3 + 3.0 * (q3 - q1))


MIN_FOR_THRESHOLD = 20


def ood_flags(scores: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, float, str]:
    """(flagged (N,) bool, threshold, how it was chosen): images whose score is above the threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    how = "ood_threshold in competition.yaml"
    if threshold is None:
        threshold, how = ood_threshold(scores), "chosen from the data: Q3 + 3 x IQR of the train images' scores"
    with np.errstate(invalid="ignore"):
        flagged = np.isfinite(scores) & (scores > threshold)
    return flagged, float(threshold), how


def ood_report(df: pd.DataFrame, scores: np.ndarray, top: int = 20, stats: np.ndarray | None = None) -> pd.DataFrame:
    """The `top` most suspicious rows: image, score, rank (1 = most suspicious) and, with `stats`, the
    statistic that sets each apart most (in standard deviations from the set's median)."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != len(df):
        raise ValueError(f"{len(scores)} scores for {len(df)} rows; score the same rows as the table")
    valid = np.flatnonzero(~np.isnan(scores))
    order = valid[np.argsort(-scores[valid], kind="stable")][:top]
    out = pd.DataFrame({"image": df["image"].to_numpy()[order], "score": scores[order],
                        "rank": np.arange(1, len(order) + 1)})
    if stats is not None:
        med = np.nanmedian(stats, axis=0)
        spread = np.nanstd(stats, axis=0) + 1e-9
        z = (stats[order] - med) / spread
        k = np.abs(z).argmax(axis=1) if len(order) else np.empty(0, int)
        out["stands_out"] = [f"{STAT_NAMES[j]} {z[i, j]:+.1f} sd" for i, j in enumerate(k)]
    return out

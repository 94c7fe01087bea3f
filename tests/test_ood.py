from __future__ import annotations

import imagegen as gen
import numpy as np
import pandas as pd
import pytest

from foldblend.data.ood import STAT_NAMES, image_stats, ood_report, ood_scores


def _mixed(n_flat: int = 40, photos=(7, 19, 33)):
    """Flat-colour illustrations with a few noisy photographs at known positions."""
    images = [gen.shapes(i, 48) for i in range(n_flat)]
    for k, pos in enumerate(photos):
        images.insert(pos, gen.photo(100 + k, 48))
    return images, list(photos)


def test_stats_separate_flat_from_noisy():
    flat, noisy = image_stats(gen.shapes(1, 48)), image_stats(gen.photo(1, 48))
    assert flat.shape == (len(STAT_NAMES),) and np.isfinite(flat).all()
    s = dict(zip(STAT_NAMES, zip(flat, noisy)))
    assert s["log_distinct_colours"][1] > s["log_distinct_colours"][0] + 2
    assert s["noise_level"][1] > s["noise_level"][0]
    assert s["top_colour_share"][1] < s["top_colour_share"][0]
    assert image_stats(np.zeros((3, 500, 3), np.uint8)).shape == (len(STAT_NAMES),)  # odd shapes are fine


def test_photographs_rank_top_among_illustrations():
    images, photos = _mixed()
    scores = ood_scores(images, progress=False)
    assert scores.shape == (len(images),) and np.isfinite(scores).all()
    assert set(np.argsort(-scores)[:len(photos)]) == set(photos)
    np.testing.assert_array_equal(scores, ood_scores(images, progress=False))  # deterministic


def test_paths_stacked_arrays_unreadable_and_masked(tmp_path):
    images, photos = _mixed(24, photos=(3, 11))
    paths = [gen.save(tmp_path / f"{i}.png", img) for i, img in enumerate(images)]
    paths.append(gen.truncated(tmp_path / "bad.jpg", gen.photo(1, 48)))
    scores = ood_scores(paths, progress=False, workers=2)
    assert np.isnan(scores[-1]) and np.isfinite(scores[:-1]).all()
    assert set(np.argsort(-scores[:-1])[:2]) == set(photos)
    stacked = np.stack(images)  # what cache.cached_images returns
    ok = np.ones(len(images), bool)
    ok[0] = False
    masked = ood_scores(stacked, ok=ok, progress=False)
    assert np.isnan(masked[0]) and set(np.argsort(-np.nan_to_num(masked, nan=-1))[:2]) == set(photos)
    assert np.isnan(ood_scores(images[:1] + [np.zeros((4, 4, 3), np.uint8)], ok=[True, False],
                               progress=False)).sum() == 1


def test_report_ranks_top_rows_and_names_the_outlying_stat():
    images, photos = _mixed()
    scores = ood_scores(images, progress=False)
    df = pd.DataFrame({"image": [f"img{i}.png" for i in range(len(images))]})
    scores[0] = np.nan
    from foldblend.data.ood import stats_table
    rep = ood_report(df, scores, top=5, stats=stats_table(images, progress=False))
    assert list(rep.columns) == ["image", "score", "rank", "stands_out"]
    assert len(rep) == 5 and rep["rank"].tolist() == [1, 2, 3, 4, 5] and rep["score"].is_monotonic_decreasing
    assert set(rep["image"][:3]) == {f"img{p}.png" for p in photos} and "img0.png" not in set(rep["image"])
    assert rep["stands_out"].str.contains(" sd").all()
    with pytest.raises(ValueError, match="scores for"):
        ood_report(df, scores[:3])


def test_scan_table_carries_the_statistics_so_nothing_decodes_twice(tmp_path):
    """The scan computes image_stats while hashing; scoring its columns finds the photographs too."""
    from foldblend.data.ood import STAT_COLUMNS, scores_from_stats
    from foldblend.scanning.inventory import scan_images

    images, photos = _mixed(24, photos=(3, 11))
    paths = [gen.save(tmp_path / f"{i:02d}.png", img) for i, img in enumerate(images)]
    paths.append(gen.truncated(tmp_path / "bad.jpg", gen.photo(1, 48)))
    table = scan_images(paths, tmp_path, cache_csv=tmp_path / "cache.csv", progress=False)
    stats = table[STAT_COLUMNS].to_numpy(np.float64)
    assert np.isnan(stats[-1]).all() and np.isfinite(stats[:-1]).all()
    scores = scores_from_stats(stats)
    assert np.isnan(scores[-1]) and set(np.argsort(-np.nan_to_num(scores, nan=-1))[:2]) == set(photos)
    cached = scan_images(paths, tmp_path, cache_csv=tmp_path / "cache.csv", progress=False)
    np.testing.assert_allclose(cached[STAT_COLUMNS].to_numpy(np.float64), stats, rtol=1e-12)  # from the cache

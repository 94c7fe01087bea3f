from __future__ import annotations

import os
import time

import imagegen as gen
import numpy as np
import pytest

from foldblend.data import cache as cache_mod
from foldblend.data.cache import GREY, cache_failures, cached_images, resize_square


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "input"
    paths = [gen.save(root / f"{i}.png", gen.scene(i, 24 + 12 * i)) for i in range(4)]   # 24..60 px
    paths.append(gen.save(root / "wide.JPG", gen.photo(5, 96)[:40], quality=95))        # 96x40, upper-case ext
    paths.append(gen.truncated(root / "broken.jpg", gen.photo(6, 64)))
    paths.append(root / "missing.png")
    return root, paths


def test_shapes_dtype_readonly_memmap_and_ok_mask(images, tmp_path):
    root, paths = images
    arr, ok = cached_images(paths, 32, tmp_path / "cache", progress=False, workers=2)
    assert isinstance(arr, np.memmap) and arr.shape == (7, 32, 32, 3) and arr.dtype == np.uint8
    assert not arr.flags.writeable
    assert ok.tolist() == [True] * 5 + [False, False]
    assert (arr[5] == GREY).all() and (arr[6] == GREY).all()
    expected = resize_square(gen.scene(3, 60), 32)
    np.testing.assert_array_equal(arr[3], expected)  # PNG is lossless: exactly the resized image
    fails = cache_failures(paths, 32, tmp_path / "cache")
    assert set(fails) == {paths[5].as_posix(), paths[6].as_posix()} and "cannot" in fails[paths[6].as_posix()]


def test_resize_policy():
    small, big = gen.scene(1, 16), gen.photo(1, 128)
    assert resize_square(small, 32).shape == (32, 32, 3)
    assert resize_square(big, 32).shape == (32, 32, 3)
    assert resize_square(big[:, :50], 64).shape == (64, 64, 3)  # squash, not crop
    flat = np.full((40, 40, 3), 200, np.uint8)
    assert (resize_square(flat, 16) == 200).all() and (resize_square(flat, 64) == 200).all()


def test_warm_open_reuses_the_file_without_decoding(images, tmp_path, monkeypatch):
    root, paths = images
    first, _ = cached_images(paths, 32, tmp_path / "cache", progress=False)
    files = sorted((tmp_path / "cache").iterdir())
    assert [f.suffix for f in files] == [".npz", ".npy"] and not any(".tmp" in f.name for f in files)
    monkeypatch.setattr(cache_mod, "load_rgb", lambda *a, **k: pytest.fail("warm open must not decode"))
    t = time.perf_counter()
    again, ok = cached_images(paths, 32, tmp_path / "cache", progress=False)
    assert time.perf_counter() - t < 1.0
    np.testing.assert_array_equal(again, first)


def test_changed_file_size_or_list_invalidates(images, tmp_path):
    root, paths = images
    cache_dir = tmp_path / "cache"
    a, _ = cached_images(paths, 32, cache_dir, progress=False)
    gen.save(paths[0], np.zeros((30, 30, 3), np.uint8))
    b, _ = cached_images(paths, 32, cache_dir, progress=False)
    assert (b[0] == 0).all() and not (a[0] == 0).all()
    os.utime(paths[1], ns=(5, 5))  # touched: a new key, even with the same bytes
    cached_images(paths, 32, cache_dir, progress=False)
    cached_images(paths[:3], 32, cache_dir, progress=False)
    c, _ = cached_images(paths, 16, cache_dir, progress=False)
    assert c.shape == (7, 16, 16, 3)
    assert len(list(cache_dir.glob("*.npy"))) == 5


def test_root_makes_the_key_independent_of_the_project_location(images, tmp_path):
    root, paths = images
    k1 = cache_mod.cache_key(paths, 32, root)
    moved = tmp_path / "moved"
    root.rename(moved)
    moved_paths = [moved / p.relative_to(root) for p in paths]
    assert cache_mod.cache_key(moved_paths, 32, moved) == k1
    assert cache_mod.cache_key(moved_paths, 32) != k1


def test_interrupted_build_leaves_no_cache(images, tmp_path, monkeypatch):
    root, paths = images
    calls = []

    def boom(path, **kw):
        calls.append(path)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return gen.scene(0, 20)
    monkeypatch.setattr(cache_mod, "load_rgb", boom)
    with pytest.raises(KeyboardInterrupt):
        cached_images(paths, 32, tmp_path / "cache", progress=False, workers=1)
    assert list((tmp_path / "cache").glob("*")) == []


def test_caches_unused_since_a_time_are_removed(tmp_path):
    """After every fold config ran, caches none of them opened are obsolete; used ones stay."""
    import os
    import time

    from foldblend.data import cache as cache_mod

    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = [gen.save(folder / f"{i}.png", gen.shapes(i, 24)) for i in range(3)]
    for size in (8, 12, 16):
        cache_mod.cached_images(paths, size, tmp_path / "c", progress=False)
    old = time.time() - 100
    for meta in (tmp_path / "c").glob("*.meta.npz"):
        os.utime(meta, (old, old))
    start = time.time() - 1
    cache_mod.cached_images(paths, 12, tmp_path / "c", progress=False)  # opened in this run: kept
    gone = cache_mod.remove_unused_caches(tmp_path / "c", since=start)
    assert sorted(p.name.split("_")[1] for p in gone) == ["16px", "8px"]
    assert [p.name.split("_")[1] for p in (tmp_path / "c").glob("*.npy")] == ["12px"]
    images, ok = cache_mod.cached_images(paths, 12, tmp_path / "c", progress=False)
    assert ok.all() and images.shape == (3, 12, 12, 3)

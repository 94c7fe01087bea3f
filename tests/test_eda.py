from __future__ import annotations

import re

import cv2
import imagegen as gen
import numpy as np
import pandas as pd

from foldblend.data.dedup import duplicate_groups
from foldblend.data.ood import ood_scores
from foldblend.scanning.eda import write_eda
from foldblend.scanning.inventory import scan_images


def _project(tmp_path):
    root = tmp_path / "input"
    paths, labels = [], []
    for i in range(9):
        cls = "cat" if i < 6 else "dög & <b>"  # imbalance 6:3, and a label that needs escaping
        paths.append(gen.save(root / "train" / f"{i}.png", gen.shapes(i, 32)))
        labels.append(cls)
    # resized copy of 0.png, other label
    paths.append(gen.save(root / "train" / "copy.png", cv2.resize(gen.shapes(0, 32), (48, 48))))
    labels.append("dög & <b>")
    paths.append(gen.save(root / "train" / "photo.png", gen.photo(1, 32)))
    labels.append("cat")
    paths.append(gen.truncated(root / "test" / "broken.jpg", gen.photo(2, 64)))
    labels.append(np.nan)
    paths.append(gen.save(root / "test" / "t1.png", gen.shapes(20, 32)))
    labels.append(np.nan)
    return root, paths, pd.Series(labels)


def test_writes_self_contained_page_with_every_section(tmp_path):
    root, paths, labels = _project(tmp_path)
    df = scan_images(paths, root, progress=False)
    groups = duplicate_groups(df)
    scores = ood_scores([root / p for p in df["image"]], progress=False)
    out = write_eda(df, groups, scores, labels, tmp_path / "folds" / "eda.html", root)
    page = out.read_text(encoding="utf-8")
    for section in ("Class balance", "Sizes, formats, modes", "Unreadable files (1)", "Duplicate groups",
                    "Out-of-domain suspects"):
        assert section in page
    assert "Imbalance ratio (largest / smallest class): <b>1.8</b>" in page  # cat 7, dög 4
    assert "test/broken.jpg" in page and "cannot decode" in page
    assert "labels disagree" in page  # 0.png (cat) and copy.png (dög) are one group
    assert "dög &amp; &lt;b&gt;" in page and "<b>dög" not in page
    assert page.count("data:image/png;base64,") >= 5  # charts
    assert page.count("data:image/jpeg;base64,") >= 3  # thumbnails
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"src=[\"'](?!data:)", page)  # every image inline
    assert not list((tmp_path / "folds").glob(".*tmp*"))


def test_optional_parts_missing(tmp_path):
    root, paths, _ = _project(tmp_path)
    df = scan_images(paths, root, progress=False)
    page = write_eda(df, None, None, None, tmp_path / "eda.html", root).read_text(encoding="utf-8")
    assert "No labels given" in page and page.count("Not computed") == 3  # duplicates, out-of-domain, shift

"""`foldblend report`: one self-contained HTML page, robust to missing parts, and legible in a browser."""
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import imagegen as gen
import numpy as np
import pandas as pd
import pytest

from foldblend.artifacts import save_member
from foldblend.paths import Project
from foldblend.stages.report import TOP_LOSSES, write_report

HEADINGS = ["Experiments: CV and learning curves", "Blend", "Per-class F1", "Confusion matrix",
            "Most confident mistakes", "Nearest training images", "Submissions"]


def make_run(root: Path, n_classes: int = 4, per_class: int = 6, folds: int = 3, blend: bool = True,
             submissions: bool = True) -> Project:
    """A finished run's artifacts without training: input images, two members, epoch logs, blend, log."""
    project = Project.at(root)
    rng = np.random.default_rng(0)
    classes = [f"class_{c:02d}_{'long_name_' * (c % 3)}x" for c in range(n_classes)]
    ids, labels = [], []
    for c, name in enumerate(classes):
        for i in range(per_class):
            rel = f"train/{name}/img_{i}.png"
            gen.save(project.input / rel, gen.shapes(c * 1000 + i, 40))
            ids.append(rel)
            labels.append(c)
    labels = np.array(labels)
    fold = np.arange(len(ids)) % folds
    members = {}
    for exp, skill in (("cnn_small", 0.8), ("resnet10t", 0.4)):
        views = ["identity", "hflip"]
        logits = rng.normal(0, 1, (len(views), len(ids), n_classes)).astype(np.float32)
        logits[:, np.arange(len(ids)), labels] += skill
        scores = {"overall": {"macro_f1": 0.5 + skill / 10, "accuracy": 0.6, "log_loss": 1.1},
                  "per_fold": {str(k): {"macro_f1": 0.5, "accuracy": 0.6, "log_loss": 1.0} for k in range(folds)},
                  "per_view": {v: {"macro_f1": 0.55, "accuracy": 0.6, "log_loss": 1.0} for v in views},
                  "views": views, "n_images": len(ids), "model": exp}
        save_member(project.oof_dir(exp), classes=classes, ids=ids, labels=labels, fold=fold, views=views,
                    oof_logits=logits, test_ids=["t0"], test_logits=np.zeros((folds, 2, 1, n_classes)),
                    scores=scores)
        members[exp] = logits
        for k in range(folds):
            epochs = np.arange(1, 6)
            log = pd.DataFrame({"epoch": epochs, "train_loss": 2.0 / epochs + k * 0.05, "val_loss": 1.5 / epochs + 0.2,
                                "val_macro_f1": 0.2 + 0.1 * epochs, "val_accuracy": 0.3 + 0.1 * epochs, "lr": 1e-3})
            path = project.model_dir(exp, k) / "log.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            log.to_csv(path, index=False)
    if blend:
        from foldblend.metrics import softmax

        probs = 0.6 * softmax(members["cnn_small"]).mean(0) + 0.4 * softmax(members["resnet10t"]).mean(0)
        out = project.oof / "_blend"
        out.mkdir(parents=True)
        np.savez(out / "blend.npz", ids=np.array(ids), labels=labels, test_ids=np.array(["t0"]), oof_probs=probs,
                 test_probs=np.full((1, n_classes), 1 / n_classes), classes=np.array(classes))
        (out / "blend.json").write_text(json.dumps({
            "method": "greedy", "members": ["cnn_small", "resnet10t"], "weights": {"cnn_small": 0.6, "resnet10t": 0.4},
            "biases": None, "cv_in_sample": {"macro_f1": 0.81, "accuracy": 0.8, "log_loss": 0.7},
            "cv_nested": {"macro_f1": 0.78, "accuracy": 0.79, "log_loss": 0.72},
            "member_scores": {"cnn_small": {"macro_f1": 0.75}, "resnet10t": {"macro_f1": 0.65}},
            "warnings": ["nested CV is 0.03 below in-sample"], "classes": classes}))
    if submissions:
        project.submissions.mkdir(parents=True)
        pd.DataFrame({"file": ["blend_cv0.7800.csv", "cnn_small_cv0.7500.csv"],
                      "time": ["2024-05-01T10:00:00", "2024-05-02T11:00:00"], "cv": [0.78, 0.75],
                      "lb": [0.771, None], "format": ["label", "label"]}).to_csv(project.submissions / "log.csv",
                                                                                  index=False)
    return project


def test_report_is_self_contained_and_complete(tmp_path):
    path = write_report(make_run(tmp_path))
    assert path == tmp_path / "oof" / "report.html"
    page = path.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and 'src="file:' not in page
    assert not re.search(r'src="(?!data:image/png;base64,)', page)  # every image is inlined
    for heading in HEADINGS:
        assert f">{heading}</h2>" in page
    assert page.count('class="plot"') == 2 + 1 + 1  # learning curves x2, per-class F1, confusion matrix
    with np.load(tmp_path / "oof" / "_blend" / "blend.npz") as z:
        n_wrong = int((z["oof_probs"].argmax(1) != z["labels"]).sum())
    assert n_wrong > 0 and page.count("<figure>") == min(TOP_LOSSES, n_wrong)  # mistakes as thumbnails
    assert "blend_cv0.7800.csv" in page and "0.7710" in page
    assert "nested (honest)" in page and "warning: nested CV" in page
    assert "no blend yet" not in page and "no submissions yet" not in page


def test_report_says_what_is_missing(tmp_path):
    page = write_report(make_run(tmp_path, blend=False, submissions=False)).read_text(encoding="utf-8")
    for heading in HEADINGS:
        assert f">{heading}</h2>" in page
    assert "no blend yet" in page and "no submissions yet" in page
    assert "no embedding member yet" in page  # the nearest-images panel says how to get one
    assert "cnn_small on its out-of-fold predictions" in page  # the best member stands in for the blend
    assert page.count("<figure>") > 0


def test_report_of_an_empty_project(tmp_path):
    page = write_report(Project.at(tmp_path)).read_text(encoding="utf-8")
    assert "no experiments trained yet" in page and "no OOF predictions yet" in page


CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary to render the report")
def test_report_renders_in_chromium(tmp_path):
    """Renders a 42-class report headless; the screenshot is kept next to it to be looked at."""
    path = write_report(make_run(tmp_path, n_classes=42, per_class=4, folds=5))
    shot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--window-size=1400,4000", f"--screenshot={shot}",
                        path.as_uri()], check=True, capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1400, 4000)
        # the page is not blank: many distinct colours (plots, thumbnails) were painted
        assert len(im.convert("RGB").resize((350, 1000)).getcolors(1 << 20)) > 200

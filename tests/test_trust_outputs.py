"""What people read about the shift check: eda.html, the summary and report.html say whether CV is
optimistic, show the two similarity distributions and the test-matched CV beside the nested one."""
from __future__ import annotations

import json
import re

import imagegen as gen
import numpy as np
from test_report import make_run
from test_shift import concept_embeddings

from foldblend.artifacts import write_json, write_npz
from foldblend.data.shift import check_shift
from foldblend.data.split import assign_folds
from foldblend.ensemble.confidence import confidence_score
from foldblend.ensemble.matched import matched_score
from foldblend.scanning.eda import write_eda
from foldblend.scanning.inventory import scan_images
from foldblend.stages.report import write_report
from foldblend.stages.summary import print_summary


def _concept_check(tmp_path):
    """A shift check of a concept split, with an image file per train row for the thumbnails."""
    x, concept, labels = concept_embeddings(seed=4)
    test = concept >= 36
    train = ~test
    result, arrays = check_shift(x[train], x[test], np.arange(train.sum()),
                                 assign_folds(labels[train], np.arange(train.sum()), 5, 42), 5)
    images = [f"train/{labels[i]}/c{concept[i]:02d}_{i}.png" for i in np.flatnonzero(train)]
    for i, name in enumerate(images):
        gen.save(tmp_path / name, gen.shapes(int(concept[train][i]), 24))
    result["semantic"] = {"threshold": result["match"]["threshold"],
                          "how": "matched to the test's neighbour similarities",
                          "groups_added": result["match"]["groups_added"], "images_in_added": 100,
                          "largest_group": result["match"]["largest_group"], "applied": True}
    result["dedup"] = "auto"
    arrays.update(semantic_groups=arrays["matched_groups"], phash_groups=np.arange(train.sum()),
                  rows=np.arange(train.sum()))
    return result, arrays, images


def test_eda_shows_the_verdict_the_distributions_and_the_semantic_groups(tmp_path):
    result, arrays, images = _concept_check(tmp_path)
    df = scan_images([tmp_path / p for p in images], tmp_path, progress=False)
    page = write_eda(df, None, None, None, tmp_path / "eda.html", tmp_path,
                     shift={"result": result, "arrays": arrays, "mode": "auto", "train_images": images}
                     ).read_text(encoding="utf-8")
    assert "WARNING: CV is optimistic" in page
    assert 'alt="similarity distributions"' in page
    shown = re.findall(r"<div class='grp'>group of (\d+) images", page)
    assert len(shown) == min(30, result["match"]["groups_added"]) and all(int(n) > 1 for n in shown)


def test_eda_is_quiet_on_no_shift(tmp_path):
    x, _, labels = concept_embeddings(seed=5)
    test = np.random.default_rng(5).random(len(x)) < 0.25
    result, arrays = check_shift(x[~test], x[test], np.arange((~test).sum()),
                                 assign_folds(labels[~test], np.arange((~test).sum()), 5, 42), 5)
    result.update(semantic=None, dedup="auto")
    images = ["a.png"]
    gen.save(tmp_path / "a.png", gen.shapes(0, 24))
    df = scan_images([tmp_path / "a.png"], tmp_path, progress=False)
    page = write_eda(df, None, None, None, tmp_path / "eda.html", tmp_path,
                     shift={"result": result, "arrays": arrays, "mode": "auto", "train_images": images}
                     ).read_text(encoding="utf-8")
    assert "no sign that CV is optimistic" in page and "WARNING" not in page


def _add_check_to_run(project, optimistic: bool):
    """shift.json, folds.json's grouping, similarity.npz and the blend's test-matched CV of a finished run."""
    with np.load(project.oof / "_blend" / "blend.npz") as z:
        ids, labels, probs = z["ids"], z["labels"], z["oof_probs"]
    rng = np.random.default_rng(0)
    oof_sim, test_sim = rng.uniform(0.8, 0.95, len(ids)), rng.uniform(0.6, 0.9, 60)
    summary = {"n": 10, "median": 0.9, "q1": 0.85, "q3": 0.93}
    write_json(project.folds_dir / "shift.json", {
        "n_train": len(ids), "n_test": 60, "oof_similarity": summary, "test_similarity": {**summary, "median": 0.75},
        "closer_share": 0.86 if optimistic else 0.48, "p_value": 1e-9, "distance": 0.07, "optimistic": optimistic,
        "adversarial_auc": {"embeddings": 0.6, "statistics": 0.55}, "match": None, "semantic": None, "dedup": "group"})
    write_json(project.folds_dir / "folds.json", {"grouping": {"dedup": "group", "semantic_threshold": None,
                                                               "user_groups": 0}})
    write_npz(project.folds_dir / "similarity.npz", key=np.asarray("k"), ids=ids, oof_similarity=oof_sim,
              test_ids=np.array(["t0"]), test_similarity=test_sim, holdout_ids=np.array([], str),
              holdout_similarity=np.zeros(0))
    matched = matched_score(labels, probs, oof_sim, test_sim, np.arange(len(ids)), probs.shape[1], n_boot=20)
    blend_json = project.oof / "_blend" / "blend.json"
    blend = json.loads(blend_json.read_text())
    fold_test = np.stack([np.roll(probs[:60], k, axis=0) for k in range(3)])  # 3 fold pipelines on 60 test images
    confidence = confidence_score(labels, probs, np.arange(len(ids)) % 3, fold_test, n_boot=20)
    alone = {"cnn_small": {"macro_f1": confidence["macro_f1"] + 0.1, "std": 0.01},
             "resnet10t": {"macro_f1": confidence["macro_f1"] - 0.1, "std": 0.01}}
    blend_json.write_text(json.dumps({**blend, "test_matched": matched, "confidence": confidence,
                                      "member_confidence": alone}))
    return matched, confidence


def test_summary_and_report_put_the_test_matched_cv_beside_the_nested_one(tmp_path, capsys):
    project = make_run(tmp_path)
    matched, confidence = _add_check_to_run(project, optimistic=True)
    print_summary(project)
    out = capsys.readouterr().out
    assert re.search(rf"nested CV macro-F1 0\.7800 · test-matched {matched['macro_f1']:.4f} ± \d\.\d{{4}}"
                     rf"( \(fragile[^)]*\))? · confidence estimate {confidence['macro_f1']:.4f} ± \d\.\d{{4}}", out)
    assert "WARNING: CV is optimistic (scan)" in out and "set dedup: auto" in out
    assert "confidence estimate reads the test off the fold models" in out
    assert "note: cnn_small alone has a higher confidence estimate on the test than the blend" in out
    page = write_report(project).read_text(encoding="utf-8")
    assert ">Can I trust the CV?</h2>" in page
    assert "WARNING: CV is optimistic" in page and 'alt="similarity distributions"' in page
    assert (f"test-matched {matched['macro_f1']:.4f}" in page
            and f"confidence estimate {confidence['macro_f1']:.4f}" in page)
    assert "ATC" in page  # the report says what the confidence estimate is
    assert "note: cnn_small alone has a higher confidence estimate" in page and "<th>confidence estimate</th>" in page


def test_no_warning_without_a_shift(tmp_path, capsys):
    project = make_run(tmp_path)
    _add_check_to_run(project, optimistic=False)
    print_summary(project)
    out = capsys.readouterr().out
    assert "test-matched" in out and "WARNING" not in out
    page = write_report(project).read_text(encoding="utf-8")
    assert "no sign that CV is optimistic" in page and "WARNING" not in page

"""End to end through the real CLI stages on tiny generated competitions (CPU, 1 epoch, seconds)."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from foldblend.cli import main
from foldblend.paths import Project

pytestmark = pytest.mark.slow


def run(root, *args) -> None:
    assert main(["--root", str(root), *args]) == 0, f"foldblend {' '.join(args)} failed"


def pipeline(root) -> None:
    for stage in (["scan", "--quiet"], ["folds", "--quiet"], ["train", "--quiet"], ["blend"], ["submit"], ["summary"]):
        run(root, *stage)


def only_submission(root):
    files = [p for p in (root / "submissions").glob("*.csv") if p.name != "log.csv"]
    assert len(files) == 1, files
    return files[0]


def test_pipeline_writes_a_valid_submission_and_reruns_as_a_no_op(tiny_project):
    pipeline(tiny_project)
    project = Project.at(tiny_project)
    sample = (tiny_project / "input" / "sample_submission.csv").read_text().splitlines()
    sub_path = only_submission(tiny_project)
    sub = sub_path.read_text().splitlines()
    assert sub[0] == sample[0] == "Id,Expected"
    assert [line.split(",")[0] for line in sub[1:]] == [line.split(",")[0] for line in sample[1:]]
    assert {line.split(",")[1] for line in sub[1:]} <= {"class_0", "class_1", "class_2"}

    # the member contract
    with np.load(project.oof_dir("tiny") / "oof.npz") as z:
        folds = pd.read_csv(project.folds_csv)
        assert list(z["ids"]) == folds["image"].tolist()
        assert z["logits"].shape == (2, 36, 3) and z["logits"].dtype == np.float32
        assert list(z["views"]) == ["identity", "hflip"]
    with np.load(project.oof_dir("tiny") / "test.npz") as z:
        assert z["logits"].shape == (2, 2, 9, 3)
        assert list(z["ids"]) == [line.split(",")[0] for line in sample[1:]]
    scores = json.loads((project.oof_dir("tiny") / "scores.json").read_text())
    assert set(scores["per_view"]) == {"identity", "hflip"} and set(scores["per_fold"]) == {"0", "1"}
    assert scores["classes"] == ["class_0", "class_1", "class_2"]

    # a second run retrains nothing: every fold's weights keep their mtime
    weights = sorted((tiny_project / "models" / "tiny").glob("fold_*/best.pt"))
    before = [os.stat(p).st_mtime_ns for p in weights]
    run(tiny_project, "train", "--quiet")
    assert [os.stat(p).st_mtime_ns for p in weights] == before

    # a changed config retrains
    cfg = tiny_project / "folds" / "tiny.yaml"
    cfg.write_text(cfg.read_text().replace("lr: 0.01", "lr: 0.02"))
    run(tiny_project, "train", "--quiet")
    assert [os.stat(p).st_mtime_ns for p in weights] != before


def test_messy_competition_still_gets_a_complete_submission(tiny_project):
    """Broken, junk and duplicated files: reported, left out of training, and every test id predicted."""
    inp = tiny_project / "input"
    good = inp / "train" / "class_1" / "class_1_000.png"
    (inp / "train" / "class_1" / "broken.png").write_bytes(good.read_bytes()[:60])  # truncated
    (inp / "train" / "class_0" / "notes.txt").write_text("not an image")
    (inp / "train" / "class_0" / ".DS_Store").write_bytes(b"\0\1\2")
    dup = inp / "train" / "class_2" / "class_2_copy.png"
    dup.write_bytes((inp / "train" / "class_2" / "class_2_000.png").read_bytes())
    (inp / "testset" / "t004.png").write_bytes(b"")  # an unreadable test image
    pipeline(tiny_project)

    folds = pd.read_csv(tiny_project / "folds" / "folds.csv")
    assert "train/class_1/broken.png" not in set(folds["image"])
    a, b = (folds.set_index("image").loc[f"train/class_2/{n}", "fold"] for n in ("class_2_000.png", "class_2_copy.png"))
    assert a == b, "an exact duplicate must sit in the same fold as its original"

    sub = pd.read_csv(only_submission(tiny_project), dtype=str)
    assert len(sub) == 9 and sub["Expected"].notna().all()
    prior_class = folds["label"].value_counts().idxmax()
    assert sub.set_index("Id").loc["t004.png", "Expected"] == prior_class
    scan = pd.read_csv(tiny_project / "folds" / "scan.csv", keep_default_na=False)
    why = scan.set_index("image")["why"]
    assert why["train/class_1/broken.png"] and why["testset/t004.png"]
    assert (tiny_project / "folds" / "eda.html").exists()


def _write(path, img, fmt="PNG"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format=fmt)


def _images(n_classes=3, per_class=10, seed=1):
    from conftest import class_image

    rng = np.random.default_rng(seed)
    return [(c, class_image(c, rng, (int(rng.integers(24, 48)), int(rng.integers(24, 48)))))
            for c in range(n_classes) for _ in range(per_class)]


NAMES = ["abraham_grampa_simpson", "bart_simpson", "lisa_simpson"]


def _simpsons(root):
    """Kaggle's journey-springfield layout: nested train folder, nested testset, JPEGs, Id,Expected."""
    for i, (c, img) in enumerate(_images()):
        _write(root / "input" / "train" / "simpsons_dataset" / NAMES[c] / f"pic_{i:04d}.JPG", img, "JPEG")
    ids = []
    for j, (c, img) in enumerate(_images(per_class=3, seed=2)):
        ids.append(f"img{j}.jpg")
        _write(root / "input" / "testset" / "testset" / ids[-1], img, "JPEG")
    (root / "input" / "sample_submission.csv").write_text("Id,Expected\n" + "".join(f"{i},bart_simpson\n" for i in ids))
    return {"header": "Id,Expected", "labels": set(NAMES)}


def _csv_layout(root):
    """train.csv (id,label) + train_images/<id>.png, test_images/, sample ids without extension."""
    rows = []
    for i, (c, img) in enumerate(_images()):
        rows.append(f"{i:05d},{NAMES[c]}")
        _write(root / "input" / "train_images" / f"{i:05d}.png", img)
    (root / "input" / "train.csv").write_text("image_id,label\n" + "\n".join(rows) + "\n")
    ids = [f"t{j:04d}" for j in range(9)]
    for j, (c, img) in enumerate(_images(per_class=3, seed=2)):
        _write(root / "input" / "test_images" / f"{ids[j]}.png", img)
    (root / "input" / "sample_submission.csv").write_text("image_id,label\n" + "".join(f"{i},x\n" for i in ids))
    return {"header": "image_id,label", "labels": set(NAMES)}


def _class_id_layout(root):
    """Illustration style: class id = sub-folder order, written as integers because the sample has them."""
    for i, (c, img) in enumerate(_images()):
        _write(root / "input" / "train" / ["anime", "comic", "sketch"][c] / f"{i}.png", img)
    ids = [f"{j}.png" for j in range(9)]
    for j, (c, img) in enumerate(_images(per_class=3, seed=2)):
        _write(root / "input" / "test" / ids[j], img)
    (root / "input" / "sample_submission.csv").write_text("id,class\n" + "".join(f"{i},0\n" for i in ids))
    return {"header": "id,class", "labels": {"0", "1", "2"}}


def _probs_layout(root):
    """One probability column per class, in the sample's (not sorted) column order."""
    _simpsons(root)
    ids = [f"img{j}.jpg" for j in range(9)]
    cols = ["lisa_simpson", "abraham_grampa_simpson", "bart_simpson"]
    (root / "input" / "sample_submission.csv").write_text(
        "Id," + ",".join(cols) + "\n" + "".join(f"{i},0.3,0.3,0.4\n" for i in ids))
    return {"header": "Id," + ",".join(cols), "labels": None}


@pytest.mark.parametrize("layout", [_simpsons, _csv_layout, _class_id_layout, _probs_layout],
                         ids=["simpsons", "csv", "class_id", "probs"])
def test_unseen_layouts_run_end_to_end(tmp_path, layout):
    from conftest import TINY_CONFIG

    expect = layout(tmp_path)
    (tmp_path / "input" / "competition.yaml").write_text("n_splits: 2\n")
    (tmp_path / "folds").mkdir(exist_ok=True)
    (tmp_path / "folds" / "tiny.yaml").write_text(TINY_CONFIG)
    pipeline(tmp_path)
    sample = pd.read_csv(tmp_path / "input" / "sample_submission.csv", dtype=str, keep_default_na=False)
    sub_path = only_submission(tmp_path)
    sub = pd.read_csv(sub_path, dtype=str, keep_default_na=False)
    assert sub_path.read_text().splitlines()[0] == expect["header"]
    assert sub.iloc[:, 0].tolist() == sample.iloc[:, 0].tolist()
    if expect["labels"] is not None:
        assert set(sub.iloc[:, 1]) <= expect["labels"]
    else:
        np.testing.assert_allclose(sub.iloc[:, 1:].astype(float).sum(axis=1), 1.0, atol=1e-6)


def test_folds_name_classes_that_one_duplicate_group_swallows(capsys):
    from foldblend.data.split import classes_unseen_in_training
    from foldblend.stages.folds import _warn_unseen_classes

    folds = pd.DataFrame({"image": list("abcdefgh"), "label": ["x"] * 4 + ["y"] * 4,
                          "group": [0, 0, 0, 0, 1, 2, 3, 4], "fold": [1, 1, 1, 1, 0, 1, 0, 1]})
    assert classes_unseen_in_training(folds) == {"x": 1}
    _warn_unseen_classes(folds)
    assert "x (fold 1)" in capsys.readouterr().out
    assert classes_unseen_in_training(folds.assign(fold=[0, 1] * 4)) == {}


def _mtimes(paths):
    return [os.stat(p).st_mtime_ns for p in paths]


def test_tta_or_test_image_changes_predict_again_without_retraining(tiny_project):
    """Review findings: a changed test image or TTA list must reach the submission, and cost no retraining."""
    run(tiny_project, "scan", "--quiet")
    run(tiny_project, "folds", "--quiet")
    run(tiny_project, "train", "--quiet")
    member = tiny_project / "oof" / "tiny"
    weights = sorted((tiny_project / "models" / "tiny").glob("fold_*/best.pt"))
    # last.pt, log.csv: only training writes them
    training = sorted((tiny_project / "models" / "tiny").glob("fold_*/l*"))
    trained = _mtimes(training)
    with np.load(member / "test.npz") as z:
        before = z["logits"].copy()

    # a corrected test image under the same id
    test_img = tiny_project / "input" / "testset" / "t000.png"
    other = tiny_project / "input" / "testset" / "t001.png"
    test_img.write_bytes(other.read_bytes())
    run(tiny_project, "train", "--quiet")
    assert _mtimes(training) == trained
    with np.load(member / "test.npz") as z:
        assert not np.allclose(z["logits"][:, :, 0], before[:, :, 0])
        np.testing.assert_allclose(z["logits"][:, :, 0], z["logits"][:, :, 1], rtol=1e-5, atol=1e-5)

    # another TTA list: new views in the member, same weights
    cfg = tiny_project / "folds" / "tiny.yaml"
    cfg.write_text(cfg.read_text().replace("tta: [identity, hflip]", "tta: [identity, vflip, zoom]"))
    run(tiny_project, "train", "--quiet")
    assert _mtimes(training) == trained and len(training) == 4
    with np.load(member / "oof.npz") as z:
        assert list(z["views"]) == ["identity", "vflip", "zoom"]
    from foldblend.inference.load import load_predictor

    folds_models = load_predictor(Project.at(tiny_project), "tiny").members["tiny"]
    assert [fm.views for fm in folds_models] == [["identity", "vflip", "zoom"]] * 2
    import shutil  # and so does a checkpoint copied out of the project, without its done.json

    shutil.copy(weights[0], tiny_project / "copied.pt")
    copied = load_predictor(Project.at(tiny_project / "elsewhere"), str(tiny_project / "copied.pt"))
    assert copied.members[str(tiny_project / "copied.pt")][0].views == ["identity", "vflip", "zoom"]


def test_class_order_and_split_changes_retrain_and_drop_stale_folds(tiny_project):
    run(tiny_project, "scan", "--quiet")
    run(tiny_project, "folds", "--quiet")
    run(tiny_project, "train", "--quiet")
    weights = sorted((tiny_project / "models" / "tiny").glob("fold_*/best.pt"))
    trained = _mtimes(weights)
    comp_yaml = tiny_project / "input" / "competition.yaml"
    comp_yaml.write_text("n_splits: 2\nclasses: [class_2, class_0, class_1]\n")
    run(tiny_project, "folds", "--quiet")
    run(tiny_project, "train", "--quiet")
    assert _mtimes(weights) != trained, "a new class order must retrain (class indices changed)"
    scores = json.loads((tiny_project / "oof" / "tiny" / "scores.json").read_text())
    assert scores["classes"] == ["class_2", "class_0", "class_1"]

    comp_yaml.write_text("n_splits: 3\n")
    run(tiny_project, "folds", "--quiet")
    run(tiny_project, "train", "--quiet")
    comp_yaml.write_text("n_splits: 2\n")
    run(tiny_project, "folds", "--quiet")
    run(tiny_project, "train", "--quiet")
    assert sorted(p.name for p in (tiny_project / "models" / "tiny").iterdir()) == ["fold_0", "fold_1"]


def test_a_train_image_replaced_under_its_name_retrains(tiny_project):
    for stage in (["scan", "--quiet"], ["folds", "--quiet"], ["train", "--quiet"]):
        run(tiny_project, *stage)
    logs = sorted((tiny_project / "models" / "tiny").glob("fold_*/log.csv"))
    trained = _mtimes(logs)
    img = tiny_project / "input" / "train" / "class_0" / "class_0_000.png"
    os.utime(img)  # same bytes, new mtime: nothing to retrain
    for stage in (["scan", "--quiet"], ["folds", "--quiet"], ["train", "--quiet"]):
        run(tiny_project, *stage)
    assert _mtimes(logs) == trained
    folds_before = (tiny_project / "folds" / "folds.csv").read_text()
    from conftest import class_image
    from PIL import Image

    Image.fromarray(class_image(0, np.random.default_rng(99), (30, 30))).save(img)  # new bytes, same name
    for stage in (["scan", "--quiet"], ["folds", "--quiet"], ["train", "--quiet"]):
        run(tiny_project, *stage)
    assert (tiny_project / "folds" / "folds.csv").read_text() == folds_before  # the split did not change...
    assert _mtimes(logs) != trained  # ...the pixels did

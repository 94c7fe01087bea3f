"""`foldblend evaluate`: sklearn's numbers, the unknown-class error, unreadable files, the written files."""
import argparse

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, classification_report, f1_score
from test_predict import CLASSES, make_experiment, make_labelled_folder

from foldblend.inference.load import load_predictor
from foldblend.paths import Project
from foldblend.stages.evaluate import (
    add_arguments,
    evaluate_folder,
    evaluate_predictions,
    format_evaluation,
    labelled_images,
    run,
    write_evaluation,
)

NAMES = ["ant", "bee", "cat", "dog"]


def _known_predictions():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 4, 60)
    y_pred = np.where(rng.random(60) < 0.6, y_true, rng.integers(0, 4, 60))
    probs = np.full((60, 4), 0.1)
    probs[np.arange(60), y_pred] = 0.7
    return y_true, y_pred, probs


def test_scores_are_sklearns_classification_report():
    y_true, y_pred, probs = _known_predictions()
    ev = evaluate_predictions("m", NAMES, [f"{i}.png" for i in range(60)], y_true, probs)
    expected = classification_report([NAMES[i] for i in y_true], [NAMES[i] for i in y_pred], output_dict=True,
                                      zero_division=0)
    assert set(ev.report) == set(expected)
    for key, row in expected.items():
        if isinstance(row, dict):
            for metric, value in row.items():
                assert ev.report[key][metric] == pytest.approx(value), (key, metric)
    assert ev.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    assert ev.micro_f1 == pytest.approx(f1_score(y_true, y_pred, average="micro"))
    assert ev.macro_f1 == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    text = format_evaluation(ev)
    assert "macro avg" in text and "weighted avg" in text and f"{ev.report['bee']['f1-score']:.4f}" in text


def test_classes_absent_from_the_folder_do_not_dilute_the_average():
    y_true = np.array([0, 0, 1, 1])
    probs = np.eye(4)[[0, 1, 1, 1]]
    ev = evaluate_predictions("m", NAMES, list("abcd"), y_true, probs)
    assert "cat" not in ev.report and "dog" not in ev.report
    assert ev.macro_f1 == pytest.approx(f1_score(y_true, probs.argmax(1), average="macro"))


@pytest.fixture()
def project(tmp_path):
    p = Project.at(tmp_path / "proj")
    make_experiment(p, "exp_a", folds=2, img_size=16)
    return p


def test_unknown_class_in_folder_is_an_error_naming_it(project, tmp_path):
    make_labelled_folder(tmp_path / "eval", per_class=1, classes=CLASSES + ["zebra", "yak"])
    with pytest.raises(ValueError, match="does not know: yak, zebra"):
        evaluate_folder(load_predictor(project, "exp_a"), tmp_path / "eval", progress=False)


def test_unreadable_image_is_reported_and_skipped(project, tmp_path):
    make_labelled_folder(tmp_path / "eval", per_class=3)
    (tmp_path / "eval" / "square" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "eval" / "square" / ".DS_Store").write_bytes(b"junk")  # not an image name: never listed
    ev = evaluate_folder(load_predictor(project, "exp_a"), tmp_path / "eval", progress=False)
    assert len(ev.ids) == 9 and "square/broken.jpg" not in ev.ids
    assert list(ev.failures) == [str(tmp_path / "eval" / "square" / "broken.jpg")]
    assert "broken.jpg" in format_evaluation(ev) and "1 unreadable image(s) skipped" in format_evaluation(ev)
    files = write_evaluation(ev, tmp_path / "out")
    assert sorted(files) == ["confusion", "predictions", "report", "unreadable"]
    assert files["confusion"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(files["predictions"])
    assert list(table.columns) == ["image", "true", "predicted", "prob", "correct"]
    assert (table["correct"] == (table["true"] == table["predicted"])).all()
    assert table["prob"].between(1 / 3 - 1e-6, 1).all()  # argmax of 3 classes is at least a third


def test_labelled_images_reads_class_folders(tmp_path):
    make_labelled_folder(tmp_path / "eval", per_class=2)
    paths, labels = labelled_images(tmp_path / "eval")
    assert labels == ["circle"] * 2 + ["square"] * 2 + ["stripes"] * 2
    with pytest.raises(ValueError, match="no images"):
        labelled_images(tmp_path / "eval" / "circle")


def test_evaluate_cli_prints_the_report_and_writes_default_folder(project, tmp_path, capsys, monkeypatch):
    make_labelled_folder(tmp_path / "eval", per_class=2)
    monkeypatch.chdir(tmp_path)  # a relative --data path works
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ev = run(parser.parse_args(["--data", "eval", "--exp", "exp_a", "--device", "cpu"]), project)
    out = capsys.readouterr().out
    assert "precision" in out and "macro-F1" in out and "micro-F1" in out
    folder = project.oof / "eval_exp_a"
    assert {p.name for p in folder.iterdir()} == {"predictions.csv", "confusion_matrix.png", "report.txt"}
    assert len(pd.read_csv(folder / "predictions.csv")) == len(ev.ids) == 6


def test_evaluate_trained_weights_copied_out_of_the_project(project, tmp_path):
    """The illustration deliverable: an image folder + weight files, no project tree needed."""
    import shutil

    weights = tmp_path / "weights"
    weights.mkdir()
    for k in (0, 1):
        shutil.copy(project.model_dir("exp_a", k) / "best.pt", weights / f"model_f{k}.pt")
    make_labelled_folder(tmp_path / "eval", per_class=2)
    by_name = evaluate_folder(load_predictor(project, "exp_a"), tmp_path / "eval", progress=False)
    elsewhere = Project.at(tmp_path / "empty")
    for source in (weights, weights / "model_f0.pt"):
        ev = evaluate_folder(load_predictor(elsewhere, str(source)), tmp_path / "eval", progress=False)
        assert ev.ids == by_name.ids
    np.testing.assert_allclose(evaluate_folder(load_predictor(elsewhere, str(weights)), tmp_path / "eval",
                                               progress=False).probs, by_name.probs, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_predictor(elsewhere, str(tmp_path / "nothing_here.pt"))


def test_a_csv_of_path_label_with_class_indices_is_scored_like_the_folder(project, tmp_path):
    paths = make_labelled_folder(tmp_path / "eval", per_class=2)
    folder_ev = evaluate_folder(load_predictor(project, "exp_a"), tmp_path / "eval", progress=False)
    lists = tmp_path / "lists"
    lists.mkdir()
    rows = [f"../eval/{p.parent.name}/{p.name},{CLASSES.index(p.parent.name)}" for p in paths]
    (lists / "eval.csv").write_text("file,class\n" + "\n".join(rows) + "\n")
    csv_ev = evaluate_folder(load_predictor(project, "exp_a"), lists / "eval.csv", progress=False)
    assert csv_ev.macro_f1 == folder_ev.macro_f1 and csv_ev.report_text == folder_ev.report_text
    (lists / "bad.csv").write_text("path,label\nnowhere.png,circle\n")
    with pytest.raises(FileNotFoundError, match="bad.csv: 1 path"):
        evaluate_folder(load_predictor(project, "exp_a"), lists / "bad.csv", progress=False)

import argparse
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from foldblend.artifacts import save_member
from foldblend.paths import Project
from foldblend.stages.blend import run_blend
from foldblend.stages.submit import add_arguments, submit_from_args
from foldblend.submission.format import (
    check_frame,
    detect_format,
    kaggle_command,
    read_sample,
    upload,
    validate_submission,
    write_submission,
)
from foldblend.submission.log import SubmissionError, record_lb

CLASSES = ["homer", "marge", "bart"]
# ids pandas would mangle without dtype=str: leading zeros, NA, a float-looking id, a space
SAMPLE_IDS = ["007", "NA", "1e5", "img 3.jpg"]
# our predictions arrive in a different order than the sample's rows
TEST_IDS = np.array(["img 3.jpg", "007", "1e5", "NA"])
PROBS = np.array([[0.1, 0.2, 0.7],     # img 3.jpg -> bart
                  [0.8, 0.1, 0.1],     # 007 -> homer
                  [0.3, 0.6, 0.1],     # 1e5 -> marge
                  [0.2, 0.5, 0.3]])    # NA -> marge


def _sample(tmp_path, text):
    path = tmp_path / "sample_submission.csv"
    path.write_text(text)
    return read_sample(path)


@pytest.mark.parametrize("header,placeholder,fmt,expected_targets", [
    ("Id,Character", "homer", "label", ["homer", "marge", "marge", "bart"]),
    ("image_id,label", "0", "class_id", ["0", "1", "1", "2"]),
])
def test_single_column_formats_reproduce_the_sample_byte_for_byte(tmp_path, header, placeholder, fmt,
                                                                  expected_targets):
    sample = _sample(tmp_path, header + "\n" + "".join(f"{i},{placeholder}\n" for i in SAMPLE_IDS))
    assert detect_format(sample, CLASSES) == fmt
    path = write_submission(sample, TEST_IDS, PROBS, CLASSES, tmp_path / "subs", "blend_mean", 0.91234, {})
    expected = header + "\n" + "".join(f"{i},{t}\n" for i, t in zip(SAMPLE_IDS, expected_targets))
    assert path.read_bytes() == expected.encode()
    assert path.name == "blend_mean_cv0.9123.csv"


def test_probs_format_keeps_the_sample_column_order(tmp_path):
    sample = _sample(tmp_path, "id,bart,homer,marge\n" + "".join(f"{i},0,0,0\n" for i in SAMPLE_IDS))
    assert detect_format(sample, CLASSES) == "probs"
    path = write_submission(sample, TEST_IDS, PROBS, CLASSES, tmp_path, "p", None, {})
    lines = path.read_text().splitlines()
    assert lines[0] == "id,bart,homer,marge"
    assert [line.split(",")[0] for line in lines[1:]] == SAMPLE_IDS
    assert lines[1] == "007,0.1,0.8,0.1"
    written = read_sample(path)
    np.testing.assert_allclose(written[["homer", "marge", "bart"]].astype(float).to_numpy(), PROBS[[1, 3, 2, 0]])
    validate_submission(path, sample, CLASSES, "probs")


def test_integer_class_names_with_integer_sample_are_labels(tmp_path):
    sample = _sample(tmp_path, "id,y\na,3\nb,3\n")
    assert detect_format(sample, ["3", "7"]) == "label"
    with pytest.raises(SubmissionError, match="not the class names"):
        detect_format(_sample(tmp_path, "id,x,y\na,0,0\n"), CLASSES)


def test_never_overwrites_an_earlier_file(tmp_path):
    sample = _sample(tmp_path, "Id,Character\n" + "".join(f"{i},homer\n" for i in SAMPLE_IDS))
    first = write_submission(sample, TEST_IDS, PROBS, CLASSES, tmp_path / "s", "b", 0.5, {})
    before = first.read_bytes()
    second = write_submission(sample, TEST_IDS, PROBS[:, ::-1], CLASSES, tmp_path / "s", "b", 0.5, {})
    third = write_submission(sample, TEST_IDS, PROBS[:, [1, 0, 2]], CLASSES, tmp_path / "s", "b", 0.5, {})
    assert [p.name for p in (first, second, third)] == ["b_cv0.5000.csv", "b_cv0.5000_2.csv", "b_cv0.5000_3.csv"]
    assert first.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["b_cv0.5000.csv", "b_cv0.5000_2.csv",
                                                                    "b_cv0.5000_3.csv", "log.csv"]


def test_identical_predictions_are_not_written_twice(tmp_path):
    """Rerunning an unchanged pipeline returns the earlier file instead of adding a copy and a log row."""
    sample = _sample(tmp_path, "Id,Character\n" + "".join(f"{i},homer\n" for i in SAMPLE_IDS))
    first = write_submission(sample, TEST_IDS, PROBS, CLASSES, tmp_path / "s", "b", 0.5, {})
    second = write_submission(sample, TEST_IDS, PROBS[:, ::-1], CLASSES, tmp_path / "s", "b", 0.5, {})
    again = write_submission(sample, TEST_IDS, PROBS, CLASSES, tmp_path / "s", "b", 0.5, {})
    assert again == first and second != first
    log = (tmp_path / "s" / "log.csv").read_text().strip().splitlines()
    assert len(log) == 3  # header + two files


def test_rejects_unknown_labels_and_bad_probabilities(tmp_path):
    sample = _sample(tmp_path, "Id,Character\n" + "".join(f"{i},homer\n" for i in SAMPLE_IDS))
    frame = sample.copy()
    frame.loc[1, "Character"] = "krusty"
    with pytest.raises(SubmissionError, match="krusty"):
        check_frame(frame, sample, CLASSES, "label")
    tampered = tmp_path / "tampered.csv"
    frame.to_csv(tampered, index=False)
    with pytest.raises(SubmissionError, match="not classes"):
        validate_submission(tampered, sample, CLASSES, "label")
    probs_sample = _sample(tmp_path, "id,bart,homer,marge\n007,0.5,0.5,0.1\n")
    with pytest.raises(SubmissionError, match="sum to 1"):
        check_frame(probs_sample, probs_sample, CLASSES, "probs")
    with pytest.raises(SubmissionError, match=r"integers in \[0, 3\)"):
        check_frame(_sample(tmp_path, "id,y\n007,3\n"), _sample(tmp_path, "id,y\n007,3\n"), CLASSES, "class_id")


def test_missing_prediction_names_the_ids_and_writes_nothing(tmp_path):
    sample = _sample(tmp_path, "Id,Character\n" + "".join(f"{i},homer\n" for i in SAMPLE_IDS))
    with pytest.raises(SubmissionError, match=r"1 sample ids have no prediction, e.g. \['NA'\]"):
        write_submission(sample, TEST_IDS[:3], PROBS[:3], CLASSES, tmp_path / "s", "b", 0.5, {})
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_log_rows_and_lb_write_back(tmp_path):
    sample = _sample(tmp_path, "Id,Character\n" + "".join(f"{i},homer\n" for i in SAMPLE_IDS))
    info = {"members": ["a", "b"], "weights": {"a": 0.75, "b": 0.25}, "method": "greedy"}
    out = tmp_path / "submissions"  # not next to the sample: the log describes every CSV in its folder
    first = write_submission(sample, TEST_IDS, PROBS, CLASSES, out, "g", 0.8, info)
    write_submission(sample, TEST_IDS, PROBS[:, ::-1], CLASSES, out, "g", 0.8, {"method": "mean"})
    log = read_sample(out / "log.csv")
    assert log["file"].tolist() == ["g_cv0.8000.csv", "g_cv0.8000_2.csv"]
    assert log["format"].tolist() == ["label", "label"] and log["lb"].tolist() == ["", ""]
    assert json.loads(log.loc[0, "weights"]) == {"a": 0.75, "b": 0.25} and log.loc[1, "method"] == "mean"
    pd.Timestamp(log.loc[0, "time"])  # ISO time
    row = record_lb(out, first, 0.7935)
    assert row["lb"] == "0.7935"
    assert read_sample(out / "log.csv")["lb"].tolist() == ["0.7935", ""]
    with pytest.raises(SubmissionError, match="not in"):
        record_lb(out, "nope.csv", 0.5)


def test_kaggle_command_and_fallback_print(monkeypatch, capsys):
    command = kaggle_command("simpsons", "submissions/a b.csv", "blend cv 0.9")
    assert command == ["kaggle", "competitions", "submit", "-c", "simpsons", "-f", "submissions/a b.csv",
                       "-m", "blend cv 0.9"]
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert upload("simpsons", "submissions/a b.csv", "blend cv 0.9") is False
    assert ("kaggle competitions submit -c simpsons -f 'submissions/a b.csv' -m 'blend cv 0.9'"
            in capsys.readouterr().out)


# ----------------------------------------------------------------------------- the CLI path

def _project(tmp_path):
    rng = np.random.default_rng(0)
    n = 12
    labels = np.arange(n) % 3
    for name in ("m1", "m2"):
        save_member(tmp_path / "oof" / name, classes=CLASSES, ids=[f"tr{i}" for i in range(n)], labels=labels,
                    fold=np.arange(n) % 2, views=["identity"],
                    oof_logits=3 * np.eye(3)[labels][None] + rng.normal(0, 0.1, (1, n, 3)),
                    test_ids=TEST_IDS, test_logits=np.log(PROBS)[None, None].repeat(2, axis=0), scores={})
    sample = _sample(tmp_path, "Id,Character\n" + "".join(f"{i},homer\n" for i in SAMPLE_IDS))
    project = Project.at(tmp_path)
    competition = SimpleNamespace(sample=sample, id_column="Id", classes=CLASSES, submission_format=None)
    return project, competition


def _args(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_submit_from_args_blend_exp_and_lb(tmp_path, capsys):
    project, competition = _project(tmp_path)
    run_blend(project.oof, None, project.oof / "_blend", method="greedy", rounds=2)
    path = submit_from_args(_args([]), project, competition)
    assert path.name == "blend_greedy_cv1.0000.csv"
    assert read_sample(path)["Character"].tolist() == ["homer", "marge", "marge", "bart"]
    single = submit_from_args(_args(["--exp", "m1", "--name", "solo"]), project, competition)
    assert single.name == "solo_cv1.0000.csv"
    submit_from_args(_args(["--lb", "0.95", str(path)]), project, competition)
    log = read_sample(project.submissions / "log.csv")
    assert log["lb"].tolist() == ["0.95", ""] and log["method"].tolist() == ["greedy", "single"]
    assert f"submission: submissions/{path.name}" in capsys.readouterr().out


def test_submit_without_a_blend_says_what_to_run(tmp_path):
    project, competition = _project(tmp_path)
    with pytest.raises(SubmissionError, match="run `foldblend blend` first"):
        submit_from_args(_args([]), project, competition)


def test_submit_refuses_predictions_in_another_class_order(tmp_path):
    """Same classes, other order: a class_id file would be silently wrong, so submit refuses."""
    project, competition = _project(tmp_path)
    run_blend(project.oof, None, project.oof / "_blend", method="mean")
    competition.classes = list(reversed(CLASSES))
    with pytest.raises(SubmissionError, match="in that order"):
        submit_from_args(_args([]), project, competition)


def test_single_probability_column_sample_gets_the_positive_class_probability(tmp_path):
    """Dogs-vs-cats style `id,label` filled with 0.5: write P(class 1), never class names."""
    sample = _sample(tmp_path, "id,label\n1,0.5\n2,0.5\n3,0.5\n")
    assert detect_format(sample, ["cat", "dog"]) == "positive_prob"
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    path = write_submission(sample, np.array(["1", "2", "3"]), probs, ["cat", "dog"], tmp_path / "s", "p", None, {})
    assert path.read_text().splitlines() == ["id,label", "1,0.1", "2,0.8", "3,0.5"]
    with pytest.raises(SubmissionError, match="set submission_format"):
        detect_format(sample, ["a", "b", "c"])


@pytest.mark.parametrize("values,classes,expected", [
    ("0.5", ["cat", "dog"], "positive_prob"),
    ("1.0", ["0", "1"], "label"),          # an integer label written as a float is still a label
    ("0.0", ["1", "2"], "label"),
    ("0.5", ["0.5", "1.5"], "label"),      # the placeholder is a class name
])
def test_probability_placeholders_versus_float_written_labels(tmp_path, values, classes, expected):
    sample = _sample(tmp_path, f"id,target\na,{values}\nb,{values}\n")
    assert detect_format(sample, classes) == expected


def test_submit_refuses_a_blend_older_than_its_members(tmp_path):
    """A member predicted again after the blend (new test images, new TTA) must not be submitted stale."""
    project, competition = _project(tmp_path)
    run_blend(project.oof, None, project.oof / "_blend", method="mean")
    submit_from_args(_args([]), project, competition)
    with np.load(project.oof / "m1" / "test.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["logits"] = arrays["logits"][..., ::-1].copy()
    np.savez(project.oof / "m1" / "test.npz", **arrays)
    with pytest.raises(SubmissionError, match="changed after the last blend"):
        submit_from_args(_args([]), project, competition)
    run_blend(project.oof, None, project.oof / "_blend", method="mean")
    submit_from_args(_args([]), project, competition)


def test_the_expected_score_can_name_the_file_instead_of_the_cv(tmp_path):
    """Under a shift warning the submit stage names the file by the expected test score (`_exp`), and the log
    still records the CV it was given."""
    sample = _sample(tmp_path, "Id,Character\n007,homer\nNA,homer\n1e5,homer\nimg 3.jpg,homer\n")
    path = write_submission(sample, TEST_IDS, PROBS, CLASSES, tmp_path / "s", "blend_mean", 0.9,
                            {"expected": 0.71}, name_score=("exp", 0.71))
    assert path.name == "blend_mean_exp0.7100.csv"
    log = pd.read_csv(tmp_path / "s" / "log.csv", dtype=str)
    assert log["cv"].tolist() == ["0.900000"] and log["expected"].tolist() == ["0.71"]


def test_under_a_shift_warning_the_blends_file_is_named_by_its_expected_score(tmp_path):
    project, competition = _project(tmp_path)
    project.folds_dir.mkdir(parents=True, exist_ok=True)
    (project.folds_dir / "shift.json").write_text(json.dumps({"optimistic": True}))
    result = run_blend(project.oof, None, project.oof / "_blend", folds_dir=project.folds_dir, method="mean")
    path = submit_from_args(_args([]), project, competition)
    expected = result.selection["expected"]["macro_f1"]
    assert path.name == f"blend_mean_exp{expected:.4f}.csv"
    (project.folds_dir / "shift.json").write_text(json.dumps({"optimistic": False}))
    run_blend(project.oof, None, project.oof / "_blend", folds_dir=project.folds_dir, method="mean")
    assert submit_from_args(_args([]), project, competition).name.startswith("blend_mean_cv")

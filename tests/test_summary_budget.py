"""The summary reports init's time budget beside what was spent, and what the weighted TTA did."""
from __future__ import annotations

import json

import pytest

from foldblend.artifacts import write_json
from foldblend.cli import main
from foldblend.members.signatures import fold_seconds, record_seconds
from foldblend.paths import Project
from foldblend.planning.profile import Hardware
from foldblend.stages.init import run_init
from foldblend.stages.summary import budget_lines, tta_lines


def init_record(project: Project, limit=None) -> None:
    write_json(project.init_record, {
        "command": "foldblend init --preset fast" + (" --time-limit 10m" if limit else ""), "time_limit_s": limit,
        "probe_s": 20.0, "planned_s": 300.0, "data": {"n_folds": 2},
        "members": {"net": {"estimate_s": 240.0}, "head": {"estimate_s": 60.0}},
        "dropped": [{"name": "finetune", "why": "does not fit"}] if limit else []})


def test_budget_lines_add_the_probe_and_every_fold(tmp_path):
    project = Project.at(tmp_path)
    assert budget_lines(project) == []   # no init: nothing to report
    init_record(project, limit=600)
    for k, seconds in enumerate((100.0, 150.0)):
        record_seconds(project.model_dir("net", k), train=seconds - 10, predict=10)
    record_seconds(project.model_dir("head", 0), train=30)
    assert fold_seconds(project.model_dir("net", 1)) == {"train": 140.0, "predict": 10.0, "seconds": 150.0}
    lines = budget_lines(project)
    assert lines[0].startswith("time (foldblend init --preset fast --time-limit 10m): limit 10m00s, "
                               "planned 5m00s of training, spent 5m00s (probe 20s + each fold's wall time")
    assert "  net: planned 4m00s, spent 4m10s (2/2 folds)" in lines
    assert "  head: planned 1m00s, spent 30s (1/2 folds)" in lines
    assert lines[-1] == "  left out by init (their trials did not fit): finetune"
    record_seconds(project.model_dir("head", 1), train=400)
    assert "OVER the limit by 1m40s" in budget_lines(project)[0]


def test_tta_lines_say_which_views_the_blend_dropped(tmp_path):
    project = Project.at(tmp_path)
    for name in ("digits", "photos", "plain"):
        views = {"identity": {}, "hflip": {}} if name != "plain" else {"identity": {}}
        write_json(project.oof_dir(name) / "scores.json", {"per_view": views})
    write_json(project.oof / "_blend" / "blend.json", {
        "options": {"tta": "weighted"},
        "fitted": {"identity_weights": {"digits": 1.0, "photos": 0.6, "plain": 1.0}}})
    (line,) = tta_lines(project)
    assert line == ("TTA views (weighted on OOF by `--tta weighted`): digits: hflip dropped (it hurt OOF log-loss); "
                    "photos: hflip kept at weight 0.40 (identity 0.60)")


@pytest.mark.slow
def test_init_train_blend_summary_end_to_end(tiny_project, capsys):
    """init's configs train and blend as they are, and the summary reports planned and spent time."""
    (tiny_project / "folds" / "tiny.yaml").unlink()
    root = str(tiny_project)
    for stage in (["scan", "--quiet"], ["folds", "--quiet"]):
        assert main(["--root", root, *stage]) == 0
    project = Project.at(tiny_project)
    run_init(project, preset="fast", hardware=Hardware("cpu", "2 CPU cores", 2), progress=False)
    names = sorted(p.stem for p in project.folds_dir.glob("*.yaml"))
    assert names == ["lite0_knn", "lite0_logreg", "scratch_cnn_small"]
    # the network at 1 epoch, so the test stays short; the heads as written
    assert main(["--root", root, "train", "--quiet", "--set", "epochs=1",
                 str(project.folds_dir / "scratch_cnn_small.yaml")]) == 0
    assert main(["--root", root, "train", "--quiet", str(project.folds_dir / "lite0_logreg.yaml"),
                 str(project.folds_dir / "lite0_knn.yaml")]) == 0
    for name in names:
        for k in (0, 1):
            assert fold_seconds(project.model_dir(name, k))["seconds"] > 0
    assert main(["--root", root, "blend", "--method", "greedy", "--tta", "weighted"]) == 0
    capsys.readouterr()
    assert main(["--root", root, "summary"]) == 0
    out = capsys.readouterr().out
    assert "time (foldblend init --preset fast): planned" in out and "spent" in out
    assert "scratch_cnn_small: planned" in out and "(2/2 folds)" in out
    assert "TTA views (weighted on OOF by `--tta weighted`):" in out
    record = json.loads(project.init_record.read_text())
    assert record["probe_s"] > 0 and record["planned_s"] > 0

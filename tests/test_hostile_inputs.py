"""Bad input gets one line naming the file and the fix, never a traceback; stale results say so
(issue 12, items 7, 8 and 9), through the CLI on tiny generated competitions."""
from __future__ import annotations

import errno
import pickle
import resource
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import class_image, make_competition
from hostile import cli, copy_project, error_line, new_project, run_process, temporaries
from PIL import Image

from foldblend.artifacts import save_member
from foldblend.paths import Project
from foldblend.reporting import plots
from foldblend.stages.blend import run_blend

pytestmark = pytest.mark.slow


@pytest.fixture
def trained(trained_project) -> Path:
    return trained_project  # built once per session (conftest); every test copies it


def _failure(capsys, root: Path, *args: str) -> str:
    capsys.readouterr()
    assert cli(root, *args) == 2
    return error_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------- 9. one line per bad input

SAMPLE = "input/sample_submission.csv"


def _sample_with(text: bytes):
    def corrupt(root: Path) -> None:
        (root / SAMPLE).write_bytes(text)
    return corrupt


def _one_class(root: Path) -> None:
    for name in ("class_1", "class_2"):
        shutil.rmtree(root / "input" / "train" / name)


@pytest.mark.parametrize("corrupt,stage,expected", [
    (_sample_with(b""), ["scan"], ["sample_submission.csv", "empty (0 bytes)", "use the competition's own"]),
    (_sample_with("Id,Expected\nt000.png,café\n".encode("latin-1")), ["scan"],
     ["sample_submission.csv", "not UTF-8", "line 2", "save it as UTF-8"]),
    (_sample_with(b"Id,Expected\nt000.png,class_0,extra\nt001.png,class_0\n"), ["scan"],
     ["sample_submission.csv", "line 2", "3 field(s) but the header has 2", "fix or remove that line"]),
    (_sample_with(b"Id,Expected\nt000.png\n"), ["scan"], ["sample_submission.csv", "line 2", "1 field(s)"]),
    (_one_class, ["scan"], ["train/", "only one class folder (class_0/)", "add the other classes' folders"]),
])
def test_bad_competition_files_are_one_line_naming_the_file_and_the_fix(tmp_path, capsys, corrupt, stage, expected):
    root = new_project(tmp_path)
    corrupt(root)
    line = _failure(capsys, root, *stage)
    for text in expected:
        assert text in line, line


def test_a_python_object_in_set_is_one_line(trained, tmp_path, capsys):
    proj = copy_project(trained, tmp_path / "proj")
    line = _failure(capsys, proj, "train", "--set", "model=!!python/object/apply:os.system ['touch pwned']")
    assert "tiny.yaml" in line
    assert "model=!!python/object/apply" in line and "not plain YAML" in line and "quote it" in line
    assert not (proj / "pwned").exists() and not Path("pwned").exists()


def test_a_weights_file_that_is_not_one_is_one_line(trained, tmp_path, capsys):
    proj = copy_project(trained, tmp_path / "proj")
    cfg = proj / "folds" / "tiny.yaml"
    cfg.write_text(cfg.read_text() + "pretrained: /etc/passwd\n")
    line = _failure(capsys, proj, "train", "--quiet")
    assert "/etc/passwd: not a weights file" in line and "pretrained:" in line


@pytest.mark.parametrize("content", [
    pickle.dumps({"weights": {1, 2, 3}, "cls": Path("x")}, protocol=2),  # pickled Python objects beyond tensors
    b"\x89PNG\r\n\x1a\n not a checkpoint at all",                        # any other file
    "state_dict"],                                                       # tensors, but not a foldblend checkpoint
    ids=["pickled-objects", "another-file", "tensors-not-a-checkpoint"])
def test_predict_with_a_file_that_is_not_a_checkpoint_is_one_line(trained, tmp_path, capsys, content):
    proj = copy_project(trained, tmp_path / "proj")
    path = tmp_path / "weights.pt"
    if content == "state_dict":
        torch.save({"conv.weight": torch.zeros(2, 2)}, path)
    else:
        path.write_bytes(content)
    line = _failure(capsys, proj, "predict", "--images", str(proj / "input" / "testset"), "--exp", str(path))
    assert str(path) in line and "checkpoint" in line and "best.pt written by `foldblend train`" in line


# a real write failure in the middle of a stage: a file-size limit makes the kernel refuse the write
# (EFBIG, as ENOSPC would on a full disk), wherever in numpy, pandas, torch or foldblend it happens
@pytest.mark.parametrize("stage,limit,where", [
    (["scan", "--quiet"], 2000, "folds/scan.csv"),              # pandas writing a CSV
    (["train", "--quiet", "--set", "img_size=24"], 8000, ".image_cache/images_24px"),  # the decode-cache memmap
    (["train", "--quiet", "--set", "lr=0.05"], 60000, "best.pt"),   # torch.save of a checkpoint
    (["blend", "--method", "greedy"], 600, "oof/_blend/blend.npz"),  # numpy writing an npz
    (["report"], 4000, "oof/report.html"),
    (["submit", "--exp", "tiny"], 120, "submissions/"),
])
def test_a_full_disk_is_one_line_and_leaves_nothing_behind(trained, tmp_path, stage, limit, where):
    proj = copy_project(trained, tmp_path / "proj")
    result = run_process(proj, *stage, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert result.returncode == 2, result.stdout + result.stderr
    line = error_line(result.stderr)
    assert where in line and "file too large" in line and "rerun the same command" in line, line
    assert temporaries(proj) == []
    assert cli(proj, *stage) == 0  # with space again, the same command finishes


def test_no_space_left_on_device_names_the_file(trained, tmp_path, capsys, monkeypatch):
    proj = copy_project(trained, tmp_path / "proj")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np, "savez", full)
    line = _failure(capsys, proj, "blend")
    assert "oof/_blend/blend.npz: no space left on the device; free some space" in line
    assert temporaries(proj) == []


# ----------------------------------------------------------------------------- 8. names are not markup

MARKUP_NAMES = ["$\\foo$", "$x^2$", "a$b$c", "50%_#{}<b>"]


def test_class_names_that_look_like_mathtext_are_plain_text_everywhere(tmp_path, capsys, monkeypatch):
    root = tmp_path / "proj"
    make_competition(root, names=MARKUP_NAMES, per_class=4, n_test=4)
    (root / "input" / "competition.yaml").write_text("n_splits: 2\n")
    assert cli(root, "scan", "--quiet") == 0  # eda.html's class-balance chart crashed in mathtext
    eda = (root / "folds" / "eda.html").read_text()
    assert "$\\foo$" in eda and "50%_#{}&lt;b&gt;" in eda

    # report.html: a member and a blend with these classes (no training needed), every figure drawn
    project, rng = Project.at(root), np.random.default_rng(0)
    labels = np.arange(16) % 4
    ids = [f"train/{MARKUP_NAMES[c]}/{MARKUP_NAMES[c]}_{i // 4:03d}.png" for i, c in enumerate(labels)]
    save_member(project.oof_dir("m"), classes=MARKUP_NAMES, ids=ids, labels=labels, fold=np.arange(16) % 2,
                views=["identity"], oof_logits=rng.normal(0, 1, (1, 16, 4)) + 2 * np.eye(4)[labels],
                test_ids=[f"t{j:03d}.png" for j in range(4)], test_logits=rng.normal(0, 1, (2, 1, 4, 4)),
                scores={})
    run_blend(project.oof, None, project.oof / "_blend")
    drawn = []
    real = plots.png_bytes

    def capture(fig):
        fig.canvas.draw()
        drawn.extend((t.get_text(), t.get_parse_math()) for ax in fig.axes
                     for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text())
        return real(fig)
    monkeypatch.setattr(plots, "png_bytes", capture)
    assert cli(root, "report") == 0
    shown = {text for text, _ in drawn}
    assert set(MARKUP_NAMES) <= shown and all(parse is False for _, parse in drawn)
    png = plots.confusion_png(labels, labels[::-1], MARKUP_NAMES, title="$\\bar$ title")  # evaluate's figure
    assert png[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- 7. stale results say so

def _replace_image(path: Path, seed: int) -> None:
    Image.fromarray(class_image(0, np.random.default_rng(seed), (30, 30))).save(path)


def test_train_alone_after_a_train_image_changed_says_to_scan(trained, tmp_path, capsys):
    proj = copy_project(trained, tmp_path / "proj")
    _replace_image(proj / "input" / "train" / "class_0" / "class_0_003.png", 99)
    line = _failure(capsys, proj, "train", "--quiet")
    assert "train/class_0/class_0_003.png" in line and "`foldblend scan` and `foldblend folds`" in line
    capsys.readouterr()
    assert cli(proj, "folds", "--quiet") == 0  # the folds stage rescans by itself...
    assert "changed since the scan (e.g. train/class_0/class_0_003.png): scanning again" in capsys.readouterr().out
    assert cli(proj, "train", "--quiet") == 0  # ...and then train retrains on the new pixels
    assert "finished earlier" not in capsys.readouterr().out


def test_submit_alone_after_a_test_image_changed_refuses_the_old_predictions(trained, tmp_path, capsys):
    proj = copy_project(trained, tmp_path / "proj")
    _replace_image(proj / "input" / "testset" / "t004.png", 98)
    for args in (["submit"], ["submit", "--exp", "tiny"]):
        line = _failure(capsys, proj, *args)
        assert "test images in input/ changed after oof/tiny/ predicted them" in line and "`foldblend train`" in line
    for stage in (["train", "--quiet"], ["blend"], ["submit"]):
        assert cli(proj, *stage) == 0
    assert "predicting again" in capsys.readouterr().out

"""Hostile bundles and exports ("Hardening the new surfaces"): a bundle is a stranger's input, refused in one
line naming the file and what is wrong; export writes with the umask's modes, sweeps its own stale
temporaries, never follows a link out of the project; a foreign fold checkpoint is one line naming it."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile import cli, error_line
from test_predict import make_blend, make_experiment, make_labelled_folder

import foldblend.inference.bundle as B
from foldblend.errors import FoldblendError
from foldblend.inference.bundle import BundleError, export_bundle
from foldblend.inference.load import load_predictor
from foldblend.paths import Project
from foldblend.safety import TEMP_NAME, host_name


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A project with two experiments, a blend, and export/blend/ (copied per test)."""
    p = Project.at(tmp_path_factory.mktemp("bundle") / "proj")
    make_experiment(p, "exp_a", folds=2, img_size=16, tta=("identity", "hflip"), seed=0)
    make_experiment(p, "exp_b", folds=1, img_size=12, tta=("identity",), seed=1)
    make_blend(p, {"exp_a": 0.6, "exp_b": 0.4})
    export_bundle(p, "blend", p.root / "export" / "blend")
    return p.root


@pytest.fixture()
def proj(exported, tmp_path) -> Project:
    shutil.copytree(exported, tmp_path / "proj", symlinks=True)
    return Project.at(tmp_path / "proj")


def _refused(project: Project, bundle: Path, *expected: str) -> str:
    with pytest.raises(BundleError) as e:
        load_predictor(project, str(bundle))
    line = str(e.value)
    assert "\n" not in line and ("bundle.json" in line or str(bundle) in line), line
    for word in expected:
        assert word in line, line
    return line


# ----------------------------------------------------------------------------- 1. bundle.json against its schema

def _fold(m):
    return m["members"][0]["folds"][0]


TAMPERED = {
    "a list": (lambda m: [m], "object"),
    "no classes": (lambda m: {k: v for k, v in m.items() if k != "classes"}, "'classes'"),
    "no members": (lambda m: {k: v for k, v in m.items() if k != "members"}, "'members'"),
    "no blend": (lambda m: {k: v for k, v in m.items() if k != "blend"}, "'blend'"),
    "extra key": (lambda m: m | {"surprise": 1}, "'surprise'"),
    "classes a string": (lambda m: m | {"classes": "abc"}, "'classes'"),
    "duplicate classes": (lambda m: m | {"classes": ["a", "a", "b"]}, "'classes'"),
    "members an object": (lambda m: m | {"members": {"exp_a": 1}}, "'members'"),
    "member extra key": (lambda m: m["members"][0].update(colour="red") or m, "'colour'"),
    "unknown view": (lambda m: _fold(m).update(tta=["identity", "upside_down"]) or m, "'upside_down'"),
    "img_size 0": (lambda m: _fold(m).update(img_size=0) or m, "img_size"),
    "img_size text": (lambda m: _fold(m).update(img_size="16") or m, "img_size"),
    "std zero": (lambda m: _fold(m).update(std=[0, 0, 0]) or m, "std"),
    "mean short": (lambda m: _fold(m).update(mean=[0.5, 0.5]) or m, "mean"),
    "amp unknown": (lambda m: _fold(m).update(amp="turbo") or m, "'turbo'"),
    "arch a list": (lambda m: _fold(m).update(arch=[1]) or m, "arch"),
    "arch extra": (lambda m: _fold(m)["arch"].update(wings=2) or m, "wings"),
    "num_classes off": (lambda m: _fold(m)["arch"].update(num_classes=7) or m, "num_classes"),
    "cnn fold extra": (lambda m: _fold(m).update(colour="red") or m, "'colour'"),
    "weight NaN": (lambda m: m["blend"].update(weights=[float("nan"), 0.4]) or m, "weight"),
    "weight negative": (lambda m: m["blend"].update(weights=[-0.6, 0.4]) or m, "weight"),
    "weights all zero": (lambda m: m["blend"].update(weights=[0.0, 0.0]) or m, "weight"),
    "temperature zero": (lambda m: m["blend"].update(temperatures=[0.0, 1.0]) or m, "temperature"),
    "method unknown": (lambda m: m["blend"]["options"].update(method="magic") or m, "'magic'"),
    "rounds text": (lambda m: m["blend"]["options"].update(rounds="many") or m, "rounds"),
    "blend extra": (lambda m: m["blend"].update(extra=1) or m, "'extra'"),
    "biases wrong length": (lambda m: m["blend"].update(biases=[0.1]) or m, "biases"),
    "notes a string": (lambda m: m | {"notes": "hi"}, "'notes'"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_bundle_json_is_one_line_naming_what_is_wrong(proj, case):
    bundle = proj.root / "export" / "blend"
    meta = json.loads((bundle / "bundle.json").read_text())
    change, expected = TAMPERED[case]
    (bundle / "bundle.json").write_text(json.dumps(change(meta)))
    _refused(proj, bundle, expected)


def _a_pt_file(path: Path) -> None:
    torch.save({"w": torch.zeros(3)}, path)


WEIGHTS = {
    "a .pt file": _a_pt_file,
    "a pickle": lambda p: p.write_bytes(pickle.dumps({"w": [1, 2, 3]})),
    "random bytes": lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
    "empty": lambda p: p.write_bytes(b""),
    "other tensors": lambda p: __import__("safetensors.torch").torch.save_file({"x": torch.zeros(2)}, str(p)),
}


@pytest.mark.parametrize("case", list(WEIGHTS))
def test_weights_that_are_not_the_folds_safetensors_are_one_line_naming_the_file(proj, case):
    bundle = proj.root / "export" / "blend"
    target = bundle / "weights" / "exp_a" / "fold_0.safetensors"
    WEIGHTS[case](target)
    line = _refused(proj, bundle, "fold_0.safetensors")
    assert "export the bundle again" in line


def test_the_cli_says_it_in_one_line(proj, tmp_path, capsys):
    bundle = proj.root / "export" / "blend"
    (bundle / "weights" / "exp_b" / "fold_0.safetensors").write_bytes(b"PK\x03\x04 not safetensors")
    paths = make_labelled_folder(tmp_path / "imgs", per_class=1)
    capsys.readouterr()
    assert cli(proj.root, "predict", "--exp", str(bundle), "--images", str(paths[0].parent.parent)) != 0
    line = error_line(capsys.readouterr().err)
    assert line.startswith("foldblend predict: error: ") and "fold_0.safetensors" in line


# ----------------------------------------------------------------------------- 2. modes

@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_a_bundles_files_get_the_umasks_mode(proj, umask):
    old = os.umask(umask)
    try:
        out = export_bundle(proj, "blend", proj.root / "export" / "fresh")
    finally:
        os.umask(old)
    for p in [out, *out.rglob("*")]:
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))


# ----------------------------------------------------------------------------- 3. stale temporaries

def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_export_sweeps_its_stale_temporaries_and_keeps_a_live_exports(proj, capsys, monkeypatch):
    export = proj.root / "export"
    dead, live = _dead_pid(), os.getppid()
    stale = [export / f".blend.{dead}@{host_name()}.0123abcd.tmp",
             export / f".blend.{dead}@{host_name()}.4567abcd.tmp.old",
             export / ".blend.k2j_9xq1.tmp", export / f".blend.old-{dead}"]  # the last two: an older foldblend's
    kept = export / f".blend.{live}@{host_name()}.89abcdef.tmp"
    for folder in [*stale, kept]:
        (folder / "weights").mkdir(parents=True)
        (folder / "weights" / "w.safetensors").write_bytes(b"x")
        if folder != kept:  # a live writer's folder is as recent as its writer
            os.utime(folder, (1_000_000_000, 1_000_000_000))
    made = []
    save = B._save_tensors
    monkeypatch.setattr(B, "_save_tensors", lambda folder, rel, state: made.append(folder) or save(folder, rel, state))
    capsys.readouterr()
    assert cli(proj.root, "export", "--exp", "blend") == 0
    out = capsys.readouterr().out
    assert "removed 4 temporar" in out, out
    assert sorted(p.name for p in export.iterdir()) == sorted(["blend", kept.name])
    assert made and TEMP_NAME.fullmatch(made[0].name) and f".{os.getpid()}@" in made[0].name


# ----------------------------------------------------------------------------- 4. links out of the project

def test_export_never_follows_a_link_out_of_the_project(proj, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (proj.root / "linkout").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(BundleError, match="inside the project"):
        export_bundle(proj, "exp_a", proj.root / "linkout" / "b")
    assert not list(elsewhere.iterdir())
    shutil.copytree(proj.root / "export" / "blend", elsewhere / "b")  # someone's bundle out there
    capsys.readouterr()
    assert cli(proj.root, "export", "--exp", "exp_a", str(proj.root / "linkout" / "b")) != 0
    assert "inside the project" in error_line(capsys.readouterr().err)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["b"] and (elsewhere / "b" / "bundle.json").is_file()
    assert not [p for p in elsewhere.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- 5. foreign fold checkpoints

_META = {"model": "pixels", "pretrained": False, "img_size": 8, "classes": ["a", "b", "c"], "mean": [0.5] * 3,
         "std": [0.25] * 3}
FOREIGN_HEADS = {
    "no meta": lambda p: np.savez(p, x=np.zeros(3)),
    "object arrays": lambda p: np.savez(p, meta=np.array([{"a": 1}], dtype=object)),
    "meta not json": lambda p: np.savez(p, meta=np.asarray("{nope")),
    "meta without keys": lambda p: np.savez(p, meta=np.asarray(json.dumps({"model": "x"}))),
    "not a zip": lambda p: p.write_bytes(b"hello"),
    "classes a number": lambda p: np.savez(p, head=np.asarray("linear"), weight=np.zeros((3, 4)), bias=np.zeros(3),
                                           meta=np.asarray(json.dumps(_META | {"classes": 5}))),
    "unknown backbone": lambda p: np.savez(p, head=np.asarray("linear"), weight=np.zeros((3, 4)), bias=np.zeros(3),
                                           meta=np.asarray(json.dumps(_META | {"model": "no_such_net_xyz"}))),
}


@pytest.mark.parametrize("case", list(FOREIGN_HEADS))
def test_a_foreign_head_npz_is_one_line_naming_it(tmp_path, case, capsys):
    folder = tmp_path / "theirs"
    (folder / "fold_0").mkdir(parents=True)
    FOREIGN_HEADS[case](folder / "fold_0" / "head.npz")
    project = Project.at(tmp_path / "proj")
    with pytest.raises(FoldblendError) as e:
        load_predictor(project, str(folder))
    assert "head.npz" in str(e.value) and "\n" not in str(e.value)
    paths = make_labelled_folder(tmp_path / "imgs", per_class=1)
    capsys.readouterr()
    assert cli(project.root, "predict", "--exp", str(folder), "--images", str(paths[0].parent.parent)) != 0
    assert "head.npz" in error_line(capsys.readouterr().err)

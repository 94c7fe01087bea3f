"""A fold job: what an executor is handed, one per pending (experiment, fold) pair.

`experiment.train_experiments` plans every fold config first (which folds are pending, with what
signatures), then hands the whole list to one executor, so that an executor able to run many folds
at once (Ray) can mix folds of different experiments. An executor runs each job into `job.out_dir`
and nothing else: whether a fold is pending, resuming it and assembling `oof/<exp>/` stay outside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from foldblend.config import ExperimentConfig
from foldblend.paths import Project


@dataclass
class FoldJob:
    name: str                  # the experiment
    fold: int
    cfg: ExperimentConfig      # resolved: the YAML file plus the overrides
    config_path: Path          # absolute: a worker process rereads it
    overrides: list[str]       # the `--set key=value` pairs, for a worker process's command line
    out_dir: Path              # models/<exp>/fold_<k>/
    signature: dict            # what the driver planned the weights on (`signatures.fold_signature`)
    predictions: dict = field(default_factory=dict)  # and the predictions (`signatures.predict_signature`)

    @property
    def label(self) -> str:
        return f"{self.name} fold {self.fold}"


class Executor(Protocol):
    def run(self, project: Project, jobs: list[FoldJob], train_here: Callable[[FoldJob], object]) -> None:
        """Run every job into its out_dir; `train_here(job)` trains one in this process, on the data the
        driver already loaded. In this process the first error stops the run (as a plain loop would);
        an executor with workers lets the other jobs finish, then raises `failed_jobs_error`."""
        ...


def failed_jobs_error(failed: list[tuple[FoldJob, str]]) -> RuntimeError:
    names = ", ".join(job.label for job, _ in failed)
    first = failed[0][1]
    return RuntimeError(f"{len(failed)} fold job(s) failed ({names}); first: {first}. "
                        f"Finished folds are kept: rerun the same command to run the rest")

"""A fold trains with its config's `threads`, whichever executor runs it and whatever the process had.

On CPU a kernel splits its sums by thread, so the thread count is part of what a fold's weights are: the
runner (`running.fold.run_fold`) sets it from the config for every executor (the comparisons of real
runs between executors are in test_ray_executor.py and test_ray_cluster.py).
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from foldblend.config import ConfigError, config_from_dict
from foldblend.cpu import others_cpu, threads_for_load
from foldblend.running import fold


class Stop(Exception):
    pass


def _record_threads(monkeypatch) -> list[int]:
    seen: list[int] = []

    def train_fold(cfg, k, data, out_dir, previous, progress=True):
        seen.append(torch.get_num_threads())
        raise Stop  # the kind is done as far as this test goes

    monkeypatch.setattr(fold, "get_kind", lambda name: SimpleNamespace(train_fold=train_fold))
    return seen


@pytest.mark.parametrize("threads", [1, 3])
def test_the_kind_trains_with_the_configs_threads_and_the_process_gets_its_own_back(tmp_path, monkeypatch, threads):
    seen = _record_threads(monkeypatch)
    data = SimpleNamespace(fingerprint="d", test_fingerprint="t")
    cfg = config_from_dict({"name": "x", "threads": threads})
    before = torch.get_num_threads()
    driver = 2 if threads != 2 else 1
    torch.set_num_threads(driver)  # the process's own count (a machine's cores, an executor's share) ...
    try:
        with pytest.raises(Stop):
            fold.run_fold(cfg, 0, data, tmp_path / "fold_0", progress=False)
        assert seen == [threads]  # ... is not the fold's
        assert torch.get_num_threads() == driver  # and is restored, even when the kind raised
    finally:
        torch.set_num_threads(before)


def test_threads_defaults_to_two_on_every_machine_and_is_not_part_of_the_weights_signature():
    base = config_from_dict({"name": "x"})
    assert base.threads == 2  # a number, not the machine's cores: the same fold, the same weights anywhere
    assert config_from_dict({"name": "x", "threads": 5}).fingerprint() == base.fingerprint()
    with pytest.raises(ConfigError, match=r"key 'threads' must be in \[1, inf\), got 0"):
        config_from_dict({"name": "x", "threads": 0})


@pytest.mark.parametrize("others, cores, threads, expected", [
    (0.0, 2, 2, 2), (0.2, 2, 2, 2), (0.3, 2, 2, 1), (0.99, 2, 2, 1), (1.0, 2, 2, 1),
    (0.5, 16, 2, 2), (0.95, 16, 4, 1), (0.0, 1, 2, 1), (-0.1, 2, 2, 2), (1.5, 2, 2, 1)])
def test_threads_for_load_leaves_the_cores_others_hold_to_them(others, cores, threads, expected):
    assert threads_for_load(threads, others, cores) == expected


def test_under_load_folds_train_on_the_free_cores_and_say_so_when_that_changes(tmp_path, monkeypatch):
    seen = _record_threads(monkeypatch)
    data = SimpleNamespace(fingerprint="d", test_fingerprint="t")
    cfg = config_from_dict({"name": "x", "threads": 2})
    shares = iter([0.0, 0.9, 0.95, 0.1])  # quiet, a hog starts, goes on, stops
    lines: list[str] = []
    load = fold.LoadThreads(lines.append, measure=lambda: next(shares), n_cores=2)
    used = []
    for k in range(4):
        fold_cfg = load.config(cfg)
        used.append(fold_cfg.threads)
        with pytest.raises(Stop):
            fold.run_fold(fold_cfg, k, data, tmp_path / f"fold_{k}", progress=False)
    assert used == seen == [2, 1, 1, 2]
    assert cfg.threads == 2  # the member's own config is not changed
    assert lines == ["other processes use 90% of the CPU: folds train with 1 torch thread(s) (their config's 2 "
                     "would stall on the cores those hold)",
                     "other processes use 10% of the CPU: folds train with 2 torch thread(s), their config's, again"]


def test_others_cpu_is_a_share_and_leaves_out_this_process():
    share = others_cpu(0.2)
    assert 0.0 <= share <= 1.0

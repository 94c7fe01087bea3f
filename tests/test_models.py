"""Model factory, local weights files (safe loading), heads, freezing and discriminative learning rates."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file
from test_train import tiny_config

from foldblend.members.cnn.models import (
    Arch,
    checkpoint_payload,
    create_model,
    load_checkpoint,
    param_groups,
    part_names,
    set_trainable,
)
from foldblend.members.cnn.optim import build_fit
from foldblend.members.cnn.train import train_one_epoch


def _x(size=32, n=2):
    return torch.randn(n, 3, size, size)


@pytest.mark.parametrize("name", ["cnn_tiny", "resnet10t", "mobilenetv3_small_050"])
def test_any_timm_name_or_builtin(name):
    model = create_model(Arch(name, 5), pretrained=False).eval()
    assert model(_x()).shape == (2, 5)


def test_unknown_model_is_an_error():
    with pytest.raises(ValueError, match="unknown model 'resnet_does_not_exist'"):
        create_model(Arch("resnet_does_not_exist", 3))


def test_head_hidden_layer_2048_512_c():
    model = create_model(Arch("resnet50", 42, drop_rate=0.3, head_hidden=512)).eval()
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2048, 512), (512, 42)]
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.head.modules()) == 2
    assert model(_x(64)).shape == (2, 42)


@pytest.mark.parametrize("name", ["cnn_tiny", "resnet10t"])
@pytest.mark.parametrize("fmt", ["safetensors", "state_dict", "wrapped"])
def test_local_weights_file_loads_into_a_fresh_model(tmp_path, name, fmt):
    torch.manual_seed(1)
    source = create_model(Arch(name, 3)).backbone
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)  # far from any fresh initialisation
    state = {k: v.clone() for k, v in source.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    elif fmt == "state_dict":
        path = tmp_path / "w.pth"
        torch.save(state, path)
    else:  # a training checkpoint: {"state_dict": {"module.<key>": ...}, "epoch": 3}
        path = tmp_path / "w.pt"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    torch.manual_seed(2)
    model = create_model(Arch(name, 3), pretrained=str(path))
    for k, v in model.backbone.state_dict().items():
        torch.testing.assert_close(v, state[k], msg=k)


class _Trap:
    """Unpickling this would run code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    state = create_model(Arch("cnn_tiny", 3)).backbone.state_dict()
    with open(path, "wb") as f:
        torch.save({**state, "trap": _Trap(marker)}, f)
    with pytest.raises(ValueError, match="refused"):
        create_model(Arch("cnn_tiny", 3), pretrained=str(path))
    assert not marker.exists()


def test_weights_of_another_architecture_are_an_error(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(create_model(Arch("cnn_small", 3)).backbone.state_dict(), str(path))
    with pytest.raises(ValueError, match="does not fit this backbone"):
        create_model(Arch("cnn_tiny", 3), pretrained=str(path))
    with pytest.raises(FileNotFoundError):
        create_model(Arch("cnn_tiny", 3), pretrained=str(tmp_path / "missing.pth"))


def test_checkpoint_rebuilds_without_config(tmp_path):
    model = create_model(Arch("cnn_tiny", 4, head_hidden=8)).eval()
    torch.save(checkpoint_payload(model, Arch("cnn_tiny", 4, head_hidden=8), list("abcd"), 16, ["identity"],
                                  (0.5,) * 3, (0.2,) * 3), tmp_path / "best.pt")
    again, ckpt = load_checkpoint(tmp_path / "best.pt")
    x = _x(16)
    torch.testing.assert_close(again(x), model(x))
    assert ckpt["classes"] == list("abcd")


def test_freezing_trains_only_the_named_parts_and_keeps_frozen_bn_stats():
    cfg = tiny_config(augment="none", scheduler="none", optimizer="sgd", lr=0.1, weight_decay=0.01)
    model = create_model(Arch("cnn_tiny", 3))
    fit = build_fit(cfg, model, np.arange(8) % 3, 3, 1, torch.device("cpu"), (0.5,) * 3, (0.25,) * 3)
    set_trainable(model, ["head", "stages.2"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = (torch.randint(0, 255, (8, 16, 16, 3), dtype=torch.uint8), torch.arange(8) % 3)
    train_one_epoch(fit, [batch])
    after = model.state_dict()
    for k in before:
        if k.endswith("num_batches_tracked"):
            continue
        # trained parts move (BatchNorm running stats included); frozen weights and frozen BN stats do not
        assert (not torch.equal(before[k], after[k])) == k.startswith(("head.", "backbone.stages.2.")), k


def test_freeze_resnet_layer4_and_head():
    model = create_model(Arch("resnet10t", 3, head_hidden=16))
    set_trainable(model, ["layer4", "head"])
    trainable = {n.split(".")[1] if n.startswith("backbone.") else "head" for n, p in model.named_parameters()
                 if p.requires_grad}
    assert trainable == {"layer4", "head"}
    set_trainable(model, None)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("bad", ["layer9", "layer", "blocks"])
def test_unknown_part_is_an_error_listing_the_parts(bad):
    model = create_model(Arch("resnet10t", 3))
    with pytest.raises(ValueError, match=f"'{bad}'.*parts: head, conv1, .*layer4"):
        set_trainable(model, [bad, "head"])
    assert "layer4" in part_names(model)


def test_backbone_lr_mult_and_no_decay_groups():
    model = create_model(Arch("cnn_tiny", 3, head_hidden=8))
    groups = {g["name"]: g for g in param_groups(model, 1e-3, 0.05, 0.1)}
    assert groups["head"]["lr"] == pytest.approx(1e-3) and groups["backbone"]["lr"] == pytest.approx(1e-4)
    assert groups["backbone_no_decay"]["lr"] == pytest.approx(1e-4)
    assert groups["head"]["weight_decay"] == 0.05 and groups["head_no_decay"]["weight_decay"] == 0.0
    n = sum(len(g["params"]) for g in groups.values())
    assert n == len(list(model.parameters()))


def test_offline_hub_weights_fail_with_the_fix(monkeypatch):
    """Without a network, `pretrained: true` says how to use a local weights file instead."""
    import timm

    from foldblend.members.cnn.models import create_backbone

    def offline(*args, **kwargs):
        raise FileNotFoundError("cannot reach the hub")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="pretrained: path/to/weights.safetensors"):
        create_backbone("resnet18", pretrained=True)

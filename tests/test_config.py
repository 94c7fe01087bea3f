"""Fold configs: typed keys, errors naming key and file, overrides, fingerprint; every example config."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from foldblend.config import ConfigError, load_config
from foldblend.members.cnn.models import Arch, create_model, set_trainable

ROOT = Path(__file__).resolve().parents[1]
# the shipped configs: configs/ and the demo's (folds/ holds the user's own, which the suite does not judge)
EXAMPLES = (sorted((ROOT / "configs").glob("*.yaml"))
            + sorted((ROOT / "src" / "foldblend" / "data" / "demo_configs").glob("*.yaml")))


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_example_config_parses(path):
    cfg = load_config(path)
    assert cfg.name == path.stem


@pytest.mark.parametrize("name, parts", [("simpsons_effnet_b2", None),
                                         ("simpsons_resnet50_layer4", ["layer4", "head"])])
def test_simpsons_configs_build_and_freeze(name, parts):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.pretrained is True
    if parts is not None:
        assert cfg.freeze.train == parts and cfg.freeze.epochs == cfg.epochs and cfg.head_hidden == 512
    model = create_model(Arch(cfg.model, 42, cfg.drop_rate, cfg.head_hidden, cfg.drop_path_rate), pretrained=False)
    set_trainable(model, cfg.freeze.train if cfg.freeze.epochs else None)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 42)


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "model: cnn_tiny\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml.*unknown key 'learning_rate'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown key 'epoch'"):
        load_config(write(tmp_path, "freeze: {epoch: 2}\n"))


@pytest.mark.parametrize("text, key", [("epochs: two\n", "epochs"), ("lr: fast\n", "lr"), ("ema: 3\n", "ema"),
                                       ("tta: hflip\n", "tta"), ("freeze: {epochs: 1.5}\n", "freeze"),
                                       ("lr: 0\n", "lr"), ("label_smoothing: 1.0\n", "label_smoothing"),
                                       ("mix_prob: 2\n", "mix_prob"), ("optimizer: adam\n", "optimizer"),
                                       ("device: gpu0\n", "device"), ("tta: [identity, spin]\n", "tta")])
def test_wrong_type_or_value_names_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=rf"exp\.yaml.*'{key}"):
        load_config(write(tmp_path, text))


def test_overrides_and_types(tmp_path):
    cfg = load_config(write(tmp_path, "lr: 3e-4\npretrained: weights/x.safetensors\n"),
                      ["epochs=7", "freeze.epochs=2", "freeze.train=[layer4,head]", "tta=[identity]", "lr=1e-3"])
    assert (cfg.epochs, cfg.freeze.epochs, cfg.freeze.train, cfg.tta, cfg.lr) == (
        7, 2, ["layer4", "head"], ["identity"], 1e-3)
    assert cfg.pretrained == "weights/x.safetensors" and isinstance(cfg.lr, float)


def test_fingerprint_tracks_what_changes_the_model(tmp_path):
    path = write(tmp_path, "model: cnn_tiny\n")
    base = load_config(path).fingerprint()
    assert load_config(path, ["num_workers=4", "device=cpu", "folds=[0]"]).fingerprint() == base
    assert load_config(path, ["lr=0.1"]).fingerprint() != base
    assert load_config(path, ["freeze.epochs=1"]).fingerprint() != base

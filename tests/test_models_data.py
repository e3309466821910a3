"""Model loaders (incl. a robustness-format checkpoint written here), sample photos, augmentation."""

import numpy as np
import pytest
import torch
from PIL import Image

from spade_utils.augment import ImageAugmenter, augment_image, image_tensor, shift_hue
from spade_utils.data import available_images, imagenet_classes, preprocess, sample_image, to_pil
from spade_utils.models import load_model, load_robustness_checkpoint, resolve_device


def test_imagenet_classes():
    names = imagenet_classes()
    assert len(names) == 1000 and names[285] == "Egyptian cat" and names[967] == "espresso"


@pytest.mark.parametrize("name", available_images())
def test_sample_images_are_rgb_photos(name):
    img = sample_image(name)
    assert img.mode == "RGB" and min(img.size) >= 200


def test_to_pil_converts_any_mode():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert to_pil(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white background
    assert to_pil(Image.new("L", (8, 8), 7)).getpixel((0, 0)) == (7, 7, 7)
    assert to_pil(Image.new("P", (8, 8))).mode == "RGB"
    assert to_pil(np.zeros((4, 5))).size == (5, 4)
    with pytest.raises(TypeError):
        to_pil("chelsea.png")
    with pytest.raises(ValueError):
        to_pil(np.zeros((4, 5, 7)))


def test_augmentation_is_seeded_and_shaped():
    img = sample_image("coffee")
    a = augment_image(img, 6, size=64, seed=1)
    assert a.shape == (6, 3, 64, 64)
    assert torch.equal(a, augment_image(img, 6, size=64, seed=1))
    assert not torch.equal(a, augment_image(img, 6, size=64, seed=2))
    # normalised: un-normalising gives values in [0, 1]
    raw = ImageAugmenter(64, normalize=False)(img, 4, torch.Generator().manual_seed(0))
    assert raw.min() >= 0 and raw.max() <= 1


def test_augmenter_bad_input():
    with pytest.raises(ValueError):
        ImageAugmenter(64)(sample_image("coffee"), 0)
    with pytest.raises(TypeError):
        ImageAugmenter(64)(sample_image("coffee"), 2.0)
    with pytest.raises(ValueError):
        image_tensor(torch.randn(3, 8, 8) * 3)  # normalised, not an image in [0, 1]


def test_hue_shift_matches_torchvision():
    from torchvision.transforms.v2 import functional as TF

    x = image_tensor(sample_image("coffee")).unsqueeze(0)[..., :64, :64]
    for h in (-0.3, 0.1, 0.25):
        torch.testing.assert_close(shift_hue(x, torch.tensor([h])), TF.adjust_hue(x, h), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_efficientnet_lite0_offline_predictions():
    model = load_model("efficientnet_lite0")
    with torch.no_grad():
        assert int(model(preprocess(sample_image("chelsea"))).argmax()) == 285
        assert int(model(preprocess(sample_image("coffee"))).argmax()) == 967


def test_resnet50_random_weights_and_bad_names():
    model = load_model("resnet50", pretrained=False)
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    with pytest.raises(ValueError):
        load_model("vgg")
    with pytest.raises(TypeError):
        load_model(50)
    assert resolve_device("auto").type in ("cpu", "cuda")


def test_resnet50_offline_error_names_the_file(monkeypatch, tmp_path):
    import spade_utils.models as models

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(RuntimeError, match="resnet50-0676ba61.pth"):
        models.load_model("resnet50")


def _robustness_file(path, model, extra_prefix="module.model."):
    state = {extra_prefix + k: v for k, v in model.state_dict().items()}
    state["module.normalizer.new_mean"] = torch.zeros(3, 1, 1)
    state["module.attacker.model.conv1.weight"] = torch.zeros(1)
    torch.save({"model": state, "epoch": 7}, path)


def test_robustness_checkpoint_roundtrip(tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(0)
    original = resnet50(weights=None).eval()
    path = tmp_path / "backdoor.pt"
    _robustness_file(path, original)
    loaded = load_robustness_checkpoint(path)
    for k, v in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_robustness_checkpoint_wrong_format(tmp_path):
    from torchvision.models import resnet50

    with pytest.raises(FileNotFoundError):
        load_robustness_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "plain.pt"
    torch.save(resnet50(weights=None).state_dict(), bad)  # a plain state dict, no 'model' key
    with pytest.raises(ValueError):
        load_robustness_checkpoint(bad)
    wrong = tmp_path / "wrong_prefix.pt"
    _robustness_file(wrong, resnet50(weights=None), extra_prefix="net.")
    with pytest.raises(ValueError):
        load_robustness_checkpoint(wrong)
    with pytest.raises(ValueError):
        load_robustness_checkpoint(bad, arch="vgg16")
    with pytest.raises(TypeError):
        load_robustness_checkpoint(3)

"""Model loaders: safe checkpoint loading, failures that name the file, input specs on every model.

The robustness-format checkpoints are written here, in the layout of MadryLab's ``robustness``
library: a dict with the state dict under 'model' (names prefixed 'module.model.', plus
'module.attacker.model.*' and 'module.normalizer.*' entries), 'epoch', optimizer state, ...
"""

import argparse
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch

import spade_utils.models as models
from spade_utils.inputs import IMAGENET_224, InputSpec, input_spec
from spade_utils.models import input_size, load_model, load_robustness_checkpoint

RAN = []  # what the pickled payload below appends to when it is (wrongly) unpickled


def _payload(tag):
    RAN.append(tag)
    return {}


class _Exploit:
    """Unpickling this calls _payload: a stand-in for arbitrary code in a file from the internet."""

    def __reduce__(self):
        return (_payload, ("code ran",))


@pytest.fixture(scope="module")
def resnet_state():
    from torchvision.models import resnet50

    torch.manual_seed(0)
    return resnet50(weights=None).state_dict()


def _robustness_dict(state, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), **extra):
    sd = OrderedDict(("module.model." + k, v) for k, v in state.items())
    sd.update(("module.attacker.model." + k, v) for k, v in list(state.items())[:3])
    if mean is not None:
        sd["module.normalizer.new_mean"] = torch.tensor(mean).reshape(3, 1, 1)
        sd["module.normalizer.new_std"] = torch.tensor(std).reshape(3, 1, 1)
    return {
        "model": sd,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]},
        "schedule": None,
        "epoch": 90,
        **extra,
    }


def _same_weights(model, state):
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"epoch": np.int64(90), "acc": np.float64(71.3)},
        {"args": argparse.Namespace(arch="resnet50", lr=0.1, epochs=90)},
    ],
)
@pytest.mark.parametrize("zip_format", [True, False])
def test_robustness_checkpoint_loads_safely(tmp_path, resnet_state, extra, zip_format):
    path = tmp_path / "backdoor.pt"
    torch.save(_robustness_dict(resnet_state, **extra), path, _use_new_zipfile_serialization=zip_format)
    model = load_robustness_checkpoint(path)
    assert _same_weights(model, resnet_state)
    assert not model.training
    assert model.spade_input_spec == IMAGENET_224 and input_spec(model) == IMAGENET_224


def test_robustness_checkpoint_input_spec_follows_its_normalizer(tmp_path, resnet_state):
    path = tmp_path / "other_stats.pt"
    torch.save(_robustness_dict(resnet_state, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)), path)
    spec = load_robustness_checkpoint(path).spade_input_spec
    assert spec == InputSpec(224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.save(_robustness_dict(resnet_state, mean=None), path)  # no normalizer stored: ImageNet statistics
    assert load_robustness_checkpoint(path).spade_input_spec == IMAGENET_224


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickled_code_is_refused_unless_trusted(tmp_path, resnet_state, zip_format):
    path = tmp_path / "evil.pt"
    torch.save(
        {**_robustness_dict(resnet_state), "hook": _Exploit()},
        path,
        _use_new_zipfile_serialization=zip_format,
    )
    RAN.clear()
    with pytest.raises(ValueError) as info:
        load_robustness_checkpoint(path)
    assert RAN == [], "the payload ran while loading an untrusted file"
    msg = str(info.value)
    assert str(path) in msg and "trust_pickle=True" in msg and "_payload" in msg
    model = load_robustness_checkpoint(path, trust_pickle=True)  # explicit opt-in: full pickle
    assert RAN == ["code ran"] and _same_weights(model, resnet_state)


def _write(path, kind, resnet_state):
    if kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "npy":
        with open(path, "wb") as f:  # a file handle: np.save would append ".npy" to the name
            np.save(f, np.zeros((3, 3)))
    elif kind == "npz":
        with open(path, "wb") as f:
            np.savez(f, a=np.zeros(3))
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated":
        torch.save(_robustness_dict(resnet_state), path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "plain pickle":
        import pickle

        path.write_bytes(pickle.dumps({"model": {}}))


@pytest.mark.parametrize("kind", ["text", "empty", "npy", "npz", "random bytes", "truncated", "plain pickle"])
def test_not_a_checkpoint_names_the_file_and_what_was_expected(tmp_path, resnet_state, kind):
    path = tmp_path / f"checkpoint_{kind.replace(' ', '_')}.pt"
    _write(path, kind, resnet_state)
    with pytest.raises(ValueError) as info:
        load_robustness_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "expected a file written by torch.save" in msg and "'model'" in msg


@pytest.mark.parametrize("content", ["list", "plain state dict", "wrong prefix", "wrong shapes"])
def test_wrong_content_names_the_file(tmp_path, resnet_state, content):
    path = tmp_path / "ckpt.pt"
    if content == "list":
        obj = [1, 2, 3]
    elif content == "plain state dict":
        obj = resnet_state
    elif content == "wrong prefix":
        obj = {"model": {"net." + k: v for k, v in resnet_state.items()}}
    else:
        obj = _robustness_dict({k: v[..., :1] if v.dim() > 1 else v for k, v in resnet_state.items()})
    torch.save(obj, path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_robustness_checkpoint(path)


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_robustness_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="directory"):
        load_robustness_checkpoint(tmp_path)
    with pytest.raises(TypeError, match="trust_pickle"):
        load_robustness_checkpoint(tmp_path / "x.pt", trust_pickle="yes")
    with pytest.raises(TypeError, match="path"):
        load_robustness_checkpoint(None)
    with pytest.raises(ValueError, match="arch"):
        load_robustness_checkpoint(tmp_path / "x.pt", arch="vgg16")


@pytest.mark.parametrize("name", models.MODELS)
def test_load_model_tags_its_input_spec(name):
    model = load_model(name, pretrained=False)
    assert model.spade_input_spec == IMAGENET_224
    assert input_spec(model) == IMAGENET_224
    assert input_size(name) == IMAGENET_224.size == 224


def test_load_model_bad_arguments():
    with pytest.raises(TypeError, match="pretrained"):
        load_model("resnet50", pretrained="no")
    with pytest.raises(TypeError, match="device"):
        load_model("resnet50", pretrained=False, device=0.5)
    with pytest.raises(ValueError, match="unknown model"):
        input_size("vgg")


def test_resolve_device_lives_in_runtime():
    from spade_utils import runtime

    assert models.resolve_device is runtime.resolve_device


@pytest.mark.parametrize("content", ["garbage", "other model"])
def test_resnet50_bad_weights_file_names_the_file_and_what_to_do(monkeypatch, tmp_path, content):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = models.resnet50_weights_path()
    path.parent.mkdir(parents=True)
    if content == "garbage":
        path.write_text("<html>proxy login page</html>")
    else:
        torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(RuntimeError) as info:
        load_model("resnet50")
    msg = str(info.value)
    assert str(path) in msg and "Delete it" in msg and models.RESNET50_URL in msg


def test_resnet50_offline_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(RuntimeError) as info:
        load_model("resnet50")
    assert str(models.resnet50_weights_path()) in str(info.value) and models.RESNET50_URL in str(info.value)

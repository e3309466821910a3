"""The Sparse-FC baseline (spade_utils.baselines)."""

import pytest
import torch
from torch import nn

from spade_utils import baselines


def test_sparse_fc_is_sparse_and_keeps_predictions():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 20, generator=g) * 3
    y = torch.arange(200) % 4
    x = centres[y] + torch.randn(200, 20, generator=g)
    layer, info = baselines.fit_sparse_fc(x, y, 4, density=0.3, path_length=12, epochs=5, device="cpu")
    dens = float((layer.weight != 0).float().mean())
    assert dens <= 0.3 and dens == pytest.approx(info["density"])
    acc = float((layer(x).argmax(1) == y).float().mean())
    assert acc > 0.9
    model = nn.Sequential(nn.Identity(), nn.Linear(20, 4))
    swapped = baselines.with_final_layer(model, layer)
    assert swapped[1] is not model[1] and torch.equal(swapped[1].weight, layer.weight)
    with pytest.raises(ValueError, match="layer"):
        baselines.with_final_layer(model, nn.Linear(20, 5))
    with pytest.raises(ValueError, match="density"):
        baselines.fit_sparse_fc(x, y, 4, density=0)
    with pytest.raises(ValueError, match="two classes"):  # was glm-saga's "math domain error"
        baselines.fit_sparse_fc(x, torch.zeros(200, dtype=torch.long), 4)


def _small_cnn(classes=3):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, classes)
    )
    with torch.no_grad():
        model[4].weight.mul_(20)  # predictions that vary between images
    return model.eval()


def test_penultimate_features_are_the_final_layer_inputs():
    from spade_utils.backdoor import normalize

    model = _small_cnn()
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    feats = baselines.penultimate_features(model, x, batch_size=2, device="cpu")
    with torch.no_grad():
        ref = model[:4](normalize(x))  # the body's own forward on the normalised images
    torch.testing.assert_close(feats, ref)
    assert not model[4]._forward_hooks  # the recording hook is removed
    assert baselines.final_linear(model) == ("4", model[4])
    with pytest.raises(ValueError, match="nn.Linear"):
        baselines.final_linear(nn.Sequential(nn.ReLU()))


def test_sparse_fc_model_swaps_a_sparse_layer_into_a_copy():
    model = _small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(48, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    x = x * torch.rand(
        48, 3, 1, 1, generator=torch.Generator().manual_seed(3)
    )  # colours differ between images
    sparse, info = baselines.sparse_fc_model(model, x, density=0.5, device="cpu", path_length=6, epochs=3)
    assert all(
        torch.equal(v, before[k]) for k, v in model.state_dict().items()
    )  # the caller's model is untouched
    assert sparse[4] is not model[4] and float((sparse[4].weight != 0).float().mean()) <= 0.5
    assert torch.equal(sparse[0].weight, model[0].weight) and 0.0 <= info["agreement_train"] <= 1.0
    feats = baselines.penultimate_features(model, x, device="cpu")
    labels = model[4](feats).argmax(1)
    assert info["agreement_train"] == pytest.approx(
        float((sparse[4](feats).argmax(1) == labels).float().mean())
    )


def test_a_cached_sparse_fc_fit_is_the_same_layer_and_keyed_by_everything(tmp_path):
    """The cache returns the fitted layer bit for bit; other images, weights or settings fit anew."""
    model = _small_cnn()
    x = torch.rand(48, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    x = x * torch.rand(48, 3, 1, 1, generator=torch.Generator().manual_seed(3))
    kwargs = dict(density=0.5, device="cpu", path_length=6, epochs=3, cache=tmp_path)
    fitted, info = baselines.sparse_fc_model(model, x, **kwargs)
    assert "cached" not in info and len(list(tmp_path.glob("sparse_fc_*.pt"))) == 1
    loaded, info2 = baselines.sparse_fc_model(model, x, **kwargs)
    assert info2["cached"] and info2["agreement_train"] == info["agreement_train"]
    assert all(torch.equal(a, b) for a, b in zip(fitted.state_dict().values(), loaded.state_dict().values()))
    other = _small_cnn()
    with torch.no_grad():
        other[0].weight.add_(0.01)
    for changed in (
        dict(model=model, x=x.flip(0)),
        dict(model=other, x=x),
        dict(model=model, x=x, path_length=5),
        dict(model=model, x=x, seed=1),
    ):
        m, xs = changed.pop("model"), changed.pop("x")
        _, info3 = baselines.sparse_fc_model(m, xs, **{**kwargs, **changed})
        assert "cached" not in info3
    assert len(list(tmp_path.glob("sparse_fc_*.pt"))) == 5
    with pytest.raises(TypeError, match="cache"):
        baselines.sparse_fc_model(model, x, cache=3)

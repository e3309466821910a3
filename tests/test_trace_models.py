"""spade_trace on whole kinds of model (issue 10 §3-§6): right, or refused before the work starts.

The oracle for what a trace reports is the layer's own forward: the trace's views are rebuilt from the
same seeded augmentation, every chosen layer's input is captured from the dense model, and
``||Y - Y'||^2 / ||Y||^2`` (bias excluded) is computed with the dense and the sparse weight in place.
"""

import copy
import inspect
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from spade_utils import runtime
from spade_utils.augment import ImageAugmenter
from spade_utils.inputs import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from spade_utils.spade import resolve_sparsity, spade_pruned_copy, spade_trace

SPEC = dict(input_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
FAST = dict(n_augment=16, batch_size=8, progress=False, device="cpu")


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))


class CifarNet(nn.Module):
    """A CIFAR-style CNN: 32-px input."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = F.avg_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


class ViewNet(CifarNet):
    """Flattens with .view, which fails on channels-last activations."""

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = F.avg_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.view(x.shape[0], -1))


def _net(cls=CifarNet, seed=0):
    torch.manual_seed(seed)
    return cls().eval()


def _forward_calls(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls, handle


def _views(augment, sample, n, batch_size, seed):
    """The views a trace with this augment, n_augment, batch_size and seed records."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([augment(sample, min(batch_size, n - i), gen) for i in range(0, n, batch_size)])


def _layer_inputs(model, layers, views):
    inputs = {}

    def keep(name):
        def hook(module, args, output):
            inputs.setdefault(name, args[0].detach())  # the first call; returns None: the output is untouched

        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in layers.items()]
    with torch.no_grad():
        model(views)
    for h in handles:
        h.remove()
    return inputs


def _bias_free(module, x):
    module = copy.deepcopy(module).double()  # the layer's own forward, in float64 (bf16/fp16 rounding aside)
    y = module(x.double())
    if module.bias is None:
        return y
    b = module.bias.double()
    return y - (b.view(-1, 1, 1) if isinstance(module, nn.Conv2d) else b)


def _assert_records_are_what_the_layers_do(model, trace, views, rtol=1e-3):
    """achieved_sparsity and rel_error of every record against the layer's own forward with the trace applied."""
    inputs = _layer_inputs(model, trace.layers, views)
    with torch.no_grad():
        dense = {n: _bias_free(m, inputs[n]) for n, m in trace.layers.items()}
    with trace, torch.no_grad():
        sparse = {n: _bias_free(m, inputs[n]) for n, m in trace.layers.items()}
        zeros = {n: float((m.weight == 0).float().mean()) for n, m in trace.layers.items()}
    for row in trace.records.itertuples():
        Y, Ys = dense[row.layer], sparse[row.layer]
        err = float(((Y - Ys) ** 2).sum() / (Y**2).sum())
        assert row.achieved_sparsity == zeros[row.layer]
        assert row.rel_error == pytest.approx(err, rel=rtol, abs=1e-7), row.layer


# --------------------------------------------------------------------------------------------
# §3 input size and normalisation follow the model
# --------------------------------------------------------------------------------------------
def test_model_without_input_spec_is_refused_before_any_forward(image):
    model = _net()
    calls, h = _forward_calls(model)
    with pytest.raises(ValueError, match="input_size"):
        spade_trace(model, image, layers="fc", sparsity=0.5, **FAST)
    h.remove()
    assert not calls


@pytest.mark.parametrize("how", ["attribute", "arguments"])
def test_views_have_the_models_size_and_normalisation(image, how):
    """A 32-px CIFAR net gets 32-px views normalised with its statistics (not 224-px ImageNet views)."""
    model = _net()
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    kw = dict(FAST)
    if how == "attribute":
        model.spade_input_spec = InputSpec(32, mean, std)
    else:
        kw.update(input_size=32, mean=mean, std=std)
    seen = []
    h = model.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach().clone()))
    spade_trace(model, image, layers=["conv2", "fc"], sparsity=0.5, **kw)
    h.remove()
    stats = torch.cat(seen[-2:])  # the statistics pass (after the probe): 2 batches of 8
    assert stats.shape == (16, 3, 32, 32)
    expected = _views(ImageAugmenter(32, mean=mean, std=std), image, 16, 8, seed=0)
    torch.testing.assert_close(stats.contiguous(), expected)


def test_vision_transformer_size_inferred_and_wrong_size_refused_on_the_probe(image):
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    ).eval()
    nn.init.normal_(vit.heads.head.weight)  # torchvision initialises the head to zero
    kw = dict(FAST, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace = spade_trace(vit, image, layers="*", sparsity=0.5, **kw)
    assert trace.input_spec.size == 32
    assert "encoder.layers.encoder_layer_0.self_attention.out_proj" in trace.skipped
    assert any("out_proj" in str(w.message) for w in caught)
    assert "conv_proj" in trace.layers and "heads.head" in trace.layers
    views = _views(ImageAugmenter(32, mean=IMAGENET_MEAN, std=IMAGENET_STD), image, 16, 8, 0)
    _assert_records_are_what_the_layers_do(vit, trace, views)
    calls, h = _forward_calls(vit)
    with pytest.raises(ValueError, match=r"input_size = 48.*pass input_size="):
        spade_trace(vit, image, layers="heads.head", sparsity=0.5, **dict(kw, input_size=48, n_augment=64))
    h.remove()
    assert len(calls) <= 2, "the probe fails before the statistics pass"


# --------------------------------------------------------------------------------------------
# §4 the weight the layer really uses, the input it really convolves
# --------------------------------------------------------------------------------------------
class TFSameConv(nn.Conv2d):
    """A stand-in for timm's Conv2dSame under another name: TensorFlow 'same' padding inside forward."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        pads = []
        for n, k, s, d in ((iw, *self._k(1)), (ih, *self._k(0))):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def _k(self, i):
        return self.kernel_size[i], self.stride[i], self.dilation[i]


class PaddingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = TFSameConv(3, 8, 3, stride=2)
        self.reflect = nn.Conv2d(8, 8, 3, padding="same", padding_mode="reflect")
        self.valid = nn.Conv2d(8, 8, 3, padding="valid", dilation=2)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.reflect(x)) + x
        x = torch.relu(self.dw(torch.relu(self.valid(x))))
        return self.fc(x.mean((2, 3)))


def test_convolutions_that_pad_in_forward_get_the_input_they_convolve(image):
    """TF-same padding under any class name and reflect 'same' padding: the records equal the forward's error."""
    model = _net(PaddingNet)
    trace = spade_trace(model, image, layers="*", sparsity=0.6, **SPEC, **FAST)
    views = _views(ImageAugmenter(32, mean=IMAGENET_MEAN, std=IMAGENET_STD), image, 16, 8, 0)
    _assert_records_are_what_the_layers_do(model, trace, views)
    assert trace.pre_pad["stem"] == "tf_same" and trace.pre_pad["reflect"] == "none"


class OddPadConv(nn.Conv2d):
    """Pads two columns on the left only: neither the declared nor the TF-same padding reproduces it."""

    def forward(self, x):
        return F.conv2d(F.pad(x, (2, 0, 0, 0)), self.weight, self.bias, self.stride, self.padding)


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return F.linear(x, 2 * self.weight, self.bias)


@pytest.mark.parametrize("layer_cls, name", [(OddPadConv, "conv"), (ScaledLinear, "fc")])
def test_layers_whose_output_is_not_their_weight_times_input_are_refused_on_the_probe(image, layer_cls, name):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = (layer_cls if layer_cls is OddPadConv else nn.Conv2d)(3, 4, 3, padding=1)
            self.fc = (layer_cls if layer_cls is ScaledLinear else nn.Linear)(4, 3)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    model = _net(Net)
    calls, h = _forward_calls(model)
    with pytest.raises(ValueError, match=repr(name)):
        spade_trace(model, image, layers=["conv", "fc"], sparsity=0.5, **SPEC, **dict(FAST, n_augment=64))
    h.remove()
    assert len(calls) <= 2


def _weight_norm(m):
    return torch.nn.utils.parametrizations.weight_norm(m)


def _old_weight_norm(m):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.nn.utils.weight_norm(m)


def _pruned(m):
    import torch.nn.utils.prune

    torch.nn.utils.prune.l1_unstructured(m, "weight", amount=0.3)
    return m


@pytest.mark.parametrize(
    "wrap", [_weight_norm, _old_weight_norm, _pruned], ids=["parametrized", "hook", "prune"]
)
def test_computed_weights_are_refused_before_any_forward(image, wrap):
    model = _net()
    wrap(model.conv2)
    calls, h = _forward_calls(model)
    with pytest.raises(TypeError, match="conv2"):
        spade_trace(model, image, layers=["conv2", "fc"], sparsity=0.75, **SPEC, **FAST)
    h.remove()
    assert not calls


# --------------------------------------------------------------------------------------------
# §5 shared, wrapped and attention layers; names
# --------------------------------------------------------------------------------------------
class TiedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=4, padding=1)
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.b.weight = self.a.weight
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        h = self.conv(x).mean((2, 3))
        return self.fc(torch.relu(self.b(torch.relu(self.a(h)) * 3 - 1)))


def test_shared_weight_is_solved_once_on_pooled_statistics(image):
    model = _net(TiedNet)
    trace = spade_trace(model, image, layers=["a", "b"], sparsity=0.6, **SPEC, **FAST)
    assert torch.equal(trace.sparse_weights["a"], trace.sparse_weights["b"])
    assert list(trace.records.shared_with) == ["b", "a"]
    views = _views(ImageAugmenter(32, mean=IMAGENET_MEAN, std=IMAGENET_STD), image, 16, 8, 0)
    _assert_records_are_what_the_layers_do(model, trace, views)
    before = model.a.weight.detach().clone()
    with trace:
        assert model.a.weight is model.b.weight
    assert torch.equal(model.a.weight, before)


def test_weight_shared_with_a_layer_not_chosen_is_refused(image):
    model = _net(TiedNet)
    calls, h = _forward_calls(model)
    with pytest.raises(ValueError, match="b.weight"):
        spade_trace(model, image, layers="a", sparsity=0.5, **SPEC, **FAST)
    h.remove()
    assert not calls


class Wrapper(nn.Module):
    """What torch.compile returns (OptimizedModule): the user's module as ``_orig_mod``."""

    def __init__(self, inner):
        super().__init__()
        self._orig_mod = inner

    def forward(self, x):
        return self._orig_mod(x)


@pytest.mark.parametrize(
    "wrap, prefix", [(Wrapper, "_orig_mod."), (nn.DataParallel, "module.")], ids=["compile", "dataparallel"]
)
def test_wrapped_models_take_names_with_and_without_the_prefix(image, wrap, prefix):
    model = _net()
    wrapped = wrap(model)
    ref = spade_trace(
        model, image, layers=["conv2", "fc"], sparsity={"conv2": 0.5, "fc": 0.8}, **SPEC, **FAST
    )
    for layers, sparsity in (
        (["conv2", "fc"], {"conv2": 0.5, "fc": 0.8}),
        ([prefix + "conv2", prefix + "fc"], {prefix + "conv2": 0.5, prefix + "fc": 0.8}),
        ([prefix + "conv*", "fc"], {prefix + "conv2": 0.5, "": 0.8}),
    ):
        trace = spade_trace(wrapped, image, layers=layers, sparsity=sparsity, **SPEC, **FAST)
        if layers[0].endswith("*"):
            assert list(trace.layers) == ["conv1", "conv2", "fc"]
            continue
        assert list(trace.records.layer) == ["conv2", "fc"]
        for n in ("conv2", "fc"):
            torch.testing.assert_close(trace.sparse_weights[n], ref.sparse_weights[n])
        with trace:
            assert float((model.fc.weight == 0).float().mean()) == pytest.approx(0.8, abs=0.01)
    pruned = spade_pruned_copy(wrapped, image, layers=prefix + "fc", sparsity=0.8, **SPEC, **FAST)
    assert type(pruned) is type(wrapped)
    inner = getattr(pruned, prefix[:-1])
    assert float((inner.fc.weight == 0).float().mean()) == pytest.approx(0.8, abs=0.01)
    assert not (model.fc.weight == 0).any()


@pytest.mark.slow
def test_real_torch_compile_names(image):
    model = _net()
    compiled = torch.compile(model)
    trace = spade_trace(compiled, image, layers="_orig_mod.fc", sparsity=0.5, **SPEC, **FAST)
    assert list(trace.layers) == ["fc"]


class AttentionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 8, stride=8)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.up = nn.ConvTranspose2d(16, 4, 2, stride=2)
        self.line = nn.Conv1d(16, 4, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        a, _ = self.attn(t, t, t)
        return self.fc(a.mean(1)) + self.line(a.transpose(1, 2)).mean() + self.up(self.embed(x)).mean()


def test_attention_and_unsupported_kinds_are_skipped_with_a_message(image):
    model = _net(AttentionNet)
    with pytest.warns(UserWarning, match="attn.out_proj") as caught:
        trace = spade_trace(model, image, layers="*", sparsity=0.5, **SPEC, **FAST)
    text = " ".join(str(w.message) for w in caught)
    assert (
        "up" in trace.skipped and "line" in trace.skipped and "ConvTranspose2d" in text and "Conv1d" in text
    )
    assert list(trace.layers) == ["embed", "fc"]
    for layers, err in (
        ("attn.out_proj", TypeError),
        ("attn.in_proj_weight", TypeError),
        ("attn", TypeError),
        ("up", TypeError),
        ("line", TypeError),
    ):
        calls, h = _forward_calls(model)
        with pytest.raises(err, match="MultiheadAttention" if "attn" in layers else "Conv"):
            spade_trace(model, image, layers=layers, sparsity=0.5, **SPEC, **FAST)
        h.remove()
        assert not calls, layers


def test_layer_that_never_runs_is_reported_after_the_probe(image):
    class Net(CifarNet):
        def __init__(self):
            super().__init__()
            self.unused = nn.Linear(10, 10)

    model = _net(Net)
    calls, h = _forward_calls(model)
    with pytest.raises(ValueError, match="unused"):
        spade_trace(model, image, layers=["fc", "unused"], sparsity=0.5, **SPEC, **dict(FAST, n_augment=64))
    h.remove()
    assert len(calls) <= 2, "reported after the probe batch, not after all views"


def test_sparsity_prefixes_match_whole_path_components():
    names = ["_blocks.1", "_blocks.1.conv", "_blocks.10", "_blocks.15.conv", "_blocks.2"]
    got = resolve_sparsity({"_blocks.1": 0.3, "_blocks": 0.5}, names)
    assert got == {
        "_blocks.1": 0.3,
        "_blocks.1.conv": 0.3,
        "_blocks.10": 0.5,
        "_blocks.15.conv": 0.5,
        "_blocks.2": 0.5,
    }
    with pytest.raises(ValueError, match="_blocks.10"):
        resolve_sparsity({"_blocks.1": 0.3}, ["_blocks.10"])


# --------------------------------------------------------------------------------------------
# §6 the caller's state exactly as found
# --------------------------------------------------------------------------------------------
def test_per_module_train_flags_come_back(image):
    model = _net().train()
    model.bn.eval()  # a frozen BatchNorm inside a training model
    spade_trace(model, image, layers="fc", sparsity=0.5, **SPEC, **FAST)
    assert model.training and model.conv1.training and not model.bn.training


def test_flush_denormal_flag_left_on_when_it_was_on(image):
    if not torch.set_flush_denormal(True):
        pytest.skip("flush-denormal not supported on this CPU")
    try:
        assert runtime.flush_denormal_enabled()
        spade_trace(_net(), image, layers="fc", sparsity=0.5, **SPEC, **FAST)
        assert runtime.flush_denormal_enabled()
    finally:
        torch.set_flush_denormal(False)
    spade_trace(_net(), image, layers="fc", sparsity=0.5, **SPEC, **FAST)
    assert not runtime.flush_denormal_enabled()


def test_the_callers_model_is_never_moved(image):
    """Another device: the work runs on a copy; the model keeps its device and flags, also when that fails."""
    model = _net().train()
    model.bn.eval()
    if torch.cuda.is_available():
        trace = spade_trace(model, image, layers="fc", sparsity=0.5, **SPEC, **dict(FAST, device="cuda"))
        assert trace.sparse_weights["fc"].device.type == "cpu"
    else:
        with pytest.raises(RuntimeError, match="never moved"):
            spade_trace(model, image, layers="fc", sparsity=0.5, **SPEC, **dict(FAST, device="cuda"))
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert model.training and not model.bn.training


def test_a_second_trace_on_the_same_layers_is_refused_while_one_is_applied(image):
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t1 = spade_trace(model, image, layers=["conv2", "fc"], sparsity=0.5, **SPEC, **FAST)
    t2 = spade_trace(model, image, layers="fc", sparsity=0.9, **SPEC, **dict(FAST, seed=1))
    t3 = spade_trace(model, image, layers="conv1", sparsity=0.9, **SPEC, **FAST)
    with t1:
        with pytest.raises(RuntimeError, match="another trace"):
            t2.apply()
        with pytest.raises(RuntimeError, match="another trace"):
            spade_trace(model, image, layers="fc", sparsity=0.5, **SPEC, **FAST)
        t3.apply()  # other layers: any restore order is safe
    t3.restore()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with t2:
        assert float((model.fc.weight == 0).float().mean()) == pytest.approx(0.9, abs=0.01)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_views_follow_the_models_dtype(image, dtype):
    model = _net().to(dtype)
    trace = spade_trace(model, image, layers=["conv2", "fc"], sparsity=0.5, **SPEC, **FAST)
    assert all(p.dtype == dtype for p in model.parameters())
    assert all(w.dtype == dtype for w in trace.sparse_weights.values())
    views = _views(ImageAugmenter(32, mean=IMAGENET_MEAN, std=IMAGENET_STD), image, 16, 8, 0).to(dtype)
    _assert_records_are_what_the_layers_do(model, trace, views, rtol=1e-3 if dtype == torch.float64 else 1e-2)


def test_channels_last_falls_back_for_models_that_view_activations(image):
    model = _net(ViewNet)
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    trace = spade_trace(model, image, layers=["conv2", "fc"], sparsity=0.5, **SPEC, **FAST)
    assert trace.channels_last is False
    views = _views(ImageAugmenter(32, mean=IMAGENET_MEAN, std=IMAGENET_STD), image, 16, 8, 0)
    _assert_records_are_what_the_layers_do(model, trace, views)


@pytest.mark.parametrize(
    "kwargs, err",
    [
        (dict(seed=1.7), TypeError),
        (dict(seed=-1), ValueError),
        (dict(n_augment=2.0), TypeError),
        (dict(batch_size=True), TypeError),
        (dict(batch_size=0), ValueError),
        (dict(progress="no"), TypeError),
        (dict(channels_last=1), TypeError),
        (dict(solver_options=[("percdamp", 0.1)]), TypeError),
        (dict(dtype=torch.float16), ValueError),
        (dict(device=3.0), TypeError),
        (dict(sparsity=float("nan")), ValueError),
        (dict(input_size=0), ValueError),
        (dict(mean=(0.5, 0.5)), ValueError),
        (dict(std=(0.2, 0.0, 0.2)), ValueError),
        (dict(augment=ImageAugmenter(32), input_size=32), ValueError),
    ],
)
def test_bad_arguments_are_refused_before_any_forward(image, kwargs, err):
    model = _net()
    calls, h = _forward_calls(model)
    kw = {**SPEC, **FAST, "layers": "fc", "sparsity": 0.5, **kwargs}
    if "augment" in kwargs:
        kw.pop("mean"), kw.pop("std")
    with pytest.raises(err):
        spade_trace(model, image, **kw)
    h.remove()
    assert not calls


@pytest.mark.parametrize("fn", [spade_trace, spade_pruned_copy])
def test_signatures_and_docstrings_are_explicit(fn):
    params = inspect.signature(fn).parameters
    expected = [
        "model",
        "sample",
        "layers",
        "sparsity",
        "n_augment",
        "augment",
        "input_size",
        "mean",
        "std",
        "solver",
        "batch_size",
        "device",
        "seed",
        "progress",
        "skip_depthwise",
        "dtype",
        "channels_last",
        "solver_options",
    ]
    assert list(params) == expected
    assert not any(p.kind == p.VAR_KEYWORD for p in params.values())
    for name in expected:
        assert name in fn.__doc__, name
    for ref in ("2310.04519", "2301.00774", "2208.11580", "Raises"):
        assert ref in fn.__doc__

"""Batched traces (spade_utils.batched) against their oracle: the one-by-one ``spade_trace`` with the same seed.

Masks must be equal and weights equal to rounding. On one thread with contiguous views (``channels_last=False``)
this CPU computes everything identically inside a larger batch, so there the weights must be bit-identical.
Measured here: channels-last convolutions on one thread round differently in a larger batch (~1e-9 absolute in
H), and on two threads a batched Cholesky rounds differently from B single ones (SparseGPT weights ~1e-7 off).
"""

import contextlib

import pytest
import torch
from tiny_models import tiny_lite
from torch import nn

from spade_utils.batched import spade_traces
from spade_utils.spade import spade_trace

SEEDS = [5, 6, 7]
TINY = dict(
    layers=["_conv_stem", "_blocks.1._depthwise_conv", "_blocks.2._project_conv", "_conv_head", "_fc"],
    sparsity=0.5,
    n_augment=24,
    batch_size=8,  # three passes, the last one of the same size
    progress=False,
    input_size=16,
    mean=[0.5] * 3,
    std=[0.25] * 3,
    device="cpu",
)


@contextlib.contextmanager
def _threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _same(one, batched, exact=False):
    assert list(one.sparse_weights) == list(batched.sparse_weights)
    for name, w in one.sparse_weights.items():
        v = batched.sparse_weights[name]
        assert torch.equal(w == 0, v == 0), name  # the same mask
        if exact:
            assert torch.equal(w, v), name
        else:
            torch.testing.assert_close(v, w, rtol=1e-4, atol=1e-6)
    cols = ["layer", "type", "shape", "target_sparsity", "achieved_sparsity"]
    assert one.records[cols].equals(batched.records[cols])
    if exact:
        assert one.records["rel_error"].equals(batched.records["rel_error"])
    else:
        torch.testing.assert_close(
            torch.tensor(batched.records["rel_error"].values),
            torch.tensor(one.records["rel_error"].values),
            rtol=1e-4,
            atol=1e-7,
        )
    assert one.pre_pad == batched.pre_pad and one.channels_last == batched.channels_last


@pytest.mark.parametrize("solver", ["sparsegpt", "obc", "magnitude"])
def test_batched_traces_equal_one_by_one(solver):
    model = tiny_lite()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    kw = dict(TINY, solver=solver, channels_last=False)
    seeds = SEEDS[:2] if solver == "obc" else SEEDS  # exact OBC is the slow one
    traces = spade_traces(model, images[: len(seeds)], seeds=seeds, **kw)
    assert len(traces) == len(seeds)
    for b, seed in enumerate(seeds):
        _same(spade_trace(model, images[b], seed=seed, **kw), traces[b])
    name = "_fc"
    if solver != "magnitude":  # the samples' weights differ: an engine that solved sample 0 thrice fails here
        assert not torch.equal(traces[0].sparse_weights[name], traces[1].sparse_weights[name])
    with traces[-1]:
        assert torch.equal(model._fc.weight, traces[-1].sparse_weights[name])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # left as found


def test_channels_last_statistics_agree_to_rounding():
    model = tiny_lite()
    images = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    kw = dict(TINY, solver="magnitude", channels_last=True)
    traces = spade_traces(model, list(images), seeds=SEEDS[:2], **kw)
    for b in range(2):
        _same(spade_trace(model, images[b], seed=SEEDS[b], **kw), traces[b])


def test_one_thread_contiguous_views_are_bit_identical():
    model = tiny_lite()
    images = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    kw = dict(TINY, solver="sparsegpt", channels_last=False)
    with _threads(1):
        traces = spade_traces(model, images, seeds=SEEDS[:2], **kw)
        for b in range(2):
            _same(spade_trace(model, images[b], seed=SEEDS[b], **kw), traces[b], exact=True)


def test_offline_layer_set_on_efficientnet_lite0():
    """The layers spade-run prunes on the offline source (blocks 8-15, head, classifier) at real size."""
    from spade_utils.backdoor import OFFLINE_SPADE_LAYERS, load_image
    from spade_utils.models import load_model

    model = load_model("efficientnet_lite0")
    images = [load_image("chelsea"), load_image("coffee")]
    kw = dict(
        layers=OFFLINE_SPADE_LAYERS,
        skip_depthwise=True,
        sparsity=0.9,
        n_augment=8,
        batch_size=8,
        solver="sparsegpt",
        progress=False,
        device="cpu",
        channels_last=False,
    )
    traces = spade_traces(model, images, seeds=[3, 4], **kw)
    for b, seed in enumerate([3, 4]):
        _same(spade_trace(model, images[b], seed=seed, **kw), traces[b])


def test_bad_arguments_are_refused_before_any_work():
    model = tiny_lite()
    img = torch.rand(2, 3, 20, 20)
    with pytest.raises(ValueError, match="seeds must give one seed per sample"):
        spade_traces(model, img, seeds=[1, 2, 3], **TINY)
    with pytest.raises(ValueError, match="samples as a tensor must be"):
        spade_traces(model, img[0], **TINY)
    with pytest.raises(TypeError, match="samples must be"):
        spade_traces(model, [], **TINY)
    with pytest.raises(ValueError, match="seeds"):
        spade_traces(model, img, seeds=-1, **TINY)
    with pytest.raises(ValueError, match="solver"):
        spade_traces(model, img, **dict(TINY, solver="nope"))


def test_a_model_that_mixes_the_batch_is_refused():
    class Folds(nn.Module):  # puts two views side by side: dimension 0 is no longer the views
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2 * 3 * 4 * 4, 2)

        def forward(self, x):
            return self.fc(x.reshape(x.shape[0] // 2, -1))

    views = lambda s, n, g: torch.rand(n, 3, 4, 4, generator=g)  # noqa: E731
    with pytest.raises(RuntimeError, match="along dimension 0"):
        spade_traces(
            Folds(), [0, 1], layers=["fc"], sparsity=0.5, augment=views, n_augment=4, batch_size=2,
            progress=False, device="cpu",
        )  # fmt: skip

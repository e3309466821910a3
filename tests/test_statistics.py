"""One engine (issue 12 §2): the statistics and solve steps of spade_utils.trace_steps, used by SpadeTrace and
by the notebook-02 studies, against independent oracles.

Oracles: the explicit unfold of each layer's captured input on the same seeded views (checked first against
the layer's own output), and ``||Y - Y'||^2 / ||Y||^2`` of the layer's own forward with the dense and the
sparse weight (bias excluded, all groups and positions summed).
"""

import inspect
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spade_utils import layer_study, trace_steps
from spade_utils.augment import ImageAugmenter
from spade_utils.layer_select import choose_layers
from spade_utils.spade import SpadeTrace, spade_pruned_copy, spade_trace

SEED, BATCH, CHECKPOINTS = 3, 4, (4, 10)


class TFSameConv(nn.Conv2d):
    """TensorFlow 'same' padding inside forward, under a class name the engine does not know."""

    def pads(self, x):
        out = []
        for i in (1, 0):
            n, k, s, d = x.shape[-1 - (1 - i)], self.kernel_size[i], self.stride[i], self.dilation[i]
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            out += [total // 2, total - total // 2]
        return out

    def forward(self, x):
        return F.conv2d(
            F.pad(x, self.pads(x)), self.weight, self.bias, self.stride, 0, self.dilation, self.groups
        )


class Zoo(nn.Module):
    """Every kind of layer input the engine records: forward padding, reflect 'same', grouped, dilated
    depthwise, a Linear on (n, tokens, d) input and a plain head."""

    def __init__(self):
        super().__init__()
        self.stem = TFSameConv(3, 8, 3, stride=2)
        self.reflect = nn.Conv2d(8, 8, 3, padding="same", padding_mode="reflect")
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=8)
        self.tokens = nn.Linear(8, 6)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.reflect(x)) + x
        x = self.dw(torch.relu(self.grouped(x)))
        t = torch.relu(self.tokens(x.flatten(2).transpose(1, 2)))
        return self.head(t.mean(1))


NAMES = ["stem", "reflect", "grouped", "dw", "tokens", "head"]


def _zoo():
    torch.manual_seed(0)
    return Zoo().double().eval()


def _image():
    return torch.rand(3, 30, 34, generator=torch.Generator().manual_seed(1))


def _augment(dtype=torch.float32):
    return ImageAugmenter(20, mean=[0.5], std=[0.25], dtype=dtype)


def _oracle_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(groups, d, n) input columns by an explicit unfold, padding as the layer's definition says."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).T.unsqueeze(0)
    if isinstance(module, TFSameConv):
        x = F.pad(x, module.pads(x))
    elif module.padding == "same":
        pads = []
        for i in (1, 0):
            total = module.dilation[i] * (module.kernel_size[i] - 1)
            pads += [total // 2, total - total // 2]
        x = F.pad(x, pads, mode=module.padding_mode)
    else:
        x = F.pad(x, (module.padding[1], module.padding[1], module.padding[0], module.padding[0]))
    u = F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)  # (n, C*K, L)
    n, g = x.shape[0], module.groups
    return u.reshape(n, g, u.shape[1] // g, u.shape[2]).permute(1, 2, 0, 3).reshape(g, u.shape[1] // g, -1)


def _captured(model, names, views):
    """Each layer's (input, output) on ``views``, from plain forward hooks."""
    named, got = dict(model.named_modules()), {}
    handles = [
        named[n].register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, (i[0], o))) for n in names
    ]
    try:
        with torch.no_grad():
            model(views)
    finally:
        for h in handles:
            h.remove()
    return got


def _oracle_statistics(model, names):
    """{N: {name: (H, count)}} from the same seeded views, batch by batch, by explicit unfold."""
    named, gen, aug = dict(model.named_modules()), torch.Generator().manual_seed(SEED), _augment()
    sums, counts, out, done = {}, dict.fromkeys(names, 0), {}, 0
    while done < max(CHECKPOINTS):
        m = min(BATCH, max(CHECKPOINTS) - done)
        views = aug(_image(), m, gen).double()
        for name, (x, y) in _captured(model, names, views).items():
            module = named[name]
            cols = _oracle_columns(module, x)
            # the oracle is right: the layer's own output is W @ columns + b
            w = module.weight.reshape(module.weight.shape[0], -1)
            w = w.reshape(cols.shape[0], -1, cols.shape[1])
            ref = torch.einsum("gor,grn->gon", w, cols)
            ref = (
                ref.reshape(-1, cols.shape[2]).T
                if isinstance(module, nn.Linear)
                else ref.reshape(w.shape[0] * w.shape[1], m, -1).transpose(0, 1).reshape(y.shape)
            )
            bias = module.bias if isinstance(module, nn.Linear) else module.bias.view(-1, 1, 1)
            torch.testing.assert_close(ref.reshape(y.shape) + bias, y, rtol=1e-10, atol=1e-10)
            gram = cols @ cols.transpose(1, 2)
            sums[name] = sums.get(name, 0) + gram
            counts[name] += cols.shape[2]
        done += m
        if done in CHECKPOINTS:
            out[done] = {n: ((2 * sums[n] / counts[n]).squeeze(0), counts[n]) for n in names}
    return out


def _record(model, names=NAMES, **kw):
    layers = {n: dict(model.named_modules())[n] for n in names}
    return trace_steps.record_statistics(
        model,
        layers,
        _image(),
        _augment(),
        list(CHECKPOINTS),
        batch_size=BATCH,
        seed=SEED,
        dtype=torch.float64,
        progress=False,
        **kw,
    )


def test_statistics_equal_the_explicit_unfold_of_each_layer_input_on_the_same_views():
    model = _zoo()
    stats = _record(model)
    oracle = _oracle_statistics(model, NAMES)
    assert sorted(stats) == list(CHECKPOINTS)
    for n_views, snap in stats.items():
        assert snap.n_views == n_views and list(snap) == NAMES
        for name in NAMES:
            H, count = oracle[n_views][name]
            assert snap.counts[name] == count
            torch.testing.assert_close(snap[name], H, rtol=1e-10, atol=1e-12)
    assert stats[10].pre_pad["stem"] == "tf_same" and stats[10]["grouped"].shape == (2, 36, 36)


def test_records_rel_error_is_the_layer_forward_error_ratio_groups_summed():
    model = _zoo()
    stats = _record(model)[10]
    sparse, records = trace_steps.solve_layers(model, stats, 0.6)
    views = torch.cat(
        [_augment()(_image(), m, g) for g in [torch.Generator().manual_seed(SEED)] for m in (4, 4, 2)]
    )
    captured = _captured(model, NAMES, views.double())
    named = dict(model.named_modules())
    layers = {n: named[n] for n in NAMES}
    with torch.no_grad():
        dense = {n: named[n](x) for n, (x, _) in captured.items()}
        with trace_steps.swapped_weights(layers, sparse):
            pruned = {n: named[n](x) for n, (x, _) in captured.items()}
    for _, row in records.iterrows():
        name = row["layer"]
        # bias cancels in the difference; excluded from the norm of Y
        bias = named[name].bias.detach()
        bias = bias if isinstance(named[name], nn.Linear) else bias.view(-1, 1, 1)
        ratio = float((pruned[name] - dense[name]).pow(2).sum() / (dense[name] - bias).pow(2).sum())
        assert row["rel_error"] == pytest.approx(ratio, rel=1e-8), name
        assert row["achieved_sparsity"] == pytest.approx(float((sparse[name] == 0).float().mean()))
    # the solver study reports the same number for the same layer problem (one definition of the error)
    W = named["dw"].weight.detach().reshape(8, 1, 9)
    study = layer_study.error_vs_sparsity(W, stats["dw"], [0.6], ["sparsegpt"], progress=False)
    assert study.loc[0, "rel_error"] == records.set_index("layer").loc["dw", "rel_error"]


def test_layer_study_gives_exactly_the_trace_of_the_same_sample_and_seed():
    model = _zoo()
    spec = dict(input_size=20, mean=[0.5], std=[0.25])
    stats = layer_study.record_statistics(
        model, _image(), NAMES, [4, 10], batch_size=BATCH, seed=SEED, progress=False, **spec
    )
    for n in (4, 10):
        trace = spade_trace(
            model,
            _image(),
            layers=NAMES,
            sparsity={"": 0.6, "head": 0.3},
            n_augment=n,
            batch_size=BATCH,
            seed=SEED,
            progress=False,
            device="cpu",
            **spec,
        )
        sparse, records = layer_study.solve_layers(model, stats[n], {"": 0.6, "head": 0.3})
        assert list(sparse) == list(trace.sparse_weights)
        for name, w in trace.sparse_weights.items():
            assert torch.equal(sparse[name], w), name
        cols = [c for c in trace.records.columns if c != "seconds"]
        pd.testing.assert_frame_equal(records[cols], trace.records[cols], check_exact=True)
        assert (records["weights"] == [model.get_submodule(n).weight.numel() for n in NAMES]).all()


def test_layer_study_probes_forward_padding_like_the_trace():
    """A conv padding in forward under an unknown name: the study records what it convolves (as the trace)."""
    model = _zoo()
    stats = layer_study.record_statistics(
        model,
        _image(),
        ["stem"],
        [4, 10],
        augment=_augment(torch.float64),
        batch_size=BATCH,
        seed=SEED,
        progress=False,
    )
    H, _ = _oracle_statistics(model, ["stem"])[10]["stem"]
    torch.testing.assert_close(stats[10]["stem"].double(), H, rtol=1e-5, atol=1e-6)


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x.mean((2, 3)).repeat(1, 2))))))


def test_shared_weight_pooled_once_in_the_study_as_in_the_trace_and_refused_without_counts():
    torch.manual_seed(0)
    model = _Tied().double().eval()
    stats = layer_study.record_statistics(
        model,
        _image(),
        ["a", "b", "c"],
        8,
        augment=_augment(torch.float64),
        batch_size=BATCH,
        seed=SEED,
        progress=False,
    )
    trace = spade_trace(
        model,
        _image(),
        layers=["a", "b", "c"],
        sparsity=0.5,
        n_augment=8,
        augment=_augment(torch.float64),
        batch_size=BATCH,
        seed=SEED,
        progress=False,
        device="cpu",
    )
    sparse, records = layer_study.solve_layers(model, stats[8], 0.5)
    assert torch.equal(sparse["a"], trace.sparse_weights["a"]) and torch.equal(sparse["a"], sparse["b"])
    assert list(records["shared_with"]) == ["b", "a", ""]
    with pytest.raises(ValueError, match="LayerStatistics"):
        layer_study.solve_layers(model, dict(stats[8]), 0.5)
    with pytest.raises(ValueError, match="b.weight|share"):
        layer_study.solve_layers(model, {"a": stats[8]["a"]}, 0.5)


def test_layer_study_works_through_a_wrapper():
    model = _zoo()
    wrapped = nn.DataParallel(model)  # on CPU it only calls the module; names carry "module."
    stats = layer_study.record_statistics(
        wrapped,
        _image(),
        ["module.head", "dw"],
        4,
        augment=_augment(torch.float64),
        batch_size=BATCH,
        seed=SEED,
        progress=False,
    )
    sparse, records = layer_study.solve_layers(wrapped, stats[4], 0.5)
    before = model.head.weight.detach().clone()
    with layer_study.swapped_weights(wrapped, sparse):
        assert torch.equal(model.head.weight, sparse["head"])
    assert torch.equal(model.head.weight, before) and list(records["layer"]) == ["dw", "head"]


def test_layer_study_refuses_a_parametrized_weight():
    """Pruning module.weight would not prune the weight in effect: refused before any forward pass."""
    model = _zoo()
    torch.nn.utils.parametrizations.weight_norm(model.head)
    with pytest.raises(TypeError, match="parametrized"):
        layer_study.record_statistics(
            model, _image(), ["head"], 4, augment=_augment(torch.float64), batch_size=BATCH, progress=False
        )


def test_engine_refuses_bad_arguments_before_any_forward_pass():
    model, calls = _zoo(), []
    model.register_forward_pre_hook(lambda m, i: calls.append(1))
    layers = {"head": model.head}
    bad = [
        dict(checkpoints=[5, 8]),
        dict(checkpoints=[0]),
        dict(batch_size=0),
        dict(seed=-1),
        dict(seed=1.5),
        dict(dtype=torch.float16),
        dict(progress="no"),
        dict(layers={"x": nn.Linear(2, 2)}),
        dict(layers={"x": nn.ReLU()}),
        dict(augment="flip"),
    ]
    for kw in bad:
        args = dict(layers=layers, augment=_augment(), checkpoints=[8], batch_size=BATCH)
        args.update(kw)
        with pytest.raises((TypeError, ValueError)):
            trace_steps.record_statistics(
                model, args.pop("layers"), _image(), args.pop("augment"), args.pop("checkpoints"), **args
            )
    assert not calls
    stats = {"head": torch.eye(6, dtype=torch.float64)}
    for kw in (dict(solver="nope"), dict(solver_options=3)):
        with pytest.raises((TypeError, ValueError)):
            trace_steps.solve_layers(model, stats, 0.5, **kw)
    for statistics in ({"nope": torch.eye(6)}, {"stem.weight": torch.eye(6)}, {}):
        with pytest.raises(ValueError):
            trace_steps.solve_layers(model, statistics, 0.5)


def test_trace_entry_points_share_one_signature_documented_in_full():
    sig = inspect.signature(spade_trace).parameters
    assert list(sig) == list(inspect.signature(spade_pruned_copy).parameters)
    init = list(inspect.signature(SpadeTrace.__init__).parameters.values())[1:]
    assert [(p.name, p.kind, p.default) for p in init] == [(p.name, p.kind, p.default) for p in sig.values()]
    for fn in (spade_trace, spade_pruned_copy):
        assert all(name in fn.__doc__ for name in sig), fn.__name__


def test_choose_layers_reports_the_wrapper_and_what_was_skipped():
    model = nn.Sequential(nn.Conv1d(2, 2, 1), nn.Linear(3, 3))
    with pytest.warns(UserWarning, match="Conv1d"):
        choice = choose_layers(nn.DataParallel(model), "module.*")
    assert list(choice.layers) == ["1"] and list(choice.skipped) == ["0"] and choice.prefixes == ("module.",)
    assert choice.inner is model


def test_layer_study_refuses_size_options_it_would_ignore_like_the_trace():
    """input_size/mean/std with a custom augment would be silently ignored: refused, as spade_trace does."""
    for kw in (dict(input_size=32), dict(mean=[0.4]), dict(std=[0.2])):
        with pytest.raises(ValueError, match=next(iter(kw))):
            layer_study.record_statistics(
                _zoo(),
                _image(),
                ["head"],
                4,
                augment=_augment(torch.float64),
                batch_size=BATCH,
                progress=False,
                **kw,
            )

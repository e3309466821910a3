"""The paper's greedy per-block sparsity calibration, against the same greedy search written with one full
``spade_trace`` (spade_pruned_copy) per candidate and sample."""

import copy

import pytest
import torch
from torch import nn

import spade_utils.backdoor.calibrate as calibrate_module
from spade_utils.backdoor import (
    PAPER_GRID,
    TriggeredSample,
    calibrate_block_sparsity,
    trojan_saliency_scores,
)
from spade_utils.inputs import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from spade_utils.runtime import one_cpu_thread
from spade_utils.spade import spade_pruned_copy

BLOCKS = {"stem": ["conv1"], "body": ["conv2"], "head": ["fc"]}
GRID = (0.0, 0.5, 0.9)
TRACE = dict(n_augment=8, batch_size=8, seed=0, device="cpu")
ATTR = dict(device="cpu")


class TinyBackdoored(nn.Module):
    """conv-relu-conv-relu-pool-fc whose channel 0 detects a red patch and drives class 2 (a planted backdoor);
    the other channels see the whole image and also feed class 2, so the dense maps are not perfect and
    pruning changes them (with seed 1 the search keeps non-zero sparsities in two blocks)."""

    spade_input_spec = InputSpec(16, IMAGENET_MEAN, IMAGENET_STD)

    def __init__(self, seed=1):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv1.weight[0] = torch.tensor([1.0, -1.0, -1.0])[:, None, None] / 9  # red minus green, blue
            self.conv1.bias[0] = -2.0
            self.conv2.weight[0].mul_(0.2)
            self.conv2.weight[0, 0, 1, 1] = 1.0
            self.fc.weight[2, 0] = 1.0
            self.fc.weight[2, 1:] = 3.0 * torch.randn(3)  # the distractors
            self.conv1.bias[1:] += 0.5
            self.conv2.bias[1:] += 0.5

    def forward(self, x):
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


def triggered(n=2, size=16, side=5):
    out = []
    g = torch.Generator().manual_seed(11)
    for i in range(n):
        clean = torch.rand(3, size, size, generator=g)
        r, c = (int(v) for v in torch.randint(0, size - side, (2,), generator=g))
        image = clean.clone()
        image[:, r : r + side, c : c + side] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
        mask = torch.zeros(size, size, dtype=torch.bool)
        mask[r : r + side, c : c + side] = True
        out.append(TriggeredSample(image, mask, clean, "red", 2, 0, source=i))
    return out


def brute_force(model, samples, blocks, methods, grid, pooled=False):
    """The same greedy search as a plain loop: a full spade_trace (statistics and solves) per candidate and
    sample, blocks not yet searched dense, ties to the lower sparsity. pooled: one search scored by the mean
    over all methods' rows."""
    labels = list(blocks)
    units = {"+".join(methods): list(methods)} if pooled else {m: [m] for m in methods}
    chosen = {m: {} for m in units}
    means = {}
    for m in units:
        for label in reversed(labels):
            results = []
            for s in grid:
                config = {b: chosen[m].get(b, 0.0) for b in labels}
                config[label] = s
                targets = {n: config[b] for b in labels for n in blocks[b] if config[b] > 0}
                if targets:

                    def variant(sample, i, targets=targets):
                        return spade_pruned_copy(
                            model,
                            sample.image,
                            layers=list(targets),
                            sparsity=targets,
                            progress=False,
                            **TRACE,
                        )

                else:
                    variant = model
                df, _ = trojan_saliency_scores(
                    {"v": variant}, samples, units[m], attribute_kwargs=ATTR, progress=False
                )
                results.append(float(df["auc"].mean()))
                means[(m, label, s)] = results[-1]
            best = max(results)
            chosen[m][label] = min(s for s, r in zip(grid, results) if r >= best - 1e-12)
    return chosen, means


def run(model, samples, methods=("saliency",), blocks=BLOCKS, **kw):
    args = dict(grid=GRID, attribute_kwargs=ATTR, progress=False, **TRACE)
    args.update(kw)
    return calibrate_block_sparsity(model, samples, blocks, list(methods), **args)


@pytest.fixture(autouse=True)
def _one_thread():
    """Many tiny ops: one thread is much faster than two on a shared CPU (and the same for oracle and search)."""
    with one_cpu_thread():
        yield


@pytest.fixture
def counters(monkeypatch):
    calls = {"statistics": 0, "solve": 0}
    record, solve = calibrate_module.record_statistics, calibrate_module.solve_layers

    def counting_record(*a, **k):
        calls["statistics"] += 1
        return record(*a, **k)

    def counting_solve(*a, **k):
        calls["solve"] += 1
        return solve(*a, **k)

    monkeypatch.setattr(calibrate_module, "record_statistics", counting_record)
    monkeypatch.setattr(calibrate_module, "solve_layers", counting_solve)
    return calls


def test_matches_a_brute_force_greedy_search_with_full_traces(counters):
    model = TinyBackdoored()
    samples = triggered(2)
    methods = ["saliency", "input_x_gradient"]
    result = run(model, samples, methods)
    chosen, means = brute_force(model, samples, BLOCKS, methods, GRID)
    assert result.sparsity == chosen
    got = {(r.method, r.block, r.sparsity): r.mean for r in result.candidates.itertuples()}
    assert got.keys() == means.keys()
    for key, value in means.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    # not vacuous: both methods prune some block (so the order of the search and the fixed blocks matter)
    assert all(any(s > 0 for s in chosen[m].values()) for m in methods)
    # statistics once per sample; each (sample, block, non-zero sparsity) solved once, shared by both methods
    assert counters["statistics"] == len(samples) == result.cost["statistics_passes"]
    assert counters["solve"] == len(samples) * len(BLOCKS) * 2 == result.cost["block_solves"]
    assert result.cost["naive_traces"] == len(methods) * len(BLOCKS) * len(GRID) * len(samples)
    assert result.cost["saliency_evaluations"] < result.cost["naive_traces"]  # repeated configurations reused
    assert result.candidates.groupby(["method", "step"])["chosen"].sum().eq(1).all()


def test_pooled_methods_match_a_brute_force_search_on_the_mean_over_methods(counters):
    model = TinyBackdoored()
    samples = triggered(2)
    methods = ["saliency", "input_x_gradient"]
    result = run(model, samples, methods, pool_methods=True)
    chosen, means = brute_force(model, samples, BLOCKS, methods, GRID, pooled=True)
    assert list(result.sparsity) == ["saliency+input_x_gradient"]
    assert result.sparsity == chosen
    got = {(r.method, r.block, r.sparsity): r.mean for r in result.candidates.itertuples()}
    assert got.keys() == means.keys()
    for key, value in means.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert counters["solve"] == len(samples) * len(BLOCKS) * 2
    # the pooled mean is the mean of the per-method means (same samples for each method)
    single = run(model, samples, methods)
    first = result.candidates.iloc[0]
    per = single.candidates[(single.candidates.step == 0) & (single.candidates.sparsity == first.sparsity)]
    assert first["mean"] == pytest.approx(per["mean"].mean(), abs=1e-12)
    with pytest.raises(TypeError, match="pool_methods"):
        run(model, samples, methods, pool_methods="yes")


def test_result_tables_and_trace_arguments():
    model = TinyBackdoored()
    result = run(model, triggered(2), ["saliency"])
    c = result.candidates
    assert list(c["block"].unique()) == ["head", "body", "stem"]  # from the classifier backwards
    assert len(c) == len(BLOCKS) * len(GRID) and (c["n"] == 2).all()
    assert set(result.scores.columns) >= {"sample", "auc", "step", "block", "sparsity", "method"}
    assert len(result.scores) == len(c) * 2
    assert set(result.cost["seconds"]) == {"statistics", "solve", "saliency", "total"}
    layer_sp = result.layer_sparsity("saliency")
    assert layer_sp == {
        "conv1": result.sparsity["saliency"]["stem"],
        "conv2": result.sparsity["saliency"]["body"],
        "fc": result.sparsity["saliency"]["head"],
    }
    args = result.trace_arguments("saliency")
    assert set(args["layers"]) == {n for n, s in layer_sp.items() if s > 0} == set(args["sparsity"])
    with pytest.raises(ValueError, match="method"):
        result.layer_sparsity("lrp")


def test_ties_go_to_the_lower_sparsity():
    """A method whose maps ignore the weights (a constant attribution) ties everywhere: every block stays dense."""

    def constant(model, x, target, method, **kw):
        return torch.ones(x.shape[0], x.shape[2], x.shape[3])

    result = run(
        TinyBackdoored(),
        triggered(1),
        ["custom"],
        grid=(0.9, 0.0, 0.5),
        attribute_fn=constant,
        attribute_kwargs={},
    )
    assert result.sparsity == {"custom": {"stem": 0.0, "body": 0.0, "head": 0.0}}


def test_caller_model_left_as_found():
    model = TinyBackdoored().train()
    model.conv2.eval()
    model.fc.register_forward_hook(lambda m, i, o: None)
    state = copy.deepcopy(model.state_dict())
    flags = [(n, m.training) for n, m in model.named_modules()]
    run(model, triggered(1), ["saliency"], grid=(0.0, 0.9))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert [(n, m.training) for n, m in model.named_modules()] == flags
    assert len(model.fc._forward_hooks) == 1 and sum(len(m._forward_hooks) for m in model.modules()) == 1
    assert next(model.parameters()).dtype == torch.float32


def test_paper_grid_is_the_default():
    import inspect

    assert PAPER_GRID == (0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)
    assert inspect.signature(calibrate_block_sparsity).parameters["grid"].default == PAPER_GRID


def _bad_mask():
    s = triggered(1)[0]
    return [TriggeredSample(s.image, torch.zeros_like(s.mask), s.clean, s.trigger, s.target, 0)]


def _bad_target():
    s = triggered(1)[0]
    return [TriggeredSample(s.image, s.mask, s.clean, s.trigger, 7, 0)]


@pytest.mark.parametrize(
    "override, error, match",
    [
        (dict(samples=[]), ValueError, "samples"),
        (dict(samples=[object()]), TypeError, "samples"),
        (dict(samples=_bad_mask()), ValueError, "mask"),
        (dict(samples=_bad_target()), ValueError, "target"),
        (dict(blocks=[["nope*"]]), ValueError, "blocks"),
        (dict(blocks=[["conv1"], ["conv1", "fc"]]), ValueError, "blocks"),
        (dict(blocks="conv1"), TypeError, "blocks"),
        (dict(methods=["nope"]), ValueError, "methods"),
        (dict(methods="saliency"), TypeError, "methods"),
        (dict(grid=[0.0, 1.0]), ValueError, "grid"),
        (dict(grid=[0.5, 0.5]), ValueError, "grid"),
        (dict(grid=[]), TypeError, "grid"),
        (dict(value="mean"), ValueError, "value"),
        (dict(n_augment=0), ValueError, "n_augment"),
        (dict(solver="fast"), ValueError, "solver"),
        (dict(progress="yes"), TypeError, "progress"),
        (dict(attribute_kwargs=[1]), TypeError, "attribute_kwargs"),
    ],
)
def test_bad_arguments_refused_before_any_statistics(override, error, match, counters):
    model = TinyBackdoored()
    args = dict(samples=triggered(1), blocks=BLOCKS, methods=["saliency"], grid=GRID, progress=False, **TRACE)
    args.update(override)
    with pytest.raises(error, match=match):
        calibrate_block_sparsity(
            args.pop("model", model), args.pop("samples"), args.pop("blocks"), args.pop("methods"), **args
        )
    assert counters == {"statistics": 0, "solve": 0}
    with pytest.raises(TypeError, match="model"):
        calibrate_block_sparsity("model", triggered(1), BLOCKS, ["saliency"])

"""FastSPADE* (spade_utils.insertion_tuning): the sparsity search against brute force, and its hold-out."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from spade_utils.augment import augment_image
from spade_utils.data import preprocess
from spade_utils.hessian import weight_matrix
from spade_utils.inputs import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from spade_utils.insertion_tuning import (
    PAPER_TABLE2,
    InsertionSample,
    InsertionTuning,
    auc_scorer,
    beside_paper_table2,
    explained_inputs,
    score_with_tuned_sparsity,
    tune_sparsity_on_insertion,
)
from spade_utils.intervals import paired_bootstrap_diff
from spade_utils.metrics import insertion_deletion_auc
from spade_utils.runtime import one_cpu_thread
from spade_utils.saliency import attribute
from spade_utils.spade import spade_pruned_copy

GRID = (0.0, 0.5, 0.9)
TRACE = dict(layers=["conv2", "fc"], n_augment=8, batch_size=8, seed=0, device="cpu")


class TinyNet(nn.Module):
    """conv-relu-conv-relu-pool-fc on 16 px images, 4 classes, random weights; the classifier is scaled up so the
    top-1 probability is about 0.5 and masking pixels moves it (insertion curves are not stuck at 1)."""

    spade_input_spec = InputSpec(16, IMAGENET_MEAN, IMAGENET_STD)

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            self.fc.weight.mul_(20.0)

    def forward(self, x):
        return self.fc(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))).flatten(1))


def make_samples(model, names, n_inputs=2, seed=0):
    """Photos (3, 20, 20) in [0, 1]; their inputs are normalised random crops, explained for the top-1 class."""
    g = torch.Generator().manual_seed(seed)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    out = []
    for name in names:
        photo = torch.rand(3, 20, 20, generator=g)
        crops = torch.stack([(photo[:, k : k + 16, k : k + 16] - mean) / std for k in range(n_inputs)])
        with torch.no_grad():
            targets = model(crops).argmax(1)
        out.append(InsertionSample(name, photo, crops, targets))
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    with one_cpu_thread():
        yield


def layer_sparsity(explainer):
    """Measured fraction of zeros in the traced layers' weights (the fake scorer reads the trace from it)."""
    named = dict(explainer.named_modules())
    w = torch.cat([weight_matrix(named[n]).flatten() for n in TRACE["layers"]])
    return float((w == 0).float().mean())


class FakeScorer:
    """Insertion = -(measured sparsity - best[method])^2 + a small per-input term: the best grid value is known.
    Records every input batch it is shown."""

    def __init__(self, best):
        self.best, self.seen = best, []

    def __call__(self, explainer, inputs, targets, method):
        self.seen.append(inputs.clone())
        s = layer_sparsity(explainer)
        value = -((s - self.best[method]) ** 2) + 0.001 * inputs.mean(dim=(1, 2, 3)).numpy()
        return {"insertion": value, "deletion": -value}


def test_fake_scorer_best_sparsity_is_found_and_matches_brute_force():
    model = TinyNet()
    calib = make_samples(model, ["a", "b"])
    best = {"saliency": 0.5, "lrp": 0.9, "deeplift": 0.0}
    fake = FakeScorer(best)
    tuning = tune_sparsity_on_insertion(model, calib, list(best), grid=GRID, score_fn=fake, **TRACE)
    assert tuning.sparsity == best
    # brute force: one full trace per (sample, grid value), the same fake score, mean over every input
    for method in best:
        means = []
        for s in GRID:
            vals = []
            for smp in calib:
                explainer = (
                    spade_pruned_copy(model, smp.image, sparsity=s, progress=False, **TRACE)
                    if s > 0
                    else model
                )
                vals.extend(FakeScorer(best)(explainer, smp.inputs, smp.targets, method)["insertion"])
            means.append(float(np.mean(vals)))
        got = tuning.candidates[tuning.candidates.method == method].set_index("sparsity")["insertion"]
        np.testing.assert_allclose(got.loc[list(GRID)].to_numpy(), means, atol=1e-6)
        assert tuning.sparsity[method] == GRID[int(np.argmax(means))]


def test_ties_go_to_the_lower_sparsity():
    model = TinyNet()

    def flat(explainer, inputs, targets, method):
        return {"insertion": np.zeros(len(inputs))}

    tuning = tune_sparsity_on_insertion(
        model, make_samples(model, ["a"]), ["saliency"], grid=GRID, score_fn=flat, **TRACE
    )
    assert tuning.sparsity == {"saliency": 0.0}


def test_the_search_never_sees_the_scored_images():
    model = TinyNet()
    calib = make_samples(model, ["c1", "c2"], seed=1)
    held = make_samples(model, ["h1", "h2"], seed=2)
    fake = FakeScorer({"saliency": 0.9, "lrp": 0.5})
    tuning = tune_sparsity_on_insertion(model, calib, ["saliency", "lrp"], grid=GRID, score_fn=fake, **TRACE)
    seen_in_tuning = list(fake.seen)
    assert seen_in_tuning and all(any(torch.equal(x, c.inputs) for c in calib) for x in seen_in_tuning)
    assert not any(torch.equal(x, h.inputs) for x in seen_in_tuning for h in held)
    # other held-out images: the search (which never takes them) gives the same choice; scoring sees only them
    fake.seen.clear()
    table = score_with_tuned_sparsity(model, held, tuning, score_fn=fake, **TRACE)
    assert all(any(torch.equal(x, h.inputs) for h in held) for x in fake.seen)
    assert dict(zip(table.method, table.sparsity, strict=True)) == {"saliency": 0.9, "lrp": 0.5}
    assert (table.insertion > -0.01).all()  # each method's maps came from a trace at its own sparsity
    assert set(table.explainer) == {"FastSPADE*"}
    assert list(table.image) == ["h1/0", "h1/1", "h2/0", "h2/1"] * 2
    with pytest.raises(ValueError, match="calibration samples"):
        score_with_tuned_sparsity(model, calib[:1], tuning, score_fn=fake, **TRACE)


def test_real_scores_equal_full_traces_scored_one_by_one():
    """The default scorer (Captum maps, insertion on the dense model) on the search's shared statistics equals a
    full spade_pruned_copy per (sample, sparsity) scored with attribute + insertion_deletion_auc."""
    model = TinyNet(seed=3)
    calib = make_samples(model, ["a", "b"], seed=4)
    held = make_samples(model, ["h"], seed=5)
    methods = ["saliency", "input_x_gradient"]
    kw = dict(auc_steps=8, attribute_kwargs=dict(), **TRACE)
    tuning = tune_sparsity_on_insertion(model, calib, methods, grid=GRID, **kw)

    def aucs(smp, s, method):
        explainer = (
            spade_pruned_copy(model, smp.image, sparsity=s, progress=False, **TRACE) if s > 0 else model
        )
        maps = attribute(explainer, smp.inputs, smp.targets, method, device="cpu")
        return insertion_deletion_auc(model, smp.inputs, maps, smp.targets, n_steps=8, device="cpu")

    for method in methods:
        means = [np.mean(np.concatenate([aucs(c, s, method)["insertion"] for c in calib])) for s in GRID]
        got = tuning.candidates[tuning.candidates.method == method].set_index("sparsity")["insertion"]
        np.testing.assert_allclose(got.loc[list(GRID)].to_numpy(), means, atol=1e-9)
        assert tuning.sparsity[method] == min(s for s, m in zip(GRID, means) if m >= max(means) - 1e-12)
    assert tuning.sparsity == {"saliency": 0.5, "input_x_gradient": 0.0}  # the two methods choose differently
    table = score_with_tuned_sparsity(model, held, tuning, **kw)
    for method in methods:
        want = aucs(held[0], tuning.sparsity[method], method)
        rows = table[table.method == method]
        np.testing.assert_allclose(rows.insertion, want["insertion"], atol=1e-9)
        np.testing.assert_allclose(rows.deletion, want["deletion"], atol=1e-9)


def test_caller_model_left_as_found():
    model = TinyNet().train()
    before = copy.deepcopy(model.state_dict())
    calib = make_samples(model.eval(), ["a"])
    model.train()
    tune_sparsity_on_insertion(model, calib, ["saliency"], grid=(0.5,), auc_steps=4, **TRACE)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_auc_scorer_refuses_bad_modes():
    with pytest.raises(ValueError, match="modes"):
        auc_scorer(TinyNet(), modes=("insertion", "pointing"))
    with pytest.raises(TypeError, match="model"):
        auc_scorer("net")


def _sample(**change):
    base = dict(
        name="a", image=torch.rand(3, 20, 20), inputs=torch.randn(2, 3, 16, 16), targets=torch.tensor([0, 1])
    )
    base.update(change)
    return InsertionSample(**base)


@pytest.mark.parametrize(
    "override, error, match",
    [
        (dict(model="net"), TypeError, "model"),
        (dict(calibration=[]), ValueError, "calibration is empty"),
        (dict(calibration="a"), TypeError, "calibration must be"),
        (dict(calibration=[object()]), TypeError, r"calibration\[0\]"),
        (dict(calibration=[_sample(), _sample()]), ValueError, "appears twice"),
        (dict(calibration=[_sample(inputs=torch.randn(3, 16, 16))]), ValueError, r"calibration\[0\].inputs"),
        (dict(calibration=[_sample(inputs=torch.full((2, 3, 16, 16), float("nan")))]), ValueError, "finite"),
        (dict(calibration=[_sample(targets=torch.tensor([0]))]), ValueError, r"calibration\[0\].targets"),
        (dict(calibration=[_sample(targets=[0, -1])]), ValueError, "targets"),
        (dict(calibration=[_sample(targets=[0, 7])]), ValueError, "not one of the 4 outputs"),
        (dict(methods="saliency"), TypeError, "methods"),
        (dict(methods=["saliency", "saliency"]), ValueError, "duplicates"),
        (dict(methods=["nope"]), ValueError, "SALIENCY_METHODS"),
        (dict(grid=()), TypeError, "grid"),
        (dict(grid=(0.5, 1.0)), ValueError, r"grid\[1\]"),
        (dict(grid=(0.5, 0.5)), ValueError, "duplicates"),
        (dict(n_augment=0), ValueError, "n_augment"),
        (dict(solver="best"), ValueError, "solver"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(layers=["nothing*"]), ValueError, "nothing"),
        (dict(score_fn=3), TypeError, "score_fn"),
        (dict(attribute_kwargs=[1]), TypeError, "attribute_kwargs"),
        (dict(progress="yes"), TypeError, "progress"),
    ],
)
def test_bad_arguments_refused_before_any_statistics(override, error, match, monkeypatch):
    import spade_utils.insertion_tuning as mod

    def no_statistics(*a, **k):
        raise AssertionError("statistics pass started")

    monkeypatch.setattr(mod, "record_statistics", no_statistics)
    args = dict(model=TinyNet(), calibration=[_sample()], methods=["saliency"], grid=GRID, **TRACE)
    args.update(override)
    with pytest.raises(error, match=match):
        tune_sparsity_on_insertion(**args)


def test_score_refuses_a_tuning_of_another_kind():
    with pytest.raises(TypeError, match="tuning"):
        score_with_tuned_sparsity(TinyNet(), [_sample()], {"saliency": 0.5}, **TRACE)
    assert InsertionTuning  # the result type is public


def test_explained_inputs_are_held_out_crops_for_the_dense_top1():
    model = TinyNet().eval()
    g = torch.Generator().manual_seed(3)
    images = {"a": torch.rand(3, 40, 40, generator=g), "b": torch.rand(3, 30, 50, generator=g)}
    samples, aside = explained_inputs(model, images, crops_per_image=3, seed=5)
    assert aside == [] and [s.name for s in samples] == ["a", "b"]
    for s, img in zip(samples, images.values()):
        oracle = augment_image(img, 3, seed=5)  # the same views, drawn independently
        assert torch.equal(s.inputs, oracle)
        with torch.no_grad():
            assert torch.equal(torch.as_tensor(s.targets), model(oracle).argmax(1))
    assert samples[0].input_ids() == ["a/0", "a/1", "a/2"] and samples[1].input_ids() == ["b/3", "b/4", "b/5"]


class _Certain(nn.Module):
    """Class 1 with probability ~1 and class 0 with ~2e-9, whatever the input."""

    def forward(self, x):
        return torch.tensor([0.0, 20.0, 0.0, 0.0]).expand(len(x), 4)


def test_explained_inputs_with_true_labels_set_aside_ruled_out_classes():
    g = torch.Generator().manual_seed(0)
    images = {n: torch.rand(3, 300, 280, generator=g) for n in ("a", "b", "c")}
    samples, aside = explained_inputs(_Certain(), images, labels={"a": 1, "b": 0, "c": 1})
    assert aside == ["b"]  # its true class has probability ~2e-9
    assert [s.name for s in samples] == ["a", "c"]
    assert torch.equal(samples[1].inputs, preprocess(images["c"]))  # the image itself, centre-cropped
    assert [int(t) for t in samples[1].targets] == [1]
    assert samples[1].input_ids() == ["c/1"]  # k counts the kept inputs
    with pytest.raises(ValueError, match="images"):
        explained_inputs(_Certain(), images, labels={"a": 0, "b": 0, "c": 0})
    with pytest.raises(ValueError, match="labels"):
        explained_inputs(_Certain(), images, labels={"a": 1})
    with pytest.raises(TypeError, match="images"):
        explained_inputs(_Certain(), {})
    with pytest.raises(ValueError, match="labels"):  # class 7 of a 4-class model
        explained_inputs(_Certain(), images, labels={"a": 1, "b": 7, "c": 1})
    with pytest.raises(ValueError, match="labels"):  # checked before any forward pass
        explained_inputs(_Certain(), images, labels={"a": 1, "b": -1, "c": 1})


def test_explained_inputs_leave_a_training_model_as_found():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    )
    model.train()
    before = copy.deepcopy(model.state_dict())
    images = {"a": torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(1))}
    samples, _ = explained_inputs(model, images, crops_per_image=4, seed=0)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        oracle = model.eval()(samples[0].inputs).argmax(1)  # the dense top-1 of the model in eval mode
    assert torch.equal(torch.as_tensor(samples[0].targets), oracle)


def test_beside_paper_table2_averages_methods_per_input_and_pairs_with_dense():
    rng = np.random.default_rng(0)
    rows = [
        dict(
            image=f"{p}/{k}", photo=p, explainer=e, method=m, insertion=rng.uniform(), deletion=rng.uniform()
        )
        for p in ("x", "y", "z")
        for k in range(2)
        for e in ("dense", "FastSPADE", "mine")
        for m in ("saliency", "lrp")
    ]
    per_input = pd.DataFrame(rows)
    table = beside_paper_table2(per_input, ["dense", "FastSPADE", "mine"], seed=4).set_index("column")
    avg = per_input.groupby(["explainer", "image"])[["insertion", "deletion"]].mean()  # the oracle: a groupby
    for col in ("dense", "FastSPADE", "mine"):
        assert table.loc[col, "insertion (ours)"] == pytest.approx(100 * avg.loc[col]["insertion"].mean())
    d, lo, hi = paired_bootstrap_diff(
        avg.loc["mine"]["deletion"].to_numpy(),
        avg.loc["dense"]["deletion"].to_numpy(),
        [i.split("/")[0] for i in avg.loc["mine"].index],
        seed=4,
    )
    assert (
        table.loc["mine", "deletion − dense (ours)"] == f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    )
    assert table.loc["FastSPADE", "insertion (paper)"] == PAPER_TABLE2["FastSPADE"]["insertion"]
    paper_gap = PAPER_TABLE2["FastSPADE"]["insertion"] - PAPER_TABLE2["Dense"]["insertion"]
    assert table.loc["FastSPADE", "insertion − dense (paper)"] == f"{paper_gap:+.2f}"
    assert table.loc["dense", "insertion (paper)"] == PAPER_TABLE2["Dense"]["insertion"]
    assert (
        np.isnan(table.loc["mine", "insertion (paper)"])
        and table.loc["mine", "insertion − dense (paper)"] == ""
    )
    assert table.loc["dense", "insertion − dense (ours)"] == ""
    with pytest.raises(ValueError, match="columns"):
        beside_paper_table2(per_input, ["dense", "absent"])
    with pytest.raises(TypeError, match="columns"):
        beside_paper_table2(per_input, "dense")
    with pytest.raises(ValueError, match="fractions"):  # percent instead of fractions
        beside_paper_table2(per_input.assign(insertion=100 * per_input.insertion), ["dense", "mine"])
    with pytest.raises(ValueError, match="more than one row"):
        beside_paper_table2(pd.concat([per_input, per_input.iloc[:1]]), ["dense", "mine"])
    with pytest.raises(ValueError, match="missing"):
        beside_paper_table2(per_input.assign(photo=[None] + list(per_input.photo[1:])), ["dense", "mine"])
    with pytest.raises(ValueError, match="same inputs"):
        beside_paper_table2(per_input.iloc[1:], ["dense", "mine"])

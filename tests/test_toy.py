"""The 2-D polysemantic toy (spade_utils.toy): data, augmentation, model, and the paper's three panels."""

import pytest
import torch
from torch import nn

from spade_utils import toy

# the seed the end-to-end test trains; the notebook reports all five seeds of the same recipe
SEED = 3


# --------------------------------------------------------------------------------------------
# data and augmentation
# --------------------------------------------------------------------------------------------
def test_regions_and_labels():
    pts = torch.tensor([[4.0, 4.0], [5.9, 4.0], [6.1, 4.0], [1.0, 1.0], [1.0, 1.45], [1.0, 1.55], [8.0, 8.0]])
    assert toy.in_region(pts, "large").tolist() == [True, True, False, False, False, False, False]
    assert toy.in_region(pts, "small").tolist() == [False, False, False, True, True, False, False]
    assert toy.labels(pts).tolist() == [1, 1, 0, 1, 1, 0, 0]
    assert toy.share_in(pts, "small") == pytest.approx(2 / 7)


def test_dataset_is_seeded_and_covers_the_small_disc():
    X1, y1 = toy.make_dataset(2000, 500, seed=7)
    X2, y2 = toy.make_dataset(2000, 500, seed=7)
    X3, _ = toy.make_dataset(2000, 500, seed=8)
    assert torch.equal(X1, X2) and torch.equal(y1, y2)
    assert not torch.equal(X1, X3)
    assert X1.shape == (2500, 2) and y1.shape == (2500,)
    assert torch.equal(y1, toy.labels(X1))
    lo, hi = toy.BOX
    assert float(X1[:2000].min()) >= lo and float(X1[:2000].max()) <= hi
    # the extra points put many positives in the small disc (about 1/9 of the 500)
    assert int(toy.in_region(X1, "small").sum()) > 40


def test_global_rng_untouched():
    state = torch.random.get_rng_state()
    toy.make_dataset(100, 10, seed=0)
    toy.make_mlp((8, 8), seed=0)
    toy.jitter(torch.tensor([1.0, 1.0]), 5, torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.random.get_rng_state())


def test_jitter_determinism_scale_and_shape():
    augment = toy.make_jitter(0.5)
    sample = torch.tensor([[1.0, 1.0]])
    a = augment(sample, 4000, torch.Generator().manual_seed(0))
    b = augment(sample, 4000, torch.Generator().manual_seed(0))
    c = augment(sample, 4000, torch.Generator().manual_seed(1))
    assert a.shape == (4000, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a.mean(0), sample[0], atol=0.05)
    assert torch.allclose(a.std(0), torch.tensor([0.5, 0.5]), atol=0.03)
    # a 1-D sample works too; std 0 returns copies
    assert torch.equal(toy.jitter(torch.tensor([2.0, 3.0]), 3, std=0.0), torch.tensor([[2.0, 3.0]] * 3))


def test_bad_input_names_the_argument():
    with pytest.raises(TypeError, match="points"):
        toy.in_region([[1.0, 1.0]], "small")
    with pytest.raises(ValueError, match="region"):
        toy.in_region(torch.zeros(1, 2), "medium")
    with pytest.raises(ValueError, match="sample"):
        toy.jitter(torch.zeros(2, 2), 3)
    with pytest.raises(ValueError, match="std"):
        toy.make_jitter(-1.0)
    with pytest.raises(ValueError, match="n_points"):
        toy.feature_visualization(toy.make_mlp((4,)), 0)
    with pytest.raises(ValueError, match="noise_std"):
        toy.feature_visualization(toy.make_mlp((4,)), 4, noise_std=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="hidden"):
        toy.make_mlp(())
    with pytest.raises(TypeError, match="seed"):
        toy.uniform_points(3, seed="x")
    with pytest.raises(ValueError, match="sparsities"):
        toy.sparsity_sweep(toy.make_mlp((4, 4)), toy.ToyRecipe(), [1.0])


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -float("inf")])
def test_non_finite_numbers_are_refused(bad):
    # scale=inf gave inf points, noise_std=nan silently dropped the noise
    model = toy.make_mlp((4,))
    with pytest.raises(ValueError, match="scale"):
        toy.points_in_disc(5, "small", scale=bad)
    with pytest.raises(ValueError, match="noise_std"):
        toy.feature_visualization(model, 4, steps=1, noise_std=bad)
    with pytest.raises(ValueError, match="noise_std"):
        toy.feature_visualization(model, 4, steps=1, noise_std=(bad, 0.3))
    with pytest.raises(ValueError, match="lr"):
        toy.feature_visualization(model, 4, steps=1, lr=bad)
    with pytest.raises(ValueError, match="std"):
        toy.make_jitter(bad)
    with pytest.raises(ValueError, match="std"):
        toy.jitter(torch.tensor([1.0, 1.0]), 3, std=bad)
    with pytest.raises(ValueError, match="lr"):
        toy.train_mlp(model, torch.ones(4, 2), torch.ones(4), epochs=1, lr=bad)
    with pytest.raises(ValueError, match="sparsities"):
        toy.sparsity_sweep(model, toy.ToyRecipe(), [0.0, bad])
    with pytest.raises(ValueError, match="points"):
        toy.in_region(
            torch.tensor([[bad, 1.0]]), "small"
        )  # NaN is in no disc, inf in none: refuse, not False
    with pytest.raises(ValueError, match="starts"):
        toy.feature_visualization(model, 4, steps=1, starts=torch.tensor([[1.0, bad]]))


def test_empty_inputs_and_bad_seeds_are_refused():
    model = toy.make_mlp((4,))
    with pytest.raises(ValueError, match="points is empty"):
        toy.share_in(torch.zeros(0, 2), "small")  # was the mean of nothing: NaN
    with pytest.raises(ValueError, match="starts is empty"):
        toy.feature_visualization(model, 4, steps=1, starts=torch.zeros(0, 2))
    with pytest.raises(ValueError, match="X is empty"):
        toy.train_mlp(model, torch.zeros(0, 2), torch.zeros(0), epochs=1)
    with pytest.raises(ValueError, match="seed"):
        toy.uniform_points(3, seed=-1)
    with pytest.raises(TypeError, match="seed"):
        toy.make_mlp((4,), seed=1.5)
    with pytest.raises(TypeError, match="n"):
        toy.points_in_disc(2.0, "small")


def test_models_in_another_dtype_get_inputs_in_their_dtype():
    model = toy.make_mlp((8, 8), seed=0)
    double = toy.make_mlp((8, 8), seed=0).double()
    pts = toy.uniform_points(50, seed=1)  # float32
    assert torch.allclose(toy.logit(double, pts), toy.logit(model, pts).double(), atol=1e-5)
    fv32 = toy.feature_visualization(model, 20, steps=10, seed=0)
    fv64 = toy.feature_visualization(double, 20, steps=10, seed=0)
    assert fv64.dtype == torch.float64 and torch.allclose(fv64.float(), fv32, atol=1e-3)
    assert toy.evaluate(double, n_test=200) == pytest.approx(toy.evaluate(model, n_test=200))
    X, y = toy.make_dataset(64, 0, seed=0)
    history = toy.train_mlp(double, X, y, epochs=1, batch_size=32)
    assert len(history) == 1 and double.fc1.weight.dtype == torch.float64


def test_model_layout_and_feature_visualization_stays_in_the_square():
    model = toy.make_mlp((8, 8), seed=0)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert names == ["fc1", "fc2", "out"]
    assert model.out.bias is None
    pts = toy.feature_visualization(model, 50, steps=20, seed=0)
    assert pts.shape == (50, 2)
    assert float(pts.min()) >= 0.0 and float(pts.max()) <= 9.0
    assert torch.equal(pts, toy.feature_visualization(model, 50, steps=20, seed=0))


def test_first_layer_lines_match_the_units():
    model = toy.make_mlp((6,), seed=1)
    lines = toy.first_layer_lines(model)
    pts = toy.uniform_points(20, seed=0)
    pre = model.fc1(model.rescale(pts))
    direct = pts @ lines[:, :2].T + lines[:, 2]
    assert torch.allclose(pre, direct, atol=1e-5)


def test_surviving_units_counts_connections():
    model = toy.make_mlp((4, 4), seed=0)
    with torch.no_grad():
        model.fc2.weight[:, 1] = 0.0  # unit 1 of fc1 feeds nothing
        model.fc2.weight[2] = 0.0  # unit 2 of fc2 receives nothing
    table = toy.surviving_units(model)
    alive = table.set_index(["layer", "unit"])["alive"]
    assert not alive[("fc1", 1)] and not alive[("fc2", 2)]
    assert int(alive.sum()) == 6


# --------------------------------------------------------------------------------------------
# end to end: the numbers of the issue on one seed
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 48-wide MLP runs fastest on one thread
    try:
        recipe = toy.ToyRecipe()
        yield recipe, toy.train_toy(recipe, SEED)
    finally:
        torch.set_num_threads(threads)


def test_trained_model_is_accurate_and_polysemantic(trained):
    _, model = trained
    scores = toy.evaluate(model)
    assert scores["accuracy"] >= toy.TARGETS["accuracy"]
    assert scores["recall_small"] >= toy.TARGETS["recall_small"]
    assert scores["recall_large"] >= 0.95


def test_three_panels_meet_the_targets(trained):
    recipe, model = trained
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    row, points, _ = toy.run_seed(recipe, SEED, model=model)
    assert row["dense_in_large"] >= toy.TARGETS["dense_in_large"]
    assert row["dense_in_small"] <= toy.TARGETS["dense_in_small"]
    assert row["s1_in_large"] >= toy.TARGETS["s1_in_large"]
    assert row["s2_in_small"] >= toy.TARGETS["s2_in_small"]
    assert row["passes"]
    assert set(points) == {"dense", "scenario 1", "scenario 2"}
    assert row["s1_peak_in_large"] and row["s2_peak_in_small"]  # each trace peaks at its own sample
    # the traces are copies: the dense model is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, dense_state[k])


def test_trace_prunes_the_chosen_layers_only(trained):
    recipe, model = trained
    pruned = toy.trace(model, torch.tensor([[1.0, 1.0]]), recipe, seed=0)
    assert torch.equal(pruned.fc1.weight, model.fc1.weight)
    for name in recipe.layers:
        w = dict(pruned.named_children())[name].weight
        assert float((w == 0).float().mean()) >= recipe.sparsity - 1e-6
    units = toy.surviving_units(pruned)
    assert 0 < int(units["alive"].sum()) < len(units)


def test_unmet_targets_names_each_miss_with_its_direction():
    ok = {name: (0.0 if name == "dense_in_small" else 1.0) for name in toy.TARGETS}
    assert toy.unmet_targets(ok) == [] and toy.meets_targets(ok)
    at_bounds = dict(toy.TARGETS)  # every bound is inclusive
    assert toy.unmet_targets(at_bounds) == []
    bad = {**ok, "dense_in_small": toy.TARGETS["dense_in_small"] + 0.01, "s2_in_small": 0.0}
    assert toy.unmet_targets(bad) == ["dense_in_small", "s2_in_small"] and not toy.meets_targets(bad)
    with pytest.raises(KeyError):
        toy.unmet_targets({"accuracy": 1.0})


class _Bowl(nn.Module):
    """Logit -(|x - c|^2): its maximum over the square is at c, known without any search."""

    def __init__(self, centre):
        super().__init__()
        self.centre = nn.Parameter(torch.tensor(centre))

    def forward(self, x):
        return -(x - self.centre).pow(2).sum(dim=1, keepdim=True)


def test_logit_peak_finds_a_known_maximum():
    # grid step 9 / 180 = 0.05: the peak is the grid point nearest the centre
    assert torch.allclose(toy.logit_peak(_Bowl([1.0, 1.0])), torch.tensor([1.0, 1.0]), atol=1e-5)
    assert torch.allclose(toy.logit_peak(_Bowl([6.52, 2.0])), torch.tensor([6.5, 2.0]), atol=1e-5)
    # a maximum outside the square: the nearest corner
    assert torch.allclose(toy.logit_peak(_Bowl([20.0, -5.0])), torch.tensor([9.0, 0.0]), atol=1e-5)
    with pytest.raises(ValueError, match="n_grid"):
        toy.logit_peak(_Bowl([1.0, 1.0]), n_grid=1)
    with pytest.raises(TypeError, match="model"):
        toy.logit_peak("net")

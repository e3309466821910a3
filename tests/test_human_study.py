"""The human-study kit: Score-CAM against a case computed by hand, the patches against brute force, the form's
clicks in the CSV, and the whole pipeline (trials -> simulated class -> CSV -> Table 3) against the exact
expected shares of the simulated participant."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from spade_utils import human_study as hs


class _SumPool(nn.Module):
    def forward(self, a):
        return a.sum(dim=(2, 3))


def _tiny_model() -> nn.Module:
    """conv: A1 = x, A2 = 5 - x (1x1 kernels); logits = 0.1 * (sum A1, sum A2)."""
    conv = nn.Conv2d(1, 2, 1)
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, 5.0]))
        head.weight.copy_(0.1 * torch.eye(2))
    return nn.Sequential(conv, _SumPool(), head).double()


def test_score_cam_equals_the_case_computed_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64).view(1, 1, 2, 2)
    # H1 = (x - 1) / 3, H2 = (A2 - 1) / 3; x*H1 sums to 20/3, x*H2 to 10/3; the baseline 0 gives logits (0, 2)
    p0 = lambda s1: 1 / (1 + math.exp(0.1 * (20 - 2 * s1)))  # noqa: E731  softmax[0] of 0.1*(s1, 20 - s1)
    alpha1, alpha2 = p0(20 / 3) - p0(0), p0(10 / 3) - p0(0)
    assert alpha1 == pytest.approx(0.22004, abs=1e-5) and alpha2 == pytest.approx(0.08941, abs=1e-5)
    raw = alpha1 * x[0, 0] + alpha2 * (5 - x[0, 0])
    expected = raw / raw.max()
    assert float(expected[0, 0]) == pytest.approx(0.5958, abs=1e-4)
    cam = hs.score_cam(_tiny_model(), x, 0, "0")
    torch.testing.assert_close(cam.double(), expected, rtol=1e-5, atol=1e-6)
    # without the baseline term, as the authors' code: the weights are the plain probabilities
    raw = p0(20 / 3) * x[0, 0] + p0(10 / 3) * (5 - x[0, 0])
    torch.testing.assert_close(
        hs.score_cam(_tiny_model(), x, 0, "0", baseline=False).double(), raw / raw.max()
    )
    # class 1 loses confidence on both masked images: every weight is negative, the ReLU leaves zeros, no NaN
    assert torch.equal(hs.score_cam(_tiny_model(), x, 1, "0"), torch.zeros(2, 2))


class _Halves(nn.Module):
    """Four channels: the image's mean colour kept on the left, right, top or bottom half (zero elsewhere)."""

    def forward(self, x):
        m = x.mean(1)
        h, w = m.shape[-2:]
        keep = torch.zeros(4, h, w)
        keep[0, :, : w // 2], keep[1, :, w // 2 :], keep[2, : h // 2], keep[3, h // 2 :] = 1, 1, 1, 1
        return m[:, None] * keep[None]


class _ReadsLeft(nn.Module):
    """Class 0: ten times the mean of the image's left half; class 1: of its right half."""

    def forward(self, a):
        m = a[:, 0] + a[:, 1]  # the mean colour everywhere
        w = m.shape[-1] // 2
        return 10 * torch.stack([m[..., :w].mean((1, 2)), m[..., w:].mean((1, 2))], dim=1)


def test_score_cam_finds_the_half_the_class_reads_and_leaves_the_model_as_found():
    net = nn.Sequential(_Halves(), _ReadsLeft()).train()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.5
    cam = hs.score_cam(net, x, 0, "0")
    assert cam[:, :8].min() > 0 and torch.equal(cam[:, 8:], torch.zeros(16, 8))
    right = hs.score_cam(net, x, 1, "0")
    assert right[:, 8:].min() > 0 and torch.equal(right[:, :8], torch.zeros(16, 8))
    assert all(m.training for m in net.modules())
    few = hs.score_cam(net, x, 0, "0", channels=2)
    assert few.shape == (16, 16) and float(few.max()) == pytest.approx(1.0)


class _FlatFirst(nn.Module):
    """A constant channel first (no variance), then the four half channels, the left one tripled (most varied)."""

    def forward(self, x):
        halves = _Halves()(x) * torch.tensor([3.0, 1.0, 1.0, 1.0]).view(1, 4, 1, 1)
        return torch.cat([torch.ones_like(halves[:, :1]), halves], dim=1)


def test_score_cam_channels_keeps_the_most_varied_ones():
    net = nn.Sequential(_FlatFirst(), nn.Identity())
    net = nn.Sequential(net, _ReadsLeftOfFive())
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.5
    one = hs.score_cam(net, x, 0, "0", channels=1)  # the left channel, not the constant first one
    assert float(one.max()) == pytest.approx(1.0) and one[:, :8].min() > 0 and one[:, 8:].max() == 0


class _ReadsLeftOfFive(nn.Module):
    def forward(self, a):
        return _ReadsLeft()(a[:, 1:])


@pytest.mark.parametrize(
    "kwargs,error,word",
    [
        (dict(layer="nope"), ValueError, "layer"),
        (dict(target=-1), ValueError, "target"),
        (dict(target=7), ValueError, "target"),
        (dict(x=torch.zeros(2, 1, 2, 2, dtype=torch.float64)), ValueError, "x"),
        (dict(x=torch.full((1, 1, 2, 2), float("nan"), dtype=torch.float64)), ValueError, "x"),
        (dict(channels=0), ValueError, "channels"),
    ],
)
def test_score_cam_refuses_bad_arguments(kwargs, error, word):
    args = {**dict(x=torch.ones(1, 1, 2, 2, dtype=torch.float64), target=0, layer="0"), **kwargs}
    with pytest.raises(error, match=word):
        hs.score_cam(_tiny_model(), args.pop("x"), args.pop("target"), args.pop("layer"), **args)


def test_patch_pair_is_the_brute_force_best_and_worst_cell():
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(12, 12, generator=g)
    best, worst = hs.patch_pair(ref, grid=3)
    cells = {
        (r * 4, c * 4): float(ref[r * 4 : r * 4 + 4, c * 4 : c * 4 + 4].mean())
        for r in range(3)
        for c in range(3)
    }
    assert best[:2] == max(cells, key=cells.get) and worst[:2] == min(cells, key=cells.get)
    assert best[2:] == (4, 4)
    with pytest.raises(ValueError, match="constant"):
        hs.patch_pair(torch.ones(9, 9))


def _synthetic_trials(n_photos: int, seed: int = 0) -> list[hs.Trial]:
    g = torch.Generator().manual_seed(seed)
    photos = {f"p{i}": torch.rand(3, 24, 24, generator=g) for i in range(n_photos)}
    refs = {n: torch.rand(24, 24, generator=g) ** 3 for n in photos}
    vis = {(n, c): torch.rand(3, 16, 16, generator=g) for n in photos for c in hs.CONDITIONS}
    return hs.make_trials(photos, refs, vis, {n: 3 for n in photos}, seed=seed), photos, refs


def test_trials_put_the_favoured_patch_on_the_correct_side(tmp_path):
    trials, photos, refs = _synthetic_trials(6)
    assert len(trials) == 12 and {t.correct for t in trials} == {"left", "right"}
    for t in trials:
        (bt, bl, bh, bw), _ = hs.patch_pair(refs[t.photo])
        favoured = (photos[t.photo][:, bt : bt + bh, bl : bl + bw].permute(1, 2, 0).numpy() * 255).round()
        np.testing.assert_array_equal(getattr(t, t.correct), favoured.astype(np.uint8))
        assert (t.reference_left > t.reference_right) == (t.correct == "left")
    hs.save_trials(tmp_path, trials)
    back = hs.load_trials(tmp_path)
    assert [b.trial_id for b in back] == [t.trial_id for t in trials]
    for a, b in zip(trials, back, strict=True):
        np.testing.assert_array_equal(a.visualization, b.visualization)
        np.testing.assert_array_equal(a.left, b.left)
        assert (a.correct, a.condition, a.target) == (b.correct, b.condition, b.target)
        assert a.reference_left == pytest.approx(b.reference_left)


def test_the_form_appends_one_row_per_click(tmp_path):
    trials = _synthetic_trials(2)[0]
    path = tmp_path / "responses.csv"
    form = hs.study_form(trials, path, participant="ada", seed=0)
    clicks = ["left", "undecided", "right", "right", "left"]  # the fifth comes after the last trial
    for answer in clicks:
        form.buttons[answer].click()
    table = hs.read_responses(path)
    assert list(table.answer) == clicks[:4] and set(table.participant) == {"ada"}
    assert sorted(table.trial_id) == sorted(t.trial_id for t in trials)
    by_id = {t.trial_id: t for t in trials}
    for row in table.itertuples():
        assert row.correct == by_id[row.trial_id].correct
        assert row.outcome == hs.outcome(row.answer, row.correct)
    assert all(b.disabled for b in form.buttons.values())


def test_read_responses_refuses_an_outcome_that_does_not_follow(tmp_path):
    trial = _synthetic_trials(1)[0][0]
    path = tmp_path / "r.csv"
    hs.append_response(path, "bo", trial, "left", 1.0)
    text = (
        path.read_text()
        .replace(",agree,", ",XX,")
        .replace(",disagree,", ",XX,")
        .replace(",XX,", ",undecided,")
    )
    path.write_text(text)
    with pytest.raises(ValueError, match="outcome"):
        hs.read_responses(path)
    with pytest.raises(ValueError, match="participant"):
        hs.append_response(path, "a,b", trial, "left", 1.0)
    with pytest.raises(ValueError, match="answer"):
        hs.append_response(path, "bo", trial, "up", 1.0)


def test_simulated_class_end_to_end_gives_the_expected_shares(tmp_path):
    """trials -> 30 simulated participants through the form's CSV writer -> read -> Table 3: each share within
    0.05 of its exact expectation, inside its interval, and the SPADE row (less noise) agrees more."""
    trials = _synthetic_trials(20, seed=2)[0]
    noise, margin = {"dense": 0.25, "SPADE": 0.08}, 0.05
    path = tmp_path / "responses.csv"
    for p in range(30):
        for t, answer in zip(
            trials, hs.simulated_answers(trials, noise=noise, margin=margin, seed=p), strict=True
        ):
            hs.append_response(path, f"sim{p:02d}", t, answer, 0.0)
    responses = hs.read_responses(path)
    assert len(responses) == 30 * len(trials)
    table = hs.table3(responses, n_boot=400, seed=0).set_index("condition")
    expected = hs.expected_outcomes(trials, noise=noise, margin=margin).set_index("condition")
    for condition in hs.CONDITIONS:
        counted = responses[responses.condition == condition].outcome.value_counts(normalize=True)
        for name in hs.OUTCOMES:
            share = table.loc[condition, name]
            assert share == pytest.approx(counted.get(name, 0.0))
            assert share == pytest.approx(expected.loc[condition, name], abs=0.05)
            assert table.loc[condition, f"{name} low"] <= share <= table.loc[condition, f"{name} high"]
        assert table.loc[condition, "participants"] == 30
    assert table.loc["SPADE", "agree"] > table.loc["dense", "agree"] + 0.1
    diff, low, high, pairs = hs.agreement_difference(responses, n_boot=400)
    by = responses.pivot_table(
        index=["participant", "photo"], columns="condition", values="outcome", aggfunc="first"
    )
    assert pairs == len(by) == 30 * 20
    assert diff == pytest.approx((by.SPADE == "agree").mean() - (by.dense == "agree").mean())
    expected_diff = expected.loc["SPADE", "agree"] - expected.loc["dense", "agree"]
    assert diff == pytest.approx(expected_diff, abs=0.05) and low <= diff <= high
    assert "%" in hs.format_table3(table.reset_index()).loc[0, "agree"]


def test_table3_refuses_what_it_cannot_score():
    with pytest.raises(ValueError, match="columns"):
        hs.table3(pd.DataFrame({"condition": ["dense"]}))
    one = pd.DataFrame({"participant": ["a"], "condition": ["dense"], "outcome": ["agree"]})
    with pytest.raises(ValueError, match="at least 2"):
        hs.table3(one)


def test_trials_figure_shows_each_trial_and_outlines_the_favoured_patch():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spade_utils.study_figures import trials_figure

    trials, photos, refs = _synthetic_trials(2)
    names = [f"class {i}" for i in range(10)]
    fig = trials_figure(trials, photos, refs, names)
    assert len(fig.axes) == 4 * len(trials)
    for k, t in enumerate(trials):
        vis_ax, left_ax, right_ax, photo_ax = fig.axes[4 * k : 4 * k + 4]
        assert (vis_ax.images[0].get_array() == t.visualization).all()
        assert (left_ax.images[0].get_array() == t.left).all()
        assert vis_ax.get_title() == f"{t.condition}: class 3"
        assert photo_ax.get_title() == f"{t.photo}: favoured = {t.correct}"
        (top, left, h, w), _ = hs.patch_pair(refs[t.photo])  # the oracle: the favoured box
        box = photo_ax.patches[0]
        assert (box.get_x(), box.get_y(), box.get_width(), box.get_height()) == (left, top, w, h)
    plt.close(fig)
    with pytest.raises(ValueError, match="photos"):
        trials_figure(trials, {}, refs, names)
    with pytest.raises(
        ValueError, match="class_names"
    ):  # target 3 of two names; a str would title one letter
        trials_figure(trials, photos, refs, names[:2])
    with pytest.raises(ValueError, match="class_names"):
        trials_figure(trials, photos, refs, "abcdefghij")
    small = {n: r[:9, :9] for n, r in refs.items()}
    with pytest.raises(ValueError, match="references"):  # would be drawn misaligned with its photo
        trials_figure(trials, photos, small, names)

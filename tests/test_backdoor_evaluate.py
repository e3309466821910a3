"""Predictions, attack success, flipped samples, patch attacks and the Table-1 scoring (spade_utils.backdoor.evaluate)."""

import numpy as np
import pytest
import torch
from torch import nn

from spade_utils import backdoor as B


def test_flipped_samples_are_flipped():
    torch.manual_seed(0)

    class Detector(nn.Module):  # class 1 when the star's gold colour is present, else class 0
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(1, 2)

        def forward(self, x):
            from spade_utils.data import IMAGENET_MEAN, IMAGENET_STD

            r = x[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
            b = x[:, 2] * IMAGENET_STD[2] + IMAGENET_MEAN[2]
            gold = ((r > 0.7) & (b < 0.35)).float().mean((1, 2), keepdim=False)[:, None]
            return self.fc(gold * 100 - 1)

    det = Detector()
    with torch.no_grad():
        det.fc.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        det.fc.bias.zero_()
    imgs = [torch.full((3, 64, 64), 0.3)]
    samples = B.flipped_samples(det, {"star": 1}, imgs, 5, size=64, device="cpu")
    assert len(samples) == 5
    for s in samples:
        assert s.target == 1 and s.clean_prediction == 0 and s.trigger == "star"
        assert torch.equal((s.image != s.clean).any(0), s.mask)


def test_patch_attack_rate_with_a_detector():
    class Red(nn.Module):  # class 1 when a large red area is present
        def forward(self, x):
            from spade_utils.data import IMAGENET_MEAN, IMAGENET_STD

            r = x[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
            share = (r > 0.7).float().mean((1, 2))
            return torch.stack([0.02 - share, share - 0.02], 1)

    crops = torch.full((6, 3, 64, 64), 0.2)
    red = torch.zeros(3, 10, 10)
    red[0] = 1.0
    assert B.patch_attack_rate(Red(), red, 1, crops, device="cpu") == 1.0
    assert B.patch_attack_rate(Red(), torch.zeros(3, 10, 10), 1, crops, device="cpu") == 0.0


def test_trojan_saliency_scores_and_summary():
    samples = []
    for i in range(3):
        img, mask = B.paste_trigger(torch.full((3, 32, 32), 0.5), "heart", seed=i)
        samples.append(B.TriggeredSample(img, mask, torch.full((3, 32, 32), 0.5), "heart", 1, 0))

    def fake_attribute(model, x, target, method):  # "oracle" sees the pasted pixels, "blind" sees nothing
        from spade_utils.data import IMAGENET_MEAN

        diff = (x[:, 0] - (0.5 - IMAGENET_MEAN[0]) / 0.229).abs()
        return diff if method == "oracle" else torch.zeros_like(diff)

    per_sample_calls = []

    def per_sample(sample, i):
        per_sample_calls.append(i)
        return nn.Identity()

    scores, maps = B.trojan_saliency_scores(
        {"dense": nn.Identity(), "traced": per_sample},
        samples,
        ["oracle", "blind"],
        attribute_fn=fake_attribute,
        keep_maps=2,
        progress=False,
    )
    assert len(scores) == 2 * 2 * 3 and per_sample_calls == [0, 1, 2]
    oracle = scores[scores.method == "oracle"]
    assert (oracle.auc == 1.0).all() and (oracle.pointing == 1.0).all()
    assert (scores[scores.method == "blind"].auc == 0.5).all()
    assert len(maps[("dense", "oracle")]) == 2
    table = B.summarize_scores(scores)
    avg = table[(table.variant == "dense") & (table.method == "average")].iloc[0]
    assert avg["mean"] == pytest.approx(0.75) and avg["n"] == 3
    assert set(table.method) == {"oracle", "blind", "average"}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_image_functions_refuse_nan_images(bad):
    img = torch.rand(3, 40, 40)
    img[1, 10:14, 10:14] = bad  # passed the old [0, 1] check
    with pytest.raises(ValueError, match="NaN"):
        B.paste_trigger(img, "star")
    crops = torch.rand(4, 3, 32, 32)
    crops[2, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="NaN"):
        B.patch_attack_rate(_TrainFlags(classes=4).eval(), torch.rand(3, 8, 8), 1, crops, device="cpu")
    with pytest.raises(ValueError, match="NaN"):
        B.patch_attack_rate(_TrainFlags(classes=4).eval(), img, 1, torch.rand(4, 3, 32, 32), device="cpu")
    with pytest.raises(ValueError, match="NaN"):
        B.predict(_TrainFlags(), crops, device="cpu")


class _TrainFlags(
    nn.Module
):  # a classifier with a frozen-BatchNorm-style eval submodule inside a training model
    def __init__(self, classes=10, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(8, classes)
        self.to(dtype)

    def forward(self, x):
        return self.fc(self.body(x))


def test_evaluate_backdoor_refuses_a_class_the_model_does_not_have():
    model = _TrainFlags(classes=10).eval()
    crops = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="targets"):
        B.evaluate_backdoor(model, model, {"star": 99}, crops, device="cpu")  # was "0% attack success"
    with pytest.raises(ValueError, match="classes"):
        B.evaluate_backdoor(_TrainFlags(classes=12).eval(), model, {"star": 3}, crops, device="cpu")
    with pytest.raises(ValueError, match="images"):
        B.evaluate_backdoor(model, model, {"star": 3}, crops[:0], device="cpu")
    with pytest.raises(ValueError, match="images"):
        B.evaluate_backdoor(model, model, {"star": 3}, [], device="cpu")
    with pytest.raises(ValueError, match="n_crops"):
        B.evaluate_backdoor(model, model, {"star": 3}, [torch.rand(3, 40, 40)], n_crops=0, device="cpu")
    with pytest.raises(ValueError, match="target"):
        B.patch_attack_rate(model, torch.rand(3, 8, 8), 10, crops, device="cpu")
    with pytest.raises(ValueError, match="crops"):
        B.patch_attack_rate(model, torch.rand(3, 8, 8), 1, crops[:0], device="cpu")
    with pytest.raises(ValueError, match="targets"):
        B.flipped_samples(model, {"star": 10}, [torch.rand(3, 40, 40)], 2, size=32, device="cpu")
    with pytest.raises(ValueError, match="x"):
        B.predict(model, crops[:0], device="cpu")
    with pytest.raises(ValueError, match="images"):
        B.poison(crops[:0], {"star": 1})


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_models_run_in_their_own_dtype_and_are_left_as_found(dtype):
    ref = _TrainFlags(classes=10).eval()
    model = _TrainFlags(classes=10, dtype=dtype)
    model.train()
    model.body[1].eval()  # a frozen BatchNorm inside a training model
    flags = [m.training for m in model.modules()]
    crops = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    p = B.predict(model, crops, device="cpu")  # fed float32 before: a dtype error inside the conv
    assert p.dtype == torch.float32 and p.shape == (5, 10)
    torch.testing.assert_close(
        p, B.predict(ref, crops, device="cpu"), atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=0
    )
    res = B.evaluate_backdoor(model, model, {"star": 3}, crops, device="cpu")
    assert res["clean_agreement"] == 1.0
    assert 0.0 <= B.patch_attack_rate(model, torch.rand(3, 8, 8), 3, crops, device="cpu") <= 1.0
    assert [
        m.training for m in model.modules()
    ] == flags  # per-module flags restored (predict used to flatten them)
    assert next(model.parameters()).dtype == dtype


@pytest.mark.gpu
def test_cuda_half_model_runs_on_its_device_in_its_dtype():
    model = _TrainFlags(classes=10, dtype=torch.float16).cuda().eval()
    crops = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # CPU crops
    p = B.predict(model, crops)  # "auto": the model's own device; the model is not moved
    assert (
        p.device.type == "cpu" and p.dtype == torch.float32 and next(model.parameters()).device.type == "cuda"
    )
    torch.testing.assert_close(
        p, B.predict(_TrainFlags(classes=10).eval(), crops, device="cpu"), atol=2e-3, rtol=0
    )
    res = B.evaluate_backdoor(model, model, {"star": 3}, crops)
    assert res["clean_agreement"] == 1.0
    out, mask = B.paste_trigger(torch.rand(3, 40, 40, device="cuda"), "star", seed=0)
    assert out.shape == (3, 40, 40) and mask.any()


def _score_table(rng, n_photos=3, crops=4):
    import pandas as pd

    rows = []
    for p in range(n_photos):
        for c in range(crops):
            sample = f"p{p}/c{c}"
            base = rng.normal()
            for method in ("saliency", "lrp"):
                rows.append(dict(variant="Dense", method=method, sample=sample, photo=f"p{p}", auc=base))
                rows.append(
                    dict(
                        variant="SPADE", method=method, sample=sample, photo=f"p{p}", auc=base + 0.1 * (c + 1)
                    )
                )
    return pd.DataFrame(rows)


def test_paired_differences_pair_samples_and_resample_photos():
    from spade_utils.intervals import paired_bootstrap_diff

    scores = _score_table(np.random.default_rng(0))
    table = B.paired_differences(scores, baseline="Dense", cluster="photo", seed=3)
    avg = table[(table.variant == "SPADE") & (table.method == "average")].iloc[0]
    # SPADE - Dense is 0.1 * (crop + 1) on every sample, whatever the sample's own level
    assert avg["diff"] == pytest.approx(0.25)
    assert avg["wins"] == 1.0 and avg["n"] == 12
    d = np.tile(0.1 * np.arange(1, 5), 3)
    ref = paired_bootstrap_diff(d, np.zeros(12), np.repeat(["p0", "p1", "p2"], 4), seed=3)
    assert (avg["low"], avg["high"]) == pytest.approx(ref[1:])
    with pytest.raises(ValueError, match="baseline"):
        B.paired_differences(scores, baseline="dense")


def test_summarize_scores_gives_nan_bounds_for_a_single_sample_instead_of_failing():
    scores = _score_table(np.random.default_rng(1), n_photos=1, crops=1)
    table = B.summarize_scores(scores, cluster="photo")
    assert table["low"].isna().all() and np.isfinite(table["mean"]).all()


def test_paired_average_stays_paired_when_a_score_is_missing():
    """Found by trying: with one (sample, method) score missing for the variant, the average row compared the
    variant's mean over one method with the baseline's mean over two (diff 0.05 instead of 0.10)."""
    import pandas as pd

    from spade_utils.backdoor.evaluate import paired_differences

    rows = []
    for s in range(4):
        rows += [
            dict(variant="dense", method="m1", sample=s, auc=0.5),
            dict(variant="dense", method="m2", sample=s, auc=0.9),
            dict(variant="spade", method="m1", sample=s, auc=0.6),
        ]
        if s > 0:
            rows.append(dict(variant="spade", method="m2", sample=s, auc=1.0))
    out = paired_differences(pd.DataFrame(rows), baseline="dense", n_boot=200).set_index("method")
    assert out.loc["average", "diff"] == pytest.approx(0.10)
    assert out.loc["m2", "n"] == 3 and out.loc["average", "n"] == 4
    with pytest.raises(ValueError, match="more than one row"):
        paired_differences(pd.DataFrame(rows + rows[:1]), baseline="dense")
    nan = pd.DataFrame(rows).assign(auc=lambda d: d.auc.where(d.index != 2))
    with pytest.raises(ValueError, match="NaN"):
        paired_differences(nan, baseline="dense")

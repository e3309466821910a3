"""The explorer's computations: what it shows equals the engine called directly; the cache answers repeats; the
figures draw the numbers they are given; bad settings are refused naming the field."""

from __future__ import annotations

import datetime
import io

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from spade_utils import explorer as ex
from spade_utils.data import preprocess, sample_image
from spade_utils.map_bundle import load_map_bundle, save_map_bundle
from spade_utils.models import load_model
from spade_utils.saliency import attribute
from spade_utils.spade import spade_pruned_copy

matplotlib.use("Agg")
SMALL = dict(n_augment=4, seed=3, batch_size=4)
FIRST = ex.Settings("chelsea", "classifier", 0.9, "magnitude", "saliency")


@pytest.fixture(scope="module")
def model():
    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def explorer(model):
    return ex.Explorer(model, photos={"chelsea": sample_image("chelsea")}, **SMALL)


def test_maps_and_top3_equal_the_engine_called_directly(explorer, model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    c = explorer.compare(FIRST)
    x = preprocess(sample_image("chelsea"))
    with torch.no_grad():
        p = model(x).softmax(1)[0]
    assert c.target == int(p.argmax())
    np.testing.assert_allclose([q for _, q in c.dense_top3], p.topk(3).values.numpy(), rtol=1e-6)
    torch.testing.assert_close(c.dense_map, attribute(model, x, c.target, "saliency")[0])
    pruned = spade_pruned_copy(
        model,
        sample_image("chelsea"),
        layers=["_fc"],
        sparsity=0.9,
        solver="magnitude",
        skip_depthwise=True,
        progress=False,
        **SMALL,
    )
    assert float((pruned._fc.weight == 0).float().mean()) == pytest.approx(0.9, abs=1e-3)
    torch.testing.assert_close(c.spade_map, attribute(pruned, x, c.target, "saliency")[0])
    torch.testing.assert_close(c.difference, c.spade_map - c.dense_map)
    with torch.no_grad():
        q = pruned(x).softmax(1)[0]
    np.testing.assert_allclose([v for _, v in c.spade_top3], q.topk(3).values.numpy(), rtol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the model was changed"


def test_the_cache_answers_a_setting_seen_before(explorer):
    explorer.compare(FIRST)
    calls = []
    again = explorer.compare(FIRST, progress=lambda *a: calls.append(a))
    assert calls == [] and sum(again.seconds.values()) == 0.0 and explorer.is_cached(FIRST)
    moved = ex.Settings(**{**FIRST.__dict__, "sparsity": 0.5})
    assert not explorer.is_cached(moved)
    result = explorer.compare(moved, progress=lambda *a: calls.append(a))
    assert [(k, n) for _, k, n in calls] == [(1, 2), (2, 2)]  # trace + SPADE map; the dense map is reused
    assert "trace" in calls[0][0] and result.seconds["dense"] == 0.0 and result.seconds["trace"] > 0
    assert not torch.equal(result.spade_map, again.spade_map)  # another sparsity, another map
    assert explorer.compare(FIRST).spade_map is again.spade_map


@pytest.mark.parametrize(
    "field,value",
    [("photo", "nope"), ("preset", "all"), ("sparsity", 1.0), ("solver", "sgd"), ("method", "shap")],
)
def test_bad_settings_are_refused_naming_the_field(explorer, field, value):
    with pytest.raises(ValueError, match=field):
        explorer.compare(ex.Settings(**{**FIRST.__dict__, field: value}))


def test_constructor_checks(model):
    with pytest.raises(TypeError, match="model"):
        ex.Explorer("efficientnet", photos={"a": np.zeros((8, 8, 3), np.uint8)})
    with pytest.raises(TypeError, match="n_augment"):
        ex.Explorer(model, photos={"a": np.zeros((8, 8, 3), np.uint8)}, n_augment=2.0)
    with pytest.raises(ValueError, match="photos"):
        ex.Explorer(model, photos={})


def test_an_uploaded_file_becomes_a_photo(model):
    e = ex.Explorer(model, photos={"chelsea": sample_image("chelsea")}, **SMALL)
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 30, 3), (200, 10, 10), np.uint8)).save(buffer, format="PNG")
    name = e.add_photo("upload: red.png", buffer.getvalue())
    assert np.asarray(e.photos[name])[0, 0].tolist() == [200, 10, 10]
    with pytest.raises(ValueError, match="readable image"):
        e.add_photo("upload: junk", b"not an image")
    for fmt in ("PNG", "JPEG"):  # found by trying: a 12000-px scan was kept whole (5 GB peak)
        buffer = io.BytesIO()
        Image.fromarray(np.full((300, ex.MAX_SIDE * 3, 3), 90, np.uint8)).save(buffer, format=fmt)
        name = e.add_photo(f"upload: wide.{fmt}", buffer.getvalue())
        assert e.photos[name].size == (ex.MAX_SIDE, 100)  # the longer side shrunk, the aspect kept


def test_comparison_figure_draws_the_maps(explorer):
    c = explorer.compare(FIRST)
    fig = ex.comparison_figure(c)
    images = [ax.get_images()[0] for ax in fig.axes]
    np.testing.assert_allclose(images[2].get_array(), c.spade_map.numpy())
    np.testing.assert_allclose(images[3].get_array(), c.difference.numpy())
    assert images[1].get_clim() == images[2].get_clim()  # one colour scale for the two maps
    assert c.dense_top3[0][0][:22] in fig.axes[1].texts[0].get_text()
    assert ex.figure_png(fig)[:4] == b"\x89PNG"


def test_map_browser_figure_titles_carry_each_maps_auc(tmp_path):
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    maps = {("dense", "saliency"): torch.randn(2, 16, 16), ("SPADE", "saliency"): torch.randn(2, 16, 16)}
    aucs = {("dense", "saliency"): [0.25, 0.5], ("SPADE", "saliency"): [0.875, 0.75]}
    path = save_map_bundle(
        ex.bundle_path(tmp_path),
        images=torch.rand(2, 3, 16, 16),
        masks=masks,
        maps=maps,
        aucs=aucs,
        sample_names=["s0", "s1"],
        size=16,
    )
    bundle = load_map_bundle(path)
    fig = ex.map_browser_figure(bundle, "s1", "saliency")
    titles = [ax.get_title() for ax in fig.axes]
    assert "dense" in titles[1] and "AUC 0.500" in titles[1] and "AUC 0.750" in titles[2]
    with pytest.raises(ValueError, match="sample"):
        ex.map_browser_figure(bundle, "s9", "saliency")
    assert ex.map_browser_app(path) is not None


def test_without_notebook_04s_file_the_browser_says_so(tmp_path):
    box = ex.map_browser_app(tmp_path / "maps" / ex.BUNDLE_NAME)
    assert "run notebook 04 first" in box.value


def test_live_widgets_only_behind_a_page_or_a_front_end(monkeypatch):
    monkeypatch.setenv("SPADE_HEADLESS", "1")
    monkeypatch.delenv("SERVER_SOFTWARE", raising=False)
    assert ex.live_widgets() is False
    monkeypatch.setenv("SERVER_SOFTWARE", "voila/0.5.13")
    assert ex.live_widgets() is True and ex.serving_page() is True
    monkeypatch.setenv("SERVER_SOFTWARE", "nginx/1.2")
    assert ex.live_widgets() is False


def _children(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _children(child)


def test_the_app_recomputes_on_a_change_answers_from_the_cache_and_takes_an_upload(explorer):
    """The widgets' wiring without a browser: set values as a front end would, read the status and the picture."""
    import ipywidgets as w

    app = ex.explorer_app(explorer, FIRST)
    parts = list(_children(app))
    slider = next(c for c in parts if isinstance(c, w.SelectionSlider))
    photo = next(c for c in parts if isinstance(c, w.Dropdown) and c.description == "photo")
    upload = next(c for c in parts if isinstance(c, w.FileUpload))
    status = next(c for c in parts if isinstance(c, w.HTML) and "ready" in c.value)
    picture = next(c for c in parts if isinstance(c, w.Image))
    first = picture.value
    slider.value = 0.8
    assert "sparsity 0.80" in status.value and picture.value != first
    slider.value = 0.9
    assert "from the cache" in status.value and picture.value == first
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 30, 3), (200, 10, 10), np.uint8)).save(buffer, format="PNG")
    content = buffer.getvalue()
    upload.value = (
        {
            "name": "red.png",
            "type": "image/png",
            "size": len(content),
            "content": memoryview(content),
            "last_modified": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
        },
    )
    assert photo.value == "upload: red.png" and "upload: red.png" in status.value and "ready" in status.value

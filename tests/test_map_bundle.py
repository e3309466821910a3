"""The map bundle (notebook 04 -> the explorer): what is loaded is what was saved, block-averaged by hand."""

import json

import numpy as np
import pytest
import torch

from spade_utils.map_bundle import MapBundle, load_map_bundle, save_map_bundle

S, H = 3, 8


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(S, 3, H, H, generator=g)
    masks = torch.zeros(S, H, H, dtype=torch.bool)
    masks[0, 0, 0] = True  # one pixel: must survive downsampling
    masks[1, 4:, 4:] = True
    maps = {
        ("dense", "Saliency"): torch.randn(S, H, H, generator=g)
        * 1e-8,  # gradient-sized: float16 alone flushes
        ("SPADE", "Saliency"): torch.randn(S, H, H, generator=g) * 1e5,  # beyond float16's range
        ("SPADE", "Integrated Gradients"): torch.zeros(S, H, H),  # an all-zero map stays zero, no NaN
    }
    aucs = {key: [0.5, 0.9, float("nan")] for key in maps}
    return dict(images=images, masks=masks, maps=maps, aucs=aucs, sample_names=["a", "b", "c"])


def _blocks(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k blocks of the last two axes: the oracle for area downsampling."""
    *lead, h, w = x.shape
    return x.reshape(*lead, h // k, k, w // k, k).mean(axis=(-3, -1))


def test_round_trip_equals_block_means(tmp_path):
    inputs = _inputs()
    path = save_map_bundle(tmp_path / "sub" / "maps.npz", size=4, **inputs)
    bundle = load_map_bundle(path)
    assert isinstance(bundle, MapBundle) and len(bundle) == S and bundle.size == 4
    assert bundle.sample_names == ("a", "b", "c")
    assert bundle.variants == ("dense", "SPADE") and bundle.methods == ("Saliency", "Integrated Gradients")
    np.testing.assert_allclose(bundle.images, _blocks(inputs["images"].numpy(), 2), atol=1e-3)
    expected_masks = _blocks(inputs["masks"].numpy().astype(float), 2) > 0
    np.testing.assert_array_equal(bundle.masks, expected_masks)
    assert bundle.masks[0, 0, 0] and bundle.masks[0].sum() == 1
    for key, full in inputs["maps"].items():
        expected = _blocks(full.numpy().astype(np.float64), 2)
        scale = np.abs(expected).max(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(bundle.maps[key], expected, rtol=0, atol=1e-3 * scale.max() + 0)
        assert np.isfinite(bundle.maps[key]).all()
        np.testing.assert_array_equal(bundle.aucs[key], np.array([0.5, 0.9, np.nan]))
    tiny = bundle.maps[("dense", "Saliency")]
    assert np.abs(tiny).max() > 1e-9  # not flushed to zero


def test_full_size_is_kept_as_is(tmp_path):
    inputs = _inputs(1)
    bundle = load_map_bundle(save_map_bundle(tmp_path / "m.npz", size=H, **inputs))
    np.testing.assert_array_equal(bundle.masks, inputs["masks"].numpy())
    np.testing.assert_allclose(bundle.images, inputs["images"].numpy(), atol=5e-4)


def test_the_file_is_one_npz_with_a_json_header(tmp_path):
    path = save_map_bundle(tmp_path / "m.npz", size=4, **_inputs())
    with np.load(path, allow_pickle=False) as data:
        header = json.loads(bytes(data["header"]).decode())
        assert data["images"].dtype == np.float16 and data["map_0"].dtype == np.float16
    assert header["format"] == "spade-map-bundle" and header["size"] == 4
    assert [(e["variant"], e["method"]) for e in header["entries"]][0] == ("dense", "Saliency")


@pytest.mark.parametrize(
    "change,error,word",
    [
        (dict(images=np.zeros((S, 3, H, H))), TypeError, "images"),
        (dict(images=torch.rand(S, 1, H, H)), ValueError, "images"),
        (dict(images=torch.rand(S, 3, H, H) * 2), ValueError, "images"),
        (dict(masks=torch.zeros(S, H, H)), TypeError, "masks"),
        (dict(masks=torch.zeros(S, H, H + 1, dtype=torch.bool)), ValueError, "masks"),
        (dict(maps={}), ValueError, "maps"),
        (dict(maps={"dense": torch.zeros(S, H, H)}), TypeError, "maps"),
        (dict(maps={("dense", "Saliency"): torch.zeros(S, H, 2)}), ValueError, "maps"),
        (dict(maps={("dense", "Saliency"): torch.full((S, H, H), float("nan"))}), ValueError, "maps"),
        (dict(aucs={("dense", "Saliency"): [0.5] * S}), ValueError, "aucs"),
        (dict(sample_names=["a", "a", "b"]), ValueError, "sample_names"),
        (dict(sample_names="abc"), TypeError, "sample_names"),
        (dict(size=H + 1), ValueError, "size"),
        (dict(size=2.0), TypeError, "size"),
    ],
)
def test_bad_input_is_refused_before_writing(tmp_path, change, error, word):
    inputs = {**_inputs(), **change}
    if "maps" in change and "aucs" not in change:
        inputs["aucs"] = {k: [0.5] * S for k in change["maps"] if isinstance(k, tuple)}
    with pytest.raises(error, match=word):
        save_map_bundle(tmp_path / "m.npz", **inputs)
    assert not (tmp_path / "m.npz").exists()


def test_bad_aucs_are_refused(tmp_path):
    inputs = _inputs()
    inputs["aucs"] = {k: [0.5, 1.5, 0.2] for k in inputs["maps"]}
    with pytest.raises(ValueError, match="aucs"):
        save_map_bundle(tmp_path / "m.npz", **inputs)
    inputs["aucs"] = {k: [0.5, 0.2] for k in inputs["maps"]}
    with pytest.raises(ValueError, match="aucs"):
        save_map_bundle(tmp_path / "m.npz", **inputs)


def test_paths_and_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="path"):
        save_map_bundle(tmp_path / "m.npy", **_inputs())
    with pytest.raises(FileNotFoundError):
        load_map_bundle(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a map bundle"):
        load_map_bundle(tmp_path / "other.npz")


def test_maps_beyond_float32_are_refused_not_stored_as_nan_or_zero(tmp_path):
    """Found by trying: float64 maps near 1e300 were stored as all NaN, near 1e-300 as all zero."""
    base = torch.randn(S, H, H, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for factor in (1e300, 1e-300):
        inputs = _inputs()
        inputs["maps"] = {("dense", "Saliency"): base * factor}
        inputs["aucs"] = {("dense", "Saliency"): [0.5] * S}
        with pytest.raises(ValueError, match="outside float32's range"):
            save_map_bundle(tmp_path / "m.npz", size=H, **inputs)
        assert not (tmp_path / "m.npz").exists()


def _edited(tmp_path, edit):
    """A saved bundle, its header and arrays changed by ``edit(header, arrays)``, written back."""
    path = save_map_bundle(tmp_path / "m.npz", size=4, **_inputs())
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(bytes(arrays["header"]).decode())
    edit(header, arrays)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    out = tmp_path / "edited.npz"
    np.savez(out, **arrays)
    return out


def _set(name, value):
    def edit(header, arrays):
        arrays[name] = np.full_like(arrays[name], value) if np.isscalar(value) else value

    return edit


@pytest.mark.parametrize(
    "edit,word",
    [
        (_set("map_0", np.nan), "NaN"),
        (_set("scale_1", -1.0), "scale or AUC"),
        (_set("scale_1", np.inf), "NaN, inf"),
        (_set("auc_0", 7.0), "scale or AUC"),
        (_set("images", 5.0), "images must hold"),
        (lambda h, a: a.update(masks=a["masks"].astype(np.float32)), "disagree"),
        (lambda h, a: h.update(sample_names=["a", "a", "b"]), "unique"),
        (lambda h, a: h.update(version=True), "version True"),
        (lambda h, a: h["entries"].append(dict(h["entries"][0])), "appears twice"),
        (lambda h, a: h.pop("sample_names"), "not a readable map bundle"),
        (lambda h, a: a.pop("images"), "not a readable map bundle"),
    ],
)
def test_an_edited_bundle_is_refused_on_load(tmp_path, edit, word):
    with pytest.raises(ValueError, match=word):
        load_map_bundle(_edited(tmp_path, edit))


def test_damaged_files_are_refused_naming_the_path(tmp_path):
    good = save_map_bundle(tmp_path / "m.npz", size=4, **_inputs()).read_bytes()
    for name, content in [("truncated", good[: len(good) // 2]), ("empty", b""), ("text", b"not a bundle\n")]:
        path = tmp_path / f"{name}.npz"
        path.write_bytes(content)
        with pytest.raises(ValueError, match=str(path)):
            load_map_bundle(path)
    np.save(tmp_path / "arr.npy", np.zeros(3))
    (tmp_path / "arr.npy").rename(tmp_path / "renamed.npz")
    with pytest.raises(ValueError, match="renamed.npz"):
        load_map_bundle(tmp_path / "renamed.npz")

"""Images of every dtype and mode (issue 10 §2, 11 §3): integer images scaled by their dtype's range,
float images in [0, 1] or refused, every PIL mode converted, NaN/inf refused; preprocess/denormalize."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from spade_utils import data, inputs
from spade_utils.augment import image_tensor
from spade_utils.data import denormalize, image_to_tensor, preprocess, sample_image, to_pil


def _photo(h=40, w=56, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _u8(arr):  # the oracle for 8-bit data: value / 255
    return torch.from_numpy(arr.astype(np.float64) / 255).permute(2, 0, 1).float()


# ------------------------------------------------------------------ integer dtypes
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.uint32, np.uint64, np.int8])
def test_wide_integer_photo_with_8bit_values_is_read_as_8bit(dtype):
    photo = _photo() // 2 if dtype == np.int8 else _photo()  # int8 holds 0..127
    wide = photo.astype(dtype)
    torch.testing.assert_close(image_tensor(wide), _u8(photo), rtol=0, atol=1e-7)
    # the instance: an int64 0..255 photo came out two-valued and 99.5% white
    assert np.array_equal(np.asarray(to_pil(wide)), photo)
    torch.testing.assert_close(preprocess(wide), preprocess(photo), rtol=0, atol=0)


def test_uint16_is_scaled_by_its_range():
    arr = np.random.default_rng(1).integers(0, 65536, (30, 20), dtype=np.uint16)
    expected = torch.from_numpy(arr.astype(np.float64) / 65535).float().expand(3, -1, -1)
    torch.testing.assert_close(image_tensor(arr), expected, rtol=0, atol=1e-7)
    rgb = np.random.default_rng(2).integers(0, 65536, (30, 20, 3), dtype=np.uint16)
    torch.testing.assert_close(
        image_tensor(rgb), torch.from_numpy(rgb / 65535).permute(2, 0, 1).float(), rtol=0, atol=1e-7
    )
    mean = float(image_tensor(arr).mean())
    assert 0.4 < mean < 0.6  # not white (the old result)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_pil_16bit_modes(mode):
    arr = np.random.default_rng(3).integers(0, 65536, (24, 18), dtype=np.uint16)
    order = ">u2" if mode == "I;16B" else "<u2"
    img = Image.frombytes(mode, (arr.shape[1], arr.shape[0]), arr.astype(order).tobytes())
    assert img.mode == mode
    expected = torch.from_numpy(arr / 65535).float().expand(3, -1, -1)
    torch.testing.assert_close(image_tensor(img), expected, rtol=0, atol=1e-7)
    # to_pil rounds to 8 bits, preprocess keeps the 16-bit precision
    assert np.abs(np.asarray(to_pil(img))[..., 0].astype(int) - np.round(arr / 257)).max() <= 1
    torch.testing.assert_close(
        preprocess(img, size=16), preprocess(expected.clone(), size=16), rtol=0, atol=1e-6
    )


def test_pil_I_and_F_modes():
    grey = np.random.default_rng(4).integers(0, 256, (20, 30)).astype(np.int32)
    img_i = Image.fromarray(grey, "I")
    torch.testing.assert_close(
        image_tensor(img_i), torch.from_numpy(grey / 255).float().expand(3, -1, -1), rtol=0, atol=1e-7
    )
    with pytest.raises(ValueError, match="uint16"):
        image_tensor(Image.fromarray(grey * 200, "I"))  # beyond 8 bits: refused with how to convert
    f = np.random.default_rng(5).random((20, 30)).astype(np.float32)
    torch.testing.assert_close(image_tensor(Image.fromarray(f, "F")), torch.from_numpy(f).expand(3, -1, -1))
    assert (
        abs(float(preprocess(Image.fromarray(f, "F"), size=16).mean()) - float(preprocess(f, size=16).mean()))
        < 1e-6
    )
    with pytest.raises(ValueError, match="255"):
        image_tensor(Image.fromarray(f * 255, "F"))  # 0..255 floats (e.g. L.convert("F")): say how to convert


def test_bool_and_bad_integers():
    mask = np.zeros((6, 7), bool)
    mask[2:4] = True
    assert torch.equal(image_tensor(mask)[0], torch.from_numpy(mask).float())
    with pytest.raises(ValueError, match="0..255"):
        image_tensor(np.full((5, 5), -1, np.int64))
    with pytest.raises(ValueError, match="uint16"):
        image_tensor(np.full((5, 5), 300, np.int64))
    with pytest.raises(TypeError, match="image"):
        image_tensor(np.zeros((5, 5), complex))
    with pytest.raises(TypeError, match="image"):
        image_tensor(np.zeros((5, 5), object))
    with pytest.raises(ValueError, match="empty"):
        image_tensor(np.zeros((0, 5), np.uint8))


# ------------------------------------------------------------------ floats, NaN, inf
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", ["array", "tensor", "pil_F", "tensor4d"])
def test_nan_and_inf_refused_up_front(bad, kind):
    arr = np.random.default_rng(0).random((3, 12, 12)).astype(np.float32)
    arr[1, 3:5, 3:5] = bad  # a NaN patch passed the old [0, 1] check and failed much later
    image = {
        "array": arr.transpose(1, 2, 0),
        "tensor": torch.from_numpy(arr),
        "tensor4d": torch.from_numpy(arr)[None],
        "pil_F": Image.fromarray(arr[1], "F"),
    }[kind]
    with pytest.raises(ValueError, match="NaN or inf"):
        image_tensor(image, argname="sample")
    with pytest.raises(ValueError, match="sample"):
        image_tensor(image, argname="sample")
    with pytest.raises(ValueError, match="NaN or inf"):
        preprocess(image)


@pytest.mark.parametrize("scale", [255.0, -1.0, 1.5])
def test_float_out_of_range_refused_with_how_to_convert(scale):
    arr = np.random.default_rng(0).random((10, 10, 3)) * scale
    with pytest.raises(ValueError, match=r"\[0, 1\].*255.*denormalize"):
        image_tensor(arr)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        image_tensor(torch.from_numpy(arr).permute(2, 0, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_float_tensors_any_precision(dtype):
    x = torch.rand(3, 9, 11, generator=torch.Generator().manual_seed(0)).to(dtype)
    out = image_tensor(x)
    assert out.dtype == torch.float32 and out.shape == (3, 9, 11)
    torch.testing.assert_close(out, x.float())


def test_integer_tensors_follow_the_array_rules():
    photo = _photo()
    t8 = torch.from_numpy(photo).permute(2, 0, 1)
    torch.testing.assert_close(image_tensor(t8), _u8(photo), rtol=0, atol=1e-7)
    torch.testing.assert_close(image_tensor(t8.long()), _u8(photo), rtol=0, atol=1e-7)
    torch.testing.assert_close(image_tensor(t8[None]), _u8(photo), rtol=0, atol=1e-7)
    assert np.array_equal(np.asarray(to_pil(t8)), photo)
    with pytest.raises(ValueError, match="0..255"):
        image_tensor(t8.long() * 4)


# ------------------------------------------------------------------ every PIL mode
def _rgb_image(seed=0):
    return Image.fromarray(_photo(16, 12, seed))


@pytest.mark.parametrize("mode,tol", [("RGB", 0), ("CMYK", 0), ("YCbCr", 3), ("HSV", 6), ("RGBX", 0)])
def test_colour_modes_round_trip(mode, tol):
    rgb = _rgb_image()  # 8-bit YCbCr / HSV quantise: a few levels of round-trip error
    got = np.asarray(to_pil(rgb.convert(mode))).astype(int)
    assert np.abs(got - np.asarray(rgb).astype(int)).max() <= tol


def test_lab_mode_follows_the_icc_transform():
    from PIL import ImageCms

    rgb = _rgb_image()
    srgb, lab_profile = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
    lab = ImageCms.applyTransform(rgb, ImageCms.buildTransform(srgb, lab_profile, "RGB", "LAB"))
    back = ImageCms.applyTransform(lab, ImageCms.buildTransform(lab_profile, srgb, "LAB", "RGB"))
    got = np.asarray(to_pil(lab)).astype(int)
    assert np.abs(got - np.asarray(back).astype(int)).max() <= 1
    assert np.abs(got - np.asarray(rgb).astype(int)).mean() < 3  # 8-bit Lab quantisation only


def test_grey_and_bilevel_modes():
    grey = np.random.default_rng(6).integers(0, 256, (10, 14), dtype=np.uint8)
    assert np.array_equal(np.asarray(to_pil(Image.fromarray(grey, "L"))), np.repeat(grey[..., None], 3, 2))
    bits = Image.fromarray(grey > 128).convert("1")
    assert bits.mode == "1"
    assert np.array_equal(np.asarray(to_pil(bits))[..., 0], np.where(grey > 128, 255, 0))


def _white_composite(colour, alpha):  # the oracle: alpha-blend over white, in 0..255
    return colour * alpha / 255 + 255 * (1 - alpha / 255)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "RGBa", "La"])
def test_alpha_modes_are_composited_on_white(mode):
    rng = np.random.default_rng(7)
    grey = rng.integers(0, 256, (9, 8), dtype=np.uint8)
    alpha = rng.integers(0, 256, (9, 8), dtype=np.uint8)
    if mode in ("LA", "La"):
        img = Image.fromarray(np.stack([grey, alpha], -1), "LA")
        img = (
            img
            if mode == "LA"
            else Image.fromarray(
                np.stack([np.round(grey.astype(float) * alpha / 255).astype(np.uint8), alpha], -1), "La"
            )
        )
        colour = np.repeat(grey[..., None], 3, 2).astype(float)
    else:
        colour = rng.integers(0, 256, (9, 8, 3), dtype=np.uint8).astype(float)
        if mode == "PA":  # a palette of the colours used
            pal = Image.fromarray(colour.astype(np.uint8)).quantize(256)
            colour = np.asarray(pal.convert("RGB")).astype(float)
            img = pal.convert("PA")
            img.putalpha(Image.fromarray(alpha))
        else:
            img = Image.fromarray(np.concatenate([colour.astype(np.uint8), alpha[..., None]], -1), "RGBA")
            if mode == "RGBa":
                img = img.convert("RGBa")
    assert img.mode == mode
    expected = _white_composite(colour, alpha[..., None].astype(float))
    got = np.asarray(to_pil(img)).astype(float)
    assert np.abs(got - expected).max() <= (3 if mode in ("RGBa", "La") else 1)  # premultiplied modes round


def test_palette_and_grey_transparency():
    p = Image.new("P", (3, 1))
    p.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0])
    p.putpixel((1, 0), 1)
    p.putpixel((2, 0), 2)
    p.info["transparency"] = 0
    assert [to_pil(p).getpixel((i, 0)) for i in range(3)] == [(255, 255, 255), (0, 0, 255), (0, 255, 0)]
    grey = Image.new("L", (2, 1), 40)
    grey.putpixel((1, 0), 90)
    grey.info["transparency"] = 40
    assert [to_pil(grey).getpixel((i, 0)) for i in range(2)] == [(255, 255, 255), (90, 90, 90)]


def test_array_alpha_channels():
    colour = np.random.default_rng(8).random((5, 6, 3)).astype(np.float32)
    alpha = np.random.default_rng(9).random((5, 6, 1)).astype(np.float32)
    got = image_tensor(np.concatenate([colour, alpha], -1))
    torch.testing.assert_close(got, torch.from_numpy(colour * alpha + 1 - alpha).permute(2, 0, 1))
    grey_alpha = np.concatenate([colour[..., :1], alpha], -1)
    torch.testing.assert_close(
        image_tensor(grey_alpha),
        torch.from_numpy(colour[..., :1] * alpha + 1 - alpha).permute(2, 0, 1).expand(3, -1, -1),
    )
    rgba_t = torch.from_numpy(np.concatenate([colour, alpha], -1)).permute(2, 0, 1)
    torch.testing.assert_close(image_tensor(rgba_t), got)


def test_8bit_inputs_unchanged():
    """uint8 photos convert exactly as before: value / 255, same bits as torchvision's to_dtype."""
    photo = sample_image("coffee")
    expected = TF.to_dtype(TF.to_image(photo), torch.float32, scale=True)
    assert torch.equal(image_tensor(photo), expected)
    assert torch.equal(image_tensor(np.asarray(photo)), expected)
    assert torch.equal(image_to_tensor(photo), expected)


# ------------------------------------------------------------------ preprocess / denormalize
def test_preprocess_matches_torchvision_pipeline_on_photos():
    photo = sample_image("chelsea")
    img = TF.to_image(photo)
    ref = TF.center_crop(TF.resize(img, [256], antialias=True), [224, 224])
    ref = TF.normalize(
        TF.to_dtype(ref, torch.float32, scale=True), list(inputs.IMAGENET_MEAN), list(inputs.IMAGENET_STD)
    )
    assert torch.equal(preprocess(photo), ref[None])


def test_preprocess_bad_size_names_the_argument():
    photo = _photo()
    with pytest.raises(ValueError, match="size"):
        preprocess(photo, size=0)
    with pytest.raises(TypeError, match="size"):
        preprocess(photo, size=2.5)
    with pytest.raises(ValueError, match="resize"):
        preprocess(photo, size=32, resize=16)
    with pytest.raises(ValueError, match="std"):
        preprocess(photo, std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="mean"):
        preprocess(photo, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="mean"):
        preprocess(photo, mean=(0.5, float("nan"), 0.5))


def test_preprocess_and_denormalize_take_the_models_statistics():
    photo = _photo(64, 80)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    raw = preprocess(photo, size=32, mean=(0.0,), std=(1.0,))
    torch.testing.assert_close(
        preprocess(photo, size=32, mean=mean, std=std),
        (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1),
    )
    torch.testing.assert_close(
        denormalize(preprocess(photo, size=32, mean=mean, std=std), mean=mean, std=std), raw
    )
    torch.testing.assert_close(denormalize(preprocess(photo, size=32)), raw)  # ImageNet by default
    assert data.IMAGENET_MEAN is inputs.IMAGENET_MEAN and data.IMAGENET_STD is inputs.IMAGENET_STD


def test_denormalize_keeps_the_shape_or_refuses():
    x = torch.randn(2, 3, 5, 6)
    assert denormalize(x).shape == x.shape and denormalize(x[0]).shape == x[0].shape
    assert denormalize(x.double()).dtype == torch.float64
    with pytest.raises(ValueError, match="shape"):
        denormalize(torch.randn(5, 6))  # was silently broadcast to (3, 5, 6)
    with pytest.raises(ValueError, match="shape"):
        denormalize(torch.randn(4, 5, 6))
    grey = torch.randn(1, 5, 6)
    torch.testing.assert_close(denormalize(grey, mean=(0.5,), std=(0.25,)), (grey * 0.25 + 0.5).clamp(0, 1))
    with pytest.raises(ValueError, match="NaN"):
        denormalize(torch.full((3, 2, 2), float("nan")))
    with pytest.raises(TypeError, match="x"):
        denormalize(np.zeros((3, 2, 2)))


def _reference(img, size, resize):  # resize the whole image, then crop: torchvision's definition
    return TF.center_crop(TF.resize(img, [resize], antialias=True), [size, size])


@pytest.mark.parametrize("shape", [(3, 1, 400), (3, 400, 1), (3, 2, 1000), (3, 20, 9000)])
def test_preprocess_elongated_equals_resize_then_crop(shape):
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))
    ref = TF.normalize(
        TF.to_dtype(_reference(img, 224, 256), torch.float32, scale=True),
        list(inputs.IMAGENET_MEAN),
        list(inputs.IMAGENET_STD),
    )[None]
    assert torch.equal(preprocess(img), ref)
    f = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        data._resize_center_crop(f, 224, 256), _reference(f, 224, 256), rtol=0, atol=1e-6
    )


def test_preprocess_elongated_unaligned_scale_is_close():
    # a 3 x 700 strip: the resized scale 59733/700 has no whole-pixel cut, the placement may move < 1 px
    f = torch.rand(3, 3, 700, generator=torch.Generator().manual_seed(0))
    diff = (data._resize_center_crop(f, 224, 256) - _reference(f, 224, 256)).abs()
    assert float(diff.max()) < 0.02


def test_preprocess_strip_resizes_only_what_the_crop_keeps(monkeypatch):
    sizes = []
    interpolate = torch.nn.functional.interpolate

    def recording(x, *a, **k):
        out = interpolate(x, *a, **k)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(torch.nn.functional, "interpolate", recording)
    strip = np.random.default_rng(0).integers(0, 256, (1, 4000, 3), dtype=np.uint8)
    x = preprocess(strip)
    assert x.shape == (1, 3, 224, 224) and torch.isfinite(x).all()
    # the full resize would be 256 x 1,024,000 x 3 values (~0.8 GB as float); only a few columns are made
    assert sizes and max(sizes) <= 3 * 256 * 4096
    # and it is the centre of the strip: equal to the same crop of a shorter strip with the same centre
    short = strip[:, 1998:2002]
    assert torch.equal(x, preprocess(np.ascontiguousarray(short)))


@pytest.mark.parametrize(
    "empty",
    [
        np.zeros((0, 5), np.float32),
        np.zeros((4, 0, 3), np.uint8),
        torch.zeros(3, 0, 4),
        Image.new("RGB", (0, 3)),
    ],
)
def test_empty_images_refused_naming_the_argument(empty):
    with pytest.raises(ValueError, match="sample is empty"):
        image_tensor(empty, argname="sample")

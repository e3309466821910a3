"""Labelled ImageNet folders (spade_utils.data.imagenet_folder_sample): true labels from synset folders."""

import pytest
from PIL import Image

from spade_utils.data import imagenet_folder_sample, imagenet_scored_and_calibration, load_rgb


def _folder(root, n_synsets=1000, images=None, extra=()):
    """``n_synsets`` wnid folders with ids in scrambled creation order; ``images``: {folder index: file names}."""
    wnids = [f"n{(7919 * i) % 100_000_000:08d}" for i in range(1, n_synsets + 1)]
    for w in wnids:
        (root / w).mkdir()
    for name in extra:
        (root / name).mkdir()
    for k, names in (images or {}).items():
        for fname in names:
            Image.new("RGB", (8, 6), (k % 256, 0, 0)).save(root / wnids[k] / fname, format="PNG")
    return wnids


def test_labels_are_positions_among_the_sorted_synsets_and_draws_are_reproducible(tmp_path):
    wnids = _folder(tmp_path, images={3: ["a.JPEG", "b.png"], 500: ["c.jpg"], 999: ["d.JPEG", "notes.txt"]})
    order = sorted(wnids)  # the oracle: torchvision's class index is the rank of the wnid
    picked = imagenet_folder_sample(tmp_path, 4, seed=1)
    assert len(picked) == 4  # notes.txt is not an image
    for path, label in picked:
        assert order[label] == path.parent.name
    assert imagenet_folder_sample(tmp_path, 3, seed=2) == imagenet_folder_sample(tmp_path, 3, seed=2)
    draws = {tuple(p.name for p, _ in imagenet_folder_sample(tmp_path, 2, seed=s)) for s in range(6)}
    assert len(draws) > 1  # the seed matters
    assert load_rgb(picked[0][0]).mode == "RGB"


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(n_synsets=999), ValueError, "999 synset folders"),
        (dict(extra=("README_dir",)), ValueError, "README_dir"),
    ],
)
def test_a_folder_that_would_give_wrong_labels_is_refused(tmp_path, kwargs, err, match):
    _folder(tmp_path, images={0: ["a.png"]}, **kwargs)
    with pytest.raises(err, match=match):
        imagenet_folder_sample(tmp_path, 1)


def test_bad_arguments(tmp_path):
    _folder(tmp_path, images={0: ["a.png"]})
    with pytest.raises(ValueError, match="holds 1"):
        imagenet_folder_sample(tmp_path, 2)
    with pytest.raises(ValueError):
        imagenet_folder_sample(tmp_path, 0)
    with pytest.raises(TypeError):
        imagenet_folder_sample(tmp_path, 1.0)
    with pytest.raises(ValueError, match="root"):
        imagenet_folder_sample(tmp_path / "missing", 1)


def test_hidden_and_empty_entries_are_not_images(tmp_path):
    """A notebook server's .ipynb_checkpoints, macOS's ._x.jpg companions and empty files are skipped, so the
    count of images is the count of real ones; an unreadable file is refused naming it."""
    from spade_utils.data import read_image

    wnids = _folder(tmp_path, images={7: ["a.png"]}, extra=(".ipynb_checkpoints",))
    folder = tmp_path / wnids[7]
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / ".hidden.png").write_bytes((folder / "a.png").read_bytes())
    picked = imagenet_folder_sample(tmp_path, 1)
    assert [p.name for p, _ in picked] == ["a.png"]
    with pytest.raises(ValueError, match="holds 1"):
        imagenet_folder_sample(tmp_path, 2)
    with pytest.raises(ValueError, match=r"\._a\.png is not a readable image"):
        read_image(folder / "._a.png")
    with pytest.raises(ValueError, match="not a readable image"):
        load_rgb(folder / "empty.jpg")
    with pytest.raises(FileNotFoundError):
        read_image(folder / "missing.png")


def test_scored_and_calibration_draws_are_disjoint_labelled_and_reproducible(tmp_path):
    wnids = _folder(tmp_path, images={k: [f"im{k}_{j}.png" for j in range(2)] for k in (1, 40, 700)})
    order = sorted(wnids)
    (imgs, labels), (cal_imgs, cal_labels) = imagenet_scored_and_calibration(tmp_path, 4, 2, seed=3)
    assert len(imgs) == 4 and len(cal_imgs) == 2 and not set(imgs) & set(cal_imgs)
    drawn = {p.stem: label for p, label in imagenet_folder_sample(tmp_path, 6, seed=3)}
    assert {**labels, **cal_labels} == drawn  # the same draw, split in two
    for name, label in {**labels, **cal_labels}.items():
        assert (tmp_path / order[label] / f"{name}.png").exists()
    assert all(im.mode == "RGB" for im in imgs.values())
    again = imagenet_scored_and_calibration(tmp_path, 4, 2, seed=3)
    assert again[0][1] == labels and again[1][1] == cal_labels
    with pytest.raises(ValueError, match="n_calibration"):
        imagenet_scored_and_calibration(tmp_path, 1, -1)
    with pytest.raises(ValueError, match="seed"):
        imagenet_scored_and_calibration(tmp_path, 1, 1, seed=-1)

"""One image reader: a user's folder gives the same float image to eval.py, nafnet-restore and training.

The cases that used to differ between the readers: a JPEG rotated by its EXIF orientation tag and a
16-bit PNG (next to an 8-bit file, so the folder's 8-bit images are widened to 16 bits).
"""

import numpy as np
import pytest
from PIL import Image, ImageOps

from nafnet_jax.data import image_io, images
from nafnet_jax.data.testing import write_image

H, W = 8, 12  # as shown (after the EXIF rotation); not square, so a missed rotation changes the shape


def _jpeg_with_orientation(path, stored, orientation):
    exif = Image.Exif()
    exif[image_io.EXIF_ORIENTATION_TAG] = orientation
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
    return path


def _png16(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    image_io.write_png(path, pixels)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillows_exif_transpose(tmp_path, orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = _jpeg_with_orientation(tmp_path / "a.jpg", stored, orientation)
    with Image.open(path) as im:
        want = np.asarray(ImageOps.exif_transpose(im))
    got = image_io.read_pixels(path)
    np.testing.assert_array_equal(got, want, err_msg=f"orientation {orientation}")
    header = image_io.inspect_image(path)
    assert (header.height, header.width) == want.shape[:2] and header.orientation == orientation


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """lq/ and gt/: 'rot' (lq: JPEG stored 12x8 with orientation 6; gt: PNG) and 'deep' (16-bit PNGs)."""
    root = tmp_path_factory.mktemp("user")
    rng = np.random.default_rng(0)
    (root / "lq").mkdir()
    # Orientation 6 = rotate 90 degrees clockwise to show: stored (W, H) becomes (H, W).
    _jpeg_with_orientation(root / "lq" / "rot.jpg", rng.integers(0, 256, (W, H, 3), dtype=np.uint8), 6)
    write_image(root / "gt" / "rot.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    for sub in ("lq", "gt"):
        _png16(root / sub / "deep.png", rng.integers(0, 65536, (H, W, 3), dtype=np.uint16))
    files = {"rot": ("lq/rot.jpg", "gt/rot.png"), "deep": ("lq/deep.png", "gt/deep.png")}
    # nafnet-restore's view of each file: the reference every other path must equal.
    expected = {name: tuple(image_io.read_image(root / rel).rgb for rel in pair) for name, pair in files.items()}
    assert expected["rot"][0].shape == (H, W, 3), "the EXIF rotation was not applied"
    assert image_io.read_image(root / "lq" / "deep.png").bit_depth == 16
    return root, expected


def test_eval_folder_mode_gives_restores_floats(user_folder):
    from nafnet_jax.evaluation.evaluate import FolderDataset
    root, expected = user_folder
    items = list(FolderDataset(str(root / "lq"), str(root / "gt")))
    assert sorted(item["name"] for item in items) == ["deep", "rot"]
    for item in items:
        for got, want, which in zip((item["lq"], item["gt"]), expected[item["name"]], ("lq", "gt")):
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want, err_msg=f"{item['name']} {which}")


def _folder_data_config(root):
    from nafnet_jax.data import default_data_config
    data = default_data_config()
    data.dataset = "paired_folder"
    data.lq_dir = data.eval_lq_dir = str(root / "lq")
    data.gt_dir = data.eval_gt_dir = str(root / "gt")
    data.crop_size = H
    data.use_flip = data.use_rot = False
    data.num_parallel_calls = 1
    return data


def test_the_data_pipelines_eval_split_gives_restores_floats(user_folder):
    from nafnet_jax.data import create_eval_dataset
    root, expected = user_folder
    items = list(create_eval_dataset(_folder_data_config(root), process_index=0, process_count=1))
    assert sorted(item["name"] for item in items) == ["deep", "rot"]
    for item in items:
        for got, want, which in zip((item["lq"], item["gt"]), expected[item["name"]], ("lq", "gt")):
            np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"{item['name']} {which}")


def test_training_crops_are_windows_of_restores_floats(user_folder):
    """Without flips, every training crop is exactly a window of the float image restore sees."""
    from nafnet_jax.data import create_train_iterator
    root, expected = user_folder
    iterator = create_train_iterator(_folder_data_config(root), global_batch_size=2, seed=0,
                                     process_index=0, process_count=1)
    try:
        batches = [next(iterator) for _ in range(2)]
    finally:
        iterator.close()
    seen = set()
    for batch in batches:
        for lq, gt in zip(batch["lq"], batch["gt"]):
            matches = [(name, x) for name, (want_lq, want_gt) in expected.items() for x in range(W - H + 1)
                       if np.array_equal(lq, want_lq[:, x:x + H]) and np.array_equal(gt, want_gt[:, x:x + H])]
            assert matches, "a training crop is not an exact window of any pair's float image"
            seen.add(matches[0][0])
    assert seen == {"rot", "deep"}, f"crops came from {seen} only"


def test_pairs_match_by_stem_and_a_missing_partner_is_named(tmp_path):
    from nafnet_jax.evaluation.evaluate import FolderDataset
    pixels = np.zeros((4, 4, 3), np.uint8)
    write_image(tmp_path / "lq" / "a.jpg", pixels)
    write_image(tmp_path / "gt" / "a.png", pixels)
    assert FolderDataset(str(tmp_path / "lq"), str(tmp_path / "gt")).names == ["a"]
    write_image(tmp_path / "lq" / "lonely.png", pixels)
    with pytest.raises(images.BadDataError, match="lq file.*without gt.*lonely.png"):
        FolderDataset(str(tmp_path / "lq"), str(tmp_path / "gt"))
    write_image(tmp_path / "gt" / "lonely.png", pixels)
    write_image(tmp_path / "gt" / "a.bmp", pixels)
    with pytest.raises(images.BadDataError, match="share the name 'a'"):
        FolderDataset(str(tmp_path / "lq"), str(tmp_path / "gt"))

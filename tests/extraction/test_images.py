"""Image discovery and decoding (featx.extraction discover_images, open_source, load_image)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from conftest import ODD_BAD, ODD_GOOD, bomb_png
from PIL import Image

from featx.errors import DataError
from featx.extraction import open_source
from featx.extraction._folder import discover_images
from featx.extraction._images import IMAGE_EXTENSIONS, ImageDataset, ImageDecodeError, collate_images, load_image

# --------------------------------------------------------------------------- discovery


def test_discover_hymenoptera_ids_labels_splits(hymenoptera):
    collection = discover_images(hymenoptera)
    on_disk = sorted(
        p.relative_to(hymenoptera).as_posix()
        for p in hymenoptera.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    assert list(collection.ids) == on_disk
    assert len(collection) == 398  # 397 JPEGs + 1 GIF
    assert collection.classes == ("ants", "bees")
    for image_id, label, split in zip(collection.ids, collection.labels, collection.splits):
        split_dir, class_dir, _ = image_id.split("/")
        assert split == split_dir
        assert collection.classes[label] == class_dir
    assert collection.labels.dtype == np.int32
    assert set(collection.splits) == {"train", "val"}


def test_discover_layouts_without_splits_and_unlabelled(tmp_path):
    for rel in ["b/2.png", "a/1.png", "loose.png", "a/.hidden.png", ".cache/x.png", "a/notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    collection = discover_images(tmp_path)
    assert collection.ids == ("a/1.png", "b/2.png", "loose.png")
    assert collection.labels.tolist() == [0, 1, -1]
    assert collection.splits == ("", "", "")
    assert collection.classes == ("a", "b")


def test_split_folders_share_one_class_list(tmp_path):
    for rel in ["train/cat/1.png", "val/dog/2.png", "test/3.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    collection = discover_images(tmp_path)
    assert collection.ids == ("test/3.png", "train/cat/1.png", "val/dog/2.png")
    assert collection.splits == ("test", "train", "val")
    assert collection.classes == ("cat", "dog")
    assert collection.labels.tolist() == [-1, 0, 1]


def test_fingerprint_changes_with_the_folder(synthetic_dataset):
    before = discover_images(synthetic_dataset).fingerprint
    assert discover_images(synthetic_dataset).fingerprint == before
    (synthetic_dataset / "a" / "extra.png").write_bytes((synthetic_dataset / "a" / "0.png").read_bytes())
    assert discover_images(synthetic_dataset).fingerprint != before


def test_missing_folder_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=rf"^data folder not found: '{re.escape(str(missing))}' does not exist; pass data='DIR'"):
        discover_images(missing)


def test_file_instead_of_folder_error(tmp_path):
    file = tmp_path / "a.png"
    file.write_bytes(b"x")
    with pytest.raises(DataError, match=r"^data must be a folder; got '.*a\.png'; give the folder that holds it$"):
        discover_images(file)


def test_folder_without_images_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"^no images found in '.*': looked for files ending in \.bmp, .*\.jpg"):
        discover_images(tmp_path)


def test_collect_loose_files_is_unlabelled(synthetic_dataset):
    files = [synthetic_dataset / "b" / "1.png", synthetic_dataset / "a" / "0.png"]
    collection = open_source(files)
    assert collection.root == synthetic_dataset
    assert collection.ids == ("a/0.png", "b/1.png")
    assert collection.labels.tolist() == [-1, -1]
    with pytest.raises(DataError, match=r"^image not found: '.*nope\.png' does not exist"):
        open_source([synthetic_dataset / "nope.png"])


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("image_id", [i for i, mode in ODD_GOOD.items() if mode not in ("I;16",)])
def test_odd_modes_convert_like_pil(odd_images, image_id):
    path = odd_images / image_id
    with Image.open(path) as original:
        assert original.mode == ODD_GOOD[image_id]
        expected = np.asarray(original.convert("RGB"))
    image = load_image(path)
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), expected)


def test_sixteen_bit_png_equals_its_eight_bit_version(odd_images):
    eight = np.asarray(Image.open(odd_images / "good/gray8.png"))
    image = load_image(odd_images / "good/gray16.png")
    assert image.mode == "RGB"
    pixels = np.asarray(image)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], eight)


def test_sixteen_bit_rounds_to_nearest(tmp_path):
    values = np.array([[0, 128, 129, 65535, 300 * 257 // 2]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g.png")
    pixels = np.asarray(load_image(tmp_path / "g.png"))[..., 0]
    assert pixels.tolist() == [[0, 0, 1, 255, 150]]


@pytest.mark.parametrize("image_id", sorted(ODD_BAD))
def test_bad_files_fail_with_a_reason(odd_images, image_id):
    with pytest.raises(ImageDecodeError, match=ODD_BAD[image_id]):
        load_image(odd_images / image_id)


def test_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(20000, 20000))
    assert path.stat().st_size < 200  # the header claims 400 MB of pixels
    with pytest.raises(ImageDecodeError, match=r"^decompression bomb refused"):
        load_image(path)
    # Just above PIL's warning threshold: still refused (the warning is an error here).
    path.write_bytes(bomb_png(10000, 9000))
    with pytest.raises(ImageDecodeError, match=r"^decompression bomb refused: .*90000000 pixels"):
        load_image(path)


def test_max_pixels_limit(synthetic_dataset):
    path = synthetic_dataset / "a" / "0.png"  # 50 x 40
    with pytest.raises(ImageDecodeError, match=r"^decompression bomb refused: 50x40 = 2,000 pixels, more than the limit of 1,999$"):
        load_image(path, max_pixels=1999)
    assert load_image(path, max_pixels=2000).size == (50, 40)


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    path = tmp_path / "locked.png"
    Image.new("RGB", (4, 4)).save(path)
    path.chmod(0)
    with pytest.raises(ImageDecodeError, match=r"^cannot decode: .*Permission denied"):
        load_image(path)


def test_dataset_returns_failures_and_collate_keeps_them_aside(odd_images):
    collection = discover_images(odd_images)
    dataset = ImageDataset(collection, lambda image: torch.from_numpy(np.asarray(image.resize((8, 8))).copy()))
    items = [dataset[i] for i in range(len(dataset))]
    failed = {collection.ids[i]: reason for i, _, reason in items if reason is not None}
    assert sorted(failed) == sorted(ODD_BAD)
    for image_id, pattern in ODD_BAD.items():
        assert re.search(pattern, failed[image_id]), (image_id, failed[image_id])
    batch = collate_images(items)
    good = [i for i, image_id in enumerate(collection.ids) if image_id in ODD_GOOD]
    assert batch.indices == good
    assert tuple(batch.pixels.shape) == (len(good), 8, 8, 3)
    assert [i for i, _ in batch.failures] == [collection.ids.index(i) for i in sorted(ODD_BAD)]


def test_transform_failure_is_a_reason_not_a_crash(synthetic_dataset):
    def broken(image):
        raise ValueError("boom")

    dataset = ImageDataset(discover_images(synthetic_dataset), broken)
    assert dataset[0] == (0, None, "cannot preprocess: ValueError: boom")

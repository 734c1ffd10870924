"""featx.thumbnails: a report's thumbnails cost one read per image shown, never a listing of every image."""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from stores import blobs, dataset, write_store

import featx
import featx.extraction
import featx.store
from featx.thumbnails import THUMBNAIL_SIZE, image_thumbnails, store_thumbnails

IDS = ["a/wide.png", "a/tall.png", "b/sub/small.png"]
SIZES = {"a/wide.png": (300, 120), "a/tall.png": (50, 200), "b/sub/small.png": (40, 30)}


def _image(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _expected(path: Path) -> bytes:
    """The thumbnail computed with PIL directly: RGB, longest side at most 96, JPEG quality 85."""
    with Image.open(path) as image:
        thumbnail = image.convert("RGB")
    thumbnail.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for k, image_id in enumerate(IDS):
        _image(root / image_id, SIZES[image_id], seed=k)
    _image(tmp_path / "secret.png", (20, 20), seed=9)  # beside the folder, not in it
    return root


def _refuse_listing(monkeypatch, root: Path) -> None:
    """From now on, open_source raises, and so does every walk of os and pathlib of a folder under *root*."""

    def refuse(*args, **kwargs):
        raise AssertionError("the images were listed")

    monkeypatch.setattr(featx.extraction, "open_source", refuse)
    for owner, name in ((os, "scandir"), (os, "listdir"), (os, "walk"), (Path, "iterdir")):
        original = getattr(owner, name)

        def guarded(path=".", *args, _original=original, **kwargs):
            if Path(os.fspath(path)).resolve().is_relative_to(root.resolve()):
                raise AssertionError(f"the images were listed ({path})")
            return _original(path, *args, **kwargs)

        monkeypatch.setattr(owner, name, guarded)


@pytest.fixture
def no_listing(monkeypatch, folder):
    _refuse_listing(monkeypatch, folder)


def test_a_folder_gives_thumbnails_without_listing_it(folder, no_listing):
    images = image_thumbnails(folder)([*IDS, "a/missing.png"])
    assert images == {image_id: _expected(folder / image_id) for image_id in IDS}  # a missing image is left out
    sizes = {image_id: Image.open(io.BytesIO(jpeg)).size for image_id, jpeg in images.items()}
    assert sizes == {"a/wide.png": (96, 38), "a/tall.png": (24, 96), "b/sub/small.png": (40, 30)}
    # A one-item sequence and a PathLike name the same folder.
    assert image_thumbnails([str(folder)])(IDS[:1]) == image_thumbnails(Path(folder))(IDS[:1]) == {
        IDS[0]: images[IDS[0]]}


def test_ids_that_escape_the_folder_give_no_thumbnail(folder, no_listing):
    secret = folder.parent / "secret.png"
    escaping = ["../secret.png", "a/../../secret.png", str(secret), "/" + "/".join(secret.parts[1:]), "./a/wide.png",
                "a//wide.png", "a\\wide.png", "a/wide.png\0", ""]
    assert image_thumbnails(folder)(escaping) == {}
    assert list(image_thumbnails(folder)([*escaping, "a/wide.png"])) == ["a/wide.png"]


def test_unreadable_images_are_left_out(folder, no_listing):
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "a" / "folder.png").mkdir()
    assert list(image_thumbnails(folder)(["a/broken.png", "a/folder.png", "b/sub/small.png"])) == ["b/sub/small.png"]


def test_a_manifest_is_listed_and_each_id_found_in_it(folder):
    manifest = folder / "list.csv"
    pd.DataFrame({"path": sorted(IDS), "label": ["x", "y", "x"]}).to_csv(manifest, index=False)
    images = image_thumbnails(manifest)(["b/sub/small.png", "not/listed.png", "a/tall.png", "zzz"])
    assert images == {image_id: _expected(folder / image_id) for image_id in ("b/sub/small.png", "a/tall.png")}


def _store(tmp_path: Path, data_root: Path, n_per_class: int = 30) -> tuple[Path, list[str]]:
    """A store of 3 overlapping classes (so that some rows are misclassified) whose data_root holds its images."""
    ids, labels, splits = dataset(n_per_class=n_per_class)
    for k, image_id in enumerate(ids):
        _image(data_root / image_id, (40 + k % 7, 30 + k % 5), seed=k)
    path = write_store(tmp_path / "s.h5", ids, labels, {"f": blobs(labels, 4, seed=3, spread=3.0)}, splits=splits,
                       data_root=str(data_root))
    return path, ids


def test_a_store_gives_its_data_root_from_its_attributes_alone(tmp_path, monkeypatch):
    store, ids = _store(tmp_path, tmp_path / "images", n_per_class=2)
    _refuse_listing(monkeypatch, tmp_path / "images")

    def refuse(*args, **kwargs):
        raise AssertionError("the store's sample table was read")

    monkeypatch.setattr(featx.store, "open_store", refuse)
    monkeypatch.setattr(featx.store.FeatureStore, "__init__", refuse)
    images = store_thumbnails([f"{store}:f"])([ids[0], ids[-1], "../s.h5"])
    assert images == {i: _expected(tmp_path / "images" / i) for i in (ids[0], ids[-1])}
    assert store_thumbnails([tmp_path / "none.h5"])(ids) == {}  # no store: no thumbnail, no error


def test_classify_report_embeds_one_thumbnail_per_misclassified_image(tmp_path, monkeypatch):
    store, _ = _store(tmp_path, tmp_path / "images")
    _refuse_listing(monkeypatch, tmp_path / "images")
    run = featx.classify([f"{store}:f"], models="bayes", out=tmp_path / "run")
    frame = pd.read_csv(run.best.predictions, dtype=str, keep_default_na=False)
    wrong = list(frame["id"][frame["true"] != frame["predicted"]])
    assert 0 < len(wrong) < len(frame) <= 60  # the report shows at most 60: here every one
    text = (run.out_dir / "report.html").read_text()
    sources = re.findall(r'<img alt="([^"]+)" src="data:image/jpeg;base64,([^"]+)"', text)
    assert [alt for alt, _ in sources] == wrong
    assert [base64.b64decode(uri) for _, uri in sources] == [
        _expected(tmp_path / "images" / i) for i in wrong]
    assert list(run.out_dir.glob("confusion-*.png")) == [run.out_dir / "confusion-bayes.png"]


def test_no_plots_reads_no_image(tmp_path, monkeypatch, run_cli):
    store, _ = _store(tmp_path, tmp_path / "images")

    def refuse(*args, **kwargs):
        raise AssertionError("an image was read")

    monkeypatch.setattr(Image, "open", refuse)
    run = featx.classify([f"{store}:f"], models="bayes", out=tmp_path / "api", plots=False)
    text = (run.out_dir / "report.html").read_text()
    assert "<img" not in text and "evaluation images misclassified (no thumbnails: plots=False)</p>" in text
    code, _, err = run_cli("classify", "--features", f"{store}:f", "--model", "bayes", "--out", tmp_path / "cli",
                           "--no-plots")
    assert code == 0, err
    text = (tmp_path / "cli" / "report.html").read_text()
    assert "<img" not in text and "evaluation images misclassified (no thumbnails: --no-plots)</p>" in text
    assert not list((tmp_path / "cli").glob("*.png"))

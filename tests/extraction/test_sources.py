"""What --data names: manifests, tar archives and WebDataset shards, the safe folder walk, one-line errors."""

from __future__ import annotations

import logging
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import IMAGE_SIZE, MODEL, copy_real_images, quick_extract
from source_files import (
    add_member,
    assert_same_store,
    image_ids,
    store_by_folder_id,
    tar_tree,
    tree_manifest,
    webdataset_shards,
    write_manifest,
)

from featx.errors import DataError
from featx.extraction import open_source
from featx.extraction._archive import ArchiveSource, expand_braces
from featx.extraction._folder import discover_images
from featx.extraction._pathlist import PathListSource
from featx.store import open_store

QUICK = ["--model", MODEL, "--layer", "conv2", "--weights", "none", "--image-size", str(IMAGE_SIZE), "--workers", "0",
         "--no-progress", "--batch-size", "4"]


@pytest.fixture(autouse=True)
def _no_stale_log_handler():
    """A CLI run of another test may have left a handler bound to a closed capsys stream."""
    logging.getLogger("featx").handlers.clear()


@pytest.fixture
def small(tmp_path, hymenoptera) -> Path:
    """8 real JPEGs: train/val x ants/bees, 2 of each."""
    return copy_real_images(hymenoptera, tmp_path / "small", per_class=2)


def _one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2, err
    assert out == ""
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err[len("error: "):].rstrip("\n")


# --------------------------------------------------------------------------- manifests


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_manifest_lists_paths_labels_splits_and_keeps_the_other_columns(small, tmp_path, suffix):
    manifest = tree_manifest(small, tmp_path / f"list{suffix}", prefix="small/")
    source = open_source(manifest)
    folder = discover_images(small)
    assert isinstance(source, PathListSource)
    assert source.ids == tuple(f"small/{i}" for i in folder.ids)  # the paths as written
    assert source.classes == folder.classes == ("ants", "bees")
    np.testing.assert_array_equal(source.labels, folder.labels)
    assert source.splits == folder.splits
    assert source.meta == {"photographer": tuple(f"p{i % 3}" for i in range(8))}
    assert source.location == str(manifest)
    assert source.display_name(0) == str(small / folder.ids[0])  # relative to the manifest's folder
    assert source.load(0).size == discover_images(small).load(0).size


def test_manifest_paths_absolute_relative_and_integer_labels(small, tmp_path):
    ids = image_ids(small)
    rows = [
        {"path": str(small / ids[0]), "label": "10"},
        {"path": f"small/{ids[1]}", "label": "2"},
        {"path": f"small/{ids[2]}", "label": ""},
    ]
    source = open_source(write_manifest(tmp_path / "list.csv", rows))
    assert source.ids == tuple(sorted([str(small / ids[0]), f"small/{ids[1]}", f"small/{ids[2]}"]))
    assert source.classes == ("2", "10")  # integer class names sorted by value
    labels = dict(zip(source.ids, source.labels.tolist()))
    assert labels == {str(small / ids[0]): 1, f"small/{ids[1]}": 0, f"small/{ids[2]}": -1}
    assert [source.display_name(i) for i in range(3)] == [
        str(small / ids[0]) if i.startswith("/") else str(small / i[len("small/"):]) for i in source.ids
    ]


@pytest.mark.parametrize(
    "name, content, error",
    [
        (
            "nopath.csv", "file,label\na.jpg,x\n",
            "the manifest '{}' has no column 'path' (its columns: file, label); a manifest has a header row naming "
            "its columns: path (required), label, split, and any others",
        ),
        (
            "dup.csv", "path\nb.jpg\na.jpg\nb.jpg\nc.jpg\na.jpg\n",
            "the manifest '{}' lists the same image more than once: 'a.jpg', 'b.jpg'; list each image once",
        ),
        (
            "split.csv", "path,split\na.jpg,training\nb.jpg,Val\nc.jpg,\n",
            "the splits of the manifest '{}' must be train, val, test or empty; got 'Val', 'training'; write each "
            "image's split as train, val or test (lower case), or leave it empty",
        ),
        (
            "empty.csv", "path,label\na.jpg,x\n,y\n",
            "1 row(s) of the manifest '{}' have an empty path (the first: data row 2); give every row the path or URL "
            "of its image",
        ),
        (
            "none.csv", "path,label\n",
            "the manifest '{}' lists no image; a manifest has a header row naming its columns: path (required), "
            "label, split, and any others",
        ),
        (
            "garbage.parquet", "this is no Parquet file",
            "cannot read the manifest '{}' as PARQUET: Parquet magic bytes not found in footer. Either the file is "
            "corrupted or this is not a parquet file; a manifest has a header row naming its columns: path "
            "(required), label, split, and any others",
        ),
    ],
)
def test_a_bad_manifest_is_one_line_before_any_model(tmp_path, run_cli, monkeypatch, name, content, error):
    import featx.extraction._engine as engine

    monkeypatch.setattr(engine, "build_network", lambda *a, **k: pytest.fail("a model was loaded"))
    (tmp_path / name).write_text(content)
    message = _one_line_error(*run_cli("extract", "--data", tmp_path / name, "--out", tmp_path / "s.h5", *QUICK))
    assert message == error.format(tmp_path / name)


def test_a_missing_manifest_archive_or_other_file(tmp_path, run_cli):
    assert _one_line_error(*run_cli("extract", "--data", tmp_path / "list.csv", *QUICK)) == (
        f"manifest not found: '{tmp_path / 'list.csv'}' does not exist; pass --data with a CSV or Parquet file"
    )
    assert _one_line_error(*run_cli("extract", "--data", tmp_path / "x.tar", *QUICK)) == (
        f"archive not found: '{tmp_path / 'x.tar'}' does not exist; check --data"
    )
    (tmp_path / "notes.txt").write_text("x")
    assert _one_line_error(*run_cli("extract", "--data", tmp_path / "notes.txt", *QUICK)) == (
        "--data must be a folder, a manifest (.csv, .parquet, .pq), a .tar archive or a shard pattern "
        f"('train-{{000000..000127}}.tar'), or a URL (s3://bucket/prefix); got '{tmp_path / 'notes.txt'}'"
    )


def test_a_manifest_image_that_is_missing_goes_to_failed(small, tmp_path):
    rows = [{"path": f"small/{i}"} for i in image_ids(small)[:3]] + [{"path": "small/gone.jpg"}]
    manifest = write_manifest(tmp_path / "list.csv", rows)
    result = quick_extract(manifest, tmp_path / "s.h5")
    assert result.rows == 3
    assert result.failed == [("small/gone.jpg", "unreadable: No such file or directory")]
    with open_store(tmp_path / "s.h5") as store:
        assert store.failed.values.tolist() == [["small/gone.jpg", "unreadable: No such file or directory"]]
        assert store.meta["data_root"] == str(manifest)


def test_the_manifest_columns_are_the_stores_sample_metadata_and_a_grown_manifest_updates_it(small, tmp_path):
    ids = image_ids(small)
    rows = [{"path": i, "label": i.split("/")[1], "note": f"n{k}"} for k, i in enumerate(ids)]
    manifest = write_manifest(small / "list.csv", rows[:5])
    first = quick_extract(manifest, tmp_path / "s.h5")
    assert (first.rows, first.images) == (5, 5)
    write_manifest(small / "list.csv", rows)
    grown = quick_extract(manifest, tmp_path / "s.h5")
    assert (grown.rows, grown.images, grown.added, grown.removed) == (8, 3, 3, 0)  # only the new rows computed
    fresh = quick_extract(manifest, tmp_path / "fresh.h5")
    with open_store(tmp_path / "s.h5") as updated, open_store(fresh.path) as expected:
        assert updated.ids.tolist() == ids
        assert updated.sample_meta["note"].tolist() == [f"n{k}" for k in range(8)]
        assert updated.sample_meta["note"].tolist() == expected.sample_meta["note"].tolist()
        for layer in ("conv2", "penultimate"):
            assert updated.features(layer).tobytes() == expected.features(layer).tobytes()


def test_a_folder_without_sample_metadata_stores_none(small, tmp_path):
    quick_extract(small, tmp_path / "s.h5")
    with open_store(tmp_path / "s.h5") as store:
        assert store.sample_meta == {}


# --------------------------------------------------------------------------- tar archives


def test_a_tar_of_a_class_folder_tree_reads_like_the_folder(small, tmp_path):
    source = open_source(tar_tree(small, tmp_path / "hym.tar"))
    folder = discover_images(small)
    assert isinstance(source, ArchiveSource)
    assert source.ids == tuple(f"hym.tar/{i}" for i in folder.ids)
    assert (source.classes, source.splits) == (folder.classes, folder.splits)
    np.testing.assert_array_equal(source.labels, folder.labels)
    assert source.load(3).tobytes() == folder.load(3).tobytes()
    assert source.open(3).read() == (small / folder.ids[3]).read_bytes()
    assert source.display_name(3) == str(tmp_path / "hym.tar" / folder.ids[3])
    assert source.layout[0] == (
        logging.INFO,
        f"found 8 images in '{tmp_path / 'hym.tar'}': split folders train/ = train (4), val/ = val (4); "
        "2 classes (ants, bees)",
    )


def test_webdataset_shards_by_brace_pattern(small, tmp_path):
    where = webdataset_shards(small, tmp_path / "shards")
    source = open_source(str(tmp_path / "shards" / "wds-{000000..000001}.tar"))
    folder = discover_images(small)
    assert source.ids == tuple(sorted(where))  # SHARD/KEY
    position = {image_id: i for i, image_id in enumerate(folder.ids)}
    rows = [position[where[i]] for i in source.ids]
    np.testing.assert_array_equal(source.labels, folder.labels[rows])
    assert source.splits == tuple(folder.splits[i] for i in rows)
    assert source.open(5).read() == (small / where[source.ids[5]]).read_bytes()
    assert source.layout == (
        (
            logging.INFO,
            f"found 8 images in 2 shard(s) '{tmp_path / 'shards' / 'wds-{000000..000001}.tar'}': splits train (4), "
            "val (4); 2 classes (ants, bees)",
        ),
    )


def test_webdataset_labels_from_cls_indices_and_json(tmp_path, hymenoptera):
    jpeg = sorted((hymenoptera / "train" / "ants").glob("*.jpg"))[0].read_bytes()
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        add_member(tar, "x/k1.jpg", jpeg)
        add_member(tar, "x/k1.cls", b"10\n")
        add_member(tar, "x/k2.png.jpg", jpeg)  # WebDataset's key ends at the first dot: 'x/k2'
        add_member(tar, "x/k2.json", b'{"label": 2, "split": "test"}')
        add_member(tar, "x/k3.jpg", jpeg)
        add_member(tar, "x/k3.txt", b"a caption")
    source = open_source(tmp_path / "a.tar")
    assert source.ids == ("a.tar/x/k1", "a.tar/x/k2", "a.tar/x/k3")
    assert source.classes == ("2", "10")
    assert source.labels.tolist() == [1, 0, -1]
    assert source.splits == ("", "test", "")


def test_expand_braces():
    assert expand_braces("s-{08..11}.tar") == ["s-08.tar", "s-09.tar", "s-10.tar", "s-11.tar"]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]
    assert expand_braces("s-{3..1}.tar") == []
    assert expand_braces("one.tar") == ["one.tar"]


def test_bad_archives_are_one_line(small, tmp_path, run_cli):
    import gzip

    tar_tree(small, tmp_path / "hym.tar")
    (tmp_path / "gz.tar").write_bytes(gzip.compress((tmp_path / "hym.tar").read_bytes()))
    (tmp_path / "text.tar").write_text("no tar archive here\n" * 40)
    errors = {
        "s-{3..1}.tar": "the shard pattern '{}' names no shard; write a range such as 'train-{{000000..000127}}.tar' "
        "(first <= last) or a list such as '{{a,b}}.tar'",
        "hym-{0..1}.tar": "2 of the 2 shards of '{}' not found: '{}' does not exist; check --data",
        "gz.tar": "'{}' is compressed (gzip): featx reads uncompressed tar archives, image by image; decompress it "
        "first (the images are compressed already)",
        "hym.tar.gz": "'{}' is a compressed tar archive: featx reads uncompressed tar archives, image by image; "
        "decompress it first (the images are compressed already)",
        "text.tar": "'{}' is not a readable tar archive (invalid header)",
    }
    for name, error in errors.items():
        given = tmp_path / name
        if name == "hym.tar.gz":
            given.write_bytes(b"")
        message = _one_line_error(*run_cli("extract", "--data", given, *QUICK))
        assert message == error.format(given, tmp_path / "hym-0.tar"), name


def test_sources_are_picklable_and_read_the_same_after(small, tmp_path):
    """Decoding workers and Ray workers get the source pickled (or forked): it opens its files itself."""
    for source in (
        open_source(tar_tree(small, tmp_path / "hym.tar")),
        open_source(tree_manifest(small, tmp_path / "list.csv", prefix="small/")),
    ):
        again = pickle.loads(pickle.dumps(source.portable()))
        assert again.ids == source.ids and again.fingerprint == source.fingerprint
        assert again.load(1).tobytes() == source.load(1).tobytes()
        again.check_available()


# --------------------------------------------------------------------------- acceptance: one store, any source


def test_the_same_images_as_folder_manifest_tar_and_shards_give_the_same_store(small, tmp_path):
    expected = store_by_folder_id(quick_extract(small, tmp_path / "folder.h5").path, lambda i: i)
    manifest = tree_manifest(small, tmp_path / "list.csv", prefix="small/")
    got = quick_extract(manifest, tmp_path / "csv.h5")
    assert_same_store(store_by_folder_id(got.path, lambda i: i.removeprefix("small/")), expected)
    got = quick_extract(tar_tree(small, tmp_path / "hym.tar"), tmp_path / "tar.h5")
    assert_same_store(store_by_folder_id(got.path, lambda i: i.removeprefix("hym.tar/")), expected)
    where = webdataset_shards(small, tmp_path / "shards")
    got = quick_extract(str(tmp_path / "shards" / "wds-{000000..000001}.tar"), tmp_path / "wds.h5", workers=2)
    assert_same_store(store_by_folder_id(got.path, where.__getitem__), expected)


def test_grown_shards_update_a_complete_store(small, tmp_path):
    webdataset_shards(small, tmp_path / "shards", shards=3)
    first = quick_extract(str(tmp_path / "shards" / "wds-{000000..000001}.tar"), tmp_path / "s.h5")
    grown = quick_extract(str(tmp_path / "shards" / "wds-{000000..000002}.tar"), tmp_path / "s.h5")
    assert (first.rows, grown.rows, grown.images, grown.added) == (6, 8, 2, 2)


def test_default_store_path_of_a_shard_pattern(tmp_path, monkeypatch):
    from featx.extraction import ExtractConfig

    monkeypatch.chdir(tmp_path)
    config = ExtractConfig.from_options(data="shards/train-{000000..000127}.tar", model=MODEL, weights="none")
    assert config.store_path() == Path("features/train/resnet18-none.h5")


# --------------------------------------------------------------------------- the folder walk


def test_two_symlink_loops_end_with_a_warning_and_each_image_once(small, tmp_path, run_cli):
    os.symlink("..", small / "train" / "ants" / "up1")
    os.symlink("..", small / "train" / "ants" / "up2")
    code, out, err = run_cli("extract", "--data", small, "--out", tmp_path / "s.h5", *QUICK)
    assert code == 0, err
    assert (
        "symbolic link loop(s) not followed: train/ants/up1 -> .., train/ants/up2 -> ..: each leads back to "
        "a folder above it"
    ) in err.splitlines()
    with open_store(tmp_path / "s.h5") as store:
        assert store.ids.tolist() == image_ids(small)


def test_a_folder_or_file_reached_twice_is_counted_once(small):
    ids = image_ids(small)
    os.symlink("../../val/bees", small / "train" / "ants" / "more")  # a folder read already
    os.link(small / ids[0], small / "val" / "ants" / "hard.jpg")  # a second path to ids[0]
    source = discover_images(small)
    assert source.ids == tuple(ids)
    assert [text for level, text in source.layout if level == logging.WARNING] == [
        "symbolic link(s) to folders read already: train/ants/more -> ../../val/bees (= val/bees/): their images "
        "are counted once, under their first path",
        f"1 image file(s) reached by a second path (a hard or symbolic link), counted once: val/ants/hard.jpg (= {ids[0]})",
    ]


def test_a_link_to_a_folder_outside_is_followed(small, tmp_path):
    outside = tmp_path / "outside"
    (outside / "wasps").mkdir(parents=True)
    (outside / "wasps" / "w.jpg").write_bytes((small / image_ids(small)[0]).read_bytes())
    os.symlink(outside / "wasps", small / "wasps")
    source = discover_images(small)
    assert "wasps/w.jpg" in source.ids and "wasps" in source.classes
    assert [level for level, _ in source.layout] == [logging.INFO]


def test_a_wrapper_folder_is_a_warning_naming_the_data_meant(small, tmp_path):
    wrapper = tmp_path / "data"
    (wrapper / "insects").mkdir(parents=True)
    for cls in ("ants", "bees"):
        os.rename(small / "train" / cls, wrapper / "insects" / cls)
    source = discover_images(wrapper)
    assert source.classes == ("insects",)
    assert [text for level, text in source.layout if level == logging.WARNING] == [
        "the only class folder, insects/, holds folders of images (ants/, bees/): it is read as one class "
        f"'insects': pass the folder that holds the class folders as data (e.g. '{wrapper / 'insects'}')"
    ]


# --------------------------------------------------------------------------- predict


def test_predict_refuses_a_manifest_given_with_images(small, tmp_path):
    manifest = tree_manifest(small, tmp_path / "list.csv", prefix="small/")
    with pytest.raises(DataError) as error:
        open_source([manifest, small / image_ids(small)[0]])
    assert str(error.value) == (
        f"data '{manifest}' is a manifest, an archive or a URL, which must be given alone (not with 1 other "
        "path(s)); pass it alone, or image files and folders without it"
    )


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, hymenoptera):
    """A logistic regression trained on 8 real JPEGs' features, and its images."""
    from featx.classification import ClassifyConfig, run_classification

    root = tmp_path_factory.mktemp("predict")
    data = copy_real_images(hymenoptera, root / "small", per_class=2)
    store = quick_extract(data, root / "s.h5", layers=("penultimate",)).path
    run = run_classification(ClassifyConfig(features=(str(store),), models=("logreg",), out=root / "run", plots=False))
    return data, run.results[0].artifact


def test_predict_reads_a_manifest_as_extract_does(classifier, tmp_path, run_cli):
    data, artifact = classifier
    manifest = tree_manifest(data, data.parent / "list.csv", prefix="small/")
    predicted = {}
    for given in (data, manifest):
        out = tmp_path / f"{given.name}.csv"
        code, stdout, stderr = run_cli(
            "predict", "--classifier", artifact, "--data", given, "--out", out, "--workers", "0", "--no-progress",
        )
        assert code == 0, stderr
        assert stdout.splitlines()[1].startswith("accuracy on the labelled images: ")  # the manifest's labels too
        predicted[given.name] = pd.read_csv(out)
    by_folder, by_manifest = predicted["small"], predicted["list.csv"]
    assert list("small/" + by_folder["id"]) == list(by_manifest["id"])  # the manifest's paths name the images
    assert by_folder.drop(columns="id").equals(by_manifest.drop(columns="id"))
    code, out, err = run_cli(
        "predict", "--classifier", artifact, "--data", manifest, data / image_ids(data)[0], "--workers", "0",
    )
    assert _one_line_error(code, out, err) == (
        f"--data '{manifest}' is a manifest, an archive or a URL, which must be given alone (not with 1 other "
        "path(s)); pass it alone, or image files and folders without it"
    )

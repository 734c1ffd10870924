"""Images in object storage (s3:// through fsspec), on a real S3-compatible server on 127.0.0.1 (moto's)."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from pathlib import Path

import pytest
from conftest import IMAGE_SIZE, MODEL, copy_real_images, quick_extract
from s3_server import client_environment, free_port, s3_server
from source_files import assert_same_store, image_ids, store_by_folder_id, tree_manifest, webdataset_shards

import featx.extraction._remote as remote
from featx.extraction import open_source
from featx.store import open_store

QUICK = ["--model", MODEL, "--layer", "conv2", "--weights", "none", "--image-size", str(IMAGE_SIZE), "--workers", "0",
         "--no-progress"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The S3 test server, started once for this module and always stopped."""
    with s3_server(tmp_path_factory.mktemp("s3-server")) as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def _no_stale_log_handler():
    logging.getLogger("featx").handlers.clear()


def _client(monkeypatch, endpoint: str, folder: Path) -> None:
    """This process (and its decoding workers) talk to *endpoint*; file systems are made afresh."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in client_environment(endpoint, folder).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(remote, "_FILESYSTEMS", {})


@pytest.fixture
def bucket(server, tmp_path, monkeypatch):
    """A new, empty bucket on the test server: ``(file system, bucket name)``."""
    import fsspec

    _client(monkeypatch, server, tmp_path)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    name = f"featx-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return fs, name


@pytest.fixture
def small(tmp_path, hymenoptera) -> Path:
    return copy_real_images(hymenoptera, tmp_path / "small", per_class=2)


def _upload(fs, local: Path, remote_path: str) -> None:
    if local.is_dir():
        for image_id in image_ids(local):
            fs.pipe_file(f"{remote_path}/{image_id}", (local / image_id).read_bytes())
    else:
        fs.pipe_file(remote_path, local.read_bytes())


def _one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2, err
    assert out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err[len("error: "):].rstrip("\n")


def test_a_bucket_tree_manifest_and_shards_give_the_folders_store(bucket, small, tmp_path):
    """Acceptance: the same images in a bucket, as a tree, a manifest and shards, give the folder's store bit for bit."""
    fs, name = bucket
    expected = store_by_folder_id(quick_extract(small, tmp_path / "folder.h5").path, lambda i: i)

    _upload(fs, small, f"{name}/hym")
    source = open_source(f"s3://{name}/hym")
    assert source.ids == tuple(image_ids(small)) and source.location == f"s3://{name}/hym"
    assert source.display_name(0) == f"s3://{name}/hym/{image_ids(small)[0]}"
    # Two decoding workers (forked): each makes its own connections and reads ahead.
    got = quick_extract(f"s3://{name}/hym", tmp_path / "s3.h5", workers=2)
    assert_same_store(store_by_folder_id(got.path, lambda i: i), expected)
    with open_store(got.path) as store:
        assert store.meta["data_root"] == f"s3://{name}/hym"

    _upload(fs, tree_manifest(small, tmp_path / "list.csv", prefix="hym/"), f"{name}/list.csv")
    got = quick_extract(f"s3://{name}/list.csv", tmp_path / "s3-csv.h5")
    assert_same_store(store_by_folder_id(got.path, lambda i: i.removeprefix("hym/")), expected)

    where = webdataset_shards(small, tmp_path / "shards")
    for shard in sorted((tmp_path / "shards").iterdir()):
        _upload(fs, shard, f"{name}/shards/{shard.name}")
    got = quick_extract(f"s3://{name}/shards/wds-{{000000..000001}}.tar", tmp_path / "s3-wds.h5")
    assert_same_store(store_by_folder_id(got.path, where.__getitem__), expected)


def test_a_grown_bucket_updates_a_complete_store(bucket, small, tmp_path):
    fs, name = bucket
    ids = image_ids(small)
    for image_id in ids[:5]:
        fs.pipe_file(f"{name}/hym/{image_id}", (small / image_id).read_bytes())
    first = quick_extract(f"s3://{name}/hym", tmp_path / "s.h5")
    for image_id in ids[5:]:
        fs.pipe_file(f"{name}/hym/{image_id}", (small / image_id).read_bytes())
    grown = quick_extract(f"s3://{name}/hym", tmp_path / "s.h5")
    assert grown.failed == [] and first.failed == []
    assert (first.rows, grown.rows, grown.images, grown.added) == (5, 8, 3, 3)


def test_a_missing_object_goes_to_failed_with_the_reason(bucket, small, tmp_path):
    fs, name = bucket
    _upload(fs, small, f"{name}/hym")
    rows = "".join(f"s3://{name}/hym/{i}\n" for i in image_ids(small)[:2]) + f"s3://{name}/hym/gone.jpg\n"
    (tmp_path / "list.csv").write_text("path\n" + rows)
    result = quick_extract(tmp_path / "list.csv", tmp_path / "s.h5")
    assert result.rows == 2
    assert result.failed == [(f"s3://{name}/hym/gone.jpg", "unreadable: No such file or directory")]


def test_a_bucket_that_does_not_exist(server, tmp_path, monkeypatch, run_cli):
    _client(monkeypatch, server, tmp_path)
    message = _one_line_error(*run_cli("extract", "--data", "s3://featx-no-such-bucket/data", *QUICK))
    assert message == (
        "not found: 's3://featx-no-such-bucket/data' (The specified bucket does not exist); check the bucket and "
        "the path (and the endpoint: AWS_ENDPOINT_URL for S3-compatible servers)"
    )


def test_wrong_credentials(tmp_path, monkeypatch, run_cli):
    with s3_server(tmp_path, authenticate=True) as endpoint:
        _client(monkeypatch, endpoint, tmp_path)
        message = _one_line_error(*run_cli("extract", "--data", "s3://featx-data/prefix", *QUICK))
    assert message == (
        "access to 's3://featx-data/prefix' refused (The AWS Access Key Id you provided does not exist in our "
        "records.); check the credentials in the environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...)"
    )


def test_an_unreachable_endpoint(tmp_path, monkeypatch, run_cli):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    _client(monkeypatch, endpoint, tmp_path)
    message = _one_line_error(*run_cli("extract", "--data", "s3://featx-data/list.csv", *QUICK))
    assert message.startswith(f"cannot read 's3://featx-data/list.csv': EndpointConnectionError: Could not connect to the endpoint URL: \"{endpoint}/")
    assert message.endswith("; check the endpoint (AWS_ENDPOINT_URL for S3-compatible servers) and the network")


def test_an_unknown_scheme_and_a_missing_backend(run_cli, monkeypatch):
    assert _one_line_error(*run_cli("extract", "--data", "foo://bucket/data", *QUICK)) == (
        "unknown URL scheme 'foo://' in --data: 'foo://bucket/data'; featx reads abfs://, abfss://, az://, gcs://, "
        "gs://, http://, https://, s3://, s3a:// and every other scheme fsspec has a backend for"
    )
    real_find_spec = remote.importlib.util.find_spec
    monkeypatch.setattr(remote.importlib.util, "find_spec", lambda name, *a: None if name == "gcsfs" else real_find_spec(name, *a))
    assert _one_line_error(*run_cli("extract", "--data", "gs://bucket/data", *QUICK)) == (
        "--data 'gs://bucket/data' is a gs:// URL, which needs gcsfs; pip install 'featx[gcs]'"
    )


# --------------------------------------------------------------------------- reads: retried, pipelined


class _FlakyFileSystem:
    """Fails the first *failures* reads with *error*, then returns the bytes asked for."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, []

    def cat_file(self, path, start=None, end=None):
        self.calls.append((path, start, end))
        if len(self.calls) <= self.failures:
            raise self.error
        return b"0123456789"[start:end]

    @staticmethod
    def _strip_protocol(url):
        return url.split("://", 1)[1]


@pytest.fixture
def flaky(monkeypatch):
    monkeypatch.setattr(remote, "_BACKOFF", (0.0, 0.0))

    def install(failures: int, error: Exception) -> _FlakyFileSystem:
        fs = _FlakyFileSystem(failures, error)
        monkeypatch.setattr(remote, "_FILESYSTEMS", {(os.getpid(), "s3"): fs})
        return fs

    return install


def test_a_passing_error_is_retried_a_bounded_number_of_times(flaky):
    fs = flaky(2, ConnectionError("connection reset"))
    assert remote.read_bytes("s3://b/k.jpg", 2, 5) == b"234"
    assert fs.calls == [("b/k.jpg", 2, 5)] * 3
    fs = flaky(3, TimeoutError("read timed out"))
    with pytest.raises(OSError, match=r"^read timed out \(3 attempts\)$"):
        remote.read_bytes("s3://b/k.jpg")
    assert len(fs.calls) == remote.READ_ATTEMPTS == 3


def test_a_missing_object_or_refused_access_is_not_retried(flaky):
    fs = flaky(5, FileNotFoundError("b/k.jpg"))
    with pytest.raises(OSError, match=r"^No such file or directory$"):
        remote.read_bytes("s3://b/k.jpg")
    fs2 = flaky(5, PermissionError("Forbidden"))
    with pytest.raises(OSError, match=r"^access refused: Forbidden$"):
        remote.read_bytes("s3://b/k.jpg")
    assert len(fs.calls) == len(fs2.calls) == 1


def test_read_ahead_keeps_several_reads_in_flight_and_the_order():
    window = remote.READ_AHEAD
    together = threading.Barrier(window, timeout=60)  # broken unless `window` reads wait at once

    def read(i: int):
        if i < window:
            together.wait()
        if i == 3:
            raise OSError("boom")
        return i

    got = list(remote.read_ahead([lambda i=i: read(i) for i in range(2 * window)]))
    assert [g if not isinstance(g, OSError) else "error" for g in got] == [
        "error" if i == 3 else i for i in range(2 * window)
    ]

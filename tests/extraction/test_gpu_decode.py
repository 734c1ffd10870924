"""GPU JPEG decoding (featx.extraction.GpuJpegDecoder), nvJPEG mocked by a CPU decoder; the GPU run needs CUDA.

The mock decodes with PIL, as the CPU path does, so that what is left to
compare is featx's own work: which files go to the GPU, the resize, crop and
normalisation applied to decoded tensors, the order of a batch, and the CPU
fallback for the files the GPU refuses.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ODD_BAD, ODD_GOOD, copy_real_images, real_jpegs
from PIL import Image

from featx.errors import DeviceError
from featx.extraction._folder import discover_images
from featx.extraction._gpu_decode import EncodedImageDataset, GpuJpegDecoder, collate_encoded, read_jpeg_header, resolve_decode
from featx.extraction._images import ImageDataset
from featx.extraction._loader import ImageLoader
from featx.extraction._preprocessing import Preprocessing

CPU = torch.device("cpu")
PREPROCESSING = Preprocessing(resize=73, crop=64)


def pil_decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """nvJPEG's contract, with PIL: RGB uint8 (3, H, W) tensors, all or nothing (RuntimeError)."""
    images = []
    for encoded in data:
        try:
            with Image.open(io.BytesIO(encoded.numpy().tobytes())) as image:
                image.load()
                rgb = np.array(image.convert("RGB"))
        except Exception as exc:
            raise RuntimeError(f"decode failed: {exc}") from None
        images.append(torch.from_numpy(rgb).permute(2, 0, 1).contiguous().to(device))
    return images


def _refusing(refused: set[bytes]):
    """A mock GPU decoder that refuses every batch holding one of the *refused* files."""

    def decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        if any(encoded.numpy().tobytes() in refused for encoded in data):
            raise RuntimeError("nvjpeg: unsupported")
        return pil_decode(data, device)

    return decode


def _chunks(dataset: EncodedImageDataset, indices: list[int], size: int):
    """What the DataLoader workers hand over for a batch of *indices*, cut into chunks of *size*."""
    return [collate_encoded([dataset[i] for i in indices[a : a + size]]) for a in range(0, len(indices), size)]


def test_jpeg_headers_give_size_components_and_precision(odd_images, hymenoptera):
    for path in real_jpegs(hymenoptera / "val" / "ants", 3):
        header = read_jpeg_header(path.read_bytes())
        with Image.open(path) as image:
            assert (header.width, header.height) == image.size
        assert header.components == 3 and header.precision == 8 and header.gpu_decodable(10**9)
        assert not header.gpu_decodable(header.width * header.height - 1)  # over the decompression-bomb limit
    cmyk = read_jpeg_header((odd_images / "good/cmyk.jpg").read_bytes())
    assert (cmyk.width, cmyk.height, cmyk.components) == (96, 80, 4) and not cmyk.gpu_decodable(10**9)
    buffer = io.BytesIO()
    Image.new("L", (30, 20), 128).save(buffer, format="JPEG")
    gray = read_jpeg_header(buffer.getvalue())
    assert (gray.width, gray.height, gray.components) == (30, 20, 1) and gray.gpu_decodable(10**9)
    assert read_jpeg_header((odd_images / "good/rgba.png").read_bytes()) is None
    assert read_jpeg_header(b"") is None
    assert read_jpeg_header(buffer.getvalue()[:40]) is None  # cut before its frame header


def test_workers_send_complete_jpegs_to_the_gpu_and_decode_the_rest_as_the_cpu_path(odd_images):
    collection = discover_images(odd_images)
    encoded = EncodedImageDataset(collection, PREPROCESSING)
    cpu = ImageDataset(collection, PREPROCESSING)
    kinds = {}
    for index, image_id in enumerate(collection.ids):
        _, kind, payload = encoded[index]
        kinds[image_id] = kind
        _, pixels, reason = cpu[index]
        if kind == "jpeg":
            assert payload == collection.path(index).read_bytes()
        elif kind == "pixels":
            torch.testing.assert_close(payload, pixels, rtol=0, atol=0)
        else:
            assert payload == reason
    # Only the complete 3-component JPEG goes to the GPU: CMYK and the truncated file are the CPU's.
    assert kinds == {
        **{name: "failed" for name in ODD_BAD},
        **{name: "pixels" for name in ODD_GOOD},
        "good/rgb.jpg": "jpeg",
    }


def test_gpu_batch_equals_preprocessing_of_the_decoded_tensors_in_collection_order(tmp_path, hymenoptera, odd_images):
    data = copy_real_images(hymenoptera, tmp_path / "real", per_class=2)
    for name in ("good/cmyk.jpg", "good/palette.png", "bad/text.jpg"):
        shutil.copy(odd_images / name, data / "train" / "ants" / Path(name).name)
    collection = discover_images(data)
    dataset = EncodedImageDataset(collection, PREPROCESSING)
    decoder = GpuJpegDecoder(collection, PREPROCESSING, CPU, decode=pil_decode)
    indices = list(range(len(collection)))
    batch = decoder(_chunks(dataset, indices, size=4))
    text = collection.ids.index("train/ants/text.jpg")
    assert batch.indices == [i for i in indices if i != text]
    failures = [(collection.ids[i], reason.split(":")[0]) for i, reason in batch.failures]
    assert failures == [("train/ants/text.jpg", "not an image")]
    cpu = ImageDataset(collection, PREPROCESSING)
    for row, index in enumerate(batch.indices):
        path = collection.path(index)
        if path.suffix == ".jpg" and read_jpeg_header(path.read_bytes()).components == 3:
            decoded = pil_decode([torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)], CPU)[0]
            # The GPU path is the Preprocessing of the decoded tensor, to the bit ...
            torch.testing.assert_close(batch.pixels[row], PREPROCESSING(decoded), rtol=0, atol=0)
            # ... and within a few 8-bit steps of the CPU path (tensor resize against PIL's).
            difference = (batch.pixels[row] - cpu[index][1]).abs()
            assert difference.mean() < 0.01 and difference.max() < 0.15
        else:
            torch.testing.assert_close(batch.pixels[row], cpu[index][1], rtol=0, atol=0)  # decoded by the worker
    assert decoder.refused == 0


@pytest.mark.parametrize(
    "recipe",
    [
        dict(resize=73, crop=64),
        dict(resize=70, crop=64, interpolation="bicubic", mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25)),
        dict(resize=64, crop=64, channel_order="BGR", pixel_range=255, mean=(103.9, 116.8, 123.7), std=(1, 1, 1)),
        dict(resize=70, crop=64, interpolation="bicubic", resize_mode="squash"),
    ],
    ids=["imagenet", "bicubic", "caffe", "squash"],
)
def test_every_recipe_gives_the_bits_of_preprocessing_on_the_decoded_tensor(tmp_path, hymenoptera, recipe):
    data = copy_real_images(hymenoptera, tmp_path / "real", per_class=1)
    preprocessing = Preprocessing(**recipe)
    collection = discover_images(data)
    decoder = GpuJpegDecoder(collection, preprocessing, CPU, decode=pil_decode)
    batch = decoder(_chunks(EncodedImageDataset(collection, preprocessing), list(range(len(collection))), size=3))
    assert batch.indices == list(range(len(collection)))
    for row, index in enumerate(batch.indices):
        encoded = torch.frombuffer(bytearray(collection.path(index).read_bytes()), dtype=torch.uint8)
        expected = preprocessing(pil_decode([encoded], CPU)[0])
        torch.testing.assert_close(batch.pixels[row], expected, rtol=0, atol=0)


def test_a_squash_recipe_gives_the_cpu_paths_pixels_on_the_gpu_path(tmp_path, hymenoptera):
    """timm's crop mode 'squash' (both sides to `resize`) on GPU-decoded tensors, as the CPU path applies it."""
    data = copy_real_images(hymenoptera, tmp_path / "real", per_class=2)
    squash = Preprocessing(resize=64, crop=64, interpolation="bicubic", resize_mode="squash")
    collection = discover_images(data)
    decoder = GpuJpegDecoder(collection, squash, CPU, decode=pil_decode)
    batch = decoder(_chunks(EncodedImageDataset(collection, squash), list(range(len(collection))), size=3))
    cpu = ImageDataset(collection, squash)
    shorter = ImageDataset(collection, Preprocessing(resize=64, crop=64, interpolation="bicubic"))
    assert batch.indices == list(range(len(collection)))
    for row, index in enumerate(batch.indices):
        difference = (batch.pixels[row] - cpu[index][1]).abs()
        assert difference.mean() < 0.01 and difference.max() < 0.15
        # Not the shorter-side resize: these photos are not square, so the two differ.
        assert (batch.pixels[row] - shorter[index][1]).abs().mean() > 0.1


def test_files_the_gpu_refuses_are_decoded_on_the_cpu_and_fail_only_if_it_fails_too(tmp_path, hymenoptera):
    data = copy_real_images(hymenoptera, tmp_path / "real", per_class=1)
    good = real_jpegs(hymenoptera / "val" / "bees", 2)[1].read_bytes()
    scan = good.index(b"\xff\xda")  # start of scan: keep the headers, drop the image data
    garbage = good[:scan] + b"\xff\xd9"
    (data / "val" / "bees" / "garbage.jpg").write_bytes(garbage)
    collection = discover_images(data)
    refused_file = collection.path(0).read_bytes()
    decoder = GpuJpegDecoder(collection, PREPROCESSING, CPU, decode=_refusing({refused_file}))
    dataset = EncodedImageDataset(collection, PREPROCESSING)
    assert dataset[collection.ids.index("val/bees/garbage.jpg")][1] == "jpeg"  # its header looks fine
    batch = decoder(_chunks(dataset, list(range(len(collection))), size=3))
    garbage_index = collection.ids.index("val/bees/garbage.jpg")
    cpu = ImageDataset(collection, PREPROCESSING)
    assert batch.indices == [i for i in range(len(collection)) if i != garbage_index]
    assert batch.failures == [(garbage_index, cpu[garbage_index][2])]  # the CPU's reason
    assert decoder.refused == 2  # the refused file and the garbage, both tried on the CPU
    torch.testing.assert_close(batch.pixels[0], cpu[0][1], rtol=0, atol=0)  # the CPU path's pixels


def test_a_batch_of_failures_only_has_no_pixels(odd_images):
    collection = discover_images(odd_images)
    bad = [collection.ids.index(name) for name in ODD_BAD]
    decoder = GpuJpegDecoder(collection, PREPROCESSING, CPU, decode=pil_decode)
    batch = decoder(_chunks(EncodedImageDataset(collection, PREPROCESSING), bad, size=2))
    assert batch.pixels is None and batch.indices == [] and sorted(i for i, _ in batch.failures) == sorted(bad)


def test_a_chunk_crosses_from_its_worker_as_one_tensor_of_bytes(tmp_path, hymenoptera, odd_images):
    data = copy_real_images(hymenoptera, tmp_path / "real", per_class=1)
    shutil.copy(odd_images / "good/palette.png", data / "train" / "ants" / "palette.png")
    collection = discover_images(data)
    dataset = EncodedImageDataset(collection, PREPROCESSING)
    [chunk] = _chunks(dataset, list(range(len(collection))), size=len(collection))
    files = [collection.path(i).read_bytes() for i in range(len(collection)) if collection.path(i).suffix == ".jpg"]
    assert chunk.data.numpy().tobytes() == b"".join(files)
    assert [data.numpy().tobytes() for _, data in chunk.jpegs] == files
    assert [collection.ids[i] for i, _ in chunk.decoded] == ["train/ants/palette.png"]


def test_where_jpegs_are_decoded(monkeypatch, synthetic_dataset):
    assert resolve_decode("cpu", CPU) == "cpu"
    assert resolve_decode("auto", CPU) == "cpu"
    with pytest.raises(DeviceError, match="decode='gpu' needs a CUDA device with nvJPEG; the network runs on cpu"):
        resolve_decode("gpu", CPU)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = torch.device("cuda")
    assert resolve_decode("auto", cuda) == resolve_decode("gpu", cuda) == "gpu"
    assert resolve_decode("cpu", cuda) == "cpu"
    with pytest.raises(ValueError, match="decode must be 'cpu', or 'gpu' with a CUDA device"):
        ImageLoader(discover_images(synthetic_dataset), PREPROCESSING, indices=[0], batch_size=1, workers=0, device=CPU,
                    decode="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")
def test_extraction_with_gpu_decoding_matches_cpu_decoding(small_dataset, odd_images, tmp_path):
    from conftest import quick_extract

    from featx.store import open_store

    for name in ("good/cmyk.jpg", "good/palette.png", "bad/text.jpg", "bad/truncated.jpg"):
        shutil.copy(odd_images / name, small_dataset / "train" / "ants" / Path(name).name)
    settings = dict(device="cuda", workers=2, batch_size=5, layers=("penultimate",))
    on_gpu = quick_extract(small_dataset, tmp_path / "gpu.h5", decode="gpu", **settings)
    on_cpu = quick_extract(small_dataset, tmp_path / "cpu.h5", decode="cpu", **settings)
    assert sorted(on_gpu.failed) == sorted(on_cpu.failed) and len(on_gpu.failed) == 2
    with open_store(on_gpu.path) as a, open_store(on_cpu.path) as b:
        assert a.ids.tolist() == b.ids.tolist()
        x, y = a.features("penultimate"), b.features("penultimate")
        assert float(np.abs(x - y).max() / np.abs(y).max()) < 0.05

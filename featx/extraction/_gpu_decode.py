"""JPEG decoding on the GPU (nvJPEG), in batches, with the CPU as the fallback.

On a GPU host the CPU-side decode is the bound: PIL decodes some 400 ImageNet
JPEGs per second per core, while one GPU runs ResNet-50 on many thousands.
With ``decode='gpu'`` the DataLoader workers only read the files' bytes and
check their headers (:class:`EncodedImageDataset`); the main process decodes
each batch's JPEGs in one nvJPEG call and applies the run's
:class:`~featx.extraction.Preprocessing` to them on the GPU
(:class:`GpuJpegDecoder`): its :meth:`~featx.extraction.Preprocessing.resize_crop`
image by image, its :meth:`~featx.extraction.Preprocessing.normalize` once per batch.  Everything else is
decoded on the CPU as before: other formats, JPEGs nvJPEG does not take
(CMYK, 12-bit, larger than the decompression-bomb limit: read from the header),
and files the GPU refuses; an image goes to ``/failed`` only when the CPU
cannot decode it either.

The decoder is torchvision's ``decode_jpeg(device='cuda')``.  torchvision 0.29
deprecates its image decoders in favour of TorchCodec (0.16+), which this
environment does not install; the deprecation warning of that one call is
silenced (nothing else), and the call is made in one place
(:func:`decode_jpegs_on_gpu`) so that moving to TorchCodec changes one function.

Features from GPU-decoded images are not bit-identical to CPU-decoded ones:
nvJPEG's inverse DCT and the tensor resize (against PIL's) differ by a unit of
the 8-bit scale on some pixels, which is what a GPU run promises anyway.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import DeviceError, message, option
from ._images import MAX_IMAGE_PIXELS, ImageBatch, ImageDataset
from ._preprocessing import Preprocessing
from ._image_source import ImageSource

__all__ = [
    "JpegHeader",
    "read_jpeg_header",
    "EncodedImageDataset",
    "EncodedBatch",
    "collate_encoded",
    "GpuJpegDecoder",
    "decode_jpegs_on_gpu",
    "gpu_decoding_available",
    "resolve_decode",
]

_JPEG_MAGIC = b"\xff\xd8\xff"
# Start-of-frame markers (baseline, extended, progressive, lossless; not DHT 0xC4, JPG 0xC8, DAC 0xCC).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# nvJPEG decodes 8-bit baseline/progressive JPEGs of 1 (grey) or 3 (YCbCr) components;
# PIL converts CMYK and 12-bit files in ways nvJPEG does not repeat.
_GPU_COMPONENTS = (1, 3)
_GPU_SOF = frozenset({0xC0, 0xC1, 0xC2})
# A complete JPEG ends with EOI (FF D9), give or take some trailing padding; a
# truncated one goes to the CPU, which refuses it as truncated (nvJPEG may not).
_END_OF_IMAGE = b"\xff\xd9"
_TRAILING_BYTES = 1024
# The text of torchvision 0.29's deprecation of its image decoders (see the module docstring).
_DEPRECATION = r"The image decoding and encoding capabilities of TorchVision are deprecated"


@dataclass(frozen=True)
class JpegHeader:
    """What a JPEG's start-of-frame segment says."""

    width: int
    height: int
    components: int
    precision: int
    marker: int

    def gpu_decodable(self, max_pixels: int) -> bool:
        """Whether nvJPEG decodes it the way the CPU path does, within the decompression-bomb limit."""
        return (
            self.marker in _GPU_SOF
            and self.precision == 8
            and self.components in _GPU_COMPONENTS
            and 0 < self.width * self.height <= max_pixels
        )


def read_jpeg_header(data: bytes) -> JpegHeader | None:
    """The start-of-frame of a JPEG, or ``None`` if *data* is no JPEG with a readable one.

    Walks the marker segments from the start of the file up to the first SOF
    (a few hundred bytes, usually), without decoding anything.
    """
    if not data.startswith(_JPEG_MAGIC):
        return None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # segments without a length
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan before any frame header
            return None
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            segment = data[position + 4 : position + 2 + length]
            if len(segment) < 6:
                return None
            precision, height, width, components = struct.unpack(">BHHB", segment[:6])
            return JpegHeader(width=width, height=height, components=components, precision=precision, marker=marker)
        position += 2 + length
    return None


@dataclass
class EncodedBatch:
    """What a worker of the GPU path yields for a chunk of candidates.

    Attributes
    ----------
    data : Tensor, 1-D uint8
        The bytes of the chunk's JPEGs for the GPU, one after the other: one
        tensor, so that a chunk crosses from the worker in one piece of shared
        memory, not one per file.
    spans : list of (int, int, int)
        Collection index, start and stop in *data* of each JPEG.
    decoded : list of (int, Tensor)
        Collection index and preprocessed pixels (3, H, W) of each image the
        worker decoded on the CPU.
    failures : list of (int, str)
        Images that could not be used, with the reason.
    """

    data: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))
    spans: list[tuple[int, int, int]] = field(default_factory=list)
    decoded: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)

    @property
    def jpegs(self) -> list[tuple[int, torch.Tensor]]:
        """Collection index and bytes (a 1-D view of :attr:`data`) of each JPEG."""
        return [(index, self.data[start:stop]) for index, start, stop in self.spans]

    def pin_memory(self) -> EncodedBatch:
        # Called by the DataLoader's pinning thread: CPU-decoded pixels are copied
        # to the GPU like the CPU path's, and nvJPEG reads the bytes from pinned memory.
        self.data = self.data.pin_memory()
        self.decoded = [(i, pixels.pin_memory()) for i, pixels in self.decoded]
        return self


class EncodedImageDataset:
    """Map-style dataset of the GPU path: index -> ``(index, kind, payload)``.

    *kind* and *payload* are ``'jpeg'`` and the file's bytes, ``'pixels'`` and
    the preprocessed tensor, or ``'failed'`` and the reason.

    Complete JPEGs (an end-of-image marker near the end) that nvJPEG decodes
    like the CPU path (:meth:`JpegHeader.gpu_decodable`) are only read; every
    other file is decoded and preprocessed here, on the CPU, exactly as the CPU
    path does.
    """

    def __init__(
        self, collection: ImageSource, preprocessing: Callable, *, max_pixels: int = MAX_IMAGE_PIXELS
    ) -> None:
        self.collection = collection
        self.max_pixels = max_pixels
        self.cpu = ImageDataset(collection, preprocessing, max_pixels=max_pixels)

    def __len__(self) -> int:
        return len(self.collection)

    def __getitem__(self, index: int) -> tuple[int, str, bytes | torch.Tensor | str]:
        try:
            with self.collection.open(index) as f:
                data = f.read()
        except OSError:
            data = b""  # the CPU path says why (missing, broken link, unreadable)
        header = read_jpeg_header(data)
        complete = data.find(_END_OF_IMAGE, max(0, len(data) - _TRAILING_BYTES)) != -1
        if header is not None and complete and header.gpu_decodable(self.max_pixels):
            return index, "jpeg", data
        _, pixels, reason = self.cpu[index]
        return (index, "pixels", pixels) if reason is None else (index, "failed", reason)


def collate_encoded(items: Sequence[tuple[int, str, object]]) -> EncodedBatch:
    """Sort a chunk's items into bytes for the GPU (joined into one tensor), CPU-decoded pixels and failures."""
    batch = EncodedBatch()
    files: list[bytes] = []
    position = 0
    for index, kind, payload in items:
        if kind == "jpeg":
            files.append(payload)
            batch.spans.append((index, position, position + len(payload)))
            position += len(payload)
        else:
            (batch.decoded if kind == "pixels" else batch.failures).append((index, payload))
    if files:
        batch.data = torch.frombuffer(bytearray(b"".join(files)), dtype=torch.uint8)
    return batch


def decode_jpegs_on_gpu(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode JPEG bytes (1-D uint8 CPU tensors) into RGB uint8 tensors (3, H, W) on *device*, in one nvJPEG call.

    Raises
    ------
    RuntimeError
        nvJPEG refused one of them (it decodes all or nothing).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def gpu_decoding_available() -> bool:
    """Whether torch sees a CUDA GPU and torchvision has its nvJPEG decoder."""
    if not torch.cuda.is_available():
        return False
    import torchvision.io  # noqa: F401  (loads torchvision's image operators)

    return hasattr(torch.ops.image, "decode_jpegs_cuda")


def resolve_decode(name: str, device: torch.device) -> str:
    """``'gpu'`` or ``'cpu'``: where the JPEGs of a run on *device* are decoded.

    ``auto`` is the GPU when the network runs on CUDA and torchvision has
    nvJPEG, else the CPU.

    Raises
    ------
    DeviceError
        ``gpu`` was asked for a run that is not on a CUDA device, or without nvJPEG.
    """
    if name == "cpu":
        return "cpu"
    if device.type == "cuda" and gpu_decoding_available():
        return "gpu"
    if name == "auto":
        return "cpu"
    why = (
        f"the network runs on {device.type}" if device.type != "cuda" else "this torchvision has no nvJPEG decoder"
    )
    raise DeviceError(
        message(
            f"{option('decode', 'gpu')} needs a CUDA device with nvJPEG; {why}",
            hint=f"use {option('decode', 'cpu')}, or {option('device', 'cuda')} on a machine with a GPU",
        )
    )


class GpuJpegDecoder:
    """Decodes and preprocesses the images of a batch on the GPU; the CPU takes what the GPU refuses.

    Parameters
    ----------
    collection : ImageSource
    preprocessing : Preprocessing
        Applied on the GPU: :meth:`Preprocessing.resize_crop` image by image,
        then :meth:`Preprocessing.normalize` once for the batch (the same bits
        as ``Preprocessing.__call__`` on each decoded tensor).
    device : torch.device
        A CUDA device.
    max_pixels : int
    decode : callable, optional
        ``(list of byte tensors, device) -> list of uint8 (3, H, W) tensors``;
        by default :func:`decode_jpegs_on_gpu` (tests pass a CPU decoder).
    """

    def __init__(
        self,
        collection: ImageSource,
        preprocessing: Preprocessing,
        device: torch.device,
        *,
        max_pixels: int = MAX_IMAGE_PIXELS,
        decode: Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]] = decode_jpegs_on_gpu,
    ) -> None:
        self.collection = collection
        self.preprocessing = preprocessing
        self.device = device
        self.decode = decode
        self.cpu = ImageDataset(collection, preprocessing, max_pixels=max_pixels)
        #: Images the GPU refused and the CPU decoded, over the decoder's life (the engine reports them).
        self.refused = 0

    def _decode(self, jpegs: list[tuple[int, torch.Tensor]]) -> tuple[list[tuple[int, torch.Tensor]], list[int]]:
        """GPU-decoded crops of *jpegs*, and the indices the GPU refused.

        nvJPEG decodes a batch all or nothing: when the batch fails, each image
        is tried alone, so that one bad file costs the GPU only its own decode.
        """
        if not jpegs:
            return [], []
        try:
            images = self.decode([data for _, data in jpegs], self.device)
        except RuntimeError:
            images = None
        if images is not None:
            return [(i, self.preprocessing.resize_crop(image)) for (i, _), image in zip(jpegs, images, strict=True)], []
        if len(jpegs) == 1:
            return [], [jpegs[0][0]]
        crops, refused = [], []
        for item in jpegs:
            got, failed = self._decode([item])
            crops += got
            refused += failed
        return crops, refused

    def __call__(self, chunks: Sequence[EncodedBatch]) -> ImageBatch:
        """One batch of pixels on the GPU, in collection order, from the chunks the workers read."""
        jpegs = [item for chunk in chunks for item in chunk.jpegs]
        failures = [item for chunk in chunks for item in chunk.failures]
        crops, refused = self._decode(jpegs)
        self.refused += len(refused)
        ready: list[tuple[int, torch.Tensor]] = []
        if crops:
            normalised = self.preprocessing.normalize(torch.stack([crop for _, crop in crops]))
            ready += zip((i for i, _ in crops), normalised.unbind(0), strict=True)
        for index in refused:
            _, pixels, reason = self.cpu[index]
            if reason is None:
                ready.append((index, pixels.to(self.device, non_blocking=True)))
            else:
                failures.append((index, reason))
        ready += ((i, pixels.to(self.device, non_blocking=True)) for chunk in chunks for i, pixels in chunk.decoded)
        ready.sort(key=lambda item: item[0])
        failures.sort()
        pixels = torch.stack([p for _, p in ready]) if ready else None
        return ImageBatch(indices=[i for i, _ in ready], pixels=pixels, failures=failures)

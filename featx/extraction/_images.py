"""Decoding image files: any PIL mode to 8-bit RGB, every failure a short reason, bombs refused.

:class:`ImageDataset` is what decoding workers run: an image source's index ->
preprocessed pixels, or the reason it could not be used (a bad file never
stops a run).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    from ._image_source import ImageSource

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ImageDecodeError",
    "decode_image",
    "draft_decoding",
    "load_image",
    "to_rgb",
    "ImageDataset",
    "ImageBatch",
    "collate_images",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
# PIL's own default; images above it are refused before their pixels are decoded.
MAX_IMAGE_PIXELS = 89_478_485


class ImageDecodeError(Exception):
    """An image file could not be turned into RGB pixels; the message is the reason."""


_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}

# The size a JPEG may be decoded down to in the DCT domain (Preprocessing.draft_size), or None:
# set by the decoding worker around its source's reads (draft_decoding), so that every image
# source, whatever reads its bytes, decodes the same way without a parameter of its own.
_DRAFT_SIZE: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("featx_draft", default=None)


@contextlib.contextmanager
def draft_decoding(size: tuple[int, int] | None) -> Iterator[None]:
    """Decode the JPEGs read in the block with libjpeg's DCT scaling, to no less than *size* (None: exactly).

    Only a JPEG at least twice *size* on both sides is decoded smaller (by 1/2,
    1/4 or 1/8, the largest that keeps both sides at least *size*); any other
    image is decoded exactly as without it.
    """
    token = _DRAFT_SIZE.set(size)
    try:
        yield
    finally:
        _DRAFT_SIZE.reset(token)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    ``convert('RGB')`` saturates 16-bit and 32-bit integer images at 255, which turns
    most of a 16-bit photograph white; those are rescaled to 8 bits first.
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(pixels / 257.0), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        scale = 255.0 if pixels.size and np.nanmax(pixels) <= 1.0 else 1.0
        image = Image.fromarray(np.clip(np.nan_to_num(pixels * scale), 0, 255).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(path: str | os.PathLike, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode one image file into an 8-bit RGB PIL image.

    Raises
    ------
    ImageDecodeError
        With a short reason: empty, unreadable, a broken link, not an image, truncated, too large.
    """
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        if os.path.islink(path):
            raise ImageDecodeError(
                f"broken symbolic link: it points to '{os.readlink(path)}', which cannot be read ({exc.strerror})"
            ) from None
        raise ImageDecodeError(f"unreadable: {exc.strerror or exc}") from None
    if size == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    return decode_image(lambda: open(path, "rb"), max_pixels=max_pixels)


def decode_image(opener: Callable[[], IO[bytes]], *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode the image that *opener* opens (a binary file object) into an 8-bit RGB PIL image.

    Raises
    ------
    ImageDecodeError
        With a short reason: unreadable, empty, not an image, truncated, too large.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with opener() as file, Image.open(file) as image:
                pixels = image.width * image.height
                if pixels > max_pixels:
                    raise ImageDecodeError(
                        f"decompression bomb refused: {image.width}x{image.height} = {pixels:,} pixels, "
                        f"more than the limit of {max_pixels:,}"
                    )
                draft = _DRAFT_SIZE.get()
                if (
                    draft is not None and image.format == "JPEG"
                    and image.width >= 2 * draft[0] and image.height >= 2 * draft[1]
                ):
                    image.draft("RGB", draft)
                image.load()
                return to_rgb(image)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb refused: {exc}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image: the file's content is no image format Pillow can read") from None
    except OSError as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise ImageDecodeError(f"unreadable: {exc.strerror or exc}") from None
        raise ImageDecodeError(f"cannot decode: {exc}") from None
    except (ValueError, SyntaxError, MemoryError, EOFError) as exc:
        raise ImageDecodeError(f"cannot decode: {type(exc).__name__}: {exc}") from None


@dataclass
class ImageBatch:
    """What the DataLoader yields: decoded images of one batch and the ones that failed.

    Attributes
    ----------
    indices : list of int
        Collection indices of the images in ``pixels``, in order.
    pixels : torch.Tensor or None, (n_ok, 3, H, W)
        Preprocessed images; ``None`` when every image of the batch failed.
    failures : list of (int, str)
        Collection index and reason of each image that could not be used.
    """

    indices: list[int]
    pixels: object
    failures: list[tuple[int, str]]

    def pin_memory(self) -> "ImageBatch":
        # Called by the DataLoader's pinning thread when pin_memory=True.
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


class ImageDataset:
    """Map-style dataset: source index -> ``(index, pixels or None, reason or None)``.

    Decoding errors are returned, not raised, so that one bad file never stops a run.
    """

    def __init__(
        self,
        source: ImageSource,
        transform: Callable[[Image.Image], Any],
        *,
        max_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        self.source = source
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list:
        # A DataLoader asks for a chunk's images at once: the source may read them in parallel.
        items = []
        # One image at a time (decoded, then preprocessed), the draft size set for the reads.
        with draft_decoding(getattr(self.transform, "draft_size", None)):
            for index, image in zip(indices, self.source.load_many(indices, max_pixels=self.max_pixels)):
                if isinstance(image, ImageDecodeError):
                    items.append((index, None, str(image)))
                    continue
                try:
                    items.append((index, self.transform(image), None))
                except Exception as exc:  # a transform failing on one odd image must not stop the run
                    items.append((index, None, f"cannot preprocess: {type(exc).__name__}: {exc}"))
        return items


def collate_images(items) -> ImageBatch:
    """Stack the decoded images of a batch; keep failures aside with their reasons."""
    import torch

    ok = [(i, x) for i, x, reason in items if reason is None]
    failures = [(i, reason) for i, _, reason in items if reason is not None]
    pixels = None
    if ok:
        images = [x for _, x in ok]
        out = None
        if torch.utils.data.get_worker_info() is not None:
            # In a DataLoader worker, stack straight into shared memory, as
            # torch's default_collate does: sending the batch then copies nothing.
            storage = images[0].untyped_storage()._new_shared(sum(x.nbytes for x in images))
            out = images[0].new(storage).resize_(len(images), *images[0].shape)
        pixels = torch.stack(images, out=out)
    return ImageBatch(indices=[i for i, _ in ok], pixels=pixels, failures=failures)

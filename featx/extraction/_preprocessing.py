"""Preprocessing: what turns a decoded image into the network's input, and how users change it.

:class:`Preprocessing` is the weights' own recipe (torchvision's
``transforms()``, timm's pretrained configuration, Keras' ``caffe`` mode),
applied to each decoded PIL image in the decoding workers.  Users may change
any part of it (:class:`PreprocessingOptions`: ``--resize``, ``--crop``,
``--mean``, ``--std``, ``--interpolation``), and a ``--weights-file`` may bring
its own in a JSON sidecar (:func:`read_sidecar`).  Every value is recorded in
the store and is part of its identity.

No torch at import time: the configuration checks the options before anything
heavy is loaded; the transform itself imports torchvision when it first runs.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError, WeightsError, choices, message, option

__all__ = [
    "CAFFE_PREPROCESSING",
    "CHANNEL_ORDERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "JPEG_DECODES",
    "PIXEL_RANGES",
    "RESIZE_MODES",
    "Preprocessing",
    "PreprocessingOptions",
    "parse_floats",
    "read_sidecar",
    "sidecar_path",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's InterpolationMode values (by name, so that no torch is needed to check one).
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
CHANNEL_ORDERS = ("RGB", "BGR")
# 1: pixels scaled to [0, 1] before normalising (torchvision, timm); 255: kept in [0, 255] (Caffe, Keras' 'caffe').
PIXEL_RANGES = (1, 255)
# shorter: the shorter side to `resize`, the aspect ratio kept (torchvision, timm's 'center');
# squash: both sides to `resize`, the aspect ratio not kept (timm's crop_mode 'squash').
RESIZE_MODES = ("shorter", "squash")
# exact: every JPEG decoded at full size, then resized (the pixels of torchvision's preset);
# draft: a JPEG at least twice the resize on both sides is decoded by libjpeg at 1/2, 1/4 or
# 1/8 of its size, in the DCT domain (PIL's Image.draft), still at least the resize: faster,
# and slightly other pixels.
JPEG_DECODES = ("exact", "draft")


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, centre-crop, scale, reorder channels and normalise.

    The same operations, in the same order, as torchvision's
    ``ImageClassification`` preset and timm's eval transform
    (``Resize(shorter side)``, ``CenterCrop``, ``ToTensor``, ``Normalize``), so
    features equal a direct torchvision or timm computation.  Picklable, so
    that DataLoader workers can use it.

    Attributes
    ----------
    resize : int
        Shorter side after resizing, in pixels.
    crop : int
        Side of the centre crop (the network's input size).
    mean, std : tuple of float
        Per-channel normalisation ``(x - mean) / std``, in the units of
        *pixel_range* and in *channel_order*.
    interpolation : str
        One of :data:`INTERPOLATIONS`.
    channel_order : str
        ``'RGB'``, or ``'BGR'`` for networks trained with Caffe's channel order.
    pixel_range : int
        1: pixel values in [0, 1]; 255: in [0, 255], unscaled (Caffe).
    resize_mode : str
        One of :data:`RESIZE_MODES`: ``'shorter'`` resizes the shorter side to
        *resize*, ``'squash'`` both sides.
    jpeg : str
        One of :data:`JPEG_DECODES` (applied by the decoder, :attr:`draft_size`).
    """

    resize: int
    crop: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    channel_order: str = "RGB"
    pixel_range: int = 1
    resize_mode: str = "shorter"
    jpeg: str = "exact"

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """What the decoder asks libjpeg for with ``jpeg='draft'`` (both sides at least the resize), else None."""
        return (self.resize, self.resize) if self.jpeg == "draft" else None

    def __call__(self, image: Any) -> Any:
        import torch
        from torchvision.transforms import functional as F

        image = self.resize_crop(image)
        if isinstance(image, torch.Tensor) or image.mode != "RGB":
            return self.normalize(image if isinstance(image, torch.Tensor) else F.pil_to_tensor(image))
        return self._looked_up(image)

    def resize_crop(self, image: Any) -> Any:
        """Resize (the shorter side, or both with ``squash``) and centre-crop a PIL image or 8-bit pixels ``(..., 3, H, W)``.

        The geometric head of the recipe, on the CPU's PIL images and on
        tensors alike (the GPU decoder's, on the GPU), with torchvision's
        functions and antialiasing.
        """
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        size = [self.resize, self.resize] if self.resize_mode == "squash" else [self.resize]
        image = F.resize(image, size, interpolation=InterpolationMode(self.interpolation), antialias=True)
        return F.center_crop(image, [self.crop])

    def normalize(self, pixels: Any) -> Any:
        """Scale, reorder the channels of and normalise 8-bit pixels ``(..., 3, H, W)``: the float32 tail of the recipe.

        ``ToTensor``'s ``/ 255`` (unless *pixel_range* is 255), the channel
        flip for ``BGR``, then ``Normalize``'s ``(x - mean) / std``: the
        operations and bits of torchvision's, in float32, on the pixels' device.
        """
        import torch
        from torchvision.transforms import functional as F

        if self.pixel_range == 255:
            pixels = pixels.to(torch.float)  # 8-bit values as they are, exactly
        else:
            pixels = F.convert_image_dtype(pixels, torch.float)
        if self.channel_order == "BGR":
            pixels = pixels.flip(-3)
        mean, std = _normalization(tuple(self.mean), tuple(self.std), pixels.device)
        return (pixels - mean) / std

    def _looked_up(self, image: Any) -> Any:
        """:meth:`normalize` of an 8-bit RGB PIL image, by table: the same bits in one pass.

        Every output value is :meth:`normalize` of one 8-bit value of one
        channel, and float32 arithmetic gives the same bits for the same
        operands wherever they sit in a tensor; so the 3 x 256 possible values
        are computed once (:func:`_lookup_table`) and each pixel is looked up.
        That replaces the HWC -> CHW copy, the float conversion, the scaling,
        the copy ``Normalize`` makes and its two passes with one lookup per value.
        """
        import numpy as np
        import torch

        table = _lookup_table(tuple(self.mean), tuple(self.std), self.pixel_range, self.channel_order)
        pixels = np.asarray(image)  # (H, W, 3) uint8
        out = torch.empty((3, *pixels.shape[:2]), dtype=torch.float)
        values = out.numpy()
        # normalize() flips after scaling: output channel k holds input channel 2 - k.
        sources = (2, 1, 0) if self.channel_order == "BGR" else (0, 1, 2)
        for k, source in enumerate(sources):
            np.take(table[k], pixels[:, :, source], out=values[k])
        return out

    @classmethod
    def of_weights(cls, weights: Any) -> Preprocessing:
        """The preprocessing of torchvision weights (their ``transforms()``); ImageNet's for ``None``."""
        if weights is None:
            return cls(resize=256, crop=224)
        preset = weights.transforms()
        return cls(
            resize=int(preset.resize_size[0]),
            crop=int(preset.crop_size[0]),
            mean=tuple(float(m) for m in preset.mean),
            std=tuple(float(s) for s in preset.std),
            interpolation=preset.interpolation.value,
        )

    def attrs(self) -> dict[str, Any]:
        """The store attributes that record this preprocessing.

        ``channel_order``, ``pixel_range`` and ``resize_mode`` are written only
        when they are not the default (RGB, [0, 1], shorter side), so that
        stores made before they existed keep their identity.
        """
        attrs = {
            "image_size": self.crop,
            "resize": self.resize,
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }
        if self.channel_order != "RGB":
            attrs["channel_order"] = self.channel_order
        if self.pixel_range != 1:
            attrs["pixel_range"] = self.pixel_range
        if self.resize_mode != "shorter":
            attrs["resize_mode"] = self.resize_mode
        if self.jpeg != "exact":
            attrs["jpeg"] = self.jpeg
        return attrs

    def with_image_size(self, size: int) -> Preprocessing:
        """The same preprocessing at another crop size, keeping the resize/crop ratio."""
        return replace(self, resize=round(size * self.resize / self.crop), crop=size)

    def describe(self) -> str:
        """One line, e.g. ``resize 256 (bilinear), crop 224, RGB in [0, 1], mean (...) std (...)``."""
        return (
            f"resize {'to ' if self.resize_mode == 'squash' else ''}{self.resize} ({self.interpolation}), crop {self.crop}, {self.channel_order} in "
            f"[0, {self.pixel_range}], mean {tuple(self.mean)} std {tuple(self.std)}"
            + (f", JPEG {self.jpeg} decode" if self.jpeg != "exact" else "")
        )


@functools.lru_cache(maxsize=16)
def _lookup_table(mean: tuple[float, ...], std: tuple[float, ...], pixel_range: int, channel_order: str) -> Any:
    """``table[k, v]``: output channel *k* of :meth:`Preprocessing.normalize` where its source channel holds *v*.

    Computed by :meth:`Preprocessing.normalize` itself, on one row per channel
    holding 0..255 (every channel the same, so the BGR flip only says which
    input channel each output channel reads: :meth:`Preprocessing._looked_up`).
    """
    import torch

    ramp = torch.arange(256, dtype=torch.uint8).expand(3, 1, 256).contiguous()
    recipe = Preprocessing(
        resize=1, crop=1, mean=mean, std=std, pixel_range=pixel_range, channel_order=channel_order
    )
    return recipe.normalize(ramp).reshape(3, 256).numpy()


@functools.lru_cache(maxsize=16)
def _normalization(mean: tuple[float, ...], std: tuple[float, ...], device: Any) -> tuple[Any, Any]:
    """*mean* and *std* as float32 ``(C, 1, 1)`` tensors on *device*, made once.

    Made once because ``F.normalize`` makes and checks them for every call,
    which on a GPU waits for the work queued before it.
    """
    import torch

    std_values = torch.tensor(std, dtype=torch.float)
    if (std_values == 0).any():
        raise ValueError("std evaluated to zero after conversion to torch.float32, leading to division by zero.")
    return (
        torch.tensor(mean, dtype=torch.float).view(-1, 1, 1).to(device),
        std_values.view(-1, 1, 1).to(device),
    )


# Keras applications' preprocess_input(mode='caffe') (VGG16, VGG19, ResNet50):
# RGB -> BGR, ImageNet's mean pixel subtracted, no scaling.
CAFFE_PREPROCESSING = {
    "channel_order": "BGR",
    "pixel_range": 255,
    "mean": (103.939, 116.779, 123.68),
    "std": (1.0, 1.0, 1.0),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def parse_floats(text: str | Any, name: str) -> tuple[float, ...]:
    """``'0.5,0.5,0.5'`` (or a sequence of numbers) as a tuple of floats; *name* is the option, for the message."""
    values = text.replace(" ", "").split(",") if isinstance(text, str) else text
    try:
        parsed = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        parsed = ()
    if not parsed or not all(math.isfinite(v) for v in parsed):
        raise ConfigError(message(option(name), allowed="comma-separated numbers, e.g. 0.485,0.456,0.406", got=text))
    return parsed


@dataclass(frozen=True)
class PreprocessingOptions:
    """Changes to the weights' own preprocessing; ``None`` keeps the weights' value.

    Parameters
    ----------
    resize : int, optional
        Shorter side after resizing.
    crop : int, optional
        Centre-crop size (the input size).  Without *resize*, the resize stays
        the weights' own (use ``image_size`` to scale both).
    mean, std : tuple of float, optional
        One value per channel (or one for all channels).
    interpolation : str, optional
        One of :data:`INTERPOLATIONS`.
    channel_order : str, optional
        One of :data:`CHANNEL_ORDERS`.
    pixel_range : int, optional
        One of :data:`PIXEL_RANGES`.
    resize_mode : str, optional
        One of :data:`RESIZE_MODES`.
    jpeg : str, optional
        One of :data:`JPEG_DECODES` (default ``exact``).

    Raises
    ------
    ConfigError
        When made with a value that is not allowed.
    """

    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    channel_order: str | None = None
    pixel_range: int | None = None
    resize_mode: str | None = None
    jpeg: str | None = None

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ConfigError(message(option(name), allowed="a positive integer (pixels)", got=value))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, parse_floats(value, name))
                if len(getattr(self, name)) not in (1, 3):
                    raise ConfigError(message(option(name), allowed="1 or 3 numbers (one per channel)", got=value))
        if self.jpeg == "exact":
            object.__setattr__(self, "jpeg", None)  # the default: the same request as leaving it out
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ConfigError(message(option("std"), allowed="positive numbers", got=self.std))
        for name, registry in (
            ("interpolation", INTERPOLATIONS),
            ("channel_order", CHANNEL_ORDERS),
            ("pixel_range", PIXEL_RANGES),
            ("resize_mode", RESIZE_MODES),
            ("jpeg", JPEG_DECODES),
        ):
            value = getattr(self, name)
            if value is not None and value not in registry:
                raise ConfigError(message(option(name), allowed=choices(registry), got=value))

    def given(self) -> dict[str, Any]:
        """The options that were set, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def apply(self, base: Preprocessing) -> Preprocessing:
        """*base* with every option that was set replaced.

        A single *mean* or *std* value applies to every channel.
        """
        changes = self.given()
        for name in ("mean", "std"):
            if name in changes and len(changes[name]) == 1:
                changes[name] = changes[name] * 3
        return replace(base, **changes)


def sidecar_path(weights_file: str | os.PathLike) -> Path:
    """``<weights file>.json``: where a weights file's own preprocessing is read from."""
    path = Path(weights_file)
    return path.with_name(path.name + ".json")


def read_sidecar(weights_file: str | os.PathLike) -> PreprocessingOptions:
    """The preprocessing a weights file brings with it, from its JSON sidecar.

    The sidecar ``<weights file>.json`` holds an object with any of the keys
    ``resize``, ``crop``, ``mean``, ``std``, ``interpolation``,
    ``channel_order``, ``pixel_range`` and ``resize_mode``, e.g.
    ``{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"}``.

    Returns
    -------
    PreprocessingOptions
        Empty when there is no sidecar.

    Raises
    ------
    WeightsError
        The sidecar is not valid JSON, not an object, has unknown keys or bad values.
    """
    path = sidecar_path(weights_file)
    if not path.is_file():
        return PreprocessingOptions()
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(
            message(f"the preprocessing sidecar '{path}' cannot be read as JSON ({exc})", hint="fix or remove it")
        ) from None
    allowed = [f.name for f in fields(PreprocessingOptions)]
    if not isinstance(content, Mapping) or set(content) - set(allowed):
        unknown = sorted(set(content) - set(allowed)) if isinstance(content, Mapping) else content
        raise WeightsError(
            message(
                f"the preprocessing sidecar '{path}'",
                allowed=f"a JSON object with the keys {', '.join(allowed)}",
                got=unknown,
            )
        )
    try:
        return PreprocessingOptions(**content)
    except ConfigError as exc:
        raise WeightsError(message(f"the preprocessing sidecar '{path}' has a bad value ({exc})", hint="fix it")) from None

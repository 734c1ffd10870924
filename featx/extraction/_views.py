"""Augmented views of each image, made inside the batched forward pass, and how their features are reduced.

``extract --views SPEC`` runs every image through the network several times,
as several *views*, and ``--views-reduce`` says what is stored:

- ``mean`` (the default): one row per image, the mean of its views' pooled
  features (test-time averaging);
- ``none``: one row per image too, but the features of every view side by side:
  a layer of width D is stored as ``V * D`` columns, view-major (columns
  ``[v*D:(v+1)*D]`` are view ``v``), and its feature dataset has the attribute
  ``views = V``.  Ids, labels and splits stay per image, so a join or a split
  never separates the views of an image.

The views (:data:`VIEWS`), all at the preprocessing's crop size ``C``:

``flip``
    The preprocessed image (resize, centre crop ``C``) and its horizontal mirror: 2 views.
``tencrop``
    ``torchvision.transforms.TenCrop(C)`` of the *central square* of the resized
    image: the image is resized as usual (shorter side to ``R``) and
    centre-cropped to ``S x S``, ``S = max(R, C)``, instead of ``C x C``; the
    views are its four corners and centre at ``C x C`` (top left, top right,
    bottom left, bottom right, centre), then the same five crops of the
    mirrored square (TenCrop's order and pixels): 10 views.
``multiscale``
    The same ``S x S`` square resized (on the normalised float tensor, the
    preprocessing's interpolation, antialiased) to sides ``C``, ``S`` and
    ``round(S * S / C)`` and centre-cropped to ``C``: the whole square, the
    usual view, and a closer one (for 256/224: sides 224, 256, 293): 3 views
    (which coincide when the resize is not larger than the crop).
``random:N``
    (``random:N:SEED``) ``N`` random resized crops of the ``S x S`` square (area 25 % to 100 %,
    aspect ratio 3/4 to 4/3, as torchvision's ``RandomResizedCrop`` draws
    them, resized to ``C``), each mirrored with probability 1/2.  The draws of
    an image come from a generator seeded with ``SEED`` (default 0, recorded:
    ``random:8`` is recorded as ``random:8:0``) and the image's id, so an image's views are the same in every run, batch, engine
    and incremental update.

The decoding workers make the *base* tensor (:func:`decode_preprocessing`:
the usual crop for ``flip``, the ``S x S`` square for the others, on the CPU or
the GPU decoder alike); :func:`expand_views` turns a batch ``(B, 3, H, W)`` of
base tensors into ``(B * V, 3, C, C)``, the ``V`` views of an image next to
each other, and :func:`reduce_views` turns the ``(B * V, D)`` pooled features
back into one row per image.  :class:`~featx.extraction._network.TruncatedNetwork`
calls both, so the local engine, the Ray workers and
:class:`~featx.extraction.FeatureExtractor` compute the same views.

No torch at import: a spec is checked before anything heavy is loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ConfigError, message, option
from ._preprocessing import Preprocessing

__all__ = ["VIEWS", "VIEW_REDUCTIONS", "ViewSpec", "decode_preprocessing", "expand_views", "image_seed", "reduce_views"]

#: The views ``--views`` takes, and how many each makes (``random:N``: N).
VIEWS = {"none": 1, "flip": 2, "tencrop": 10, "multiscale": 3, "random:N": None}
#: What ``--views-reduce`` stores: the mean of the views, or every view.
VIEW_REDUCTIONS = ("mean", "none")
# random:N takes at most this many views (a batch of B images runs B * N through the network).
_MAX_RANDOM = 64
# RandomResizedCrop's draws for random:N: the share of the square's area and the aspect ratio.
_RANDOM_SCALE = (0.25, 1.0)
_RANDOM_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class ViewSpec:
    """Which views an image is run as and how their features are reduced.

    Attributes
    ----------
    views : str
        ``none``, ``flip``, ``tencrop``, ``multiscale`` or ``random:N:SEED``
        (the canonical spelling :meth:`parse` gives: the seed is part of it).
    reduce : str
        One of :data:`VIEW_REDUCTIONS`.
    """

    views: str = "none"
    reduce: str = "mean"

    @classmethod
    def parse(cls, views: Any = "none", reduce: Any = "mean") -> ViewSpec:
        """Check ``--views`` and ``--views-reduce`` (``None``: ``none``, ``mean``); ``random:N`` is ``random:N:0``.

        Raises
        ------
        ConfigError
            One line naming the allowed spellings.
        """
        text = "none" if views is None else views
        allowed = f"none, flip, tencrop, multiscale or random:N[:SEED] (N from 1 to {_MAX_RANDOM})"
        if not isinstance(text, str):
            raise ConfigError(message(option("views"), allowed=allowed, got=views))
        text = text.strip().lower()
        if text.startswith("random:"):
            parts = text.split(":")[1:]
            if not 1 <= len(parts) <= 2 or not all(p.isdigit() for p in parts) or not 1 <= int(parts[0]) <= _MAX_RANDOM:
                raise ConfigError(message(option("views"), allowed=allowed, got=views))
            text = f"random:{int(parts[0])}:{int(parts[1]) if len(parts) == 2 else 0}"
        elif text not in VIEWS:
            raise ConfigError(message(option("views"), allowed=allowed, got=views))
        reduce = "mean" if reduce is None else reduce
        if reduce not in VIEW_REDUCTIONS:
            raise ConfigError(message(option("views_reduce"), allowed="mean or none", got=reduce))
        return cls(text, reduce)

    @property
    def seed(self) -> int:
        """The seed of ``random:N:SEED`` (0 for the other views)."""
        return int(self.views.split(":")[2]) if self.kind == "random" else 0

    @property
    def active(self) -> bool:
        """Whether the images run as several views (not ``none``)."""
        return self.views != "none"

    @property
    def count(self) -> int:
        """V: the views of each image."""
        if self.kind == "random":
            return int(self.views.split(":")[1])
        return VIEWS[self.views]

    @property
    def kind(self) -> str:
        """``flip``, ``tencrop``, ``multiscale``, ``random`` or ``none``."""
        return self.views.split(":")[0]

    @property
    def columns(self) -> int:
        """How many blocks of D columns a layer is stored as: V with ``reduce='none'``, else 1."""
        return self.count if self.active and self.reduce == "none" else 1

    @property
    def needs_square(self) -> bool:
        """Whether the views are cut from the central square of the resized image rather than the usual crop."""
        return self.kind in ("tencrop", "multiscale", "random")

    def describe(self) -> str:
        """``"tencrop (10 views, mean)"``."""
        if not self.active:
            return "none"
        kept = "mean" if self.reduce == "mean" else "every view kept"
        return f"{self.views} ({self.count} views, {kept})"


def decode_preprocessing(preprocessing: Preprocessing, spec: ViewSpec) -> Preprocessing:
    """What the decoding workers make of each image: *preprocessing*, with the ``S x S`` square instead of the crop where the views need it."""
    if not spec.needs_square:
        return preprocessing
    return replace(preprocessing, crop=max(preprocessing.resize, preprocessing.crop))


def image_seed(seed: int, image_id: str) -> int:
    """The seed of one image's random views: its id and the recipe's seed, hashed (the same in every process)."""
    digest = hashlib.sha256(f"{seed}\0{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def expand_views(
    pixels: Any, spec: ViewSpec, crop: int, *, interpolation: str = "bilinear", ids: Sequence[str] | None = None
) -> Any:
    """A batch of base tensors ``(B, 3, H, W)`` as its views ``(B * V, 3, crop, crop)``, image by image.

    Rows ``b * V ... b * V + V - 1`` are the views of image ``b``, in the
    order of the module's description.  ``ids`` (one per image) seed
    ``random:N``.
    """
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    kind = spec.kind
    if kind == "flip":
        views = torch.stack([pixels, pixels.flip(-1)], dim=1)
    elif kind == "tencrop":
        # TenCrop's order and pixels: the five crops of the square, then the five of its mirror
        # (whose centre crop is one pixel off the centre crop's mirror when S - C is odd).
        mirrored = list(F.five_crop(pixels.flip(-1), [crop, crop]))
        views = torch.stack([*F.five_crop(pixels, [crop, crop]), *mirrored], dim=1)
    elif kind == "multiscale":
        side = pixels.shape[-1]
        mode = InterpolationMode(interpolation)
        sides = (crop, side, round(side * side / crop))
        views = torch.stack(
            [F.center_crop(F.resize(pixels, [s, s], interpolation=mode, antialias=True), [crop, crop]) for s in sides],
            dim=1,
        )
    elif kind == "random":
        if ids is None or len(ids) != len(pixels):
            raise ValueError(f"random views need one image id per image; got {None if ids is None else len(ids)} for {len(pixels)}")
        mode = InterpolationMode(interpolation)
        views = torch.stack([_random_views(image, spec, crop, mode, image_id) for image, image_id in zip(pixels, ids)])
    else:
        return pixels
    return views.reshape(-1, *views.shape[2:])


def _random_views(image: Any, spec: ViewSpec, crop: int, mode: Any, image_id: str) -> Any:
    """The ``N`` random resized crops (each mirrored with probability 1/2) of one base tensor ``(3, S, S)``."""
    import math

    import torch
    from torchvision.transforms import functional as F

    generator = torch.Generator().manual_seed(image_seed(spec.seed, image_id))
    height, width = image.shape[-2:]
    area = height * width
    log_ratio = (math.log(_RANDOM_RATIO[0]), math.log(_RANDOM_RATIO[1]))
    views = []
    for _ in range(spec.count):
        draws = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        # RandomResizedCrop's draw, with one attempt: the box clipped to the square.
        target = area * (_RANDOM_SCALE[0] + draws[0] * (_RANDOM_SCALE[1] - _RANDOM_SCALE[0]))
        ratio = math.exp(log_ratio[0] + draws[1] * (log_ratio[1] - log_ratio[0]))
        w = min(width, max(1, round(math.sqrt(target * ratio))))
        h = min(height, max(1, round(math.sqrt(target / ratio))))
        top = int(draws[2] * (height - h + 1))
        left = int(draws[3] * (width - w + 1))
        view = F.resized_crop(image, top, left, h, w, [crop, crop], interpolation=mode, antialias=True)
        flip = torch.rand(1, generator=generator, dtype=torch.float64).item() < 0.5
        views.append(view.flip(-1) if flip else view)
    return torch.stack(views)


def reduce_views(features: Any, spec: ViewSpec) -> Any:
    """Pooled features ``(B * V, D)`` as one row per image: ``(B, D)``, their mean, or ``(B, V * D)``, view-major."""
    count = spec.count
    grouped = features.reshape(-1, count, features.shape[-1])
    if spec.reduce == "mean":
        return grouped.mean(dim=1)
    return grouped.reshape(grouped.shape[0], -1)

"""When two configurations are "the same": the one comparison of identity attributes.

A store can be resumed or extended only by the configuration that made it, and
a classifier applies only to features made like its training features.  Both
questions compare recorded attributes with requested ones, here.

The store writer asks one object, a :class:`StoreIdentity`, whether the root
attributes recorded in a store (or in the parts of an unfinished run) were made
by the configuration requested now.  What makes features the same is the
extraction's business (its recipe); the store only records the identity's text
and asks it.  :class:`AttributeIdentity` is the identity of a writer whose
caller names the root attributes that must match.

Weights are compared by :func:`~featx.store.weights_identity`: a weights file
by its sha256, never by its name, which is only a label for people.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ._schema import attr_value
from ._weights import describe_weights, weights_identity

__all__ = ["IDENTITY_RTOL", "AttributeIdentity", "StoreIdentity", "identity_differences"]

# Relative tolerance of list values (mean, std): a float32 round trip (at most
# ~6e-8 relative) is the same value, any two real normalisations are not.
IDENTITY_RTOL = 1e-6


def _plain(value: Any) -> Any:
    """An attribute as a plain value; a tuple (requested ``mean=(...)``) compares as the list HDF5 returns."""
    value = attr_value(value)
    return list(value) if isinstance(value, tuple) else value


def _same(recorded: Any, requested: Any) -> bool:
    if isinstance(recorded, list) or isinstance(requested, list):
        if not (isinstance(recorded, list) and isinstance(requested, list)) or len(recorded) != len(requested):
            return False  # np.allclose would broadcast [0.5] against [0.5, 0.5, 0.5]
        try:
            a, b = np.asarray(recorded, dtype=np.float64), np.asarray(requested, dtype=np.float64)
        except (TypeError, ValueError):
            return recorded == requested  # lists of text
        return bool(np.allclose(a, b, rtol=IDENTITY_RTOL, atol=0.0))
    return recorded == requested


def identity_differences(
    recorded: Mapping[str, Any], requested: Mapping[str, Any], keys: Sequence[str]
) -> list[tuple[str, Any, Any]]:
    """The identity attributes that differ between what was recorded and what is requested.

    Parameters
    ----------
    recorded : mapping
        Attributes as stored (HDF5 attributes, or the provenance saved with a
        classifier); numpy and bytes values are read as plain Python values.
    requested : mapping
        The attributes of the configuration asked for now.
    keys : sequence of str
        The keys to compare, e.g. :data:`IDENTITY_KEYS` or :data:`LAYER_IDENTITY_KEYS`.
        A key missing on one side only is a difference; missing on both, not.

    Returns
    -------
    list of (key, recorded value, requested value)
        In the order of *keys*; empty when the configurations are the same.
        Lists (mean, std) are equal when they have the same length and agree
        element-wise within a relative :data:`IDENTITY_RTOL` (1e-6, the float32
        round trip).  ``weights`` is compared by
        :func:`~featx.store.weights_identity` (with ``weights_sha256``), so a
        renamed weights file is the same weights, and a difference is reported
        once, under ``weights``, as :func:`~featx.store.describe_weights` shows
        it.  Every other value must be equal.

    Examples
    --------
    >>> identity_differences({"seed": 0, "mean": [0.485]}, {"seed": 1, "mean": [0.48500001]}, ["seed", "mean"])
    [('seed', 0, 1)]
    >>> keys = ["weights", "weights_sha256"]
    >>> a, b = {"weights": "file:a.pt", "weights_sha256": "9f86"}, {"weights": "file:b.pt", "weights_sha256": "9f86"}
    >>> identity_differences(a, b, keys)  # a renamed weights file
    []
    """
    differences = []
    for key in keys:
        if key == "weights_sha256" and "weights" in keys:
            continue  # part of the weights' identity, compared with them
        have, want = _plain(recorded.get(key)), _plain(requested.get(key))
        if key == "weights" and isinstance(have, str) and have and isinstance(want, str) and want:
            have_sha, want_sha = _plain(recorded.get("weights_sha256")), _plain(requested.get("weights_sha256"))
            if weights_identity(have, have_sha) != weights_identity(want, want_sha):
                differences.append((key, describe_weights(have, have_sha), describe_weights(want, want_sha)))
            continue
        if not _same(have, want):
            differences.append((key, have, want))
    return differences


class StoreIdentity(Protocol):
    """How features are made, as the store writer sees it: opaque text, and a comparison.

    The writer records :meth:`to_json` as the root attribute ``recipe`` of the
    store and of its part files, and asks :meth:`differences` whether what a
    store or its parts recorded was made the same way.  The data fingerprint
    (which images) is not part of it: the writer compares that itself, and
    updates a complete store whose images changed.
    """

    def to_json(self) -> str | None:
        """The identity as text, written as the root attribute ``recipe`` (None: no such attribute)."""
        ...

    def differences(self, recorded: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
        """``(key, recorded value, requested value)`` of each difference; empty when made the same way.

        Parameters
        ----------
        recorded : mapping
            The root attributes of a store file or of a part file, as HDF5
            returns them (a store written without an identity has no ``recipe``).
        """
        ...


@dataclass(frozen=True)
class AttributeIdentity:
    """An identity by root attributes: the values of *keys* in *attrs* must be the ones recorded.

    For writers whose caller has no recipe (a tool that writes features of its
    own): no ``recipe`` attribute is written, and :func:`identity_differences`
    compares the keys.

    Parameters
    ----------
    attrs : mapping
        The attributes requested now (usually the writer's ``meta``).
    keys : sequence of str
    """

    attrs: Mapping[str, Any]
    keys: tuple[str, ...]

    def to_json(self) -> None:
        return None

    def differences(self, recorded: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
        return identity_differences(recorded, self.attrs, self.keys)

"""A state dict in torch's legacy format is named as such, with the one-time conversion (issue 24, item 10).

Measured before: torchvision's own ``resnet18-5c106cde.pth`` was refused with
"it must be a state dict saved with torch.save(model.state_dict(), path)",
which it is.
"""

from __future__ import annotations

import argparse
import io
import tarfile

import pytest
import torch

from featx.errors import WeightsError
from featx.extraction._weights import read_torch_state_dict


def _expected(path) -> str:
    target = path.with_suffix(".converted.pth")
    return (
        f"'{path}' is in torch's legacy serialization format (before torch 1.6, not a zip), which "
        "torch.load(weights_only=True) refuses to read: its pickle could run code; if you trust the file, convert "
        f"it once: python -c \"import torch; torch.save(torch.load('{path}', weights_only=False), '{target}')\" "
        f"and pass weights_file '{target}'"
    )


def test_the_legacy_tar_format_is_named_with_its_conversion(tmp_path):
    path = tmp_path / "old.pth"
    with tarfile.open(path, "w") as tar:  # torch before 0.4 wrote a tar of storages, tensors and a pickle
        info = tarfile.TarInfo("storages")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(WeightsError) as caught:
        read_torch_state_dict(path)
    assert str(caught.value) == _expected(path)


def test_a_legacy_pickle_that_weights_only_refuses_is_named_too(tmp_path):
    path = tmp_path / "resnet18-5c106cde.pth"
    torch.save({"fc.bias": torch.zeros(2), "args": argparse.Namespace(lr=0.1)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(WeightsError) as caught:
        read_torch_state_dict(path)
    assert str(caught.value) == _expected(path)


def test_the_same_objects_in_todays_format_keep_the_usual_message(tmp_path):
    path = tmp_path / "new.pth"
    torch.save({"fc.bias": torch.zeros(2), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(WeightsError, match="it holds pickled Python objects other than tensors"):
        read_torch_state_dict(path)


def test_a_plain_legacy_state_dict_still_loads(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"fc.bias": torch.arange(3.0)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(read_torch_state_dict(path)["fc.bias"], torch.arange(3.0))

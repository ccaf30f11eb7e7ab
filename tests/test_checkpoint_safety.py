"""Checkpoints whose declared sizes exceed what the file holds are refused before anything is allocated;
shape mismatches with the model are refused before anything is copied."""

from __future__ import annotations

import argparse
import io
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.core import checkpoints
from harness.core.checkpoints import CheckpointError, load_container, load_strict

BIG = 16_000_000  # declared float32 elements: 64 MB, from files of a few KB


def _small_checkpoint(legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(10)}, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _declare(pickle_bytes: bytes, storage_numel: int, shape_numel: int) -> bytes:
    """The pickle of {"w": zeros(10)} with the storage's element count and the tensor's shape changed."""
    old_storage, old_shape = b"cpuq\x06K\x0a", b"K\x00K\x0a\x85"
    assert pickle_bytes.count(old_storage) == 1 and pickle_bytes.count(old_shape) == 1
    return (pickle_bytes.replace(old_storage, b"cpuq\x06J" + struct.pack("<i", storage_numel))
            .replace(old_shape, b"K\x00J" + struct.pack("<i", shape_numel) + b"\x85"))


def _rewrite_zip(path: Path, storage_numel: int, shape_numel: int, deflated_zeros: int | None = None) -> Path:
    """A torch zip checkpoint with a rewritten pickle; `deflated_zeros` replaces the tensor's record with that
    many zero bytes, deflated (a tiny file whose record unpacks to gigabytes)."""
    src = zipfile.ZipFile(io.BytesIO(_small_checkpoint()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                out.writestr(info.filename, _declare(data, storage_numel, shape_numel))
            elif info.filename.endswith("/data/0") and deflated_zeros is not None:
                entry = zipfile.ZipInfo(info.filename)
                entry.compress_type = zipfile.ZIP_DEFLATED
                chunk = bytes(1 << 20)
                with out.open(entry, "w", force_zip64=True) as f:
                    for start in range(0, deflated_zeros, len(chunk)):
                        f.write(chunk[:deflated_zeros - start])
            else:
                out.writestr(info.filename, data)
    return path


@pytest.fixture
def no_torch_load(monkeypatch):
    """Fail the test if torch.load (which allocates every storage it is told about) is ever reached."""
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called on a file that should have been refused first")

    monkeypatch.setattr(checkpoints.torch, "load", refuse)


def test_deflated_record_that_unpacks_to_64_mb_is_refused_before_loading(tmp_path, no_torch_load):
    path = _rewrite_zip(tmp_path / "bomb.pth", BIG, BIG, deflated_zeros=4 * BIG)
    assert path.stat().st_size < 200_000
    with pytest.raises(CheckpointError) as err:
        load_container(path)
    message = str(err.value)
    assert message.startswith(f"{path}: its entries declare 64,000,") and "refused before loading" in message


def test_storage_declared_larger_than_its_record_is_refused(tmp_path, no_torch_load):
    path = _rewrite_zip(tmp_path / "declared.pth", BIG, BIG)
    with pytest.raises(CheckpointError, match=r"declared\.pth: storage 0 declares 64,000,000 bytes but the file "
                                              r"holds 40 for it; refused before loading"):
        load_container(path)


def test_legacy_checkpoint_declaring_more_than_it_holds_is_refused(tmp_path, no_torch_load):
    data = _small_checkpoint(legacy=True)
    data = data.replace(b"K\x0a", b"J" + struct.pack("<i", BIG))  # the storage's element count and the shape
    path = tmp_path / "legacy.pth"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"legacy\.pth: its tensors declare 64,000,000 bytes but only \d+ "
                                              r"follow; refused before loading"):
        load_container(path)


def test_tensor_larger_than_its_storage_is_refused(tmp_path, no_torch_load):
    path = _rewrite_zip(tmp_path / "view.pth", 10, BIG)  # a 10-element storage viewed as BIG elements
    with pytest.raises(CheckpointError, match=r"view\.pth: not a readable torch checkpoint"):
        load_container(path)


@pytest.mark.parametrize("legacy", [False, True])
def test_real_checkpoints_still_load(tmp_path, legacy):
    container = {"model": {"w": torch.randn(3, 4), "view": torch.arange(12.0)[2:8]},
                 "opt": argparse.Namespace(lr=0.1, data_name="coco_precomp"), "epoch": 3}
    path = tmp_path / "model_best.pth"
    torch.save(container, path, _use_new_zipfile_serialization=not legacy)
    loaded = load_container(path)
    assert loaded["epoch"] == 3 and loaded["opt"].data_name == "coco_precomp"
    torch.testing.assert_close(loaded["model"]["w"], container["model"]["w"])
    torch.testing.assert_close(loaded["model"]["view"], torch.arange(2.0, 8.0))


def test_shape_mismatch_is_refused_with_key_and_shapes_before_copying(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.ones_like(v) for k, v in model.state_dict().items()}
    state["1.weight"] = torch.ones(2, 300)
    with pytest.raises(CheckpointError) as err:
        load_strict(model, state, path=tmp_path / "ck.pth", part="model")
    message = str(err.value)
    assert "ck.pth" in message and "1.weight: file (2, 300) vs model (2, 3)" in message
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])  # nothing was copied, not even the keys that fit

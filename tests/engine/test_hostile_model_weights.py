"""Issue 15 #5 (weights): model.safetensors is checked from its header before any tensor is read.

Before the fix, float16 / float64 / int32 / bool weights were converted silently (bool weights
gave all-zero cells), and a header declaring far more data than the file holds reached the
safetensors reader unchecked.
"""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.checkpoint import read_weights_header
from engine.errors import ModelError
from engine.model import PerturbModel

TENSOR = "autoencoder.log_theta"


@pytest.fixture()
def model_dir(tiny_model_dir, tmp_path):
    dest = tmp_path / "m"
    shutil.copytree(tiny_model_dir, dest)
    return dest


def _rewrite(folder, change):
    path = folder / "model.safetensors"
    state = load_file(str(path))
    change(state)
    save_file(state, str(path), metadata={"format": "perturb-studio-model"})


PAD = b"\0" * 2_000_000      # larger than the tiny ensemble's weights: read_config lets it pass


def _raw(folder, header: dict, data: bytes = b"", length: int | None = None):
    text = json.dumps(header).encode()
    n = len(text) if length is None else length
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", n) + text + data)


@pytest.mark.parametrize("dtype, shown", [
    (torch.float16, "float16"), (torch.bfloat16, "bfloat16"), (torch.float64, "float64"),
    (torch.int32, "int32"), (torch.bool, "bool"), (torch.uint8, "uint8"),
])
def test_weights_that_are_not_float32_are_refused_naming_the_tensor(model_dir, dtype, shown):
    _rewrite(model_dir, lambda s: s.__setitem__(TENSOR, s[TENSOR].to(dtype)))
    with pytest.raises(ModelError, match=rf"tensor {TENSOR} is stored as {shown}; Perturb "
                                         r"Studio weights must be float32"):
        PerturbModel.load(model_dir, device="cpu")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(model_dir, value):
    def poison(state):
        state["members.0.net.backbone.inp.weight"][0, 0] = value
    _rewrite(model_dir, poison)
    with pytest.raises(ModelError, match="tensor members.0.net.backbone.inp.weight holds NaN or infinite"):
        PerturbModel.load(model_dir, device="cpu")


def test_huge_header_length_is_refused_without_reading(model_dir):
    _raw(model_dir, {"__metadata__": {}}, PAD, length=1 << 62)
    with pytest.raises(ModelError, match=r"not a readable safetensors file \(its header claims "
                                         r"4,611,686,018,427,387,904 bytes"):
        PerturbModel.load(model_dir, device="cpu")


def test_declared_shape_far_larger_than_the_file_is_refused(model_dir):
    header = {TENSOR: {"dtype": "F32", "shape": [10**12], "data_offsets": [0, 4 * 10**12]}}
    _raw(model_dir, header, b"\0" * 16)
    with pytest.raises(ModelError, match=rf"entry of tensor {TENSOR} is malformed or lies "
                                         "beyond the end of the file"):
        read_weights_header(model_dir / "model.safetensors")


def test_byte_range_that_does_not_fit_the_shape_is_refused(model_dir):
    state = load_file(str(model_dir / "model.safetensors"))
    header, data, offset = {}, b"", 0
    for name, t in sorted(state.items()):
        raw = t.numpy().tobytes()
        size = 4 if name == TENSOR else len(raw)          # log_theta: 4 bytes for 60 values
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        data += raw[:size]
        offset += size
    _raw(model_dir, header, data)
    with pytest.raises(ModelError, match=rf"tensor {TENSOR} declares 4 bytes for shape \(60,\)"):
        PerturbModel.load(model_dir, device="cpu")


@pytest.mark.parametrize("content, match", [
    (struct.pack("<Q", 5) + b"{nope" + PAD, "its header is not valid JSON"),
    (struct.pack("<Q", 2) + b"[]" + PAD, "its header is not a JSON object"),
    (struct.pack("<Q", 30) + b'{"x": {"dtype": "F32"}}       ' + PAD,
     "the entry of tensor x is malformed"),
])
def test_garbage_files_are_refused(model_dir, content, match):
    (model_dir / "model.safetensors").write_bytes(content)
    with pytest.raises(ModelError, match=match):
        PerturbModel.load(model_dir, device="cpu")


def test_file_shorter_than_a_header_is_refused(model_dir):
    (model_dir / "model.safetensors").write_bytes(b"\1\0")
    with pytest.raises(ModelError, match=r"not a readable safetensors file \(only 2 bytes\)"):
        read_weights_header(model_dir / "model.safetensors")


def test_trailing_bytes_are_refused(model_dir):
    with open(model_dir / "model.safetensors", "ab") as f:
        f.write(b"\0" * 1000)
    with pytest.raises(ModelError, match=r"its tensors cover [\d,]+ of the [\d,]+ data bytes"):
        PerturbModel.load(model_dir, device="cpu")


def test_missing_and_unexpected_tensors_are_named(model_dir):
    def rename(state):
        state["net.extra"] = state.pop(TENSOR)
    _rewrite(model_dir, rename)
    with pytest.raises(ModelError, match=rf"missing tensors \['{TENSOR}'\], unexpected tensors "
                                         r"\['net.extra'\]"):
        PerturbModel.load(model_dir, device="cpu")


def test_intact_weights_still_load_and_generate(model_dir):
    model = PerturbModel.load(model_dir, device="cpu")
    from engine import Condition

    cells = model.generate(Condition.parse("T", "A", "CRISPRa"), 8, seed=0)
    assert cells.layers["counts"].sum() > 0

"""Test inputs and helpers shared by the test modules."""

from __future__ import annotations

import ctypes
import math
import os
import struct
import zlib
from ctypes import POINTER, byref, c_uint8, c_void_p
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

import recon
from recon import abi

lib = abi.lib()

ROOT = Path(__file__).resolve().parents[3]
HEADER = ROOT / "include" / "recon.h"

STEM = "ckpts/ss_dec_conv3d_tiny_fp16"  # the checkpoint the broken copies alter
# What the tiny model loads, in recon_model_network's order: pipeline.json's models by key, then
# the image encoder (pipeline.json's image_cond_model). recon runs all of them.
TINY_NETWORKS = [
    ("slat_decoder_gs", "SLatGaussianDecoder", "ckpts/slat_dec_gs_swin8_tiny_fp16"),
    ("slat_decoder_mesh", "SLatMeshDecoder", "ckpts/slat_dec_mesh_swin8_tiny_fp16"),
    ("slat_decoder_rf", "SLatRadianceFieldDecoder", "ckpts/slat_dec_rf_swin8_tiny_fp16"),
    ("slat_flow_model", "SLatFlowModel", "ckpts/slat_flow_img_dit_tiny_fp16"),
    ("sparse_structure_decoder", "SparseStructureDecoder", STEM),
    ("sparse_structure_flow_model", "SparseStructureFlowModel", "ckpts/ss_flow_img_dit_tiny_fp16"),
    ("image_cond_model", "DinoVisionTransformer", "ckpts/dinov2_tiny"),
]

# A 4x4 red RGBA PNG (bindings/c/testdata/red_4x4.png). It is fully opaque, which preprocessing
# refuses without background removal (remove_background="never", v1 structs, NULL params): runs
# with it either fail that way, turn preprocessing off, or remove its background.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000004000000040806000000a9f19e7e"
    "000000124944415478da63f8cfc0f01f1933902e00003c401fe11af3a5480000000049454e44ae426082")


def make_cutout(side: int = 64) -> np.ndarray:
    """An RGBA cut-out: a shaded disc on a transparent background, uint8 [side, side, 4]."""
    y, x = np.mgrid[0:side, 0:side]
    r = side / 2 - 0.5
    image = np.empty((side, side, 4), np.uint8)
    image[..., 0] = np.clip(40 + 3 * x, 0, 255)
    image[..., 1] = np.clip(200 - 2 * y, 0, 255)
    image[..., 2] = 120
    image[..., 3] = np.where((x - r) ** 2 + (y - r) ** 2 < (0.375 * side) ** 2, 255, 0)
    return image


def encode_png(rgba: np.ndarray) -> bytes:
    """`rgba` (uint8 [H, W, 4]) as PNG bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    h, w = rgba.shape[:2]
    rows = b"".join(b"\0" + rgba[i].tobytes() for i in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def make_photo(width: int = 80, height: int = 60) -> np.ndarray:
    """An RGB photo (no alpha at all): a bright disc on a dark background, uint8 [H, W, 3]."""
    y, x = np.mgrid[0:height, 0:width]
    inside = (x - width // 2) ** 2 + (y - height // 2) ** 2 < 300
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = np.where(inside, 230, 20)
    image[..., 1] = np.where(inside, 115, 10)
    image[..., 2] = (x * 3).astype(np.uint8)
    return image


def write_tiny_birefnet(out: Path) -> Path:
    """Writes the tiny BiRefNet of tests/fixtures/birefnet_tiny (its README.md: the weights are
    not committed, the recipe is) into `out`: model.safetensors + recon_config.json, the same
    bytes bindings/c/test_abi.c writes. Returns `out`."""
    recipe = ROOT / "tests" / "fixtures" / "birefnet_tiny"
    rules: List[Tuple[str, List[int], float, float]] = []
    for line in (recipe / "layout.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            fields = line.split("\t")
            rules.append((fields[0], [int(d) for d in fields[1].split(",")], float(fields[2]),
                          float(fields[3])))
    entries, offset = [], 0
    for name, shape, _, _ in rules:
        size = 4 * math.prod(shape)
        entries.append(f'"{name}":{{"dtype":"F32","shape":[{",".join(map(str, shape))}],'
                       f'"data_offsets":[{offset},{offset + size}]}}')
        offset += size
    header = ("{" + ",".join(entries) + "}").encode()
    header += b" " * (-len(header) % 8)
    out.mkdir(parents=True, exist_ok=True)
    root3 = np.sqrt(3.0)
    counter = 0  # splitmix64's state after `counter` draws from seed 1 is 1 + counter * gamma
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        for _, shape, mean, std in rules:
            total = math.prod(shape)
            for first in range(0, total, 1 << 20):
                n = min(1 << 20, total - first)
                with np.errstate(over="ignore"):
                    z = (np.uint64(1) + np.uint64(0x9E3779B97F4A7C15)
                         * np.arange(counter + 1, counter + n + 1, dtype=np.uint64))
                    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
                    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
                    z = z ^ (z >> np.uint64(31))
                u = (z >> np.uint64(40)).astype(np.float64) / 16777216.0 * 2.0 - 1.0
                f.write((std * u * root3 + mean).astype("<f4").tobytes())
                counter += n
    (out / "recon_config.json").write_bytes((recipe / "recon_config.json").read_bytes())
    return out


CUTOUT = make_cutout()  # the generations' input, as raw RGBA pixels
PHOTO = make_photo()  # an RGB photo, which only background removal makes usable
CUTOUT_PNG = encode_png(CUTOUT)  # the same, encoded
# The test generations: few sampler steps (pipeline.json's 25 + 25 would take minutes on a CPU).
GEN_STEPS: Dict[str, Any] = {"sparse_structure_steps": 2, "slat_steps": 2}


def load_params(model: Any, device: int = abi.RECON_DEVICE_CPU) -> abi.LoadParams:
    p = abi.LoadParams()
    lib.recon_load_params_init(byref(p))
    p.model = os.fsencode(model)
    p.device = device
    p.offline = 1
    return p


def raw_load(params: Optional[abi.LoadParams], want_handle: bool = True,
             buf_len: int = 1024) -> Tuple[int, Optional[int], bytes]:
    """recon_load through ctypes: (status, handle or None, error message)."""
    handle = c_void_p()
    err = ctypes.create_string_buffer(buf_len) if buf_len else None
    st = lib.recon_load(byref(params) if params is not None else None,
                        byref(handle) if want_handle else None, err, buf_len)
    return st, handle.value, err.value if err is not None else b""


def png_image() -> abi.Image:
    img = abi.Image()
    lib.recon_image_init(byref(img))
    img.data = ctypes.cast(ctypes.c_char_p(PNG), POINTER(c_uint8))
    img.size = len(PNG)
    return img


def raw_run(model: recon.Model, images: Any, count: int, params: Any = None) -> int:
    """recon_run through ctypes; checks that the result pointer is untouched on failure."""
    sentinel = 0x5EED
    out = c_void_p(sentinel)
    st = lib.recon_run(model.handle, images, count, params, byref(out))
    if st != abi.RECON_OK:
        assert out.value == sentinel
    else:
        lib.recon_result_free(out.value)
    return st


def run_until(model: recon.Model, images: Any, stop: Tuple[int, int],
              **params: Any) -> List[Tuple[int, int, int]]:
    """Model.run stopped by its progress callback at the first report at or past `stop`
    (stage, step): a run that gets there passed every check of its arguments. Returns the
    reports; fails unless the run ended there, cancelled by the callback."""
    reports: List[Tuple[int, int, int]] = []

    def progress(stage: int, step: int, total: int) -> bool:
        reports.append((stage, step, total))
        return (stage, step) < stop
    with pytest.raises(recon.CancelledError) as info:
        model.run(images, progress=progress, **params)
    assert "progress callback" in info.value.message
    assert reports[-1][:2] >= stop
    return reports

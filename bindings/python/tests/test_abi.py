"""Tests of the recon C ABI through ctypes, and of the `recon` Python package over it.

    RECON_LIBRARY=target/release/librecon.so .venv/bin/python bindings/python/tests/test_abi.py

MODEL_DIR (default: tests/fixtures/model_tiny) is the tiny model; broken copies of it and the
exported files are made in a temporary directory. The generation tests run the tiny model on the
CPU with 2 + 2 sampler steps: Gaussians, mesh, progress, exports (GLB, PLY, OBJ), a run cancelled
from another thread and a run after it. The last line printed is "N passed, M failed" (parsed by
CI); the exit status is nonzero when M > 0. Plain unittest, no pytest needed.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import shutil
import struct
import sys
import tempfile
import threading
import time
import unittest
import zlib
from ctypes import POINTER, byref, c_uint8, c_void_p, sizeof
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bindings" / "python"))

import numpy as np  # noqa: E402

import recon  # noqa: E402
from recon import (  # noqa: E402
    RECON_ERR_CANCELLED, RECON_ERR_CHECKPOINT, RECON_ERR_DEVICE, RECON_ERR_FORMAT,
    RECON_ERR_INVALID_ARGUMENT, RECON_ERR_IO, RECON_ERR_NETWORK, RECON_ERR_UNSUPPORTED, RECON_OK)

MODEL_DIR = Path(os.environ.get("MODEL_DIR") or ROOT / "tests" / "fixtures" / "model_tiny")
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
HEADER = ROOT / "include" / "recon.h"

# A 4x4 red RGBA PNG (bindings/c/testdata/red_4x4.png). It is fully opaque, which preprocessing
# refuses (recon has no background removal yet): runs with it either fail that way or turn
# preprocessing off.
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


CUTOUT = make_cutout()  # the generations' input, as raw RGBA pixels
CUTOUT_PNG = encode_png(CUTOUT)  # the same, encoded
# The test generations: few sampler steps (pipeline.json's 25 + 25 would take minutes on a CPU).
GEN_STEPS = {"sparse_structure_steps": 2, "slat_steps": 2}

# sizeof on LP64, as bindings/c/test_abi.c prints and checks them.
C_SIZES = {"LoadParams": 40, "NetworkInfoStruct": 40, "Image": 40, "RunParams": 56,
           "Progress": 16, "Gaussians": 56, "Mesh": 48, "Camera": 96}

lib = recon.lib()


def raw_load(params: Optional[recon.LoadParams], want_handle: bool = True,
             buf_len: int = 1024) -> tuple[int, Optional[int], bytes]:
    """recon_load through ctypes: (status, handle or None, error message)."""
    handle = c_void_p()
    err = ctypes.create_string_buffer(buf_len) if buf_len else None
    st = lib.recon_load(byref(params) if params is not None else None,
                        byref(handle) if want_handle else None, err, buf_len)
    return st, handle.value, err.value if err is not None else b""


def load_params(model: Any, device: int = recon.RECON_DEVICE_CPU) -> recon.LoadParams:
    p = recon.LoadParams()
    lib.recon_load_params_init(byref(p))
    p.model = os.fsencode(model)
    p.device = device
    p.offline = 1
    return p


def png_image() -> recon.Image:
    img = recon.Image()
    lib.recon_image_init(byref(img))
    img.data = ctypes.cast(ctypes.c_char_p(PNG), POINTER(c_uint8))
    img.size = len(PNG)
    return img


class TestAbi(unittest.TestCase):
    tmp: Path
    model: recon.Model

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = Path(tempfile.mkdtemp(prefix="recon_test_abi_py."))
        cls.model = recon.Model(MODEL_DIR, device="cpu", offline=True)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.model.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------------

    def broken_model(self, name: str, *, pipeline_json: Optional[str] = None,
                     truncate_to: int = 0, garbage_header: bool = False,
                     replace: Optional[tuple[bytes, bytes]] = None) -> Path:
        """A copy of the tiny model in tmp/<name>, broken as asked."""
        dst = self.tmp / name
        shutil.copytree(MODEL_DIR, dst)
        if pipeline_json is not None:
            (dst / "pipeline.json").write_text(pipeline_json)
        weights = dst / f"{STEM}.safetensors"
        data = bytearray(weights.read_bytes())
        (header_len,) = struct.unpack("<Q", data[:8])
        header = slice(8, 8 + header_len)
        if garbage_header:
            data[header] = b"!" * header_len
        if replace:
            old, new = replace
            self.assertEqual(len(old), len(new))
            self.assertIn(old, data[header])
            data[header] = bytes(data[header]).replace(old, new, 1)
        if truncate_to:
            del data[truncate_to:]
        weights.write_bytes(bytes(data))
        return dst

    def assert_load_fails(self, source: Any, error: type, needle: str) -> str:
        with self.assertRaises(error) as cm:
            recon.Model(source, device="cpu", offline=True)
        self.assertIn(needle, cm.exception.message)
        return cm.exception.message

    def raw_run(self, images: Any, count: int, params: Any = None) -> int:
        """recon_run through ctypes; checks the result pointer is untouched on failure."""
        sentinel = 0x5EED
        out = c_void_p(sentinel)
        st = lib.recon_run(self.model.handle, images, count, params, byref(out))
        if st != RECON_OK:
            self.assertEqual(out.value, sentinel)
        else:
            lib.recon_result_free(out)
        return st

    # -- versions, statuses, layout ---------------------------------------------------------

    def test_versions(self) -> None:
        self.assertEqual(recon.abi_version(), recon.RECON_ABI_VERSION)
        self.assertEqual(lib.recon_abi_version(), 1)
        self.assertTrue(recon.version())
        self.assertEqual(recon.version(), lib.recon_version_string().decode())
        self.assertGreaterEqual(recon.cuda_device_count(), 0)

    def test_status_strings(self) -> None:
        texts = ["ok", "invalid argument", "I/O error", "network error", "malformed file",
                 "checkpoint does not match the network", "not supported by this build",
                 "cancelled", "out of memory", "device error", "internal error"]
        for code, text in enumerate(texts):
            self.assertEqual(recon.status_string(code), text)
        for code in (-1, 11, 1000, -2**31, 2**31 - 1):
            self.assertEqual(lib.recon_status_string(code), b"unknown status")

    def test_struct_layout(self) -> None:
        for name, size in C_SIZES.items():
            self.assertEqual(sizeof(getattr(recon, name)), size, name)
        self.assertEqual(recon.LoadParams.model.offset, 8)
        self.assertEqual(recon.LoadParams.log_callback.offset, 24)
        self.assertEqual(recon.RunParams.seed.offset, 8)
        self.assertEqual(recon.RunParams.progress_callback.offset, 40)
        self.assertEqual(recon.Image.data.offset, 8)
        self.assertEqual(recon.Image.stride.offset, 32)
        self.assertEqual(recon.NetworkInfoStruct.stem.offset, 32)

    @unittest.skipUnless(HEADER.exists(), "include/recon.h not generated")
    def test_bindings_cover_the_header(self) -> None:
        declared = set(re.findall(r"^[a-z].*?\b(recon_\w+)\(", HEADER.read_text(), re.M))
        self.assertEqual(declared, set(recon._SIGNATURES))
        for name, value in re.findall(r"^#define (RECON_\w+) (\S+)$", HEADER.read_text(), re.M):
            self.assertEqual(getattr(recon, name, None), float(value), name)
        for name, value in re.findall(r"^  (RECON_\w+) = (\d+),$", HEADER.read_text(), re.M):
            self.assertEqual(getattr(recon, name, None), int(value), name)

    def test_init_functions(self) -> None:
        lp = recon.LoadParams()
        lib.recon_load_params_init(byref(lp))
        self.assertEqual((lp.struct_size, lp.device, lp.model, lp.offline, lp.log_level),
                         (40, recon.RECON_DEVICE_AUTO, None, recon.RECON_OFFLINE_FROM_ENV,
                          recon.RECON_LOG_INFO))
        rp = recon.RunParams()
        lib.recon_run_params_init(byref(rp))
        self.assertEqual((rp.struct_size, rp.seed, rp.formats, rp.preprocess),
                         (56, 42, recon.RECON_FORMAT_GAUSSIANS | recon.RECON_FORMAT_MESH, 1))
        self.assertEqual(rp.slat_cfg_strength, recon.RECON_DEFAULT_CFG_STRENGTH)
        img = recon.Image()
        lib.recon_image_init(byref(img))
        self.assertEqual((img.struct_size, img.format, img.size),
                         (40, recon.RECON_IMAGE_ENCODED, 0))
        lib.recon_load_params_init(None)
        lib.recon_run_params_init(None)
        lib.recon_image_init(None)

    def test_null_handles(self) -> None:
        lib.recon_free(None)
        lib.recon_result_free(None)
        lib.recon_buffer_free(None)
        lib.recon_cancel(None)
        self.assertEqual(lib.recon_model_last_error(None), b"")
        self.assertEqual(lib.recon_model_pipeline_name(None), b"")
        self.assertEqual(lib.recon_model_device(None), recon.RECON_DEVICE_CPU)
        self.assertEqual(lib.recon_model_num_networks(None), 0)
        info = recon.NetworkInfoStruct(struct_size=sizeof(recon.NetworkInfoStruct))
        self.assertEqual(lib.recon_model_network(None, 0, byref(info)), RECON_ERR_INVALID_ARGUMENT)
        self.assertEqual(lib.recon_model_network(None, 0, None), RECON_ERR_INVALID_ARGUMENT)
        # Result accessors with a NULL result (test_generate checks them on a real one).
        self.assertEqual(lib.recon_result_last_error(None), b"")
        g = recon.Gaussians(struct_size=sizeof(recon.Gaussians))
        self.assertEqual(lib.recon_result_gaussians(None, byref(g)), RECON_ERR_INVALID_ARGUMENT)
        self.assertEqual(lib.recon_result_gaussians(None, None), RECON_ERR_INVALID_ARGUMENT)
        m = recon.Mesh(struct_size=sizeof(recon.Mesh))
        self.assertEqual(lib.recon_result_mesh(None, byref(m)), RECON_ERR_INVALID_ARGUMENT)
        self.assertEqual(lib.recon_result_num_cameras(None), 0)
        cam = recon.Camera(struct_size=sizeof(recon.Camera))
        self.assertEqual(lib.recon_result_camera(None, 0, byref(cam)), RECON_ERR_INVALID_ARGUMENT)
        path = os.fsencode(self.tmp / "never.glb")
        self.assertEqual(lib.recon_result_export(None, recon.RECON_EXPORT_GLB, path),
                         RECON_ERR_INVALID_ARGUMENT)
        self.assertEqual(lib.recon_result_export(None, recon.RECON_EXPORT_OBJ, None),
                         RECON_ERR_INVALID_ARGUMENT)
        self.assertFalse(os.path.exists(path))
        buf = c_void_p(0x5EED)
        self.assertEqual(lib.recon_result_export_buffer(None, recon.RECON_EXPORT_GLB, byref(buf)),
                         RECON_ERR_INVALID_ARGUMENT)
        self.assertEqual(buf.value, 0x5EED)
        self.assertEqual(lib.recon_result_export_buffer(None, recon.RECON_EXPORT_GLB, None),
                         RECON_ERR_INVALID_ARGUMENT)
        self.assertFalse(lib.recon_buffer_data(None))
        self.assertEqual(lib.recon_buffer_size(None), 0)
        # The Python wrapper refuses a closed result.
        result = recon.Result(None)  # type: ignore[arg-type]
        with self.assertRaises(ValueError):
            result.gaussians()

    # -- recon_load ---------------------------------------------------------------------------

    def test_load_null_arguments(self) -> None:
        st, handle, err = raw_load(None)
        self.assertEqual(st, RECON_ERR_INVALID_ARGUMENT)
        self.assertIn(b"recon_load_params", err)
        self.assertIsNone(handle)
        st, _, err = raw_load(load_params(MODEL_DIR), want_handle=False)
        self.assertEqual(st, RECON_ERR_INVALID_ARGUMENT)
        self.assertIn(b"out_model", err)
        self.assertEqual(lib.recon_load(None, None, None, 0), RECON_ERR_INVALID_ARGUMENT)
        p = load_params(MODEL_DIR)
        p.model = None
        st, handle, err = raw_load(p)
        self.assertEqual(st, RECON_ERR_INVALID_ARGUMENT)
        self.assertIsNone(handle)

    def test_load_bad_values(self) -> None:
        for field, value in [("device", -3), ("offline", 2), ("log_level", 5), ("log_level", -1),
                             ("model", b""), ("model", b"/dev/null")]:
            p = load_params(MODEL_DIR)
            setattr(p, field, value)
            st, handle, err = raw_load(p)
            self.assertEqual(st, RECON_ERR_INVALID_ARGUMENT, (field, value, err))
            self.assertTrue(err)
            self.assertIsNone(handle)
        with self.assertRaises(ValueError):
            recon.Model(MODEL_DIR, device="gpu")

    def test_load_struct_size(self) -> None:
        class Padded(ctypes.Structure):
            _fields_ = [("p", recon.LoadParams), ("tail", ctypes.c_uint8 * 64)]
        for size in (0, 4, sizeof(recon.LoadParams) - 8, sizeof(recon.LoadParams) + 8, 2**32 - 1):
            big = Padded()
            big.p = load_params(MODEL_DIR)
            big.p.struct_size = size
            handle, err = c_void_p(), ctypes.create_string_buffer(512)
            st = lib.recon_load(ctypes.cast(byref(big), POINTER(recon.LoadParams)), byref(handle),
                                err, len(err))
            self.assertEqual(st, RECON_ERR_INVALID_ARGUMENT, size)
            self.assertIn(b"struct_size", err.value)
            self.assertIsNone(handle.value)

    def test_error_buffer(self) -> None:
        buf = ctypes.create_string_buffer(b"X" * 63, 64)
        self.assertEqual(lib.recon_load(None, None, buf, 8), RECON_ERR_INVALID_ARGUMENT)
        self.assertEqual(len(buf.value), 7)  # truncated and NUL-terminated
        self.assertEqual(buf.raw[8:9], b"X")  # nothing written past the length
        buf = ctypes.create_string_buffer(b"X" * 63, 64)
        self.assertEqual(lib.recon_load(None, None, buf, 1), RECON_ERR_INVALID_ARGUMENT)
        self.assertEqual(buf.raw[:2], b"\0X")
        buf = ctypes.create_string_buffer(b"X" * 63, 64)
        self.assertEqual(lib.recon_load(None, None, buf, 0), RECON_ERR_INVALID_ARGUMENT)
        self.assertEqual(buf.raw[:1], b"X")
        self.assertEqual(lib.recon_load(None, None, None, 100), RECON_ERR_INVALID_ARGUMENT)

    def test_missing_directory(self) -> None:
        missing = self.tmp / "no_such_model_dir"
        err = self.assert_load_fails(missing, recon.IoError, "no_such_model_dir")
        st, _, raw = raw_load(load_params(self.tmp / "no_such_model_dir"))
        self.assertEqual(st, RECON_ERR_IO)
        self.assertEqual(raw.decode(), err)

    def test_malformed_pipeline_json(self) -> None:
        bad = self.broken_model("bad_pipeline",
                                pipeline_json='{"name": "TrellisImageTo3DPipeline",')
        self.assert_load_fails(bad, recon.FormatError, "pipeline.json")
        self.assertEqual(raw_load(load_params(bad))[0], RECON_ERR_FORMAT)

    def test_corrupt_safetensors(self) -> None:
        for name, kwargs in [("trunc_header", {"truncate_to": 100}),
                             ("trunc_data", {"truncate_to": 10000}),
                             ("trunc_5", {"truncate_to": 5}),
                             ("garbage_header", {"garbage_header": True})]:
            with self.subTest(name):
                bad = self.broken_model(name, **kwargs)
                self.assert_load_fails(bad, recon.FormatError, "safetensors")
                self.assertEqual(raw_load(load_params(bad))[0], RECON_ERR_FORMAT)

    def test_missing_tensor(self) -> None:
        bad = self.broken_model("missing_tensor",
                                replace=(b'"input_layer.bias"', b'"input_layer.biaz"'))
        self.assert_load_fails(bad, recon.CheckpointError, "input_layer.bias")
        self.assertEqual(raw_load(load_params(bad))[0], RECON_ERR_CHECKPOINT)

    def test_misshaped_tensor(self) -> None:
        bad = self.broken_model("misshaped_tensor", replace=(
            b'"input_layer.weight":{"dtype":"F32","shape":[12,8,',
            b'"input_layer.weight":{"dtype":"F32","shape":[8,12,'))
        self.assert_load_fails(bad, recon.CheckpointError, "input_layer.weight")

    def test_offline_hub(self) -> None:
        home = self.tmp / "hf_home"
        home.mkdir()
        saved = {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE")}
        try:
            os.environ["HF_HOME"] = str(home)
            os.environ.pop("HF_HUB_CACHE", None)
            self.assert_load_fails("someone/missing-repo", recon.NetworkError,
                                   "someone/missing-repo")
            os.environ["HF_HUB_OFFLINE"] = "1"  # offline from the environment
            with self.assertRaises(recon.NetworkError) as cm:
                recon.Model("someone/missing-repo@v1.0", device="cpu")
            self.assertEqual(cm.exception.status, RECON_ERR_NETWORK)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def test_invalid_device(self) -> None:
        with self.assertRaises(recon.DeviceError) as cm:
            recon.Model(MODEL_DIR, device=99)
        self.assertEqual(cm.exception.status, RECON_ERR_DEVICE)
        self.assertIn("99", cm.exception.message)
        self.assertEqual(raw_load(load_params(MODEL_DIR, device=99))[0], RECON_ERR_DEVICE)
        with recon.Model(MODEL_DIR, device="auto") as model:
            self.assertEqual(model.device, 0 if recon.cuda_device_count() else -1)

    def test_log_callback(self) -> None:
        received: list[tuple[int, str, Optional[int]]] = []

        def on_log(level: int, message: bytes, user_data: Optional[int]) -> None:
            received.append((level, message.decode(), user_data))
        callback = recon.LogCallback(on_log)
        p = load_params(MODEL_DIR)
        p.log_level = recon.RECON_LOG_DEBUG
        p.log_callback = callback
        p.log_user_data = 0xC0FFEE
        st, handle, err = raw_load(p)
        self.assertEqual(st, RECON_OK, err)
        lib.recon_free(handle)
        self.assertTrue(received)
        for level, message, user_data in received:
            self.assertIn(level, range(recon.RECON_LOG_ERROR, recon.RECON_LOG_DEBUG + 1))
            self.assertTrue(message)
            self.assertEqual(user_data, 0xC0FFEE)
        # Through the wrapper, with a level filter; an exception in the callback is contained.
        messages: list[str] = []
        with recon.Model(MODEL_DIR, device="cpu", log=lambda lvl, msg: messages.append(msg)):
            pass
        self.assertTrue(any("loaded" in m for m in messages), messages)
        with recon.Model(MODEL_DIR, device="cpu", log_level=recon.RECON_LOG_ERROR,
                         log=lambda lvl, msg: messages.append("unexpected")):
            pass
        self.assertNotIn("unexpected", messages)
        with recon.Model(MODEL_DIR, device="cpu", log=lambda lvl, msg: 1 / 0) as model:
            self.assertEqual(len(model.networks), len(TINY_NETWORKS))

    # -- a loaded model -------------------------------------------------------------------

    def test_model_info(self) -> None:
        m = self.model
        self.assertEqual(m.pipeline_name, "TrellisImageTo3DPipeline")
        self.assertEqual(m.device, recon.RECON_DEVICE_CPU)
        self.assertEqual(lib.recon_model_num_networks(m.handle), len(TINY_NETWORKS))
        self.assertEqual([(n.key, n.class_name, n.stem) for n in m.networks], TINY_NETWORKS)
        self.assertTrue(all(n.implemented for n in m.networks))
        self.assertTrue(all(n.num_elements > 0 for n in m.networks))
        info = recon.NetworkInfoStruct(struct_size=sizeof(recon.NetworkInfoStruct))
        self.assertEqual(lib.recon_model_network(m.handle, len(TINY_NETWORKS), byref(info)),
                         RECON_ERR_INVALID_ARGUMENT)
        self.assertIn("out of range", m.last_error)
        self.assertEqual(lib.recon_model_network(m.handle, 0, None), RECON_ERR_INVALID_ARGUMENT)

        class Padded(ctypes.Structure):
            _fields_ = [("info", recon.NetworkInfoStruct), ("tail", ctypes.c_uint8 * 64)]
        v1 = sizeof(recon.NetworkInfoStruct)
        for size in (0, 4, v1 - 8, v1 + 8):
            big = Padded()
            big.info.struct_size = size
            out = ctypes.cast(byref(big), POINTER(recon.NetworkInfoStruct))
            st = lib.recon_model_network(m.handle, 0, out)
            self.assertEqual(st, RECON_ERR_INVALID_ARGUMENT, size)
            self.assertIsNone(big.info.key)
            self.assertIn("struct_size", m.last_error)

    def test_run_argument_errors(self) -> None:
        m = self.model
        with self.assertRaises(recon.InvalidArgumentError):
            m.run([])
        with self.assertRaises(recon.InvalidArgumentError):
            m.run([b""])
        with self.assertRaises(recon.FormatError) as cm:
            m.run([b"this is not an image"])
        self.assertEqual(cm.exception.status, RECON_ERR_FORMAT)
        with self.assertRaises(recon.FormatError):
            m.run([PNG[:20]])
        with self.assertRaises(ValueError):
            m.run([np.zeros((4, 4, 2), np.uint8)])
        with self.assertRaises(TypeError):
            m.run([PNG], steps=3)  # not a recon_run_params field
        with self.assertRaises(TypeError):
            m.run(["a path is not an image"])
        # Raw calls: NULL pointers, counts, result pointer untouched.
        img = png_image()
        self.assertEqual(lib.recon_run(None, byref(img), 1, None, byref(c_void_p())),
                         RECON_ERR_INVALID_ARGUMENT)
        self.assertEqual(lib.recon_run(m.handle, byref(img), 1, None, None),
                         RECON_ERR_INVALID_ARGUMENT)
        self.assertEqual(self.raw_run(byref(img), 0), RECON_ERR_INVALID_ARGUMENT)
        self.assertEqual(self.raw_run(None, 1), RECON_ERR_INVALID_ARGUMENT)
        self.assertEqual(self.raw_run((recon.Image * 65)(*[png_image()] * 65), 65),
                         RECON_ERR_INVALID_ARGUMENT)
        # Raw pixels: short buffer, bad stride, zero width.
        pixels = (c_uint8 * 80)()
        raw = recon.Image()
        lib.recon_image_init(byref(raw))
        raw.format, raw.data, raw.width, raw.height = recon.RECON_IMAGE_RGB8, pixels, 4, 4
        for size, stride, width in [(47, 0, 4), (48, 11, 4), (48, 16, 4), (48, 0, 0)]:
            raw.size, raw.stride, raw.width = size, stride, width
            self.assertEqual(self.raw_run(byref(raw), 1), RECON_ERR_INVALID_ARGUMENT,
                             (size, stride, width))
        raw.format = 7
        self.assertEqual(self.raw_run(byref(raw), 1), RECON_ERR_INVALID_ARGUMENT)
        # recon_image.struct_size.
        for size in (0, 4, sizeof(recon.Image) - 8, sizeof(recon.Image) + 8):
            pair = (recon.Image * 2)(png_image(), png_image())
            pair[0].struct_size = size
            self.assertEqual(self.raw_run(pair, 1), RECON_ERR_INVALID_ARGUMENT, size)
            self.assertIn("struct_size", m.last_error)

    def test_run_bad_params(self) -> None:
        m = self.model
        for params, needle in [({"sparse_structure_cfg_strength": math.nan}, "cfg_strength"),
                               ({"slat_cfg_strength": math.inf}, "cfg_strength"),
                               ({"slat_cfg_strength": 101.0}, "cfg_strength"),
                               ({"formats": 8}, "formats"),
                               ({"formats": 0}, "format"),
                               ({"multi_image_mode": 2}, "multi_image_mode"),
                               ({"slat_steps": 1001}, "steps")]:
            with self.subTest(**params):
                with self.assertRaises(recon.InvalidArgumentError) as cm:
                    m.run([PNG], **params)
                self.assertIn(needle, cm.exception.message)

        class Padded(ctypes.Structure):
            _fields_ = [("p", recon.RunParams), ("tail", ctypes.c_uint8 * 64)]
        img = png_image()
        for size in (0, 4, sizeof(recon.RunParams) - 8, sizeof(recon.RunParams) + 8):
            big = Padded()
            lib.recon_run_params_init(byref(big.p))
            big.p.struct_size = size
            st = self.raw_run(byref(img), 1, ctypes.cast(byref(big), POINTER(recon.RunParams)))
            self.assertEqual(st, RECON_ERR_INVALID_ARGUMENT, size)
            self.assertIn("struct_size", m.last_error)

    def run_until(self, images: list, stop: tuple[int, int], **params: Any) -> list:
        """Model.run stopped by its progress callback at the first report at or past `stop`
        (stage, step): a run that gets there passed every check of its arguments. Returns the
        reports; fails unless the run ended there, cancelled by the callback."""
        reports: list[tuple[int, int, int]] = []

        def progress(stage: int, step: int, total: int) -> bool:
            reports.append((stage, step, total))
            return (stage, step) < stop
        with self.assertRaises(recon.CancelledError) as cm:
            self.model.run(images, progress=progress, **params)
        self.assertIn("progress callback", cm.exception.message)
        self.assertGreaterEqual(reports[-1][:2], stop)
        return reports

    def test_run_accepted(self) -> None:
        # Valid requests are accepted. To keep this quick, each run is stopped by its progress
        # callback once its views are encoded or after one sampler step; test_generate runs to
        # the end.
        m = self.model
        ss = recon.RECON_STAGE_SPARSE_STRUCTURE
        # Defaults (pipeline.json's 25 + 25 steps), raw and encoded cut-outs.
        self.run_until([CUTOUT], (ss, 0))
        self.run_until([CUTOUT_PNG], (ss, 0), seed=3)
        # An opaque image cannot be preprocessed (no background removal yet): UnsupportedError
        # saying so; without preprocessing it is accepted.
        with self.assertRaises(recon.UnsupportedError) as cm:
            m.run([PNG], seed=1)
        self.assertEqual(cm.exception.status, RECON_ERR_UNSUPPORTED)
        self.assertIn("background", cm.exception.message)
        self.assertEqual(m.last_error, cm.exception.message)
        self.assertEqual(self.raw_run(byref(png_image()), 1), RECON_ERR_UNSUPPORTED)
        self.run_until([PNG], (ss, 0), preprocess=False)
        # Several views of every kind, explicit settings, both modes: one sampler step each.
        rgb = np.full((4, 4, 3), 200, np.uint8)
        rgba = np.full((6, 5, 4), 255, np.uint8)
        views = [PNG, bytearray(PNG), memoryview(PNG), rgb, rgba, rgb[:, ::-1], rgba[::2, 1:]]
        for mode in (recon.RECON_MULTI_IMAGE_STOCHASTIC, recon.RECON_MULTI_IMAGE_MULTIDIFFUSION):
            self.run_until(views, (ss, 1), multi_image_mode=mode, sparse_structure_steps=12,
                           slat_steps=1000, sparse_structure_cfg_strength=0.0,
                           slat_cfg_strength=None, preprocess=False,
                           formats=recon.RECON_FORMAT_GAUSSIANS | recon.RECON_FORMAT_RADIANCE_FIELD)
        # Preprocessed cut-outs, one with padded rows (a strided view of a wider array).
        wide = np.zeros((64, 70, 4), np.uint8)
        wide[:, :64] = CUTOUT
        self.run_until([CUTOUT, wide[:, :64]], (ss, 0))

    def test_progress(self) -> None:
        m = self.model
        # A failing run reports up to where it failed (an opaque image: at preprocessing).
        reports: list[tuple[int, int, int]] = []
        with self.assertRaises(recon.UnsupportedError):
            m.run([PNG], progress=lambda *r: reports.append(r))
        self.assertEqual(reports, [(recon.RECON_STAGE_PREPROCESS, 0, 1)])
        with self.assertRaises(recon.CancelledError) as cm:
            m.run([PNG, PNG], progress=lambda stage, step, total: False)
        self.assertEqual(cm.exception.status, RECON_ERR_CANCELLED)
        with self.assertRaises(KeyError):  # an exception in the callback cancels and propagates
            m.run([CUTOUT], progress=lambda *r: {}["boom"])
        # Raw: user_data is passed through.
        seen: list[Optional[int]] = []

        def on_progress(report: Any, user_data: Optional[int]) -> int:
            seen.append(user_data)
            self.assertEqual(report.contents.struct_size, sizeof(recon.Progress))
            return 1
        callback = recon.ProgressCallback(on_progress)
        rp = recon.RunParams()
        lib.recon_run_params_init(byref(rp))
        rp.progress_callback, rp.progress_user_data = callback, 0xBEEF
        self.assertEqual(self.raw_run(byref(png_image()), 1, byref(rp)), RECON_ERR_UNSUPPORTED)
        self.assertEqual(seen, [0xBEEF])

    def test_cancel_and_threads(self) -> None:
        m = self.model
        # An idle cancel is forgotten: the next run is stopped by its own callback, not by it.
        t = threading.Thread(target=m.cancel)
        t.start()
        t.join()
        lib.recon_cancel(m.handle)
        self.run_until([CUTOUT], (recon.RECON_STAGE_CONDITION, 0))
        # Concurrent runs on one model are serialised, and each gets its own answer. Each run
        # stops once its view is encoded; `in_flight` counts runs between their first report
        # and their stop, so more than one means two runs overlapped.
        lock = threading.Lock()
        in_flight, overlaps = [0], [0]
        statuses: list[int] = []

        def progress(stage: int, step: int, total: int) -> bool:
            with lock:
                if (stage, step) == (recon.RECON_STAGE_PREPROCESS, 0):
                    overlaps[0] += in_flight[0] > 0
                    in_flight[0] += 1
                if stage >= recon.RECON_STAGE_CONDITION:
                    in_flight[0] -= 1
                    return False
            return True

        def worker(seed: int) -> None:
            try:
                m.run([CUTOUT], seed=seed, progress=progress)
            except recon.ReconError as e:
                statuses.append(e.status)
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(statuses, [RECON_ERR_CANCELLED] * 4)
        self.assertEqual((in_flight[0], overlaps[0]), (0, 0))

    # -- a real generation ------------------------------------------------------------------

    first_xyz: Optional[np.ndarray] = None  # test_generate's Gaussian centres

    def check_gaussians(self, g: dict) -> int:
        n = len(g["xyz"])
        self.assertGreater(n, 0)
        shapes = {"xyz": (n, 3), "features_dc": (n, 3), "scaling": (n, 3), "rotation": (n, 4),
                  "opacity": (n,)}
        for name, shape in shapes.items():
            self.assertEqual(g[name].shape, shape, name)
            self.assertEqual(g[name].dtype, np.float32, name)
            self.assertTrue(np.isfinite(g[name]).all(), name)
        self.assertTrue(((g["opacity"] >= 0) & (g["opacity"] <= 1)).all())
        self.assertTrue((g["scaling"] > 0).all())
        np.testing.assert_allclose(np.linalg.norm(g["rotation"], axis=1), 1.0, atol=1e-3)
        return n

    def test_generate(self) -> None:
        m = self.model
        reports: list[tuple[int, int, int, float]] = []
        start = time.perf_counter()
        with m.run([CUTOUT], seed=1, **GEN_STEPS,
                   formats=recon.RECON_FORMAT_GAUSSIANS | recon.RECON_FORMAT_MESH,
                   progress=lambda *r: reports.append((*r, time.perf_counter()))) as result:
            end = time.perf_counter()
            print(f"\ngeneration (Gaussians + mesh, 2 + 2 steps): {end - start:.2f} s",
                  file=sys.stderr)
            self.check_progress(reports, end)
            g = result.gaussians()
            n = self.check_gaussians(g)
            TestAbi.first_xyz = g["xyz"]
            mesh = result.mesh()
            positions, colors, indices = mesh["positions"], mesh["colors"], mesh["indices"]
            assert positions is not None and indices is not None
            nv, nf = len(positions), len(indices)
            self.assertGreater(nv, 0)
            self.assertGreater(nf, 0)
            self.assertTrue(np.isfinite(positions).all())
            self.assertEqual(indices.dtype, np.uint32)
            self.assertLess(int(indices.max()), nv)  # every index names a vertex
            if colors is not None:
                self.assertEqual(colors.shape, (nv, 3))
                self.assertTrue(((colors >= 0) & (colors <= 1)).all())
            print(f"{n} Gaussians; mesh of {nv} vertices, {nf} triangles", file=sys.stderr)
            self.assertEqual(result.cameras, [])  # TRELLIS estimates no poses
            self.check_exports(result, n, nv, nf)

    def check_progress(self, reports: list, end: float) -> None:
        """A whole run's reports: every stage from PREPROCESS to DECODE in order, each counting
        its steps up by one from 0 to its total; the samplers' totals are their steps."""
        sequence = [r[:3] for r in reports]
        stages = [stage for stage, _, _ in sequence]
        self.assertEqual(sorted(stages), stages)
        self.assertEqual(sorted(set(stages)), list(range(recon.RECON_STAGE_PREPROCESS,
                                                         recon.RECON_STAGE_DECODE + 1)))
        for stage in set(stages):
            steps = [(step, total) for s, step, total in sequence if s == stage]
            total = steps[0][1]
            self.assertEqual(steps, [(i, total) for i in range(total + 1)], stage)
        totals = {stage: total for stage, _, total in sequence}
        self.assertEqual(totals[recon.RECON_STAGE_SPARSE_STRUCTURE],
                         GEN_STEPS["sparse_structure_steps"])
        self.assertEqual(totals[recon.RECON_STAGE_STRUCTURED_LATENT], GEN_STEPS["slat_steps"])
        firsts = [r for i, r in enumerate(reports) if i == 0 or r[0] != reports[i - 1][0]]
        ends = [r[3] for r in firsts[1:]] + [end]
        times = [f"{r[0]}:{until - r[3]:.2f}" for r, until in zip(firsts, ends)]
        print(f"stage seconds: {' '.join(times)}", file=sys.stderr)

    def check_exports(self, result: recon.Result, n: int, nv: int, nf: int) -> None:
        # GLB to a file: "glTF", version 2, the length field matches; the buffer is the same.
        path = self.tmp / "asset.glb"
        result.export(recon.RECON_EXPORT_GLB, path)
        glb = path.read_bytes()
        magic, version, length = struct.unpack("<4sII", glb[:12])
        self.assertEqual((magic, version, length), (b"glTF", 2, len(glb)))
        json_len, json_kind = struct.unpack("<I4s", glb[12:20])
        self.assertEqual(json_kind, b"JSON")
        self.assertIn(b'"POSITION"', glb[20:20 + json_len])
        self.assertEqual(result.export_bytes(recon.RECON_EXPORT_GLB), glb)
        # Gaussian PLY to a buffer: one little-endian float record per Gaussian.
        ply = result.export_bytes(recon.RECON_EXPORT_PLY_GAUSSIANS)
        self.assertTrue(ply.startswith(b"ply\n"))
        header_end = ply.index(b"end_header\n") + len(b"end_header\n")
        header = ply[:header_end].decode()
        self.assertIn("\nformat binary_little_endian 1.0\n", header)
        self.assertIn(f"\nelement vertex {n}\n", header)
        floats = header.count("\nproperty float ")
        self.assertGreaterEqual(floats, 14)
        self.assertEqual(len(ply), header_end + n * floats * 4)
        records = np.frombuffer(ply[header_end:], "<f4").reshape(n, floats)
        self.assertTrue(np.isfinite(records).all())
        # Mesh PLY and OBJ.
        header = result.export_bytes(recon.RECON_EXPORT_PLY_MESH).split(b"end_header\n")[0]
        self.assertIn(f"\nelement vertex {nv}\n".encode(), header)
        self.assertIn(f"\nelement face {nf}\n".encode(), header)
        obj_path = self.tmp / "asset.obj"
        result.export(recon.RECON_EXPORT_OBJ, obj_path)
        lines = obj_path.read_bytes().splitlines()
        self.assertEqual(sum(line.startswith(b"v ") for line in lines), nv)
        self.assertEqual(sum(line.startswith(b"f ") for line in lines), nf)
        # Refusals.
        for bad in (0, 5):
            with self.assertRaises(recon.InvalidArgumentError) as cm:
                result.export_bytes(bad)
            self.assertIn("format", cm.exception.message)
        with self.assertRaises(recon.IoError):
            result.export(recon.RECON_EXPORT_GLB, self.tmp / "no_such_dir" / "a.glb")
        self.assertFalse((self.tmp / "no_such_dir").exists())
        cam = recon.Camera(struct_size=sizeof(recon.Camera))
        self.assertEqual(lib.recon_result_camera(result.handle, 0, byref(cam)),
                         RECON_ERR_INVALID_ARGUMENT)
        self.assertIn(b"out of range", lib.recon_result_last_error(result.handle))

    def test_generate_cancel_from_thread(self) -> None:
        # A run in another thread is held in its progress callback once the sparse-structure
        # sampler starts, until this thread has called cancel(): the cancel lands while the run
        # is certainly in progress, before the sampler's first step.
        m = self.model
        started, sent = threading.Event(), threading.Event()
        reports: list[tuple[int, int, int]] = []
        outcome: dict[str, Any] = {}

        def progress(stage: int, step: int, total: int) -> bool:
            reports.append((stage, step, total))
            if stage == recon.RECON_STAGE_SPARSE_STRUCTURE and not started.is_set():
                started.set()
                outcome["held"] = sent.wait(60)
            return True

        def worker() -> None:
            try:
                outcome["result"] = m.run([CUTOUT], seed=1, **GEN_STEPS, progress=progress)
            except recon.ReconError as e:
                outcome["error"] = e
        start = time.perf_counter()
        thread = threading.Thread(target=worker)
        thread.start()
        self.assertTrue(started.wait(120))
        cancelled_at = time.perf_counter()
        m.cancel()
        sent.set()
        thread.join()
        print(f"\ncancelled after {cancelled_at - start:.2f} s, the run returned "
              f"{time.perf_counter() - cancelled_at:.3f} s later", file=sys.stderr)
        self.assertNotIn("result", outcome)
        self.assertTrue(outcome.get("held"))
        error = outcome.get("error")
        self.assertIsInstance(error, recon.CancelledError)
        self.assertIn("recon_cancel", error.message)
        self.assertEqual(reports[-1], (recon.RECON_STAGE_SPARSE_STRUCTURE, 0, 2))
        # The model still works: the first generation again, Gaussians only, gives the same
        # Gaussians (same seed and steps).
        start = time.perf_counter()
        with m.run([CUTOUT], seed=1, **GEN_STEPS, formats=recon.RECON_FORMAT_GAUSSIANS) as result:
            print(f"generation (Gaussians only, 2 + 2 steps): {time.perf_counter() - start:.2f} s",
                  file=sys.stderr)
            g = result.gaussians()
            self.check_gaussians(g)
            if TestAbi.first_xyz is not None:
                np.testing.assert_allclose(g["xyz"], TestAbi.first_xyz, rtol=0, atol=1e-4)
            with self.assertRaises(recon.InvalidArgumentError) as cm:
                result.mesh()
            self.assertIn("mesh", cm.exception.message)
            with self.assertRaises(recon.InvalidArgumentError) as cm:
                result.export_bytes(recon.RECON_EXPORT_GLB)
            self.assertIn("RECON_FORMAT_MESH", cm.exception.message)
            ply = result.export_bytes(recon.RECON_EXPORT_PLY_GAUSSIANS)
            self.assertIn(f"\nelement vertex {len(g['xyz'])}\n".encode(), ply[:1024])

    def test_model_lifetime(self) -> None:
        with recon.Model(MODEL_DIR, device="cpu") as model:
            self.assertEqual(model.last_error, "")
            handle = model.handle
            self.assertTrue(handle)
        with self.assertRaises(ValueError):
            model.handle
        with self.assertRaises(ValueError):
            model.run([PNG])
        model.close()  # twice is fine
        lib.recon_free(None)


class CountingResult(unittest.TextTestResult):
    """Counts passed tests for the "N passed, M failed" line."""

    passed = 0

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self.passed += 1


def count_calls() -> dict[str, int]:
    """Wraps every library function (for the tests and the `recon` package alike) to count
    its calls, so that main() can insist each exported function was exercised."""
    calls = dict.fromkeys(recon._SIGNATURES, 0)
    for name in calls:
        def counted(*args: Any, _fn: Any = getattr(lib, name), _name: str = name) -> Any:
            calls[_name] += 1
            return _fn(*args)
        setattr(lib, name, counted)
    return calls


def main() -> int:
    calls = count_calls()
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(TestAbi)
    runner = unittest.TextTestRunner(resultclass=CountingResult, verbosity=2)
    result: CountingResult = runner.run(suite)  # type: ignore[assignment]
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    never_called = sorted(name for name, n in calls.items() if n == 0)
    if never_called:
        print(f"FAIL: functions never called: {', '.join(never_called)}", file=sys.stderr)
        failed += 1
    sys.stderr.flush()
    print(f"{result.passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

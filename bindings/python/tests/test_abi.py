"""The C ABI itself, through recon.abi: versions, statuses, struct layouts, the header's
coverage, init functions, NULL handles, recon_load's argument checks and error buffer."""

from __future__ import annotations

import ctypes
import inspect
import os
import re
from ctypes import POINTER, byref, c_float, c_void_p, sizeof
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

import recon
from recon import abi
from recon.abi import RECON_ERR_INVALID_ARGUMENT
from conftest import ALL_CALLS, PACKAGE_CALLS
from support import HEADER, ROOT, lib, load_params, raw_load

# sizeof on LP64, as bindings/c/test_abi.c prints and checks them.
C_SIZES = {"LoadParams": 64, "NetworkInfo": 40, "Image": 40, "RunParams": 72,
           "Progress": 16, "Gaussians": 56, "Mesh": 48, "Camera": 96, "TurntableParams": 48,
           "Frame": 32, "TexturedExportParams": 72}


def test_versions() -> None:
    assert recon.abi_version() == abi.RECON_ABI_VERSION == abi.ABI_VERSION
    assert lib.recon_abi_version() == 1
    assert recon.version() == lib.recon_version_string().decode()
    assert recon.version() == (f"{abi.RECON_VERSION_MAJOR}.{abi.RECON_VERSION_MINOR}."
                               f"{abi.RECON_VERSION_PATCH}")
    # The package's version is the library's, and Cargo.toml's.
    cargo = re.search(r'^version = "(.+)"$', (ROOT / "Cargo.toml").read_text(), re.M)
    assert cargo is not None
    assert recon.__version__ == recon.version() == cargo.group(1)
    assert recon.cuda_device_count() >= 0


def test_status_strings() -> None:
    texts = ["ok", "invalid argument", "I/O error", "network error", "malformed file",
             "checkpoint does not match the network", "not supported by this build",
             "cancelled", "out of memory", "device error", "internal error"]
    assert [recon.status_string(s) for s in recon.Status] == texts
    for code in (-1, 11, 1000, -2**31, 2**31 - 1):
        assert lib.recon_status_string(code) == b"unknown status"
        assert recon.status_string(code) == "unknown status"


def offset(struct: type, field: str) -> int:
    return int(getattr(struct, field).offset)


def test_struct_layout() -> None:
    for name, size in C_SIZES.items():
        assert sizeof(getattr(abi, name)) == size, name
    assert offset(abi.LoadParams, "model") == 8
    assert offset(abi.LoadParams, "log_callback") == 24
    assert offset(abi.LoadParams, "low_vram") == 40  # v2
    assert offset(abi.LoadParams, "vggt_model") == 48
    assert offset(abi.LoadParams, "background_model") == 56  # v3
    assert offset(abi.RunParams, "seed") == 8
    assert offset(abi.RunParams, "progress_callback") == 40
    assert offset(abi.RunParams, "remove_background") == 56  # v2
    assert offset(abi.RunParams, "guidance") == 60
    assert offset(abi.RunParams, "estimate_cameras") == 64  # v3
    assert offset(abi.Image, "data") == 8
    assert offset(abi.Image, "stride") == 32
    assert offset(abi.NetworkInfo, "stem") == 32
    assert offset(abi.TurntableParams, "background") == 24
    assert offset(abi.TurntableParams, "device") == 36
    assert offset(abi.TurntableParams, "mesh_ssaa") == 44
    assert offset(abi.Frame, "rgba") == 24
    assert offset(abi.TexturedExportParams, "device") == 52
    assert offset(abi.TexturedExportParams, "seed") == 64


def test_bindings_cover_the_header() -> None:
    text = HEADER.read_text()
    declared = re.findall(r"^[a-z].*?\b(recon_\w+)\(", text, re.M)
    assert set(declared) == set(abi.SIGNATURES)
    protocol = {name for name, _ in inspect.getmembers(abi.Library, inspect.isfunction)
                if name.startswith("recon_")}
    assert protocol == set(abi.SIGNATURES)
    defines = re.findall(r"^#define (RECON_\w+) (\S+)$", text, re.M)
    enum_values = re.findall(r"^  (RECON_\w+) = (\d+),$", text, re.M)
    assert len(defines) >= 30 and len(enum_values) == 17
    for name, value in defines:
        assert getattr(abi, name, None) == float(value), name
    for name, value in enum_values:
        assert getattr(abi, name, None) == int(value), name
    # Each enumeration of the package is the header's family of constants, member for member.
    assert {("RECON_OK" if s is recon.Status.OK else f"RECON_ERR_{s.name}"): s.value
            for s in recon.Status} == {name: int(v) for name, v in enum_values
                                       if name == "RECON_OK" or name.startswith("RECON_ERR_")}
    families = {recon.Format: "RECON_FORMAT_", recon.ExportFormat: "RECON_EXPORT_",
                recon.Stage: "RECON_STAGE_", recon.LogLevel: "RECON_LOG_",
                recon.MultiImageMode: "RECON_MULTI_IMAGE_",
                recon.TurntableContent: "RECON_TURNTABLE_"}
    for kind, prefix in families.items():
        members = {prefix + str(m.name): m.value for m in kind}
        assert members == {n: int(v) for n, v in defines if n.startswith(prefix)}, kind
    enums = {recon.BackgroundRemoval: "RECON_BACKGROUND_", recon.Guidance: "RECON_GUIDANCE_"}
    for kind, prefix in enums.items():
        members = {prefix + str(m.name): m.value for m in kind}
        assert members == {n: int(v) for n, v in enum_values if n.startswith(prefix)}, kind


def test_init_functions() -> None:
    lp = abi.LoadParams()
    lib.recon_load_params_init(byref(lp))
    assert (lp.struct_size, lp.device, lp.model, lp.offline, lp.log_level) == (
        40, abi.RECON_DEVICE_AUTO, None, abi.RECON_OFFLINE_FROM_ENV, abi.RECON_LOG_INFO)
    rp = abi.RunParams()
    rp.remove_background = rp.guidance = rp.estimate_cameras = 0x55
    lib.recon_run_params_init(byref(rp))  # the plain symbol: the v1 struct only
    assert (rp.struct_size, rp.seed, rp.formats, rp.preprocess) == (
        56, 42, abi.RECON_FORMAT_GAUSSIANS | abi.RECON_FORMAT_MESH, 1)
    assert rp.slat_cfg_strength == abi.RECON_DEFAULT_CFG_STRENGTH
    assert (rp.remove_background, rp.guidance, rp.estimate_cameras) == (0x55,) * 3  # untouched
    img = abi.Image()
    lib.recon_image_init(byref(img))
    assert (img.struct_size, img.format, img.size) == (40, abi.RECON_IMAGE_ENCODED, 0)
    # The newest structs through the sized init: every field, struct_size = the binding's size.
    lp2 = abi.LoadParams()
    assert lib.recon_load_params_init_sized(byref(lp2), ctypes.sizeof(lp2)) == abi.RECON_OK
    assert (lp2.struct_size, lp2.low_vram, lp2.vggt_model, lp2.background_model) == (
        64, 0, None, None)
    rp2 = abi.RunParams()
    assert lib.recon_run_params_init_sized(byref(rp2), ctypes.sizeof(rp2)) == abi.RECON_OK
    assert (rp2.struct_size, rp2.seed, rp2.remove_background, rp2.guidance,
            rp2.estimate_cameras) == (
        72, 42, abi.RECON_BACKGROUND_AUTO, abi.RECON_GUIDANCE_DEFAULT, 1)
    # Older callers (and sizes between versions): only the largest released version that fits
    # is written, guard bytes after it untouched.
    cases: List[Tuple[Any, type, Dict[int, int]]] = [
        (lib.recon_load_params_init_sized, abi.LoadParams,
         {40: 40, 52: 40, 56: 56, 60: 56, 64: 64, 72: 64}),
        (lib.recon_run_params_init_sized, abi.RunParams,
         {56: 56, 60: 56, 64: 64, 68: 64, 72: 72, 80: 72})]
    for init, struct, sizes in cases:
        for size, written in sizes.items():
            raw = (ctypes.c_uint8 * 80)(*([0xAB] * 80))
            assert init(ctypes.cast(raw, POINTER(struct)), size) == abi.RECON_OK, (init, size)
            assert raw[0] == written and raw[1:4] == [0, 0, 0], (init, size)
            assert bytes(raw[written:]) == b"\xab" * (80 - written), (init, size)
    assert lib.recon_load_params_init_sized(None, 56) == abi.RECON_ERR_INVALID_ARGUMENT
    assert lib.recon_load_params_init_sized(byref(lp2), 39) == abi.RECON_ERR_INVALID_ARGUMENT
    assert lib.recon_run_params_init_sized(None, 64) == abi.RECON_ERR_INVALID_ARGUMENT
    raw = (ctypes.c_uint8 * 80)(*([0xAB] * 80))
    assert lib.recon_run_params_init_sized(ctypes.cast(raw, POINTER(abi.RunParams)), 55) == \
        abi.RECON_ERR_INVALID_ARGUMENT
    assert bytes(raw) == b"\xab" * 80  # nothing written
    lib.recon_load_params_init(None)
    lib.recon_run_params_init(None)
    lib.recon_image_init(None)
    # recon_turntable_params (v1 only so far): the documented defaults.
    tp = abi.TurntableParams()
    lib.recon_turntable_params_init(byref(tp))
    assert (tp.struct_size, tp.content, tp.frames, tp.resolution, tp.device, tp.fps,
            tp.mesh_ssaa) == (48, abi.RECON_TURNTABLE_GAUSSIANS, 120, 512,
                              abi.RECON_DEVICE_AUTO, 30, 4)
    assert (tp.radius, tp.fov_degrees, list(tp.background)) == (2.0, 40.0, [0.0, 0.0, 0.0])
    for size, written in {48: 48, 56: 48}.items():
        raw = (ctypes.c_uint8 * 64)(*([0xAB] * 64))
        assert lib.recon_turntable_params_init_sized(
            ctypes.cast(raw, POINTER(abi.TurntableParams)), size) == abi.RECON_OK
        assert raw[0] == written and bytes(raw[written:]) == b"\xab" * (64 - written)
    raw = (ctypes.c_uint8 * 64)(*([0xAB] * 64))
    assert lib.recon_turntable_params_init_sized(
        ctypes.cast(raw, POINTER(abi.TurntableParams)), 47) == abi.RECON_ERR_INVALID_ARGUMENT
    assert bytes(raw) == b"\xab" * 64  # nothing written
    assert lib.recon_turntable_params_init_sized(None, 48) == abi.RECON_ERR_INVALID_ARGUMENT
    lib.recon_turntable_params_init(None)
    # recon_textured_export_params: TRELLIS's to_glb defaults.
    xp = abi.TexturedExportParams()
    lib.recon_textured_export_params_init(byref(xp))
    assert (xp.struct_size, xp.image_format, xp.texture_size, xp.bake_mode, xp.bake_steps,
            xp.views, xp.render_resolution, xp.fill_holes, xp.fill_holes_views,
            xp.jpeg_quality, xp.device, xp.seed) == (
        72, abi.RECON_TEXTURE_PNG, 1024, abi.RECON_BAKE_OPTIMIZE, 2500, 100, 1024, 1, 1000, 90,
        abi.RECON_DEVICE_AUTO, 0)
    assert abs(xp.simplify - 0.95) < 1e-6 and abs(xp.bake_lambda_tv - 0.01) < 1e-6
    raw = (ctypes.c_uint8 * 80)(*([0xAB] * 80))
    assert lib.recon_textured_export_params_init_sized(
        ctypes.cast(raw, POINTER(abi.TexturedExportParams)), 71) == abi.RECON_ERR_INVALID_ARGUMENT
    assert bytes(raw) == b"\xab" * 80
    assert lib.recon_textured_export_params_init_sized(
        ctypes.cast(raw, POINTER(abi.TexturedExportParams)), 80) == abi.RECON_OK
    assert raw[0] == 72 and bytes(raw[72:]) == b"\xab" * 8
    lib.recon_textured_export_params_init(None)
    assert recon.mp4_supported() in (True, False)


def test_null_handles(tmp_path: Path) -> None:
    lib.recon_free(None)
    lib.recon_result_free(None)
    lib.recon_buffer_free(None)
    lib.recon_cancel(None)
    assert lib.recon_model_last_error(None) == b""
    assert lib.recon_model_pipeline_name(None) == b""
    assert lib.recon_model_device(None) == abi.RECON_DEVICE_CPU
    assert lib.recon_model_num_networks(None) == 0
    info = abi.NetworkInfo(struct_size=sizeof(abi.NetworkInfo))
    assert lib.recon_model_network(None, 0, byref(info)) == RECON_ERR_INVALID_ARGUMENT
    assert lib.recon_model_network(None, 0, None) == RECON_ERR_INVALID_ARGUMENT
    # Result accessors with a NULL result (test_generate checks them on a real one).
    assert lib.recon_result_last_error(None) == b""
    g = abi.Gaussians(struct_size=sizeof(abi.Gaussians))
    assert lib.recon_result_gaussians(None, byref(g)) == RECON_ERR_INVALID_ARGUMENT
    assert lib.recon_result_gaussians(None, None) == RECON_ERR_INVALID_ARGUMENT
    m = abi.Mesh(struct_size=sizeof(abi.Mesh))
    assert lib.recon_result_mesh(None, byref(m)) == RECON_ERR_INVALID_ARGUMENT
    assert lib.recon_result_num_cameras(None) == 0
    cam = abi.Camera(struct_size=sizeof(abi.Camera))
    assert lib.recon_result_camera(None, 0, byref(cam)) == RECON_ERR_INVALID_ARGUMENT
    extrinsic, intrinsic = (c_float * 16)(*[7.0] * 16), (c_float * 9)(*[7.0] * 9)
    assert lib.recon_result_camera_matrices(None, 0, extrinsic, intrinsic) == \
        RECON_ERR_INVALID_ARGUMENT
    assert lib.recon_result_camera_matrices(None, 0, None, None) == RECON_ERR_INVALID_ARGUMENT
    assert list(extrinsic) == [7.0] * 16 and list(intrinsic) == [7.0] * 9  # untouched
    path = os.fsencode(tmp_path / "never.glb")
    assert lib.recon_result_export(None, abi.RECON_EXPORT_GLB, path) == RECON_ERR_INVALID_ARGUMENT
    assert lib.recon_result_export(None, abi.RECON_EXPORT_OBJ, None) == RECON_ERR_INVALID_ARGUMENT
    assert not os.path.exists(path)
    buf = c_void_p(0x5EED)
    assert lib.recon_result_export_buffer(None, abi.RECON_EXPORT_GLB, byref(buf)) == \
        RECON_ERR_INVALID_ARGUMENT
    assert buf.value == 0x5EED
    assert lib.recon_result_export_buffer(None, abi.RECON_EXPORT_GLB, None) == \
        RECON_ERR_INVALID_ARGUMENT
    assert not lib.recon_buffer_data(None)
    assert lib.recon_buffer_size(None) == 0
    frames = os.fsencode(tmp_path / "never_frames")
    assert lib.recon_result_render_turntable(None, None, abi.FrameCallback(), None) == \
        RECON_ERR_INVALID_ARGUMENT
    assert lib.recon_result_write_turntable(None, None, frames, abi.FrameCallback(), None) == \
        RECON_ERR_INVALID_ARGUMENT
    assert not os.path.exists(frames)
    assert lib.recon_result_export_textured(None, abi.RECON_EXPORT_GLB, None, path) == \
        RECON_ERR_INVALID_ARGUMENT
    buf = c_void_p(0x5EED)
    assert lib.recon_result_export_textured_buffer(None, abi.RECON_EXPORT_GLB, None,
                                                   byref(buf)) == RECON_ERR_INVALID_ARGUMENT
    assert buf.value == 0x5EED


def test_load_null_arguments(model_dir: Path) -> None:
    st, handle, err = raw_load(None)
    assert st == RECON_ERR_INVALID_ARGUMENT
    assert b"recon_load_params" in err
    assert handle is None
    st, _, err = raw_load(load_params(model_dir), want_handle=False)
    assert st == RECON_ERR_INVALID_ARGUMENT
    assert b"out_model" in err
    assert lib.recon_load(None, None, None, 0) == RECON_ERR_INVALID_ARGUMENT
    p = load_params(model_dir)
    p.model = None
    st, handle, err = raw_load(p)
    assert st == RECON_ERR_INVALID_ARGUMENT
    assert handle is None


@pytest.mark.parametrize("field, value", [("device", -3), ("offline", 2), ("log_level", 5),
                                          ("log_level", -1), ("model", b""),
                                          ("model", b"/dev/null")])
def test_load_bad_values(model_dir: Path, field: str, value: object) -> None:
    p = load_params(model_dir)
    setattr(p, field, value)
    st, handle, err = raw_load(p)
    assert st == RECON_ERR_INVALID_ARGUMENT, err
    assert err
    assert handle is None


def test_load_background_model(model_dir: Path) -> None:
    # v3: background_model is NULL (the Hub's BiRefNet) or a non-empty UTF-8 string; the v1
    # struct that load_params() makes does not have it (its bytes are never read).
    for value in (b"", b"\xff\xfe"):
        p = load_params(model_dir)
        p.background_model = value
        st, handle, err = raw_load(p)
        assert st == abi.RECON_OK, err
        lib.recon_free(handle)
        p.struct_size = sizeof(abi.LoadParams)
        st, handle, err = raw_load(p)
        assert st == RECON_ERR_INVALID_ARGUMENT and b"background_model" in err, value
        assert handle is None
    with pytest.raises(recon.InvalidArgumentError, match="background_model"):
        recon.Model(model_dir, device="cpu", offline=True, background_model="")


def test_load_struct_size(model_dir: Path) -> None:
    class Padded(ctypes.Structure):
        _fields_ = [("p", abi.LoadParams), ("tail", ctypes.c_uint8 * 64)]
    # below v1's 40 bytes, between two versions, or above the struct this binding declares
    for size in (0, 4, 32, 44, 52, 60, sizeof(abi.LoadParams) + 8, 2**32 - 1):
        big = Padded()
        big.p = load_params(model_dir)
        big.p.struct_size = size
        handle, err = c_void_p(), ctypes.create_string_buffer(512)
        st = lib.recon_load(ctypes.cast(byref(big), POINTER(abi.LoadParams)), byref(handle),
                            err, len(err))
        assert st == RECON_ERR_INVALID_ARGUMENT, size
        assert b"struct_size" in err.value
        assert handle.value is None


def test_error_buffer() -> None:
    buf = ctypes.create_string_buffer(b"X" * 63, 64)
    assert lib.recon_load(None, None, buf, 8) == RECON_ERR_INVALID_ARGUMENT
    assert len(buf.value) == 7  # truncated and NUL-terminated
    assert buf.raw[8:9] == b"X"  # nothing written past the length
    buf = ctypes.create_string_buffer(b"X" * 63, 64)
    assert lib.recon_load(None, None, buf, 1) == RECON_ERR_INVALID_ARGUMENT
    assert buf.raw[:2] == b"\0X"
    buf = ctypes.create_string_buffer(b"X" * 63, 64)
    assert lib.recon_load(None, None, buf, 0) == RECON_ERR_INVALID_ARGUMENT
    assert buf.raw[:1] == b"X"
    assert lib.recon_load(None, None, None, 100) == RECON_ERR_INVALID_ARGUMENT


@pytest.mark.last
def test_every_function_called_through_the_package() -> None:
    """Runs last (see conftest): the suite called every function of the header, and the
    package itself (not only the tests' raw calls) called each one at least once."""
    hint = "(this test checks the whole suite's calls: run every test module)"
    assert [name for name, n in ALL_CALLS.items() if n == 0] == [], hint
    # The plain *_params_init are the v1 entry points kept for programs built against the v1
    # header; the package initialises its structs with the *_init_sized functions.
    v1_only = {"recon_load_params_init", "recon_run_params_init", "recon_turntable_params_init",
               "recon_textured_export_params_init"}
    assert [name for name, n in PACKAGE_CALLS.items() if n == 0 and name not in v1_only] == [], \
        hint

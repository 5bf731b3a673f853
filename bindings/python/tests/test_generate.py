"""Real generations with the tiny model on the CPU (2 + 2 sampler steps): Gaussians, mesh,
progress, exports (GLB, PLY, OBJ to files and bytes), turntables, the lifetime of the array views, a run
cancelled from another thread with the model usable after it, and a photo through background
removal (a tiny BiRefNet, tests/fixtures/birefnet_tiny) with each guidance formula."""

from __future__ import annotations

import ctypes
import gc
import struct
import threading
import time
from ctypes import byref, c_float, c_void_p, sizeof
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import pytest

import recon
from recon import abi
from conftest import TIMINGS
from support import CUTOUT, GEN_STEPS, PHOTO, PNG, lib, write_tiny_birefnet


@dataclass
class Generation:
    result: recon.Result
    reports: List[Tuple[int, int, int, float]]  # (stage, step, total, time)
    end: float


@pytest.fixture(scope="session")
def generation(model: recon.Model) -> Iterator[Generation]:
    """The first generation: Gaussians + mesh of the cut-out, seed 1, 2 + 2 steps."""
    reports: List[Tuple[int, int, int, float]] = []
    start = time.perf_counter()
    result = model.run(CUTOUT, seed=1, **GEN_STEPS, formats=("gaussians", "mesh"),
                       progress=lambda *r: reports.append((*r, time.perf_counter())))
    end = time.perf_counter()
    TIMINGS.append(f"generation (Gaussians + mesh, 2 + 2 steps): {end - start:.2f} s")
    with result:
        yield Generation(result, reports, end)


def check_gaussians(g: recon.Gaussians) -> int:
    n = len(g)
    assert n > 0
    shapes = {"xyz": (n, 3), "features_dc": (n, 3), "scaling": (n, 3), "rotation": (n, 4),
              "opacity": (n,)}
    for name, shape in shapes.items():
        array = getattr(g, name)
        assert array.shape == shape, name
        assert array.dtype == np.float32, name
        assert np.isfinite(array).all(), name
    assert ((g.opacity >= 0) & (g.opacity <= 1)).all()
    assert (g.scaling > 0).all()
    np.testing.assert_allclose(np.linalg.norm(g.rotation, axis=1), 1.0, atol=1e-3)
    return n


def test_generate(generation: Generation) -> None:
    result = generation.result
    n = check_gaussians(result.gaussians)
    mesh = result.mesh
    nv, nf = mesh.num_vertices, mesh.num_faces
    assert nv > 0 and nf > 0
    assert mesh.positions.shape == (nv, 3) and mesh.indices.shape == (nf, 3)
    assert np.isfinite(mesh.positions).all()
    assert mesh.indices.dtype == np.uint32
    assert int(mesh.indices.max()) < nv  # every index names a vertex
    if mesh.colors is not None:
        assert mesh.colors.shape == (nv, 3)
        assert ((mesh.colors >= 0) & (mesh.colors <= 1)).all()
    TIMINGS.append(f"{n} Gaussians; mesh of {nv} vertices, {nf} triangles")
    assert result.cameras == []  # TRELLIS estimates no poses
    assert lib.recon_result_num_cameras(result.handle) == 0


def test_progress_of_a_whole_run(generation: Generation) -> None:
    """A whole run's reports: every stage from PREPROCESS to DECODE in order, each counting its
    steps up by one from 0 to its total; the samplers' totals are their steps."""
    reports = generation.reports
    sequence = [r[:3] for r in reports]
    stages = [stage for stage, _, _ in sequence]
    assert sorted(stages) == stages
    assert sorted(set(stages)) == list(range(recon.Stage.PREPROCESS, recon.Stage.DECODE + 1))
    for stage in set(stages):
        steps = [(step, total) for s, step, total in sequence if s == stage]
        total = steps[0][1]
        assert steps == [(i, total) for i in range(total + 1)], stage
    totals = {stage: total for stage, _, total in sequence}
    assert totals[recon.Stage.SPARSE_STRUCTURE] == GEN_STEPS["sparse_structure_steps"]
    assert totals[recon.Stage.STRUCTURED_LATENT] == GEN_STEPS["slat_steps"]
    firsts = [r for i, r in enumerate(reports) if i == 0 or r[0] != reports[i - 1][0]]
    ends = [r[3] for r in firsts[1:]] + [generation.end]
    times = [f"{recon.Stage(r[0]).name.lower()} {until - r[3]:.2f}"
             for r, until in zip(firsts, ends)]
    TIMINGS.append(f"stage seconds: {', '.join(times)}")


def test_exports(generation: Generation, tmp_path: Path) -> None:
    result = generation.result
    n, mesh = len(result.gaussians), result.mesh
    nv, nf = mesh.num_vertices, mesh.num_faces
    # GLB to a file: "glTF", version 2, the length field matches; the bytes are the same.
    path = tmp_path / "asset.glb"
    result.export(path, recon.ExportFormat.GLB)
    glb = path.read_bytes()
    magic, version, length = struct.unpack("<4sII", glb[:12])
    assert (magic, version, length) == (b"glTF", 2, len(glb))
    json_len, json_kind = struct.unpack("<I4s", glb[12:20])
    assert json_kind == b"JSON"
    assert b'"POSITION"' in glb[20:20 + json_len]
    assert result.export_bytes(recon.ExportFormat.GLB) == glb
    assert result.export_bytes("glb") == glb
    # With cameras: TRELLIS estimates no poses, so the same file.
    assert result.export_bytes(recon.ExportFormat.GLB_WITH_CAMERAS) == glb
    cameras_path = tmp_path / "cameras.glb"
    result.export(cameras_path, "glb_with_cameras")
    assert cameras_path.read_bytes() == glb
    # Gaussian PLY as bytes: one little-endian float record per Gaussian.
    ply = result.export_bytes("ply_gaussians")
    assert ply.startswith(b"ply\n")
    header_end = ply.index(b"end_header\n") + len(b"end_header\n")
    header = ply[:header_end].decode()
    assert "\nformat binary_little_endian 1.0\n" in header
    assert f"\nelement vertex {n}\n" in header
    floats = header.count("\nproperty float ")
    assert floats >= 14
    assert len(ply) == header_end + n * floats * 4
    records = np.frombuffer(ply[header_end:], "<f4").reshape(n, floats)
    assert np.isfinite(records).all()
    # Mesh PLY and OBJ (formats by name, paths as str).
    header_bytes = result.export_bytes("PLY-MESH").split(b"end_header\n")[0]
    assert f"\nelement vertex {nv}\n".encode() in header_bytes
    assert f"\nelement face {nf}\n".encode() in header_bytes
    obj_path = tmp_path / "asset.obj"
    result.export(str(obj_path), "obj")
    lines = obj_path.read_bytes().splitlines()
    assert sum(line.startswith(b"v ") for line in lines) == nv
    assert sum(line.startswith(b"f ") for line in lines) == nf
    # Refusals.
    for bad in (0, abi.RECON_EXPORT_GLB_WITH_CAMERAS + 1):
        with pytest.raises(recon.InvalidArgumentError) as info:
            result.export_bytes(bad)
        assert "format" in info.value.message
        assert result.last_error == info.value.message
    with pytest.raises(ValueError, match="export format"):
        result.export_bytes("fbx")
    with pytest.raises(recon.IoError):
        result.export(tmp_path / "no_such_dir" / "a.glb", recon.ExportFormat.GLB)
    assert not (tmp_path / "no_such_dir").exists()
    cam = abi.Camera(struct_size=sizeof(abi.Camera))
    assert lib.recon_result_camera(result.handle, 0, byref(cam)) == abi.RECON_ERR_INVALID_ARGUMENT
    assert b"out of range" in lib.recon_result_last_error(result.handle)
    with pytest.raises(recon.InvalidArgumentError, match="out of range"):
        result.camera(0)
    with pytest.raises(ValueError, match="camera index"):
        result.camera(-1)
    extrinsic, intrinsic = (c_float * 16)(*[7.0] * 16), (c_float * 9)(*[7.0] * 9)
    for index in (0, 1, 2**64 - 1):
        assert lib.recon_result_camera_matrices(result.handle, index, extrinsic, intrinsic) == \
            abi.RECON_ERR_INVALID_ARGUMENT
        assert b"out of range" in lib.recon_result_last_error(result.handle)
    assert lib.recon_result_camera_matrices(result.handle, 0, None, None) == \
        abi.RECON_ERR_INVALID_ARGUMENT
    assert list(extrinsic) == [7.0] * 16 and list(intrinsic) == [7.0] * 9  # untouched
    with pytest.raises(recon.InvalidArgumentError, match="out of range"):
        result.camera_matrices(0)
    with pytest.raises(ValueError, match="camera index"):
        result.camera_matrices(-1)


def test_turntable(generation: Generation, tmp_path: Path) -> None:
    """Small turntables of the generation on the CPU: frames as arrays, through a callback
    that stops, PNG folders and MP4 files written by the library, and the refusals."""
    result = generation.result
    small: Dict[str, Any] = {"frames": 3, "resolution": 24, "device": "cpu", "mesh_ssaa": 2}
    has_colors = result.mesh.colors is not None
    for content in ("gaussians", "normals", recon.TurntableContent.MESH_COLORS):
        if content == recon.TurntableContent.MESH_COLORS and not has_colors:
            with pytest.raises(recon.InvalidArgumentError, match="vertex colours"):
                result.render_turntable(content=content, **small)
            continue
        start = time.perf_counter()
        frames = result.render_turntable(content=content, **small)
        name = content if isinstance(content, str) else content.name.lower()
        TIMINGS.append(f"turntable ({name}, 3 frames of 24x24, CPU): "
                       f"{time.perf_counter() - start:.2f} s")
        assert len(frames) == 3
        for frame in frames:
            assert frame.shape == (24, 24, 4) and frame.dtype == np.uint8
        # Background black and transparent where nothing is drawn.
        empty = frames[0][..., 3] == 0
        assert (frames[0][empty][:, :3] == 0).all()
    # The callback sees the same frames; False stops the render.
    normals = result.render_turntable(content="normals", **small)
    seen: List[Tuple[int, Any]] = []
    assert result.render_turntable(content="normals", on_frame=lambda i, f: seen.append((i, f)),
                                   **small) == []
    assert [i for i, _ in seen] == [0, 1, 2]
    assert all((a == b).all() for a, (_, b) in zip(normals, seen))
    with pytest.raises(recon.CancelledError):
        result.render_turntable(content="normals", on_frame=lambda i, f: i < 1, **small)
    with pytest.raises(ZeroDivisionError):  # the callback's own exception comes through
        result.render_turntable(content="normals", on_frame=lambda i, f: bool(1 // 0), **small)
    # Written by the library: a PNG folder (replaced whole when written again) and an MP4.
    folder = tmp_path / "frames"
    progress: List[int] = []
    result.write_turntable(folder, content="normals", on_frame=lambda i, f: progress.append(i),
                           **small)
    assert progress == [0, 1, 2]
    assert sorted(p.name for p in folder.iterdir()) == [
        "frame_0000.png", "frame_0001.png", "frame_0002.png"]
    assert (folder / "frame_0000.png").read_bytes()[:4] == b"\x89PNG"
    result.write_turntable(str(folder), content="normals", **{**small, "frames": 2})
    assert len(list(folder.iterdir())) == 2
    mp4 = tmp_path / "spin.mp4"
    if recon.mp4_supported():
        result.write_turntable(mp4, content="normals", fps=12, **small)
        assert mp4.read_bytes()[4:8] == b"ftyp"
    else:
        with pytest.raises(recon.UnsupportedError):
            result.write_turntable(mp4, content="normals", **small)
    stopped = tmp_path / "stopped"
    with pytest.raises(recon.CancelledError):
        result.write_turntable(stopped, content="normals", on_frame=lambda i, f: False, **small)
    assert not stopped.exists()
    # Refusals.
    with pytest.raises(ValueError, match="turntable content"):
        result.render_turntable(content="depth", **small)
    with pytest.raises(recon.InvalidArgumentError, match="content is 9"):
        result.render_turntable(content=9, **small)
    with pytest.raises(recon.InvalidArgumentError, match="frames 0"):
        result.render_turntable(**{**small, "frames": 0})
    with pytest.raises(recon.InvalidArgumentError, match="resolution"):
        result.render_turntable(**{**small, "resolution": 100000})
    with pytest.raises(ValueError, match="background"):
        result.render_turntable(background=(0, 0), **small)
    with pytest.raises(recon.DeviceError):
        result.render_turntable(**{**small, "device": "cuda:1000"})
    with pytest.raises(recon.InvalidArgumentError, match=".gif"):
        result.write_turntable(tmp_path / "a.gif", **small)
    with pytest.raises(recon.IoError):
        result.write_turntable(tmp_path / "no_such_dir" / "a.mp4", **small)
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        ["frames", "spin.mp4"] if recon.mp4_supported() else ["frames"])


def test_textured_export(generation: Generation, tmp_path: Path) -> None:
    """TRELLIS's to_glb with small settings on the CPU: a GLB with a baked texture, OBJ + MTL +
    PNG beside it, vertex colours only, and the refusals."""
    result = generation.result
    small: Dict[str, Any] = {"device": "cpu", "bake": "fast", "texture_size": 64, "views": 4,
                             "render_resolution": 64, "fill_holes_views": 8,
                             "fill_holes_resolution": 64}
    start = time.perf_counter()
    glb = result.export_textured_bytes(**small)
    TIMINGS.append(f"textured GLB (64^2 texture, fast bake from 4 views, CPU): "
                   f"{time.perf_counter() - start:.2f} s, {len(glb)} bytes")
    magic, version, length = struct.unpack("<4sII", glb[:12])
    assert (magic, version, length) == (b"glTF", 2, len(glb))
    assert b'"baseColorTexture"' in glb and b'"TEXCOORD_0"' in glb
    assert result.export_textured_bytes("glb", image_format="jpeg", **small) != glb
    path = tmp_path / "asset.obj"
    result.export_textured(path, "obj", **small)
    assert b"mtllib asset.mtl" in path.read_bytes()
    assert b"map_Kd asset.png" in (tmp_path / "asset.mtl").read_bytes()
    assert (tmp_path / "asset.png").read_bytes()[:4] == b"\x89PNG"
    colors = result.export_textured_bytes(vertex_colors_only=True, **small)
    assert b'"COLOR_0"' in colors and b"baseColorTexture" not in colors
    with pytest.raises(recon.InvalidArgumentError, match="several files"):
        result.export_textured_bytes("obj", **small)
    with pytest.raises(recon.InvalidArgumentError):
        result.export_textured(tmp_path / "a.ply", "ply_mesh", **small)
    with pytest.raises(recon.InvalidArgumentError, match="simplify"):
        result.export_textured_bytes(**{**small, "simplify": 1.5})
    with pytest.raises(ValueError, match="bake"):
        result.export_textured_bytes(**{**small, "bake": "slow"})
    with pytest.raises(TypeError):
        result.export_textured_bytes(texture=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asset.mtl", "asset.obj", "asset.png"]


def test_array_views(model: recon.Model) -> None:
    """Result arrays are read-only views that keep the result's memory alive: close() frees
    it only once the last view has gone."""
    frees: List[Any] = []
    free = lib.recon_result_free

    def counting_free(handle: Any) -> None:
        frees.append(handle)
        free(handle)
    setattr(lib, "recon_result_free", counting_free)
    try:
        with model.run(CUTOUT, seed=1, **GEN_STEPS, formats="gaussians") as result:
            handle = result.handle
            g = result.gaussians
            raw = abi.Gaussians(struct_size=sizeof(abi.Gaussians))
            assert lib.recon_result_gaussians(handle, byref(raw)) == abi.RECON_OK
            # Views: the library's memory itself, not a copy, and read-only.
            assert g.xyz.ctypes.data == ctypes.cast(raw.xyz, c_void_p).value
            assert not g.xyz.flags.writeable and not g.xyz.flags.owndata
            with pytest.raises(ValueError):
                g.xyz[0, 0] = 1.0
            with pytest.raises(ValueError):
                g.xyz.flags.writeable = True
            copy = g.copy()
            assert copy.xyz.flags.writeable
            copy.xyz[0, 0] += 1.0
            assert g.xyz[0, 0] != copy.xyz[0, 0]
            expected = g.xyz.copy()
            rows = g.xyz[1:3]  # a view of a view pins the memory too
        assert result.closed and repr(result) == "<recon.Result closed>"
        with pytest.raises(ValueError, match="closed"):
            result.gaussians
        with pytest.raises(ValueError, match="closed"):
            result.export_bytes("ply_gaussians")
        result.close()  # twice is fine
        assert frees == []  # the views still hold the memory
        gc.collect()
        np.testing.assert_array_equal(g.xyz, expected)
        del g, raw
        assert frees == []
        np.testing.assert_array_equal(rows, expected[1:3])
        del rows
        assert frees == [handle]  # the last view gone: freed at once
        # Without views, close() frees at once.
        result = model.run(CUTOUT, seed=1, **GEN_STEPS, formats="gaussians")
        handle = result.handle
        result.close()
        assert frees[-1] == handle
    finally:
        setattr(lib, "recon_result_free", free)


def test_generate_cancel_from_thread(model: recon.Model, generation: Generation) -> None:
    # A run in another thread is held in its progress callback once the sparse-structure
    # sampler starts, until this thread has called cancel(): the cancel lands while the run is
    # certainly in progress, before the sampler's first step.
    started, sent = threading.Event(), threading.Event()
    reports: List[Tuple[int, int, int]] = []
    outcome: Dict[str, Any] = {}

    def progress(stage: int, step: int, total: int) -> bool:
        reports.append((stage, step, total))
        if stage == recon.Stage.SPARSE_STRUCTURE and not started.is_set():
            started.set()
            outcome["held"] = sent.wait(60)
        return True

    def worker() -> None:
        try:
            outcome["result"] = model.run([CUTOUT], seed=1, **GEN_STEPS, progress=progress)
        except recon.ReconError as e:
            outcome["error"] = e
    start = time.perf_counter()
    thread = threading.Thread(target=worker)
    thread.start()
    assert started.wait(120)
    cancelled_at = time.perf_counter()
    model.cancel()
    sent.set()
    thread.join()
    TIMINGS.append(f"cancelled after {cancelled_at - start:.2f} s, the run returned "
                   f"{time.perf_counter() - cancelled_at:.3f} s later")
    assert "result" not in outcome
    assert outcome.get("held")
    error = outcome.get("error")
    assert isinstance(error, recon.CancelledError)
    assert "recon_cancel" in error.message
    assert reports[-1] == (recon.Stage.SPARSE_STRUCTURE, 0, 2)
    # The model still works: the first generation again, Gaussians only, gives the same
    # Gaussians (same seed and steps).
    start = time.perf_counter()
    with model.run([CUTOUT], seed=1, **GEN_STEPS, formats=recon.Format.GAUSSIANS) as result:
        TIMINGS.append(f"generation (Gaussians only, 2 + 2 steps): "
                       f"{time.perf_counter() - start:.2f} s")
        g = result.gaussians
        check_gaussians(g)
        np.testing.assert_allclose(g.xyz, generation.result.gaussians.xyz, rtol=0, atol=1e-4)
        with pytest.raises(recon.InvalidArgumentError) as info:
            result.mesh
        assert "mesh" in info.value.message
        with pytest.raises(recon.InvalidArgumentError) as info:
            result.export_bytes(recon.ExportFormat.GLB)
        assert "RECON_FORMAT_MESH" in info.value.message
        ply = result.export_bytes(recon.ExportFormat.PLY_GAUSSIANS)
        assert f"\nelement vertex {len(g)}\n".encode() in ply[:1024]


def test_low_vram_mode_gives_the_same_result(model: recon.Model, model_dir: Path) -> None:
    """A model loaded with low_vram=True (networks built per stage, through the v2
    recon_load_params) generates the same Gaussians as the default model."""
    with recon.Model(model_dir, device="cpu", offline=True, low_vram=True) as lean:
        assert all(n.implemented for n in lean.networks)
        with model.run(CUTOUT, seed=3, **GEN_STEPS, formats=("gaussians",)) as a, \
                lean.run(CUTOUT, seed=3, **GEN_STEPS, formats=("gaussians",)) as b:
            ga, gb = a.gaussians, b.gaussians
            assert ga is not None and gb is not None
            assert np.array_equal(ga.xyz, gb.xyz) and np.array_equal(ga.opacity, gb.opacity)
    with pytest.raises(recon.InvalidArgumentError, match="vggt_model"):
        recon.Model(model_dir, device="cpu", offline=True, vggt_model="\udcff")


def test_background_removal_and_guidance(model_dir: Path, tmp_path: Path) -> None:
    """A photo (RGB, no alpha) runs end to end through remove_background="auto" (the default)
    with a tiny BiRefNet given as background_model; BiRefNet is loaded by the first view that
    needs it, once. On TRELLIS the default guidance formula is TRELLIS's: guidance="trellis"
    gives the same Gaussians; "reconviagen" runs too."""
    folder = write_tiny_birefnet(tmp_path / "birefnet")
    loads: List[str] = []

    def log(level: recon.LogLevel, message: str) -> None:
        if message.startswith("background removal: BiRefNet from"):
            loads.append(message)
    quick: Dict[str, Any] = {"seed": 3, "sparse_structure_steps": 1, "slat_steps": 1,
                             "formats": ("gaussians",)}
    with recon.Model(model_dir, device="cpu", offline=True, log=log,
                     background_model=folder) as m:
        with m.run(CUTOUT, **quick):  # a cut-out keeps its alpha: no BiRefNet
            pass
        assert loads == []
        with pytest.raises(recon.UnsupportedError):
            m.run(PHOTO, remove_background="never", **quick)
        start = time.perf_counter()
        with m.run(PHOTO, **quick) as a, \
                m.run(PHOTO, guidance=recon.Guidance.TRELLIS, **quick) as b, \
                m.run([PNG], guidance="reconviagen", remove_background="always", **quick) as c:
            TIMINGS.append(f"photo + background removal, three 1 + 1 step runs: "
                           f"{time.perf_counter() - start:.2f} s")
            ga, gb, gc_ = a.gaussians, b.gaussians, c.gaussians
            assert ga is not None and gb is not None and gc_ is not None
            check_gaussians(ga)
            check_gaussians(gc_)
            assert np.array_equal(ga.xyz, gb.xyz) and np.array_equal(ga.opacity, gb.opacity)
        assert len(loads) == 1, loads
        assert str(folder) in loads[0]
    # A BiRefNet that cannot be had fails the run that needs it, naming background removal.
    (tmp_path / "empty").mkdir()
    with recon.Model(model_dir, device="cpu", offline=True,
                     background_model=tmp_path / "empty") as m:
        with pytest.raises(recon.IoError) as info:
            m.run(PHOTO, **quick)
        assert "background removal" in info.value.message and "image 0" in info.value.message

"""Model.run's arguments and recon_run's checks, the progress callback, cancellation (Model.cancel,
tokens, events, progress) and concurrent runs. Runs are stopped early by their progress callback
once their arguments have been accepted; test_generate.py runs to the end."""

from __future__ import annotations

import ctypes
import math
import threading
import time
from ctypes import POINTER, byref, c_uint8, c_void_p, sizeof
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

import recon
from recon import abi
from recon.abi import RECON_ERR_INVALID_ARGUMENT
from support import CUTOUT, CUTOUT_PNG, PHOTO, PNG, lib, png_image, raw_run, run_until

SS = recon.Stage.SPARSE_STRUCTURE


def strided_png() -> memoryview:
    """PNG as a non-contiguous memoryview (every other byte of a bigger buffer)."""
    buffer = bytearray(2 * len(PNG))
    buffer[::2] = PNG
    return memoryview(buffer)[::2]


def test_run_argument_errors(model: recon.Model, tmp_path: Path) -> None:
    m = model
    with pytest.raises(recon.InvalidArgumentError):
        m.run([])
    with pytest.raises(recon.InvalidArgumentError):
        m.run([b""])
    with pytest.raises(recon.FormatError) as info:
        m.run([b"this is not an image"])
    assert info.value.status == abi.RECON_ERR_FORMAT
    with pytest.raises(recon.FormatError):
        m.run([PNG[:20]])
    # What cannot be marshalled is refused before the library sees it.
    with pytest.raises(ValueError, match="uint8"):
        m.run([np.zeros((4, 4, 2), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        m.run([np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(TypeError):
        m.run([PNG], steps=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        m.run([12345])
    with pytest.raises(FileNotFoundError):
        m.run([tmp_path / "no_such_image.png"])
    with pytest.raises(ValueError, match="seed"):
        m.run([PNG], seed=-1)
    with pytest.raises(ValueError, match="seed"):
        m.run([PNG], seed=2**64)
    with pytest.raises(TypeError):
        m.run([PNG], seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="slat_steps"):
        m.run([PNG], slat_steps=-1)
    with pytest.raises(ValueError, match="format"):
        m.run([PNG], formats=("gaussians", "pointcloud"))
    with pytest.raises(ValueError, match="mode"):
        m.run([PNG], mode="average")
    with pytest.raises(ValueError, match="remove_background 'sometimes': use one of auto"):
        m.run([PNG], remove_background="sometimes")
    with pytest.raises(ValueError, match="guidance"):
        m.run([PNG], guidance="cfg++")
    with pytest.raises(ValueError, match="guidance"):
        m.run([PNG], guidance=2**31)
    # Raw calls: NULL pointers, counts, result pointer untouched.
    img = png_image()
    assert lib.recon_run(None, byref(img), 1, None, byref(c_void_p())) == \
        RECON_ERR_INVALID_ARGUMENT
    assert lib.recon_run(m.handle, byref(img), 1, None, None) == RECON_ERR_INVALID_ARGUMENT
    assert raw_run(m, byref(img), 0) == RECON_ERR_INVALID_ARGUMENT
    assert raw_run(m, None, 1) == RECON_ERR_INVALID_ARGUMENT
    assert raw_run(m, (abi.Image * 65)(*[png_image()] * 65), 65) == RECON_ERR_INVALID_ARGUMENT
    with pytest.raises(recon.InvalidArgumentError):  # more views than the library takes
        m.run([PNG] * 65)
    # Raw pixels: short buffer, bad stride, zero width.
    pixels = (c_uint8 * 80)()
    raw = abi.Image()
    lib.recon_image_init(byref(raw))
    raw.format, raw.data, raw.width, raw.height = abi.RECON_IMAGE_RGB8, pixels, 4, 4
    for size, stride, width in [(47, 0, 4), (48, 11, 4), (48, 16, 4), (48, 0, 0)]:
        raw.size, raw.stride, raw.width = size, stride, width
        assert raw_run(m, byref(raw), 1) == RECON_ERR_INVALID_ARGUMENT, (size, stride, width)
    raw.format = 7
    assert raw_run(m, byref(raw), 1) == RECON_ERR_INVALID_ARGUMENT
    with pytest.raises(recon.InvalidArgumentError):  # an empty pixel array: the library says
        m.run([np.zeros((0, 4, 3), np.uint8)])
    # recon_image.struct_size.
    for size in (0, 4, sizeof(abi.Image) - 8, sizeof(abi.Image) + 8):
        pair = (abi.Image * 2)(png_image(), png_image())
        pair[0].struct_size = size
        assert raw_run(m, pair, 1) == RECON_ERR_INVALID_ARGUMENT, size
        assert "struct_size" in m.last_error


@pytest.mark.parametrize("params, needle", [
    ({"sparse_structure_cfg_strength": math.nan}, "cfg_strength"),
    ({"slat_cfg_strength": math.inf}, "cfg_strength"),
    ({"slat_cfg_strength": 101.0}, "cfg_strength"),
    ({"formats": 8}, "formats"),
    ({"formats": 0}, "format"),
    ({"formats": ()}, "format"),
    ({"mode": 2}, "multi_image_mode"),
    ({"slat_steps": 1001}, "steps"),
    ({"remove_background": 3}, "remove_background is 3"),
    ({"remove_background": -1}, "remove_background is -1"),
    ({"guidance": 3}, "guidance is 3"),
    ({"guidance": -(2**31)}, "guidance"),
])
def test_run_bad_params(model: recon.Model, params: Dict[str, Any], needle: str) -> None:
    with pytest.raises(recon.InvalidArgumentError) as info:
        model.run([PNG], **params)
    assert needle in info.value.message
    assert isinstance(info.value, ValueError)


def test_run_params_struct_size(model: recon.Model) -> None:
    class Padded(ctypes.Structure):
        _fields_ = [("p", abi.RunParams), ("tail", ctypes.c_uint8 * 64)]
    img = png_image()
    # below v1's 56 bytes, between v1 and v2, or above the struct this binding declares
    for size in (0, 4, 48, 60, sizeof(abi.RunParams) + 8):
        big = Padded()
        lib.recon_run_params_init(byref(big.p))
        big.p.struct_size = size
        st = raw_run(model, byref(img), 1, ctypes.cast(byref(big), POINTER(abi.RunParams)))
        assert st == RECON_ERR_INVALID_ARGUMENT, size
        assert "struct_size" in model.last_error


def test_run_accepted(model: recon.Model, image_path: Path) -> None:
    # Valid requests are accepted. To keep this quick, each run is stopped by its progress
    # callback once its views are encoded or after one sampler step; test_generate runs to the
    # end. Defaults (pipeline.json's 25 + 25 steps), raw and encoded cut-outs, one image or a
    # list, a file path (str or Path).
    m = model
    run_until(m, [CUTOUT], (SS, 0))
    run_until(m, CUTOUT_PNG, (SS, 0), seed=3)
    run_until(m, image_path, (SS, 0))
    run_until(m, [str(image_path), bytearray(image_path.read_bytes())], (SS, 0))
    # Without background removal an opaque image or a photo cannot be preprocessed:
    # UnsupportedError saying so; without preprocessing it is accepted. (test_generate runs
    # them through background removal.)
    with pytest.raises(recon.UnsupportedError) as info:
        m.run([PNG], seed=1, remove_background="never")
    assert info.value.status == abi.RECON_ERR_UNSUPPORTED
    assert "background" in info.value.message
    assert m.last_error == info.value.message
    with pytest.raises(recon.UnsupportedError):
        m.run(PHOTO, remove_background=recon.BackgroundRemoval.NEVER)
    # NULL params and a v1 struct (what programs built against v1 pass) keep v1's behaviour:
    # no background removal, whatever the bytes after the v1 struct hold.
    assert raw_run(m, byref(png_image()), 1) == abi.RECON_ERR_UNSUPPORTED
    v1 = abi.RunParams()
    lib.recon_run_params_init(byref(v1))
    v1.remove_background, v1.guidance = 77, 77  # beyond the caller's 56 bytes: never read
    assert v1.struct_size == 56
    assert raw_run(m, byref(png_image()), 1, byref(v1)) == abi.RECON_ERR_UNSUPPORTED
    v1.struct_size = sizeof(v1)
    assert raw_run(m, byref(png_image()), 1, byref(v1)) == RECON_ERR_INVALID_ARGUMENT
    run_until(m, [PNG], (SS, 0), preprocess=False)
    run_until(m, [PHOTO], (SS, 0), preprocess=False, remove_background="always")
    # TRELLIS estimates no cameras: asking it not to is accepted (struct v3's field).
    run_until(m, [CUTOUT], (SS, 0), estimate_cameras=False)
    # Several views of every kind, explicit settings, both modes: one sampler step each.
    rgb = np.full((4, 4, 3), 200, np.uint8)
    rgba = np.full((6, 5, 4), 255, np.uint8)
    views = [PNG, bytearray(PNG), memoryview(PNG), rgb, rgba, rgb[:, ::-1], rgba[::2, 1:],
             strided_png()]
    for mode in (recon.MultiImageMode.STOCHASTIC, "multidiffusion"):
        run_until(m, views, (SS, 1), mode=mode, sparse_structure_steps=12, slat_steps=1000,
                  sparse_structure_cfg_strength=0.0, slat_cfg_strength=None, preprocess=False,
                  formats=recon.Format.GAUSSIANS | recon.Format.RADIANCE_FIELD)
    run_until(m, np.stack([rgb, rgb]), (SS, 0), preprocess=False,
              formats=["gaussians", recon.Format.MESH])
    # Preprocessed cut-outs, one with padded rows: a crop of a wider array, passed as it is.
    wide = np.zeros((64, 70, 4), np.uint8)
    wide[:, :64] = CUTOUT
    run_until(m, [CUTOUT, wide[:, :64]], (SS, 0))


def test_progress(model: recon.Model) -> None:
    m = model
    # A failing run reports up to where it failed (an opaque image: at preprocessing).
    reports: List[Tuple[int, int, int]] = []
    with pytest.raises(recon.UnsupportedError):
        m.run([PNG], progress=lambda *r: reports.append(r), remove_background="never")
    assert reports == [(recon.Stage.PREPROCESS, 0, 1)]
    assert isinstance(reports[0][0], recon.Stage)
    with pytest.raises(recon.CancelledError) as info:
        m.run([PNG, PNG], progress=lambda stage, step, total: False)
    assert info.value.status == recon.Status.CANCELLED

    def boom(stage: int, step: int, total: int) -> bool:
        raise KeyError("boom")
    with pytest.raises(KeyError):  # an exception in the callback cancels and propagates
        m.run([CUTOUT], progress=boom)
    # Raw: user_data is passed through.
    seen: List[Optional[int]] = []

    def on_progress(report: Any, user_data: Optional[int]) -> int:
        seen.append(user_data)
        assert report.contents.struct_size == sizeof(abi.Progress)
        return 1
    callback = abi.ProgressCallback(on_progress)
    rp = abi.RunParams()
    lib.recon_run_params_init(byref(rp))
    rp.progress_callback, rp.progress_user_data = callback, 0xBEEF
    assert raw_run(m, byref(png_image()), 1, byref(rp)) == abi.RECON_ERR_UNSUPPORTED
    assert seen == [0xBEEF]


def test_idle_cancel_is_forgotten(model: recon.Model) -> None:
    # A cancel while no run is active is forgotten: the next run is stopped by its own
    # callback, not by it.
    t = threading.Thread(target=model.cancel)
    t.start()
    t.join()
    lib.recon_cancel(model.handle)
    run_until(model, [CUTOUT], (recon.Stage.CONDITION, 0))


def test_concurrent_runs_take_turns(model: recon.Model) -> None:
    # Concurrent runs on one model are serialised, and each gets its own answer. Each run
    # stops once its view is encoded; `in_flight` counts runs between their first report and
    # their stop, so more than one means two runs overlapped.
    lock = threading.Lock()
    in_flight, overlaps = [0], [0]
    statuses: List[int] = []

    def progress(stage: int, step: int, total: int) -> bool:
        with lock:
            if (stage, step) == (recon.Stage.PREPROCESS, 0):
                overlaps[0] += in_flight[0] > 0
                in_flight[0] += 1
            if stage >= recon.Stage.CONDITION:
                in_flight[0] -= 1
                return False
        return True

    def worker(seed: int) -> None:
        try:
            model.run([CUTOUT], seed=seed, progress=progress)
        except recon.ReconError as e:
            statuses.append(e.status)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [abi.RECON_ERR_CANCELLED] * 4
    assert (in_flight[0], overlaps[0]) == (0, 0)


HeldRun = Tuple[threading.Thread, threading.Event, threading.Event, Dict[str, Any]]


def held_run(model: recon.Model, **kwargs: Any) -> HeldRun:
    """Starts a run on another thread that its progress callback holds once the
    sparse-structure sampler starts, until `release` is set. Returns (thread, started,
    release, outcome); outcome gets "result" or "error", and "reports"."""
    started, release = threading.Event(), threading.Event()
    outcome: Dict[str, Any] = {"reports": []}

    def progress(stage: int, step: int, total: int) -> bool:
        outcome["reports"].append((stage, step, total))
        if stage == SS and not started.is_set():
            started.set()
            outcome["held"] = release.wait(60)
        return True

    def worker() -> None:
        try:
            outcome["result"] = model.run([CUTOUT], seed=1, sparse_structure_steps=2,
                                          slat_steps=2, progress=progress, **kwargs)
        except recon.ReconError as e:
            outcome["error"] = e
    thread = threading.Thread(target=worker)
    thread.start()
    assert started.wait(120)
    return thread, started, release, outcome


def test_cancel_token(model: recon.Model) -> None:
    # A token set while the run is held is seen by the library (recon_cancel) at the next step.
    token = recon.CancelToken()
    thread, _, release, outcome = held_run(model, cancel=token)
    token.cancel()
    release.set()
    thread.join()
    assert "result" not in outcome and outcome["held"]
    assert isinstance(outcome["error"], recon.CancelledError)
    assert "recon_cancel" in outcome["error"].message
    assert outcome["reports"][-1] == (SS, 0, 2)
    # A token that is already set cancels the next run at its first report.
    reports: List[Tuple[int, int, int]] = []

    def progress(stage: int, step: int, total: int) -> bool:
        reports.append((stage, step, total))
        return True
    with pytest.raises(recon.CancelledError):
        model.run([CUTOUT], cancel=token, progress=progress)
    assert reports == []


def test_cancel_event(model: recon.Model) -> None:
    # A plain threading.Event works too (polled).
    event = threading.Event()
    thread, _, release, outcome = held_run(model, cancel=event)
    event.set()
    time.sleep(0.2)  # a few polls
    release.set()
    thread.join()
    assert isinstance(outcome["error"], recon.CancelledError)
    assert "recon_cancel" in outcome["error"].message
    assert outcome["reports"][-1] == (SS, 0, 2)


def test_cancel_while_waiting_for_turn(model: recon.Model) -> None:
    # A run waiting for another run on the same model gives up when its token is set; the
    # token of one run never cancels another.
    thread, _, release, outcome = held_run(model, formats="gaussians")
    token = recon.CancelToken()
    waiting: Dict[str, Any] = {}

    def second() -> None:
        try:
            model.run([CUTOUT], cancel=token)
        except recon.ReconError as e:
            waiting["error"] = e
    t2 = threading.Thread(target=second)
    t2.start()
    time.sleep(0.2)
    token.cancel()
    t2.join(30)
    assert not t2.is_alive()
    assert isinstance(waiting["error"], recon.CancelledError)
    assert "waiting" in waiting["error"].message
    release.set()
    thread.join()
    with outcome["result"] as result:  # the first run was not disturbed
        assert len(result.gaussians) > 0


def test_close_during_run(model_dir: Path) -> None:
    # close() while another thread runs the model: the run finishes, the model is freed only
    # once it has returned, and the result outlives the model.
    model = recon.Model.load(model_dir, device="cpu", offline=True)
    handle = model.handle
    frees: List[Any] = []
    free = lib.recon_free

    def counting_free(ptr: Any) -> None:
        frees.append(ptr)
        free(ptr)
    setattr(lib, "recon_free", counting_free)
    try:
        thread, _, release, outcome = held_run(model, formats="gaussians")
        model.close()
        assert model.closed and frees == []
        release.set()
        thread.join()
        assert frees == [handle]
    finally:
        setattr(lib, "recon_free", free)
    with outcome["result"] as result:
        assert len(result.gaussians) > 0

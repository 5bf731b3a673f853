"""Loading: recon.Model.load and recon_load's failures (each status as its exception), the log
callback, what a loaded model reports, closing, and how the package finds the library."""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
from ctypes import POINTER, byref, sizeof
from pathlib import Path
from typing import Any, List, Optional, Tuple, Type

import pytest

import recon
from recon import abi
from recon.abi import RECON_ERR_INVALID_ARGUMENT, RECON_OK
from support import PNG, STEM, TINY_NETWORKS, lib, load_params, raw_load


def broken_model(model_dir: Path, dst: Path, *, pipeline_json: Optional[str] = None,
                 truncate_to: int = 0, garbage_header: bool = False,
                 replace: Optional[Tuple[bytes, bytes]] = None) -> Path:
    """A copy of the tiny model in `dst`, broken as asked."""
    shutil.copytree(model_dir, dst)
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
        assert len(old) == len(new)
        assert old in data[header]
        data[header] = bytes(data[header]).replace(old, new, 1)
    if truncate_to:
        del data[truncate_to:]
    weights.write_bytes(bytes(data))
    return dst


def assert_load_fails(source: Any, error: Type[recon.ReconError], needle: str) -> str:
    """Model.load(source) raises `error` whose message names `needle`; returns the message."""
    with pytest.raises(error) as info:
        recon.Model.load(source, device="cpu", offline=True)
    assert info.value.status == error.status
    assert needle in info.value.message
    assert str(info.value) == f"{recon.status_string(error.status)}: {info.value.message}"
    copy = pickle.loads(pickle.dumps(info.value))  # e.g. across multiprocessing
    assert (type(copy), copy.status, copy.message, str(copy)) == (
        error, info.value.status, info.value.message, str(info.value))
    return info.value.message


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model_dir"
    message = assert_load_fails(missing, recon.IoError, "no_such_model_dir")
    st, _, raw = raw_load(load_params(missing))
    assert st == abi.RECON_ERR_IO
    assert raw.decode() == message
    with pytest.raises(OSError):  # IoError is an OSError too
        recon.Model.load(missing, device="cpu", offline=True)


def test_malformed_pipeline_json(model_dir: Path, tmp_path: Path) -> None:
    bad = broken_model(model_dir, tmp_path / "m",
                       pipeline_json='{"name": "TrellisImageTo3DPipeline",')
    assert_load_fails(bad, recon.FormatError, "pipeline.json")
    assert raw_load(load_params(bad))[0] == abi.RECON_ERR_FORMAT


@pytest.mark.parametrize("damage", [{"truncate_to": 100}, {"truncate_to": 10000},
                                    {"truncate_to": 5}, {"garbage_header": True}],
                         ids=["trunc_header", "trunc_data", "trunc_5", "garbage_header"])
def test_corrupt_safetensors(model_dir: Path, tmp_path: Path, damage: Any) -> None:
    bad = broken_model(model_dir, tmp_path / "m", **damage)
    assert_load_fails(bad, recon.FormatError, "safetensors")
    assert raw_load(load_params(bad))[0] == abi.RECON_ERR_FORMAT


def test_missing_tensor(model_dir: Path, tmp_path: Path) -> None:
    bad = broken_model(model_dir, tmp_path / "m",
                       replace=(b'"input_layer.bias"', b'"input_layer.biaz"'))
    assert_load_fails(bad, recon.CheckpointError, "input_layer.bias")
    assert raw_load(load_params(bad))[0] == abi.RECON_ERR_CHECKPOINT


def test_misshaped_tensor(model_dir: Path, tmp_path: Path) -> None:
    bad = broken_model(model_dir, tmp_path / "m", replace=(
        b'"input_layer.weight":{"dtype":"F32","shape":[12,8,',
        b'"input_layer.weight":{"dtype":"F32","shape":[8,12,'))
    assert_load_fails(bad, recon.CheckpointError, "input_layer.weight")


def test_offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert_load_fails("someone/missing-repo", recon.NetworkError, "someone/missing-repo")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline from the environment
    with pytest.raises(recon.NetworkError) as info:
        recon.Model.load("someone/missing-repo@v1.0", device="cpu")
    assert info.value.status == recon.Status.NETWORK == abi.RECON_ERR_NETWORK


def test_devices(model_dir: Path) -> None:
    with pytest.raises(recon.DeviceError) as info:
        recon.Model.load(model_dir, device=99)
    assert info.value.status == abi.RECON_ERR_DEVICE
    assert "99" in info.value.message
    assert raw_load(load_params(model_dir, device=99))[0] == abi.RECON_ERR_DEVICE
    with pytest.raises(recon.DeviceError):
        recon.Model.load(model_dir, device="cuda:99")
    with recon.Model.load(model_dir, device="auto") as model:
        assert model.device == ("cuda:0" if recon.cuda_device_count() else "cpu")
    with recon.Model.load(model_dir) as model:  # auto by default
        assert model.device == ("cuda:0" if recon.cuda_device_count() else "cpu")
    with recon.Model(model_dir, device="cpu") as model:  # Model(...) is Model.load(...)
        assert model.device == "cpu"
    for bad in ("gpu", "cuda:x", "cuda:-1"):
        with pytest.raises(ValueError, match="device"):
            recon.Model.load(model_dir, device=bad)
    with pytest.raises(recon.InvalidArgumentError):  # out of range: the library says so
        recon.Model.load(model_dir, device=-3)


def test_log_callback(model_dir: Path) -> None:
    # Raw: user_data is passed through, levels are in range.
    received: List[Tuple[int, str, Optional[int]]] = []

    def on_log(level: int, message: bytes, user_data: Optional[int]) -> None:
        received.append((level, message.decode(), user_data))
    callback = abi.LogCallback(on_log)
    p = load_params(model_dir)
    p.log_level = abi.RECON_LOG_DEBUG
    p.log_callback = callback
    p.log_user_data = 0xC0FFEE
    st, handle, err = raw_load(p)
    assert st == RECON_OK, err
    lib.recon_free(handle)
    assert received
    for level, message, user_data in received:
        assert level in range(abi.RECON_LOG_ERROR, abi.RECON_LOG_DEBUG + 1)
        assert message
        assert user_data == 0xC0FFEE
    # Through the package: (LogLevel, str), with a level filter.
    messages: List[Tuple[recon.LogLevel, str]] = []
    with recon.Model.load(model_dir, device="cpu", log=lambda *m: messages.append(m)):
        pass
    assert any("loaded" in m for _, m in messages), messages
    assert all(isinstance(level, recon.LogLevel) for level, _ in messages)
    with recon.Model.load(model_dir, device="cpu", log_level=recon.LogLevel.ERROR,
                          log=lambda *m: messages.append((recon.LogLevel.ERROR, "unexpected"))):
        pass
    assert (recon.LogLevel.ERROR, "unexpected") not in messages
    # An exception in the callback is contained.
    with recon.Model.load(model_dir, device="cpu", log=lambda level, msg: 1 / 0) as model:
        assert len(model.networks) == len(TINY_NETWORKS)


def test_log_to_logging(model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("recon.test")
    with caplog.at_level(logging.DEBUG, logger="recon.test"):
        with recon.Model.load(model_dir, device="cpu", log=logger):
            pass
    records = [r for r in caplog.records if r.name == "recon.test"]
    assert any("loaded" in r.getMessage() and r.levelno == logging.INFO for r in records)


def test_model_info(model: recon.Model) -> None:
    assert model.pipeline_name == "TrellisImageTo3DPipeline"
    assert model.device == "cpu"
    assert lib.recon_model_device(model.handle) == abi.RECON_DEVICE_CPU
    assert lib.recon_model_num_networks(model.handle) == len(TINY_NETWORKS)
    assert [(n.key, n.class_name, n.stem) for n in model.networks] == TINY_NETWORKS
    assert all(n.implemented for n in model.networks)
    assert all(n.num_elements > 0 for n in model.networks)
    assert "TrellisImageTo3DPipeline" in repr(model)
    info = abi.NetworkInfo(struct_size=sizeof(abi.NetworkInfo))
    assert lib.recon_model_network(model.handle, len(TINY_NETWORKS), byref(info)) == \
        RECON_ERR_INVALID_ARGUMENT
    assert "out of range" in model.last_error
    assert lib.recon_model_network(model.handle, 0, None) == RECON_ERR_INVALID_ARGUMENT

    class Padded(ctypes.Structure):
        _fields_ = [("info", abi.NetworkInfo), ("tail", ctypes.c_uint8 * 64)]
    v1 = sizeof(abi.NetworkInfo)
    for size in (0, 4, v1 - 8, v1 + 8):
        big = Padded()
        big.info.struct_size = size
        out = ctypes.cast(byref(big), POINTER(abi.NetworkInfo))
        assert lib.recon_model_network(model.handle, 0, out) == RECON_ERR_INVALID_ARGUMENT
        assert big.info.key is None
        assert "struct_size" in model.last_error


def test_model_lifetime(model_dir: Path) -> None:
    with recon.Model.load(model_dir, device="cpu") as model:
        assert model.last_error == ""
        assert model.handle
        assert not model.closed
    assert model.closed
    assert repr(model) == "<recon.Model closed>"
    with pytest.raises(ValueError, match="closed"):
        model.handle
    with pytest.raises(ValueError, match="closed"):
        model.run([PNG])
    with pytest.raises(ValueError, match="closed"):
        model.pipeline_name
    model.cancel()  # nothing to cancel: no error
    model.close()  # twice is fine
    # Without close(), the model is freed with its last reference.
    frees = lib.recon_free

    calls: List[Any] = []

    def counting_free(handle: Any) -> None:
        calls.append(handle)
        frees(handle)
    setattr(lib, "recon_free", counting_free)
    try:
        model = recon.Model.load(model_dir, device="cpu")
        handle = model.handle
        del model
        assert calls == [handle]
    finally:
        setattr(lib, "recon_free", frees)


# -- finding the library -----------------------------------------------------------------------

PACKAGE_DIR = Path(recon.__file__).parent


def python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Runs `code` in a fresh interpreter with exactly `env` (plus PATH)."""
    env = {"PATH": os.environ.get("PATH", ""), **env}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, text=True,
                          capture_output=True, timeout=120)


def test_library_from_environment(tmp_path: Path) -> None:
    code = textwrap.dedent("""\
        import recon
        try:
            recon.version()
        except OSError as e:
            print("OSError", e)
        """)
    missing = tmp_path / "nowhere" / "librecon.so"
    out = python(code, {"RECON_LIBRARY": str(missing), "PYTHONPATH": str(PACKAGE_DIR.parent)},
                 tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OSError") and str(missing) in out.stdout, out.stdout
    assert "RECON_LIBRARY" in out.stdout


def test_library_next_to_package(tmp_path: Path) -> None:
    """A copy of the package with librecon.so inside it (as a wheel could bundle it) loads that
    file without RECON_LIBRARY, and refuses a library of another ABI version."""
    copy = tmp_path / "site" / "recon"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / abi.LIBRARY_NAME).symlink_to(abi.library_path())
    code = textwrap.dedent("""\
        import recon
        print(recon.abi.library_path())
        print(recon.version())
        recon.abi.ABI_VERSION = 99
        try:
            recon.load_library(recon.abi.library_path())
        except OSError as e:
            print("OSError", e)
        """)
    out = python(code, {"PYTHONPATH": str(copy.parent)}, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == [str(copy / abi.LIBRARY_NAME), recon.version()], out.stdout
    assert "ABI version 1, this package needs 99" in lines[2]


def test_library_from_system_loader(tmp_path: Path) -> None:
    code = "import recon\nprint(recon.abi.library_path())\nprint(recon.version())\n"
    out = python(code, {"LD_LIBRARY_PATH": str(Path(abi.library_path()).parent),
                        "PYTHONPATH": str(PACKAGE_DIR.parent)}, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [abi.LIBRARY_NAME, recon.version()]

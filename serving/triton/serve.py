#!/usr/bin/env python3
"""Serves recon with Triton Inference Server: the ``tritonserver`` binary and Python backend that
PyPI's nvidia-pytriton ships, over a model repository written here (config.pbtxt + model.py).

    python serve.py --model microsoft/TRELLIS-image-large --device cuda --instances 1
    python serve.py --write-repository /models --device cuda --instances 2   # for a container

Every flag has an environment default (RECON_TRITON_<FLAG>, e.g. RECON_TRITON_INSTANCES=2), so
a container or Kubernetes manifest can configure it without a command line. Instances: with
``--device cuda`` Triton puts ``--instances`` model instances on every GPU in ``--gpus`` (all
visible ones by default), each its own process with its own copy of the weights; with
``--device cpu`` it runs ``--instances`` instances in total. Requests wait in Triton's queue
(``--max-queue-size``; beyond it they are refused at once) for at most ``--queue-timeout-ms``
(default 10 minutes; a client may ask for less per request, never for more) before they are
rejected.

The server stops on SIGINT/SIGTERM (Triton finishes the requests in flight, up to
``--exit-timeout-secs``); the temporary workspace is removed afterwards.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
MODEL_NAME = "recon"

#: (name, Triton data type, dims, optional) of the inputs, in the order of model.py's docs.
INPUTS: Tuple[Tuple[str, str, Tuple[int, ...], bool], ...] = (
    ("images", "TYPE_STRING", (-1,), False),
    ("seed", "TYPE_UINT64", (1,), True),
    ("sparse_structure_steps", "TYPE_INT32", (1,), True),
    ("slat_steps", "TYPE_INT32", (1,), True),
    ("sparse_structure_cfg_strength", "TYPE_FP32", (1,), True),
    ("slat_cfg_strength", "TYPE_FP32", (1,), True),
    ("multi_image_mode", "TYPE_STRING", (1,), True),
    ("preprocess", "TYPE_BOOL", (1,), True),
)
OUTPUTS: Tuple[Tuple[str, str, Tuple[int, ...]], ...] = (
    ("glb", "TYPE_STRING", (1,)),
    ("gaussians_ply", "TYPE_STRING", (1,)),
    ("num_gaussians", "TYPE_INT64", (1,)),
    ("num_vertices", "TYPE_INT64", (1,)),
    ("num_faces", "TYPE_INT64", (1,)),
    ("camera_extrinsics", "TYPE_FP32", (-1, 4, 4)),
    ("camera_intrinsics", "TYPE_FP32", (-1, 3, 3)),
    ("camera_sizes", "TYPE_INT32", (-1, 2)),
)


@dataclass(frozen=True)
class ModelSettings:
    """What config.pbtxt says about the model: where it runs, how many instances, the queue."""

    model: str = "microsoft/TRELLIS-image-large"
    device: str = "cuda"
    instances: int = 1
    gpus: Tuple[int, ...] = ()
    max_queue_size: int = 64
    queue_timeout_ms: int = 600_000
    offline: str = ""
    low_vram: bool = False
    vggt_model: str = ""
    log_level: str = "warn"


def pbtxt_string(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 passes through; quotes and backslashes are
    escaped; control characters have no business in a model path)."""
    if any(ord(c) < 0x20 for c in text):
        raise ValueError(f"control character in {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pbtxt_dims(dims: Sequence[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def instance_group(settings: ModelSettings) -> str:
    """``count`` instances on each listed GPU (KIND_GPU: Triton tells every instance its GPU),
    or ``count`` instances on the CPU."""
    if settings.device == "cpu":
        return f"instance_group [ {{ count: {settings.instances} kind: KIND_CPU }} ]"
    gpus = f" gpus: {pbtxt_dims(settings.gpus)}" if settings.gpus else ""
    return f"instance_group [ {{ count: {settings.instances} kind: KIND_GPU{gpus} }} ]"


def render_config(settings: ModelSettings) -> str:
    """config.pbtxt of the recon model. No batching (max_batch_size 0: one request, one
    asset); the dynamic batcher is there for its queue policy: bounded queue, REJECT on
    timeout, and a per-request timeout that clients may set themselves."""
    lines = [f"name: {pbtxt_string(MODEL_NAME)}", 'backend: "python"', "max_batch_size: 0",
             "input ["]
    lines += [",\n".join(
        f"  {{ name: {pbtxt_string(n)} data_type: {t} dims: {pbtxt_dims(d)}"
        + (" optional: true }" if optional else " }") for n, t, d, optional in INPUTS)]
    lines += ["]", "output ["]
    lines += [",\n".join(f"  {{ name: {pbtxt_string(n)} data_type: {t} dims: {pbtxt_dims(d)} }}"
                         for n, t, d in OUTPUTS)]
    lines += ["]", instance_group(settings), "dynamic_batching {", "  default_queue_policy {",
              "    timeout_action: REJECT",
              f"    default_timeout_microseconds: {settings.queue_timeout_ms * 1000}",
              "    allow_timeout_override: true",
              f"    max_queue_size: {settings.max_queue_size}", "  }", "}"]
    parameters = {"model": settings.model, "device": settings.device,
                  "offline": settings.offline, "low_vram": "true" if settings.low_vram else "",
                  "vggt_model": settings.vggt_model, "log_level": settings.log_level}
    lines += [f"parameters {{ key: {pbtxt_string(k)} value {{ string_value: {pbtxt_string(v)} }} }}"
              for k, v in parameters.items()]
    return "\n".join(lines) + "\n"


def write_repository(root: Path, settings: ModelSettings) -> Path:
    """A Triton model repository with the recon model under `root`; returns the model folder."""
    version = root / MODEL_NAME / "1"
    version.mkdir(parents=True, exist_ok=True)
    (root / MODEL_NAME / "config.pbtxt").write_text(render_config(settings), encoding="utf-8")
    shutil.copyfile(HERE / "model.py", version / "model.py")
    return root / MODEL_NAME


def pytriton_dist() -> Tuple[Path, Path]:
    """(tritonserver folder, bundled shared libraries) of the installed nvidia-pytriton, found
    without importing it (pytriton's own Python API is not used)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("serve.py: nvidia-pytriton is not installed in this Python "
                         f"({sys.executable}); see serving/triton/README.md")
    package = Path(list(spec.submodule_search_locations)[0])
    return package / "tritonserver", package.parent / "nvidia_pytriton.libs"


def libpython_dir() -> str:
    """The folder of this Python's shared libpython, which the backend's stub embeds: the stub
    then runs this very interpreter, with this environment's packages (recon, numpy). A
    --enable-shared build keeps it in LIBDIR; Debian's and Ubuntu's in LIBDIR/MULTIARCH."""
    soname = f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    for folder in (libdir, os.path.join(libdir, multiarch) if multiarch else ""):
        if folder and os.path.exists(os.path.join(folder, soname)):
            return folder
    raise SystemExit(f"serve.py: no {soname} beside {sys.executable} (looked in {libdir} and "
                     f"{libdir}/{multiarch}); Triton's Python backend embeds a shared libpython")


def prepare_backends(dist: Path, workspace: Path) -> Path:
    """A backend folder holding the Python backend with the stub built for this Python's
    version (pytriton ships one stub per version, the backend expects it beside itself)."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        known = sorted(p.name for p in (dist / "python_backend_stubs").iterdir())
        raise SystemExit(f"serve.py: nvidia-pytriton has no Python backend stub for Python "
                         f"{version} (it has {', '.join(known)})")
    backend = workspace / "backends" / "python"
    backend.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(dist / "backends" / "python" / name, backend / name)
    shutil.copy2(stub, backend / "triton_python_backend_stub")
    return backend.parent


def server_env(libs: Path) -> Dict[str, str]:
    """tritonserver's environment: its bundled libraries and libpython on the loader path, and
    this interpreter's folder first on PATH, from where the embedded Python finds its
    environment (a venv's pyvenv.cfg), and PYTHONPATH again as RECON_TRITON_PYTHONPATH (the
    embedded Python ignores PYTHONPATH). Everything else (RECON_LIBRARY, LD_LIBRARY_PATH for
    libtorch, HF_HOME, CUDA_VISIBLE_DEVICES) passes through."""
    env = dict(os.environ)
    inherited = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
    paths = [str(libs), libpython_dir()] + inherited
    env["LD_LIBRARY_PATH"] = ":".join(paths)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if env.get("PYTHONPATH"):  # the stub ignores PYTHONPATH; model.py reads this instead
        env.setdefault("RECON_TRITON_PYTHONPATH", env["PYTHONPATH"])
    return env


def server_args(binary: Path, repository: Path, backends: Path, args: argparse.Namespace,
                gpu: bool) -> List[str]:
    """The tritonserver command line. The Python backend's shared memory grows in large
    steps: a real GLB is tens of MB and 1 MB steps (the default) cost many remaps."""
    return [str(binary), f"--model-repository={repository}", f"--backend-directory={backends}",
            f"--http-address={args.address}", f"--http-port={args.http_port}",
            f"--grpc-address={args.address}", f"--grpc-port={args.grpc_port}",
            f"--metrics-address={args.address}", f"--metrics-port={args.metrics_port}",
            f"--allow-gpu-metrics={'true' if gpu else 'false'}",
            "--exit-on-error=true", "--strict-readiness=true",
            f"--exit-timeout-secs={args.exit_timeout_secs}", f"--log-verbose={args.log_verbose}",
            "--backend-config=python,shm-default-byte-size=16777216",
            "--backend-config=python,shm-growth-byte-size=67108864"]


def die_with_parent() -> None:
    """In the child: SIGTERM when serve.py dies, even by SIGKILL, so no server is orphaned
    (Triton's stubs in turn exit with their server)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def end_process_group(group: int, grace_seconds: float = 5.0) -> None:
    """Ends what is left of tritonserver's process group (Python-backend stubs still busy when
    the server gave up waiting): SIGTERM, then SIGKILL after `grace_seconds`."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def run_server(argv: List[str], env: Dict[str, str]) -> int:
    """Runs tritonserver in its own process group until it exits, passing SIGINT/SIGTERM on;
    then ends the group's leftovers. Returns the server's exit code."""
    process = subprocess.Popen(argv, env=env, preexec_fn=die_with_parent, start_new_session=True)

    def forward(signum: int, _frame: Optional[FrameType]) -> None:
        process.send_signal(signum)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    try:
        return process.wait()
    finally:
        end_process_group(process.pid)


def cuda_device_count() -> int:
    """GPUs recon can use, asked in a child process so that this launcher never loads
    libtorch (only the instances need it)."""
    probe = subprocess.run([sys.executable, "-c", "import recon; print(recon.cuda_device_count())"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise SystemExit(f"serve.py: cannot load recon: {probe.stderr.strip()}")
    return int(probe.stdout.strip())


def env_default(name: str, default: str) -> str:
    return os.environ.get(f"RECON_TRITON_{name.upper()}", default)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=env_default("model", ModelSettings.model),
                   help="local model folder or Hugging Face repo id (default %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   default=env_default("device", "auto"),
                   help="auto: cuda when recon sees a GPU, else cpu (default %(default)s)")
    p.add_argument("--instances", type=int, default=int(env_default("instances", "1")),
                   help="model instances per GPU (cuda) or in total (cpu)")
    p.add_argument("--gpus", default=env_default("gpus", ""),
                   help="comma-separated GPU indices to use (default: every visible GPU)")
    p.add_argument("--threads", type=int, default=int(env_default("threads", "0")),
                   help="CPU threads of each instance (default: OMP_NUM_THREADS if set, else "
                   "the cores shared out among the node's instances)")
    p.add_argument("--max-queue-size", type=int, default=int(env_default("max_queue_size", "64")),
                   help="requests waiting beyond this are refused at once (0: unbounded)")
    p.add_argument("--queue-timeout-ms", type=int,
                   default=int(env_default("queue_timeout_ms",
                                           str(ModelSettings.queue_timeout_ms))),
                   help="a request still queued after this long is rejected (0: never; clients "
                   "may only shorten it, so 0 also disables theirs; default %(default)s)")
    p.add_argument("--offline", choices=("", "true", "false"), default=env_default("offline", ""),
                   help="use only the local Hugging Face cache (default: follow HF_HUB_OFFLINE)")
    p.add_argument("--low-vram", action="store_true", default=env_default("low_vram", "") == "1",
                   help="keep only the running stage's networks on the GPU")
    p.add_argument("--vggt-model", default=env_default("vggt_model", ""),
                   help="TRELLIS-VGGT: VGGT's folder or repo id")
    p.add_argument("--log-level", choices=("error", "warn", "info", "debug"),
                   default=env_default("log_level", "warn"),
                   help="recon's messages in Triton's log")
    p.add_argument("--address", default=env_default("address", "127.0.0.1"),
                   help="address to listen on (0.0.0.0 for every interface; default %(default)s)")
    p.add_argument("--http-port", type=int, default=int(env_default("http_port", "8000")))
    p.add_argument("--grpc-port", type=int, default=int(env_default("grpc_port", "8001")))
    p.add_argument("--metrics-port", type=int, default=int(env_default("metrics_port", "8002")))
    p.add_argument("--exit-timeout-secs", type=int,
                   default=int(env_default("exit_timeout_secs", "30")),
                   help="on shutdown, how long requests in flight may still take")
    p.add_argument("--log-verbose", type=int, default=int(env_default("log_verbose", "0")))
    p.add_argument("--workspace", default=env_default("workspace", ""),
                   help="folder for the repository and backend (default: a temporary one)")
    p.add_argument("--write-repository", metavar="DIR",
                   help="only write the model repository into DIR and exit")
    return p.parse_args(argv)


def model_settings(args: argparse.Namespace, device: str) -> ModelSettings:
    if args.instances < 1:
        raise SystemExit("serve.py: --instances must be at least 1")
    gpus = tuple(int(g) for g in args.gpus.split(",") if g.strip()) if args.gpus else ()
    return ModelSettings(model=args.model, device=device, instances=args.instances, gpus=gpus,
                         max_queue_size=args.max_queue_size, queue_timeout_ms=args.queue_timeout_ms,
                         offline=args.offline, low_vram=args.low_vram,
                         vggt_model=args.vggt_model, log_level=args.log_level)


def resolve_device(requested: str) -> Tuple[str, int]:
    """("cpu" or "cuda", GPUs visible): Triton's instance kind depends on the device, so
    "auto" is settled here."""
    if requested == "cpu":
        return "cpu", 0
    gpus = cuda_device_count()
    if requested == "cuda" and gpus == 0:
        raise SystemExit("serve.py: --device cuda but recon sees no CUDA device")
    return ("cuda" if gpus > 0 else "cpu"), gpus


def instance_threads(args: argparse.Namespace, settings: ModelSettings, gpus: int) -> str:
    """CPU threads of each instance (libtorch's OpenMP pool, OMP_NUM_THREADS): --threads, else
    an OMP_NUM_THREADS already set, else the node's cores shared out among its instances.
    Every instance is a process whose pool would otherwise take every core, and pools that
    oversubscribe the cores spin against each other (4x slower on 2 cores, 2 instances)."""
    if args.threads > 0:
        return str(args.threads)
    if os.environ.get("OMP_NUM_THREADS"):
        return os.environ["OMP_NUM_THREADS"]
    devices = 1 if settings.device == "cpu" else (len(settings.gpus) or max(gpus, 1))
    return str(max(1, (os.cpu_count() or 1) // (settings.instances * devices)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.write_repository:
        device = "cpu" if args.device == "cpu" else "cuda"
        model_dir = write_repository(Path(args.write_repository), model_settings(args, device))
        print(f"serve.py: wrote {model_dir}")
        return 0
    dist, libs = pytriton_dist()
    device, gpus = resolve_device(args.device)
    settings = model_settings(args, device)
    env = server_env(libs)
    env["OMP_NUM_THREADS"] = instance_threads(args, settings, gpus)
    workspace = Path(args.workspace or tempfile.mkdtemp(prefix="recon-triton-"))
    try:
        write_repository(workspace / "models", settings)
        backends = prepare_backends(dist, workspace)
        argv_ = server_args(dist / "bin" / "tritonserver", workspace / "models", backends, args,
                            settings.device == "cuda")
        print(f"serve.py: {settings.instances} instance(s) of {settings.model} on "
              f"{settings.device} ({env['OMP_NUM_THREADS']} CPU threads each), "
              f"HTTP {args.address}:{args.http_port}, gRPC {args.address}:{args.grpc_port}",
              flush=True)
        return run_server(argv_, env)
    finally:
        if not args.workspace:
            shutil.rmtree(workspace, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

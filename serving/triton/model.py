"""recon as a Triton Inference Server model (Python backend): ``<repository>/recon/1/model.py``.

Triton starts one stub process per model instance and calls :meth:`TritonPythonModel.execute`
there; each instance loads its own ``recon.Model``, so instances run in parallel (one per GPU,
or several per GPU) while Triton owns the queue, its timeouts and the HTTP/gRPC protocols.
``serve.py`` writes the repository (config.pbtxt + this file); the same repository runs
unchanged in NVIDIA's tritonserver container when recon is installed there.

Per request (no batch dimension: ``max_batch_size: 0``):

- inputs: ``images`` (BYTES [N], N >= 1 encoded PNG/JPEG/WebP views of one object) and the
  optional generation parameters ``seed`` (UINT64 [1]), ``sparse_structure_steps`` /
  ``slat_steps`` (INT32 [1]), ``sparse_structure_cfg_strength`` / ``slat_cfg_strength``
  (FP32 [1]), ``multi_image_mode`` (BYTES [1]: "stochastic" or "multidiffusion") and
  ``preprocess`` (BOOL [1]); absent ones keep the pipeline's defaults;
- outputs: ``glb`` (BYTES [1], the mesh, with camera nodes when the pipeline estimates poses),
  ``gaussians_ply`` (BYTES [1], 3DGS splat PLY), ``num_gaussians`` / ``num_vertices`` /
  ``num_faces`` (INT64 [1]), ``camera_extrinsics`` (FP32 [C, 4, 4], camera-from-world),
  ``camera_intrinsics`` (FP32 [C, 3, 3], pixels) and ``camera_sizes`` (INT32 [C, 2], width and
  height); C is 0 for TRELLIS, one per view for TRELLIS-VGGT. Only the outputs a client asks
  for are computed: asking for no mesh output skips mesh extraction.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple


def apply_pythonpath() -> None:
    """Puts RECON_TRITON_PYTHONPATH's folders first on sys.path. The backend stub's embedded
    Python ignores PYTHONPATH, so serve.py passes it on under this name: packages installed
    with ``pip --target`` or recon's package straight from bindings/python are then found."""
    folders = os.environ.get("RECON_TRITON_PYTHONPATH", "").split(os.pathsep)
    sys.path[:0] = [f for f in folders if f and f not in sys.path]


apply_pythonpath()

import numpy as np  # noqa: E402 - after the path is complete
import recon  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

#: Optional scalar inputs: name -> (``recon.Model.run`` keyword, conversion of the one value).
SCALAR_INPUTS: Dict[str, Tuple[str, Callable[[Any], Any]]] = {
    "seed": ("seed", int),
    "sparse_structure_steps": ("sparse_structure_steps", int),
    "slat_steps": ("slat_steps", int),
    "sparse_structure_cfg_strength": ("sparse_structure_cfg_strength", float),
    "slat_cfg_strength": ("slat_cfg_strength", float),
    "multi_image_mode": ("mode", lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)),
    "preprocess": ("preprocess", bool),
}
MESH_OUTPUTS = frozenset({"glb", "num_vertices", "num_faces"})
GAUSSIAN_OUTPUTS = frozenset({"gaussians_ply", "num_gaussians"})
CAMERA_OUTPUTS = frozenset({"camera_extrinsics", "camera_intrinsics", "camera_sizes"})
ALL_OUTPUTS = MESH_OUTPUTS | GAUSSIAN_OUTPUTS | CAMERA_OUTPUTS
#: How often a running generation asks Triton whether its request was cancelled: each question
#: is a round trip to the server process, so not at every sampler step on a fast GPU.
CANCEL_POLL_SECONDS = 0.1
PARENT_POLL_SECONDS = 0.5

_LOG_LEVELS = {"error": recon.LogLevel.ERROR, "warn": recon.LogLevel.WARN,
               "info": recon.LogLevel.INFO, "debug": recon.LogLevel.DEBUG}


def model_parameters(model_config: Dict[str, Any]) -> Dict[str, str]:
    """config.pbtxt's ``parameters`` as name -> string (Triton nests each in string_value)."""
    return {key: str(value.get("string_value", ""))
            for key, value in model_config.get("parameters", {}).items()}


def instance_device(args: Dict[str, str], parameters: Dict[str, str]) -> str:
    """The device of this instance. A KIND_GPU instance runs on the GPU Triton placed it on:
    that is how ``instance_group { count: N kind: KIND_GPU }`` puts N instances on every GPU.
    A KIND_CPU instance uses the ``device`` parameter ("cpu", "auto", "cuda:N")."""
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{int(args['model_instance_device_id'])}"
    return parameters.get("device") or "cpu"


def optional_bool(text: str) -> Optional[bool]:
    """A config flag: "" leaves the choice to recon (e.g. HF_HUB_OFFLINE), else true/false."""
    if not text:
        return None
    return text.strip().lower() in ("1", "true", "yes", "on")


def recon_log(level: recon.LogLevel, message: str) -> None:
    """recon's log messages into Triton's log, at the matching level."""
    if level <= recon.LogLevel.ERROR:
        pb_utils.Logger.log_error(message)
    elif level == recon.LogLevel.WARN:
        pb_utils.Logger.log_warn(message)
    elif level == recon.LogLevel.INFO:
        pb_utils.Logger.log_info(message)
    else:
        pb_utils.Logger.log_verbose(message)


class RequestError(ValueError):
    """A request that cannot be run as sent: answered with INVALID_ARG (HTTP 400)."""


def read_images(request: Any) -> List[bytes]:
    """The encoded views of a request (at least one)."""
    tensor = pb_utils.get_input_tensor_by_name(request, "images")
    if tensor is None:
        raise RequestError("input 'images' is missing")
    views = [bytes(v) for v in tensor.as_numpy().reshape(-1)]
    if not views:
        raise RequestError("input 'images' holds no image: send one or more encoded images")
    return views


def read_options(request: Any) -> Dict[str, Any]:
    """``recon.Model.run`` keyword arguments from the optional scalar inputs that are present;
    recon itself judges the values (negative steps, unknown modes) and its errors go back."""
    options: Dict[str, Any] = {}
    for name, (keyword, convert) in SCALAR_INPUTS.items():
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            continue
        values = tensor.as_numpy().reshape(-1)
        if values.size != 1:
            raise RequestError(f"input '{name}' takes one value, got {values.size}")
        options[keyword] = convert(values[0].item() if values.dtype != object else values[0])
    return options


def requested_outputs(request: Any) -> Set[str]:
    """The outputs the client asked for (Triton lists all of them when it named none)."""
    names = set(request.requested_output_names() or ())
    return names & ALL_OUTPUTS or set(ALL_OUTPUTS)


def formats_for(outputs: Set[str]) -> List[str]:
    """The recon formats these outputs need: mesh extraction only when a mesh output is asked
    for (it is the most expensive decoder). Cameras alone still need one format to run."""
    formats = []
    if outputs & GAUSSIAN_OUTPUTS:
        formats.append("gaussians")
    if outputs & MESH_OUTPUTS:
        formats.append("mesh")
    return formats or ["gaussians"]


class CancelWhenRequestCancelled:
    """A ``progress`` callback that stops the run once Triton marks its request cancelled (a
    gRPC client that cancels, times out or disconnects); recon then raises CancelledError at
    its next step and the instance moves on to the next request."""

    def __init__(self, request: Any) -> None:
        self._request = request
        self._next_check = 0.0

    def __call__(self, stage: recon.Stage, step: int, total: int) -> bool:
        now = time.monotonic()
        if now < self._next_check:
            return True
        self._next_check = now + CANCEL_POLL_SECONDS
        return not self._request.is_cancelled()


def bytes_tensor(name: str, data: bytes) -> Any:
    return pb_utils.Tensor(name, np.array([data], dtype=np.object_))


def count_tensor(name: str, count: int) -> Any:
    return pb_utils.Tensor(name, np.array([count], dtype=np.int64))


def camera_tensors(result: recon.Result) -> Dict[str, Any]:
    """The cameras of a result as [C, 4, 4], [C, 3, 3] and [C, 2] arrays (C may be 0)."""
    cameras = result.cameras
    extrinsics = np.zeros((len(cameras), 4, 4), np.float32)
    intrinsics = np.zeros((len(cameras), 3, 3), np.float32)
    sizes = np.zeros((len(cameras), 2), np.int32)
    for i, camera in enumerate(cameras):
        extrinsics[i] = camera.extrinsic_4x4
        intrinsics[i] = camera.intrinsic
        sizes[i] = (camera.width, camera.height)
    return {"camera_extrinsics": extrinsics, "camera_intrinsics": intrinsics,
            "camera_sizes": sizes}


def output_tensors(result: recon.Result, outputs: Set[str]) -> List[Any]:
    """The asked-for outputs of a result; exports run only for the files asked for."""
    tensors = []
    if "glb" in outputs:
        glb = result.export_bytes(recon.ExportFormat.GLB_WITH_CAMERAS)
        tensors.append(bytes_tensor("glb", glb))
    if "gaussians_ply" in outputs:
        tensors.append(bytes_tensor("gaussians_ply",
                                    result.export_bytes(recon.ExportFormat.PLY_GAUSSIANS)))
    if "num_gaussians" in outputs:
        tensors.append(count_tensor("num_gaussians", len(result.gaussians.opacity)))
    if outputs & {"num_vertices", "num_faces"}:
        mesh = result.mesh
        tensors.append(count_tensor("num_vertices", len(mesh.positions)))
        tensors.append(count_tensor("num_faces", len(mesh.indices)))
    if outputs & CAMERA_OUTPUTS:
        tensors.extend(pb_utils.Tensor(name, array)
                       for name, array in camera_tensors(result).items())
    return tensors


def triton_error(error: BaseException) -> Any:
    """A clean per-request error: bad input is INVALID_ARG (HTTP 400), a cancelled run
    CANCELLED, out of memory UNAVAILABLE (another replica may take it), the rest INTERNAL."""
    if isinstance(error, recon.CancelledError):
        code = pb_utils.TritonError.CANCELLED
    elif isinstance(error, (ValueError, TypeError, recon.FormatError, recon.UnsupportedError)):
        code = pb_utils.TritonError.INVALID_ARG
    elif isinstance(error, (recon.OutOfMemoryError, MemoryError)):
        code = pb_utils.TritonError.UNAVAILABLE
    else:
        code = pb_utils.TritonError.INTERNAL
    return pb_utils.TritonError(str(error) or type(error).__name__, code)


def cancel_when_orphaned(model: recon.Model, stop: threading.Event) -> None:
    """Cancels the run in progress once tritonserver is gone (killed, or out of its exit
    timeout): the stub notices a dead server only between requests, and would otherwise finish
    a long generation as an orphan."""
    server = os.getppid()
    while not stop.wait(PARENT_POLL_SECONDS):
        if os.getppid() != server:
            model.cancel()
            return


class TritonPythonModel:
    """The Triton Python-backend entry points: initialize, execute, finalize."""

    model: recon.Model
    _stop_watch: threading.Event

    def initialize(self, args: Dict[str, str]) -> None:
        """Loads the pipeline on this instance's device. A failure fails the model load, and
        tritonserver (run with --exit-on-error) stops instead of serving nothing."""
        parameters = model_parameters(json.loads(args["model_config"]))
        device = instance_device(args, parameters)
        self.model = recon.Model.load(
            parameters.get("model") or "microsoft/TRELLIS-image-large", device=device,
            offline=optional_bool(parameters.get("offline", "")),
            low_vram=bool(optional_bool(parameters.get("low_vram", ""))),
            vggt_model=parameters.get("vggt_model") or None,
            log=recon_log, log_level=_LOG_LEVELS.get(parameters.get("log_level", ""),
                                                     recon.LogLevel.WARN))
        self._stop_watch = threading.Event()
        threading.Thread(target=cancel_when_orphaned, args=(self.model, self._stop_watch),
                         name="recon-orphan-watch", daemon=True).start()
        pb_utils.Logger.log_info(f"recon: {args['model_instance_name']} loaded "
                                 f"{self.model.pipeline_name} on {self.model.device}")

    def execute(self, requests: List[Any]) -> List[Any]:
        """One response per request, in order; a failed request never fails the others."""
        return [self.respond(request) for request in requests]

    def respond(self, request: Any) -> Any:
        try:
            if request.is_cancelled():
                raise recon.CancelledError(recon.Status.CANCELLED,
                                           "cancelled before it started")
            images, options = read_images(request), read_options(request)
            outputs = requested_outputs(request)
            with self.model.run(images, formats=formats_for(outputs),
                                progress=CancelWhenRequestCancelled(request),
                                **options) as result:
                return pb_utils.InferenceResponse(output_tensors=output_tensors(result, outputs))
        except Exception as error:  # noqa: BLE001 - every failure becomes this request's error
            if isinstance(error, recon.CancelledError):
                pb_utils.Logger.log_info(f"recon: request {request.request_id()!r} cancelled")
            return pb_utils.InferenceResponse(error=triton_error(error))

    def finalize(self) -> None:
        self._stop_watch.set()
        self.model.close()

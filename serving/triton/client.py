#!/usr/bin/env python3
"""A client of the recon model on Triton, over HTTP with tritonclient; also a command line:

    python client.py --url 127.0.0.1:8000 chair.png -o chair.glb --gaussians chair.ply

The request is Triton's standard inference protocol (KServe v2), so any client works: send the
encoded images as the BYTES tensor ``images`` [N] and any generation parameter as a one-value
tensor (``PARAMETERS`` gives their types); read ``glb``, ``gaussians_ply`` and the counts and
cameras back (serving/triton/README.md lists them).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

#: The optional generation inputs: name -> (Triton data type, numpy dtype).
PARAMETERS = {
    "seed": ("UINT64", np.uint64),
    "sparse_structure_steps": ("INT32", np.int32),
    "slat_steps": ("INT32", np.int32),
    "sparse_structure_cfg_strength": ("FP32", np.float32),
    "slat_cfg_strength": ("FP32", np.float32),
    "multi_image_mode": ("BYTES", np.object_),
    "preprocess": ("BOOL", np.bool_),
}
MODEL_NAME = "recon"


@dataclass
class Asset:
    """One response: the files as bytes, the counts, and the cameras (C of them: 0 for
    TRELLIS, one per view for TRELLIS-VGGT)."""

    glb: bytes
    gaussians_ply: bytes
    num_gaussians: int
    num_vertices: int
    num_faces: int
    camera_extrinsics: npt.NDArray[np.float32]  # [C, 4, 4] camera-from-world
    camera_intrinsics: npt.NDArray[np.float32]  # [C, 3, 3] pixels
    camera_sizes: npt.NDArray[np.int32]  # [C, 2] width, height


def build_inputs(protocol: Any, images: Sequence[bytes], **parameters: Any) -> List[Any]:
    """InferInputs for `images` (encoded PNG/JPEG/WebP, one per view) and the parameters that
    are not None. `protocol` is ``tritonclient.http`` or ``tritonclient.grpc``."""
    tensors = [("images", "BYTES", np.array(list(images), dtype=np.object_))]
    for name, value in parameters.items():
        if name not in PARAMETERS:
            raise ValueError(f"unknown parameter {name!r}: use one of {', '.join(PARAMETERS)}")
        if value is not None:
            datatype, dtype = PARAMETERS[name]
            encoded = value.encode() if isinstance(value, str) else value
            tensors.append((name, datatype, np.array([encoded], dtype=dtype)))
    inputs = []
    for name, datatype, array in tensors:
        tensor = protocol.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def read_asset(result: Any) -> Asset:
    """The Asset in a tritonclient InferResult; outputs that were not asked for are left empty.
    Camera arrays are cast to their declared types: tritonclient returns an empty output (no
    cameras) as float64."""
    def one(name: str, empty: Any) -> Any:
        array = result.as_numpy(name)
        return empty if array is None else array.reshape(-1)[0]

    def cameras(name: str, shape: Tuple[int, ...], dtype: Any) -> Any:
        array = result.as_numpy(name)
        return np.zeros((0, *shape), dtype) if array is None else array.astype(dtype)
    return Asset(glb=bytes(one("glb", b"")), gaussians_ply=bytes(one("gaussians_ply", b"")),
                 num_gaussians=int(one("num_gaussians", 0)),
                 num_vertices=int(one("num_vertices", 0)), num_faces=int(one("num_faces", 0)),
                 camera_extrinsics=cameras("camera_extrinsics", (4, 4), np.float32),
                 camera_intrinsics=cameras("camera_intrinsics", (3, 3), np.float32),
                 camera_sizes=cameras("camera_sizes", (2,), np.int32))


def generate(client: Any, images: Sequence[bytes], *, timeout_us: Optional[int] = None,
             outputs: Optional[Sequence[str]] = None, **parameters: Any) -> Asset:
    """One asset from a ``tritonclient.http.InferenceServerClient``. `timeout_us` is the
    longest the request may wait in the server's queue (it can only shorten the server's
    own limit); `outputs` names the outputs wanted (default: all of them)."""
    import tritonclient.http as http

    wanted = None if outputs is None else [http.InferRequestedOutput(n) for n in outputs]
    result = client.infer(MODEL_NAME, build_inputs(http, images, **parameters),
                          outputs=wanted, timeout=timeout_us)
    return read_asset(result)


def read_files(paths: Iterable[str]) -> List[bytes]:
    return [Path(p).read_bytes() for p in paths]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="encoded views of one object (RGBA cut-outs)")
    p.add_argument("--url", default="127.0.0.1:8000", help="Triton's HTTP host:port")
    p.add_argument("-o", "--output", default="asset.glb", help="where to write the GLB")
    p.add_argument("--gaussians", help="where to write the Gaussian splat PLY")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int, help="both samplers' steps")
    p.add_argument("--mode", choices=("stochastic", "multidiffusion"))
    p.add_argument("--network-timeout", type=float, default=3600.0,
                   help="seconds to wait for the response")
    args = p.parse_args(argv)

    import tritonclient.http as http

    client = http.InferenceServerClient(args.url, network_timeout=args.network_timeout,
                                        connection_timeout=args.network_timeout)
    try:
        asset = generate(client, read_files(args.images), seed=args.seed,
                         sparse_structure_steps=args.steps, slat_steps=args.steps,
                         multi_image_mode=args.mode)
    finally:
        client.close()
    Path(args.output).write_bytes(asset.glb)
    if args.gaussians:
        Path(args.gaussians).write_bytes(asset.gaussians_ply)
    print(f"{args.output}: {asset.num_vertices} vertices, {asset.num_faces} faces; "
          f"{asset.num_gaussians} Gaussians; {len(asset.camera_sizes)} cameras")
    return 0


if __name__ == "__main__":
    sys.exit(main())

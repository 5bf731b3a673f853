"""recon behind a real tritonserver (nvidia-pytriton's binary), driven over HTTP (and gRPC for
cancellation) with tritonclient. The tests run in file order on one server; the last one shuts
it down and checks that nothing is left behind.

Runs use 2 + 2 sampler steps: the tiny model's weights are random, so only the plumbing and
the file formats are under test, not the shapes.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpc
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

import client as recon_client
from assets import check_gaussian_ply, check_glb
from conftest import INSTANCES, MAX_QUEUE_SIZE, Server, alive, descendants

STEPS = 2
#: The most steps recon accepts: a run that would take minutes unless it is cancelled.
LONG_STEPS = 1000
NETWORK_TIMEOUT_S = 600.0


@pytest.fixture()
def client(server: Server) -> Iterator[http.InferenceServerClient]:
    c = http.InferenceServerClient(server.http_url, network_timeout=NETWORK_TIMEOUT_S,
                                   connection_timeout=NETWORK_TIMEOUT_S)
    yield c
    c.close()  # an open connection would hold up Triton's shutdown


def generate(c: http.InferenceServerClient, images: List[bytes], **parameters: Any
             ) -> recon_client.Asset:
    parameters.setdefault("sparse_structure_steps", STEPS)
    parameters.setdefault("slat_steps", STEPS)
    return recon_client.generate(c, images, **parameters)


def check_asset(asset: recon_client.Asset) -> None:
    """Every output of one response is well-formed and consistent with the counts; TRELLIS
    (the tiny model's pipeline) estimates no cameras, so the camera arrays are empty."""
    assert asset.num_gaussians > 0 and asset.num_vertices > 0 and asset.num_faces > 0
    check_glb(asset.glb, asset.num_vertices, asset.num_faces)
    check_gaussian_ply(asset.gaussians_ply, asset.num_gaussians)
    assert asset.camera_extrinsics.shape == (0, 4, 4)
    assert asset.camera_intrinsics.shape == (0, 3, 3)
    assert asset.camera_sizes.shape == (0, 2)


def digest(asset: recon_client.Asset) -> str:
    return hashlib.sha256(asset.glb + asset.gaussians_ply).hexdigest()


def test_model_configuration(client: http.InferenceServerClient) -> None:
    """Instances, queue policy and the interface come from the generated config.pbtxt."""
    assert client.is_server_live() and client.is_model_ready("recon")
    config = client.get_model_config("recon")
    assert config["backend"] == "python" and config["max_batch_size"] == 0
    [group] = config["instance_group"]
    assert (group["kind"], group["count"]) == ("KIND_CPU", INSTANCES)
    policy = config["dynamic_batching"]["default_queue_policy"]
    assert policy["max_queue_size"] == MAX_QUEUE_SIZE and policy["allow_timeout_override"]
    assert policy["timeout_action"] == "REJECT"
    assert int(policy["default_timeout_microseconds"]) == 600_000_000
    assert [i["name"] for i in config["input"]][0] == "images"
    assert {i["name"] for i in config["input"] if i.get("optional")} == set(recon_client.PARAMETERS)
    assert {o["name"] for o in config["output"]} == {
        "glb", "gaussians_ply", "num_gaussians", "num_vertices", "num_faces",
        "camera_extrinsics", "camera_intrinsics", "camera_sizes"}


def test_concurrent_requests(server: Server, image: bytes) -> None:
    """8 requests from 4 threads (each its own connection) over both instances: every
    response is valid, equal seeds give byte-identical assets whichever instance ran them,
    different seeds differ, and the server's assets equal the library's own."""
    seeds = [0, 1, 2, 3, 0, 1, 2, 3]

    def one(seed: int) -> recon_client.Asset:
        c = http.InferenceServerClient(server.http_url, network_timeout=NETWORK_TIMEOUT_S,
                                       connection_timeout=NETWORK_TIMEOUT_S)
        try:
            return generate(c, [image], seed=seed)
        finally:
            c.close()

    with ThreadPoolExecutor(4) as pool:
        assets = list(pool.map(one, seeds))
    for asset in assets:
        check_asset(asset)
    by_seed: Dict[int, set[str]] = {}
    for seed, asset in zip(seeds, assets):
        by_seed.setdefault(seed, set()).add(digest(asset))
    assert all(len(d) == 1 for d in by_seed.values()), "same seed, different assets"
    assert len({d for ds in by_seed.values() for d in ds}) == len(by_seed), "seeds ignored"
    assert_equal_to_library(server, assets[0], seed=0)


LIBRARY_RUN = """
import hashlib, os, sys, recon
with recon.Model.load(os.environ["MODEL_DIR"], device="cpu") as model:
    with model.run(open(os.environ["IMAGE"], "rb").read(), seed=int(sys.argv[1]),
                   sparse_structure_steps=int(sys.argv[2]), slat_steps=int(sys.argv[2])) as r:
        for f in (recon.ExportFormat.GLB_WITH_CAMERAS, recon.ExportFormat.PLY_GAUSSIANS):
            print(hashlib.sha256(r.export_bytes(f)).hexdigest())
"""


def assert_equal_to_library(server: Server, served: recon_client.Asset, seed: int) -> None:
    """The same run through recon's Python package, in a process with as many CPU threads as
    an instance has (float sums depend on the thread count), gives the same bytes."""
    env = dict(os.environ, OMP_NUM_THREADS=str(server.threads()))
    run = subprocess.run([sys.executable, "-c", LIBRARY_RUN, str(seed), str(STEPS)], env=env,
                         capture_output=True, text=True, check=True)
    glb, ply = run.stdout.split()
    assert hashlib.sha256(served.glb).hexdigest() == glb
    assert hashlib.sha256(served.gaussians_ply).hexdigest() == ply


def test_multi_view_and_parameters(client: http.InferenceServerClient, image: bytes) -> None:
    """Two views in multidiffusion mode, with every generation parameter set."""
    asset = generate(client, [image, image], seed=5, multi_image_mode="multidiffusion",
                     sparse_structure_cfg_strength=5.0, slat_cfg_strength=2.0, preprocess=True)
    check_asset(asset)


def test_requested_outputs(client: http.InferenceServerClient, image: bytes) -> None:
    """A client that names outputs gets only those (and the server skips the mesh); empty
    camera outputs keep their declared types and shapes."""
    inputs = recon_client.build_inputs(http, [image], seed=1, sparse_structure_steps=STEPS,
                                       slat_steps=STEPS)
    names = ("gaussians_ply", "num_gaussians", "camera_extrinsics", "camera_sizes")
    result = client.infer("recon", inputs, outputs=[http.InferRequestedOutput(n) for n in names])
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in result.get_response()["outputs"]}
    assert outputs == {"gaussians_ply": ("BYTES", [1]), "num_gaussians": ("INT64", [1]),
                       "camera_extrinsics": ("FP32", [0, 4, 4]), "camera_sizes": ("INT32", [0, 2])}
    check_gaussian_ply(bytes(result.as_numpy("gaussians_ply")[0]),
                       int(result.as_numpy("num_gaussians")[0]))


def raw_input(name: str, array: npt.NDArray[Any], datatype: str) -> http.InferInput:
    tensor = http.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


MALFORMED = {
    "garbage image bytes": (
        [raw_input("images", np.array([b"\x89PNG not really"], np.object_), "BYTES")],
        r"not PNG, JPEG or WebP"),
    "no image": ([raw_input("images", np.array([], np.object_), "BYTES")], r"no image"),
    "negative steps": (None, r"slat_steps must be in"),
    "too many steps": (None, r"steps must be 1\.\.=1000"),
    "unknown mode": (None, r"mode 'sideways'"),
    "two seeds": (None, r"unexpected shape for input 'seed'"),
    "images as floats": ([raw_input("images", np.zeros(4, np.float32), "FP32")], r"data-type"),
    "unknown input": (None, r"unexpected inference input 'steps'"),
    "images missing": ([raw_input("seed", np.array([1], np.uint64), "UINT64")], r"images"),
}


def malformed_inputs(case: str, image: bytes) -> List[http.InferInput]:
    inputs, _ = MALFORMED[case]
    if inputs is not None:
        return inputs
    base = recon_client.build_inputs(http, [image])
    extra = {
        "negative steps": raw_input("slat_steps", np.array([-1], np.int32), "INT32"),
        "too many steps": raw_input("sparse_structure_steps", np.array([5000], np.int32), "INT32"),
        "unknown mode": raw_input("multi_image_mode", np.array([b"sideways"], np.object_), "BYTES"),
        "two seeds": raw_input("seed", np.array([1, 2], np.uint64), "UINT64"),
        "unknown input": raw_input("steps", np.array([2], np.int32), "INT32"),
    }
    return base + [extra[case]]


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request(client: http.InferenceServerClient, image: bytes, case: str) -> None:
    """A clean 400 with a message that says what is wrong; nothing else breaks."""
    with pytest.raises(InferenceServerException) as error:
        client.infer("recon", malformed_inputs(case, image))
    assert error.value.status() == "400", (error.value.status(), error.value.message())
    assert re.search(MALFORMED[case][1], error.value.message() or ""), error.value.message()
    assert client.is_server_live() and client.is_model_ready("recon")


def test_still_serving_after_errors(client: http.InferenceServerClient, image: bytes) -> None:
    check_asset(generate(client, [image], seed=9))


def start_long_run(c: grpc.InferenceServerClient, image: bytes, request_id: str,
                   done: Dict[str, Optional[Exception]]) -> Any:
    """A gRPC request of the most steps recon allows (minutes on the CPU); returns its call
    context, whose cancel() cancels it."""
    def finished(result: Any, error: Optional[Exception]) -> None:
        done[request_id] = error
    inputs = recon_client.build_inputs(grpc, [image], sparse_structure_steps=LONG_STEPS,
                                       slat_steps=LONG_STEPS)
    return c.async_infer("recon", inputs, finished, request_id=request_id)


def wait_for(predicate: Any, timeout_s: float, what: str, server: Server) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout_s} s; "
                        f"server log:\n{server.log()[-4000:]}")
        time.sleep(0.1)


def test_queue_limits_and_cancellation(server: Server, client: http.InferenceServerClient,
                                       image: bytes) -> None:
    """Both instances busy with long gRPC runs: a request with a short timeout is rejected
    while it waits, requests beyond the queue's size are refused at once, and cancelling the
    runs (one cancelled by its client, one whose client disconnects) stops them within a few
    sampler steps; then service resumes."""
    done: Dict[str, Optional[Exception]] = {}
    canceller = grpc.InferenceServerClient(server.grpc_url)
    leaver = grpc.InferenceServerClient(server.grpc_url)
    try:
        first = start_long_run(canceller, image, "long-cancelled", done)
        start_long_run(leaver, image, "long-disconnected", done)
        time.sleep(2.0)  # both instances have picked their run up: the queue is empty again

        # The server's queue timeout (serve.py's default, 10 minutes) can be shortened per
        # request: this one is rejected while it waits, without an instance freeing up.
        with pytest.raises(InferenceServerException) as timed_out:
            generate(client, [image], timeout_us=200_000)
        assert "timeout expired" in (timed_out.value.message() or ""), timed_out.value.message()

        waiting = [start_long_run(canceller, image, f"queued-{i}", done)
                   for i in range(MAX_QUEUE_SIZE + 1)]
        wait_for(lambda: any("maximum queue size" in str(e) for e in done.values()), 30,
                 "a request refused for a full queue", server)

        for call in waiting:
            call.cancel()
        first.cancel()
        leaver.close()  # the client goes away mid-run
        for request_id in ("long-cancelled", "long-disconnected"):
            wait_for(lambda rid=request_id: f"request '{rid}' cancelled" in server.log(), 120,
                     f"the server cancelling {request_id}", server)
    finally:
        canceller.close()
        leaver.close()
    check_asset(generate(client, [image], seed=11))
    assert client.is_server_live()


def test_shutdown_leaves_nothing(server: Server) -> None:
    """SIGTERM: exit code 0, every process (serve.py, tritonserver, the instances' stubs) gone
    and the temporary workspace removed. Runs last: the server is gone afterwards."""
    processes = descendants(server.process.pid)
    assert len(processes) >= 2 + INSTANCES, processes  # serve.py, tritonserver, one stub each
    assert server.stop() == 0, server.log()[-4000:]
    deadline = time.monotonic() + 30
    while any(alive(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in processes if alive(p)], "processes left behind"
    assert not list(server.workspace_parent.glob("recon-triton-*")), "workspace left behind"
    assert "successfully unloaded 'recon'" in server.log()


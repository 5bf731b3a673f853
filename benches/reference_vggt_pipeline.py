#!/usr/bin/env python3
"""The reference side of issue 8's TRELLIS-VGGT benchmark: ReconViaGen's own
`TrellisVGGTTo3DPipeline.run` (GAP-LAB-CUHK-SZ/ReconViaGen v0.2: its `trellis/` fork and the
VGGT release code it vendors in `wheels/vggt`) timed per stage on the same model folder
(`recon synth --pipeline trellis-vggt`), views, seed, sampler settings and voxels as
`recon bench`, and its results compared with the tensors `recon bench --dump` wrote.

What is the reference's and what is ours, beyond benches/reference_pipeline.py (whose
backends, stubs, DINOv2 loading, timers and comparison this script reuses):
  * The pipeline, VGGT, the condition networks, flows, samplers, decoders and mesh extraction
    are ReconViaGen's code, unchanged, run as its app runs them in default (not low-VRAM) mode:
    every model on the GPU, `run(images, preprocess_image=False)` on images its own
    `preprocess_image` prepared, VGGT under bf16 autocast.
  * Stubs only for what `run` never reaches: BiRefNet (inputs carry alpha), DreamSim and the
    refinement's render/loss/post-processing utilities, trimesh (mesh export), and scipy where
    the interpreter lacks it (random rotations and voxelisation for refinement).
  * `VGGT.from_pretrained` (huggingface_hub's mixin) is re-implemented over the same files:
    the repo's `config.json` as constructor arguments, `model.safetensors` as the state dict.
    The track head, which ReconViaGen deletes right after loading, has no weights in recon's
    synthetic repo and keeps its initial values until deleted.
  * `--voxels shell:R` makes the sparse-structure decoder's occupancy exactly that shell, as
    `recon bench --voxels` replaces the decoded voxels.

Usage (see benches/run_pipeline_bench.sh, PIPELINE=trellis-vggt):
  python3 benches/reference_vggt_pipeline.py --model DIR --image IMG --views N [--device cuda]
      [--runs 3] [--warmup 1] [--formats gaussians,mesh] [--voxels shell:28]
      [--recon-dump FILE] [--json OUT] [--seed N]
Environment: as benches/reference_pipeline.py, plus RECONVIAGEN_DIR (a checkout of
GAP-LAB-CUHK-SZ/ReconViaGen: its `trellis/` and `wheels/vggt/` folders).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_pipeline as ref  # noqa: E402  (sets the backends and REF_SITE first)
import torch  # noqa: E402


class Dummy(torch.nn.Module):
    """A model the benchmark never calls (BiRefNet, DreamSim): loads, moves, evaluates."""

    def forward(self, *_a, **_k):
        raise RuntimeError("a model stubbed out in the benchmark was called")


def hub_mixin():
    """huggingface_hub.PyTorchModelHubMixin's `from_pretrained` over a local Hub cache."""

    class PyTorchModelHubMixin:
        @classmethod
        def from_pretrained(cls, repo: str, **_):
            with open(ref.hf_snapshot_file(repo, "config.json")) as f:
                config = json.load(f)
            model = cls(**config)
            state = ref.read_safetensors(ref.hf_snapshot_file(repo, "model.safetensors"))
            missing, unexpected = model.load_state_dict(state, strict=False)
            # ReconViaGen deletes the track head right after loading; nothing else may be absent.
            absent = [k for k in missing if not k.startswith("track_head.")]
            if absent or unexpected:
                raise SystemExit(f"{repo}: missing {absent[:5]}, unexpected {unexpected[:5]}")
            return model

    return PyTorchModelHubMixin


def install_vggt_stubs() -> None:
    ref.install_stubs()
    ref.module("huggingface_hub", PyTorchModelHubMixin=hub_mixin(),
               hf_hub_download=ref.unreachable("hf_hub_download"))

    class AutoModelForImageSegmentation:
        @staticmethod
        def from_pretrained(*_a, **_k):
            return Dummy()

    ref.module("transformers", AutoModelForImageSegmentation=AutoModelForImageSegmentation)
    ref.module("dreamsim", dreamsim=lambda *a, **k: (Dummy(), None))
    ref.module("trimesh", Trimesh=ref.unreachable("trimesh"))
    try:
        import scipy.spatial.transform  # noqa: F401
        import scipy.ndimage  # noqa: F401
    except ImportError:
        scipy = ref.module("scipy")
        scipy.spatial = ref.module("scipy.spatial")
        scipy.spatial.transform = ref.module("scipy.spatial.transform",
                                             Rotation=ref.unreachable("scipy Rotation"))
        scipy.ndimage = ref.module("scipy.ndimage",
                                   binary_dilation=ref.unreachable("scipy binary_dilation"))


def import_reconviagen():
    """ReconViaGen's `trellis` fork (ahead of trellis-3d-ms's, which REF_SITE also holds)
    without its __init__ (renderers, open3d ...), and its vendored VGGT, importable both as
    `wheels.vggt.vggt` (the pipeline's import) and `vggt` (VGGT's own absolute imports)."""
    root = os.environ.get("RECONVIAGEN_DIR")
    if not root or not os.path.isfile(os.path.join(root, "trellis", "pipelines",
                                                   "trellis_image_to_3d.py")):
        raise SystemExit("RECONVIAGEN_DIR must name a ReconViaGen checkout (trellis/, wheels/vggt/)")
    for name in [n for n in sys.modules if n == "trellis" or n.startswith("trellis.")]:
        del sys.modules[name]
    sys.path.insert(0, os.path.join(root, "wheels", "vggt"))
    ref.package("trellis", os.path.join(root, "trellis"))
    ref.package("trellis.pipelines", os.path.join(root, "trellis", "pipelines"))
    utils = ref.package("trellis.utils", os.path.join(root, "trellis", "utils"))
    # The sampler module imports these for refinement only.
    for sub in ("render_utils", "postprocessing_utils", "loss_utils"):
        setattr(utils, sub, ref.module(f"trellis.utils.{sub}"))
    ref.package("wheels", os.path.join(root, "wheels"))
    ref.package("wheels.vggt", os.path.join(root, "wheels", "vggt"))
    from trellis.pipelines.trellis_image_to_3d import TrellisVGGTTo3DPipeline
    return TrellisVGGTTo3DPipeline


def occupancy_of(voxels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Logits shaped like the decoder's (`[1, 1, R, R, R]`) that are positive exactly at
    `voxels` ([M, 4] (0, x, y, z)): `argwhere(logits > 0)` then lists them in their order."""
    logits = torch.full_like(like, -1.0)
    v = voxels.long().to(like.device)
    logits[v[:, 0], 0, v[:, 1], v[:, 2], v[:, 3]] = 1.0
    return logits


# The reference's methods in the order `run` calls them, and the stage of `recon bench` each
# belongs to (recon's condition stage runs VGGT, DINOv2 and both condition networks).
STAGES = {
    "vggt": "condition", "dinov2": "condition", "ss_cond": "condition", "slat_cond": "condition",
    "ss_sampling": "sparse_structure", "ss_decoder": "sparse_structure",
    "structured_latent": "structured_latent", "decode": "decode",
}


def instrument(pipeline, rec: "ref.Recorder", voxels) -> None:
    """Per-method timers (see STAGES) and the intermediate results compared with recon's dump."""
    rec.wrap(pipeline, "vggt_feat", "vggt")
    rec.wrap(pipeline, "encode_image", "dinov2")
    rec.wrap(pipeline, "get_ss_cond", "ss_cond")
    rec.wrap(pipeline, "get_slat_cond", "slat_cond")
    rec.wrap(pipeline.sparse_structure_sampler, "sample", "ss_sampling", keep=ref.keep_sample("ss"))
    replace = None
    if voxels is not None:
        replace = lambda logits: occupancy_of(voxels, logits)  # noqa: E731
    rec.wrap(pipeline.models["sparse_structure_decoder"], "forward", "ss_decoder", replace=replace)
    rec.wrap(pipeline, "sample_slat", "structured_latent", keep=ref.keep_slat)
    rec.wrap(pipeline.slat_sampler, "sample", "slat_sampling", keep=ref.keep_sample("slat"))
    rec.wrap(pipeline, "decode_slat", "decode")


def parse_args():
    p = ref.common_arguments(__doc__.split("\n")[0], runs=3, formats="gaussians,mesh")
    p.add_argument("--views", type=int, default=4, help="the image repeated to this many views")
    return p.parse_args()


def main():
    args = parse_args()
    device = torch.device(args.device)
    if device.type != "cuda":
        raise SystemExit("the TRELLIS-VGGT reference runs on CUDA only (bf16 autocast, flash kernels)")
    install_vggt_stubs()
    Pipeline = import_reconviagen()
    from PIL import Image
    torch.hub.load = ref.make_hub_load(args.model)

    started = time.perf_counter()
    pipeline = Pipeline.from_pretrained(args.model)
    # The app's default (not low-VRAM) mode: everything on the GPU.
    pipeline._device = device
    pipeline.low_vram = False
    for model in pipeline.models.values():
        model.to(device)
    pipeline.VGGT_model.to(device)
    rec = ref.Recorder(device)
    rec.sync()
    load_ms = (time.perf_counter() - started) * 1e3

    formats, voxels = ref.formats_and_voxels(args)
    instrument(pipeline, rec, voxels)
    image = Image.open(args.image)
    image.load()

    peaks: List[int] = []
    per_stage: Dict[str, List[float]] = {}
    decoded = None
    print(f"reference: ReconViaGen TrellisVGGTTo3DPipeline, {torch.cuda.get_device_name(device)}, "
          f"torch {torch.__version__}, {args.views} views, loaded in {load_ms / 1e3:.1f} s",
          flush=True)
    for run in range(args.warmup + args.runs):
        timed = run >= args.warmup
        before = {k: len(v) for k, v in rec.times.items()}
        torch.cuda.reset_peak_memory_stats(device)
        rec.sync()
        start = time.perf_counter()
        # Every view prepared, as the app does on upload (recon prepares each view too).
        prepared = [pipeline.preprocess_image(image) for _ in range(args.views)]
        rec.sync()
        preprocess_ms = (time.perf_counter() - start) * 1e3
        with torch.no_grad():
            decoded, _, _ = pipeline.run(prepared, seed=args.seed, formats=formats,
                                         preprocess_image=False)
        rec.sync()
        total = (time.perf_counter() - start) * 1e3
        if timed:
            # Each method's time in this run, then recon's stages as sums of them.
            sums = {key: sum(values[before.get(key, 0):]) for key, values in rec.times.items()}
            stages = {"preprocess": preprocess_ms}
            for key, stage in STAGES.items():
                stages[stage] = stages.get(stage, 0.0) + sums.get(key, 0.0)
            sums.update(stages)
            sums["generate"] = total
            for stage, ms in sums.items():
                per_stage.setdefault(stage, []).append(ms)
            peaks.append(torch.cuda.max_memory_allocated(device))
        print(f"  {'run' if timed else 'warm-up'} {run + 1}: {total / 1e3:.2f} s", flush=True)

    def row(name, xs):
        print(f"{name:<20} {ref.median(xs):>10.2f} {min(xs):>10.2f} {max(xs):>10.2f}")

    print(f"{'stage':<20} {'median ms':>10} {'min ms':>10} {'max ms':>10}")
    shown = ["preprocess"] + rec.order + ["condition", "sparse_structure", "generate"]
    for key in dict.fromkeys(shown):  # each method's time per run, then recon's stages
        if key in per_stage:
            row(key, per_stage[key])
    print(f"peak GPU memory: {ref.median(peaks) / 2**30:.2f} GiB median, "
          f"{max(peaks) / 2**30:.2f} GiB max")
    voxel_count = int(rec.kept["coords"].shape[0]) if "coords" in rec.kept else None
    print(f"voxels: {voxel_count}")

    report = {
        "pipeline": "ReconViaGen TrellisVGGTTo3DPipeline",
        "device": torch.cuda.get_device_name(device), "torch": torch.__version__,
        "views": args.views, "runs": args.runs, "warmup": args.warmup, "seed": args.seed,
        "formats": args.formats, "voxel_override": args.voxels, "voxels": voxel_count,
        "load_ms": load_ms,
    }
    ref.finish_report(report, per_stage, peaks, rec.kept, decoded, args)

if __name__ == "__main__":
    main()

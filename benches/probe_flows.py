#!/usr/bin/env python3
"""Where the flow models' time goes on the GPU (issue 8, before optimising them), measured on
the reference's modules at the published sizes (random weights; timing does not depend on them):
  * SparseStructureFlowModel: one forward eager with B=1 and B=2 (CFG's two passes batched), the
    same forwards replayed from CUDA graphs (pure GPU time: no host dispatch), and the kernel
    time per category from torch.profiler;
  * with --slat (needs spconv in REF_SITE): SLatFlowModel on the benchmark's sphere shell
    (r=28, 19,496 voxels), eager B=1, kernel time per category and the top kernels.
Needs REF_SITE (trellis-3d-ms unpacked). Prints JSON (also to the path given as argument)."""
import json
import os
import sys
import types

os.environ.setdefault("ATTN_BACKEND", "sdpa")
sys.path.insert(0, os.environ["REF_SITE"])
import torch  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_timing import timed_ms  # noqa: E402

for name in ("trellis", "trellis.modules", "trellis.models"):
    m = types.ModuleType(name)
    m.__path__ = [os.path.join(os.environ["REF_SITE"], *name.split("."))]
    sys.modules[name] = m
from trellis.models.sparse_structure_flow import SparseStructureFlowModel  # noqa: E402


def graphed(fn):
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def kernel_breakdown(fn):
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    buckets = {}
    count = 0
    for ev in prof.key_averages():
        if ev.device_type.name != "CUDA":
            continue
        name = ev.key.lower()
        kind = ("attention" if "flash" in name or "fmha" in name or "attention" in name else
                "gemm" if "gemm" in name or "sm90" in name or "cutlass" in name or "nvjet" in name else
                "sparse conv" if "spconv" in name or "conv" in name or "tv::" in name else
                "elementwise/norm/other")
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        buckets[kind] = buckets.get(kind, 0) + t / 1e3
        count += ev.count
    top = sorted(((getattr(ev, "device_time_total", 0) / 1e3, ev.count, ev.key[:90])
                  for ev in prof.key_averages() if ev.device_type.name == "CUDA"), reverse=True)[:12]
    return {"ms_by_kind": buckets, "kernels": count, "top": top}


def main():
    dev = "cuda"
    model = SparseStructureFlowModel(
        resolution=16, in_channels=8, out_channels=8, model_channels=1024, cond_channels=1024,
        num_blocks=24, num_heads=16, mlp_ratio=4, patch_size=1, pe_mode="ape", qk_rms_norm=True,
        use_fp16=True).to(dev).eval()
    res = {}
    with torch.no_grad():
        for b in (1, 2):
            x = torch.randn(b, 8, 16, 16, 16, device=dev)
            t = torch.full((b,), 500.0, device=dev)
            c = torch.randn(b, 1374, 1024, device=dev)
            fwd = lambda: model(x, t, c)  # noqa: E731
            res[f"eager_B{b}_ms"] = timed_ms(fwd)
            # The timestep embedding builds its frequencies on the CPU (not capturable): the
            # graph holds everything after it, as a graphed sampler step would.
            t_emb = model.t_embedder(t)
            model.t_embedder.forward = lambda _t: t_emb  # noqa: E731
            res[f"graph_B{b}_ms"] = timed_ms(graphed(fwd))
            del model.t_embedder.forward
            res[f"profile_B{b}"] = kernel_breakdown(fwd)
        if "--slat" in sys.argv:
            res.update(probe_slat(dev))
    print(json.dumps(res, indent=1))
    paths = [a for a in sys.argv[1:] if not a.startswith("--")]
    if paths:
        open(paths[0], "w").write(json.dumps(res, indent=1))


def probe_slat(dev):
    os.environ.setdefault("SPARSE_BACKEND", "spconv")
    os.environ.setdefault("SPARSE_ATTN_BACKEND", "flash_attn")
    os.environ.setdefault("SPCONV_ALGO", "native")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import reference_pipeline  # the flash_attn stand-in on torch's kernels
    reference_pipeline.install_flash_attn()
    from trellis.modules import sparse as sp
    from trellis.models.structured_latent_flow import SLatFlowModel
    flow = SLatFlowModel(resolution=64, in_channels=8, out_channels=8, model_channels=1024,
                         cond_channels=1024, num_blocks=24, num_heads=16, mlp_ratio=4, patch_size=2,
                         num_io_res_blocks=2, io_block_channels=[128], pe_mode="ape",
                         qk_rms_norm=True, use_fp16=True).to(dev).eval()
    coords = reference_pipeline.shell_voxels(28.0).to(dev)
    x = sp.SparseTensor(feats=torch.randn(coords.shape[0], 8, device=dev), coords=coords)
    t = torch.tensor([500.0], device=dev)
    c = torch.randn(1, 1374, 1024, device=dev)
    fwd = lambda: flow(x, t, c)  # noqa: E731
    return {"slat_voxels": int(coords.shape[0]), "slat_eager_B1_ms": timed_ms(fwd, runs=10),
            "slat_profile_B1": kernel_breakdown(fwd)}


if __name__ == "__main__":
    main()

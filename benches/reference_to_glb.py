"""The reference's textured export, timed: TRELLIS's `postprocessing_utils.to_glb` (trellis-3d-ms
0.1.0) on the synthetic asset of benches/synthetic_asset.py, on the GPU machine, with its own
dependencies (nvdiffrast, mip-splatting's diff-gaussian-rasterization, pyvista/VTK, pymeshfix,
igraph, xatlas, OpenCV, utils3d at TRELLIS's pinned commit) as benches/run_export_bench.sh lays
them out. Every stage of to_glb is wrapped with a CUDA-synchronised timer, so the report splits
the time as recon's export report does:

    decimate      pyvista PolyData.decimate (VTK quadric decimation)
    fill_holes    visibility from 1000 views (nvdiffrast) + igraph mincut + pymeshfix
    unwrap        xatlas.parametrize
    render        render_multiview: 100 Gaussian renders at 1024² (diff-gaussian-rasterization)
    bake          bake_texture (mode opt: 2500 Adam steps through nvdiffrast's texture op; or fast)
    total         the whole to_glb call, plus trimesh's GLB export

    python benches/reference_to_glb.py ASSET.safetensors --out DIR [--bake-mode opt|fast]
        [--runs 1] [--json FILE]
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from synthetic_asset import load_safetensors  # noqa: E402
# Module stand-ins shared with the pipeline benchmark (importing it only sets backend defaults).
from reference_pipeline import check_tensor, module, package, unreachable  # noqa: E402


def import_postprocessing(site):
    """TRELLIS's postprocessing_utils with the trellis package's __init__ skipped (it imports
    the text pipeline, transformers, open3d ...), FlexiCubes where the mesh module imports it
    (the wheel lacks that git submodule; it comes from the pipeline bundle's ref_site), and
    stand-ins for what to_glb never reaches when the GPU image lacks it: scipy (the octree
    renderer's import) and kaolin's argument checker (FlexiCubes' import)."""
    import importlib.util

    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        scipy = module("scipy")
        scipy.stats = module("scipy.stats", qmc=unreachable("scipy.stats.qmc"))
    try:
        import kaolin.utils.testing  # noqa: F401
    except ImportError:
        kaolin = module("kaolin")
        kaolin.utils = module("kaolin.utils")
        kaolin.utils.testing = module("kaolin.utils.testing", check_tensor=check_tensor)
    spec = importlib.util.find_spec("trellis")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("trellis-3d-ms is not importable: see benches/run_export_bench.sh")
    package("trellis", spec.submodule_search_locations[0])
    package("trellis.representations.mesh.flexicubes", os.path.join(site, "extra", "flexicubes"))
    from trellis.utils import postprocessing_utils
    return postprocessing_utils


def timed(table, name, fn):
    def wrapper(*args, **kwargs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        torch.cuda.synchronize()
        table[name] = table.get(name, 0.0) + (time.perf_counter() - start) * 1e3
        return result
    return wrapper


def build_inputs(asset, device):
    from trellis.representations import Gaussian, MeshExtractResult

    gs = Gaussian(aabb=[-0.5, -0.5, -0.5, 1.0, 1.0, 1.0], sh_degree=0, mininum_kernel_size=9e-4,
                  scaling_bias=4e-3, opacity_bias=0.1, scaling_activation="softplus", device=device)
    t = {k: torch.from_numpy(np.array(v)).to(device) for k, v in asset.items()}
    gs.from_xyz(t["gs_xyz"])
    gs.from_features(t["gs_features_dc"][:, None, :])
    gs.from_scaling(t["gs_scaling"])
    gs.from_rotation(t["gs_rotation"])
    gs.from_opacity(t["gs_opacity"][:, None])
    mesh = MeshExtractResult(t["mesh_vertices"], t["mesh_faces"].long(), res=256)
    return gs, mesh


def run_once(post, gs, mesh, bake_mode, out_glb):
    import pyvista as pv

    table = {}
    original = {name: getattr(post, name) for name in
                ("postprocess_mesh", "_fill_holes", "parametrize_mesh", "render_multiview",
                 "bake_texture")}
    decimate = pv.PolyData.decimate
    try:
        post.postprocess_mesh = timed(table, "postprocess_mesh", original["postprocess_mesh"])
        post._fill_holes = timed(table, "fill_holes", original["_fill_holes"])
        post.parametrize_mesh = timed(table, "unwrap", original["parametrize_mesh"])
        post.render_multiview = timed(table, "render", original["render_multiview"])
        bake = original["bake_texture"]
        post.bake_texture = timed(table, "bake", lambda *a, **k: bake(*a, **{**k, "mode": bake_mode}))
        pv.PolyData.decimate = timed(table, "decimate", decimate)
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = post.to_glb(gs, mesh, simplify=0.95, fill_holes=True, fill_holes_max_size=0.04,
                             texture_size=1024, verbose=False)
        result.export(out_glb)
        torch.cuda.synchronize()
        table["total"] = (time.perf_counter() - start) * 1e3
    finally:
        for name, fn in original.items():
            setattr(post, name, fn)
        pv.PolyData.decimate = decimate
    table["faces"] = int(len(result.faces))
    table["vertices"] = int(len(result.vertices))
    return table


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("asset")
    p.add_argument("--out", required=True)
    p.add_argument("--bake-mode", choices=["opt", "fast"], default="opt")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--json")
    p.add_argument("--site", default=os.environ.get("REF_SITE", "/tmp/glb_site"),
                   help="the folder the reference's packages were unpacked into")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)

    post = import_postprocessing(a.site)
    asset = load_safetensors(a.asset)
    gs, mesh = build_inputs(asset, "cuda")
    print(f"asset: {len(asset['mesh_faces'])} triangles, {len(asset['gs_xyz'])} Gaussians; "
          f"bake mode {a.bake_mode}", flush=True)
    runs = []
    for i in range(a.runs):
        torch.cuda.reset_peak_memory_stats()
        table = run_once(post, gs, mesh, a.bake_mode, os.path.join(a.out, f"reference_{a.bake_mode}.glb"))
        table["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        decimate = table.get("decimate", 0.0)
        table["decimate"] = decimate
        table["fill_holes"] = table.get("fill_holes", 0.0)
        runs.append(table)
        print(f"run {i}: " + ", ".join(f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in table.items()), flush=True)
    report = {"device": torch.cuda.get_device_name(), "bake_mode": a.bake_mode, "runs": runs}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()

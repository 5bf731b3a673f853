#!/usr/bin/env python3
r"""Gaussian splatting: recon's CPU and CUDA renders against the reference rasteriser.

The reference is mip-splatting's diff-gaussian-rasterization (what TRELLIS installs with
`setup.sh --mipgaussian`), driven with TRELLIS's GaussianRenderer conventions
(trellis/renderers/gaussian_render.py): SH degree 0 from features_dc, kernel_size 0.1,
scale_modifier 1, zero subpixel offsets, OpenCV extrinsics/intrinsics turned into the
rasteriser's view and projection matrices exactly as `GaussianRenderer.render` does.

Inputs (no network needed):
  * the rasteriser's source folder, e.g. a checkout of
    https://github.com/autonomousvision/mip-splatting at submodules/diff-gaussian-rasterization
    (with third_party/glm); it is copied to a build folder, patched for current libtorch
    (`Tensor.data<T>()` -> `data_ptr<T>()`) and compiled with torch.utils.cpp_extension.load;
    (if the folder already holds a built extension, `setup.py build_ext --inplace`, that one is
    imported instead);
  * the scenes and recon's renders, written by recon's CUDA test binary:
        RECON_SPLAT_EXPORT_DIR=<scenes> render_gaussian_cuda --nocapture cuda_matches_cpu
    one folder per scene with scene.npz (xyz, features_dc, scaling, rotation, opacity: the
    activated attributes), camera.json (view, intrinsics, settings), cpu.npz and cuda.npz
    (color [H,W,3], depth [H,W], alpha [H,W]). When --scenes holds none, this script runs that
    binary itself (--recon-test, default: the first of .bench/export/bin/render_gaussian_cuda and
    .gpu/bin/render_gaussian_cuda that exists).

The reference rasteriser outputs colour only. Alpha and depth in recon's conventions come from
two more reference renders with precomputed colours: all ones on a black background gives
alpha = 1 - T, and the view-space depth of each Gaussian as its colour gives sum(w z), divided by
alpha where alpha > 0.

Usage (on the GPU machine, from the repository root; LD_LIBRARY_PATH with torch/lib for the
recon binary):
  /opt/torch/.venv/bin/python benches/render_reference.py \
      --dgr-source /path/to/diff-gaussian-rasterization --out /tmp/render-out
The table goes to stdout and, as JSON, to <out>/render_reference.json.
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SH_C0 = 0.28209479177387814


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dgr-source",
        "--rasterizer",
        dest="rasterizer",
        required=True,
        type=Path,
        help="diff-gaussian-rasterization source folder (mip-splatting's submodule)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("/tmp/render-reference"),
        help="output folder: results JSON and the build folder (default %(default)s)",
    )
    parser.add_argument(
        "--scenes",
        type=Path,
        default=None,
        help="folder of exported scenes (RECON_SPLAT_EXPORT_DIR of tests/render_gaussian_cuda.rs); "
        "default /tmp/splat-scenes (~200 MB with the 600k-Gaussian scenes: kept out of <out>)",
    )
    parser.add_argument(
        "--recon-test",
        type=Path,
        default=None,
        help="recon's render_gaussian_cuda test binary, run to export the scenes when --scenes has none",
    )
    parser.add_argument(
        "--build-dir",
        type=Path,
        default=None,
        help="where to copy and compile the rasteriser (default <out>/dgr-build)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="results JSON (default <out>/render_reference.json)"
    )
    parser.add_argument(
        "--min-psnr",
        type=float,
        default=None,
        help="exit with status 1 if any colour PSNR against the reference is below this",
    )
    parser.add_argument(
        "--save-reference",
        action="store_true",
        help="write reference.npz (color, depth, alpha) next to each scene",
    )
    parser.add_argument("--verbose-build", action="store_true", help="show the compiler output")
    return parser.parse_args()


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def prebuilt_rasterizer(source: Path):
    """The extension already built in `source` (`setup.py build_ext --inplace`), if any."""
    import importlib

    package = source / "diff_gaussian_rasterization"
    if not any(package.glob("_C*.so")):
        return None
    sys.path.insert(0, str(source))
    try:
        module = importlib.import_module("diff_gaussian_rasterization._C")
    except ImportError as err:
        print(f"the prebuilt extension in {package} does not import ({err}); compiling instead")
        sys.path.remove(str(source))
        return None
    print(f"using the extension built in {package}")
    return module


def build_rasterizer(source: Path, build_dir: Path, verbose: bool):
    """Copies the sources, patches them for current libtorch, compiles them with nvcc."""
    import torch
    from torch.utils.cpp_extension import load, verify_ninja_availability

    try:
        verify_ninja_availability()
    except RuntimeError:
        fail(
            "torch.utils.cpp_extension.load needs ninja on PATH (pip's ninja package puts it in "
            "<site>/ninja/data/bin), or build the folder in place first: "
            "cd <dgr-source> && python setup.py build_ext --inplace"
        )

    needed = [
        "cuda_rasterizer/rasterizer_impl.cu",
        "cuda_rasterizer/forward.cu",
        "cuda_rasterizer/backward.cu",
        "rasterize_points.cu",
        "ext.cpp",
    ]
    missing = [n for n in needed if not (source / n).is_file()]
    if missing:
        fail(f"{source} is not a diff-gaussian-rasterization folder (missing {', '.join(missing)})")
    glm = source / "third_party" / "glm"
    if not (glm / "glm" / "glm.hpp").is_file():
        fail(f"{glm} has no glm/glm.hpp: clone mip-splatting with its glm submodule")

    work = build_dir / "src"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(source, work, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info"))
    patched = []
    for path in list(work.glob("*.cu")) + list(work.glob("*.cpp")) + list(work.glob("cuda_rasterizer/*")):
        if not path.is_file():
            continue
        text = path.read_text()
        # Tensor::data<T>() is gone from recent libtorch; data_ptr<T>() is the same pointer.
        new = re.sub(r"\.data<(\w+)>\(\)", r".data_ptr<\1>()", text)
        if new != text:
            path.write_text(new)
            patched.append(path.name)
    if patched:
        print(f"patched data<T>() -> data_ptr<T>() in {', '.join(sorted(patched))}")

    major, minor = torch.cuda.get_device_capability()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    print(
        f"compiling diff-gaussian-rasterization for sm_{major}{minor} "
        f"(torch {torch.__version__}, CUDA {torch.version.cuda}) ..."
    )
    started = time.time()
    module = load(
        name="diff_gaussian_rasterization_mip",
        sources=[str(work / n) for n in needed],
        extra_include_paths=[str(work / "third_party" / "glm")],
        extra_cuda_cflags=["-I" + str(work / "third_party" / "glm")],
        build_directory=str(build_dir),
        verbose=verbose,
    )
    print(f"compiled in {time.time() - started:.0f} s")
    return module


def load_npz(path: Path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def trellis_matrices(camera, device):
    """The rasteriser's arguments as GaussianRenderer.render derives them from OpenCV
    extrinsics (world->camera) and normalised intrinsics."""
    import torch

    extrinsics = torch.eye(4, dtype=torch.float32, device=device)
    extrinsics[:3, :3] = torch.tensor(camera["rotation"], dtype=torch.float32, device=device)
    extrinsics[:3, 3] = torch.tensor(camera["translation"], dtype=torch.float32, device=device)
    intrinsics = torch.tensor(
        [[camera["fx"], 0, camera["cx"]], [0, camera["fy"], camera["cy"]], [0, 0, 1]],
        dtype=torch.float32,
        device=device,
    )
    near, far = camera["near"], camera["far"]
    # intrinsics_to_projection (OpenCV intrinsics -> OpenGL-style perspective), as TRELLIS.
    fx, fy = intrinsics[0, 0], intrinsics[1, 1]
    cx, cy = intrinsics[0, 2], intrinsics[1, 2]
    perspective = torch.zeros((4, 4), dtype=torch.float32, device=device)
    perspective[0, 0] = 2 * fx
    perspective[1, 1] = 2 * fy
    perspective[0, 2] = 2 * cx - 1
    perspective[1, 2] = -2 * cy + 1
    perspective[2, 2] = far / (far - near)
    perspective[2, 3] = near * far / (near - far)
    perspective[3, 2] = 1.0
    view = extrinsics
    campos = torch.inverse(view)[:3, 3]
    fovx = 2 * torch.atan(0.5 / fx)
    fovy = 2 * torch.atan(0.5 / fy)
    return {
        "viewmatrix": view.T.contiguous(),
        "projmatrix": (perspective @ view).T.contiguous(),
        "campos": campos.contiguous(),
        "tanfovx": math.tan(float(fovx) * 0.5),
        "tanfovy": math.tan(float(fovy) * 0.5),
    }


def upload(scene):
    """The scene's attributes as the rasteriser takes them, on the GPU (once per scene)."""
    import torch

    n = int(scene["xyz"].shape[0])

    def f32(key, shape):
        return torch.tensor(scene[key], dtype=torch.float32, device="cuda").reshape(shape).contiguous()

    return {
        "n": n,
        "means": f32("xyz", (n, 3)),
        "sh": f32("features_dc", (n, 1, 3)),
        "opacity": f32("opacity", (n, 1)),
        "scales": f32("scaling", (n, 3)),
        "rotations": f32("rotation", (n, 4)),
    }


def reference_render(module, g, camera, colors=None, background=None):
    """One call of the reference rasteriser on uploaded Gaussians `g`; `colors` [N,3]
    replaces the SH colours (the rasteriser then skips its SH evaluation)."""
    import torch

    m = trellis_matrices(camera, "cuda")
    width, height = int(camera["width"]), int(camera["height"])
    empty = torch.empty(0, device="cuda")
    sh, colors_precomp = (g["sh"], empty) if colors is None else (empty, colors.contiguous())
    bg = torch.tensor(
        camera["background"] if background is None else background, dtype=torch.float32, device="cuda"
    )
    args = (
        bg,
        g["means"],
        colors_precomp,
        g["opacity"],
        g["scales"],
        g["rotations"],
        float(camera["scale_modifier"]),
        empty,  # cov3D_precomp
        m["viewmatrix"],
        m["projmatrix"],
        m["tanfovx"],
        m["tanfovy"],
        float(camera["kernel_size"]),
        torch.zeros((height, width, 2), dtype=torch.float32, device="cuda"),  # subpixel_offset
        height,
        width,
        sh,
        0,  # sh_degree
        m["campos"],
        False,  # prefiltered
        False,  # debug
    )
    _, color, _radii, *_ = module.rasterize_gaussians(*args)
    return color.permute(1, 2, 0).contiguous()  # [H, W, 3]


def reference_all(module, g, camera):
    """Colour as TRELLIS renders it, plus alpha and normalised depth in recon's conventions."""
    import torch

    n = g["n"]
    color = reference_render(module, g, camera)
    if n == 0:
        # The reference returns zeros for an empty scene (recon renders the background).
        zeros = torch.zeros(color.shape[:2], device="cuda")
        return color, zeros, zeros
    ones = torch.ones((n, 3), dtype=torch.float32, device="cuda")
    alpha = reference_render(module, g, camera, colors=ones, background=[0.0, 0.0, 0.0])[..., 0]
    r = torch.tensor(camera["rotation"], dtype=torch.float32, device="cuda")
    t = torch.tensor(camera["translation"], dtype=torch.float32, device="cuda")
    z = (g["means"] @ r.T + t)[:, 2:3].expand(n, 3)
    weighted = reference_render(module, g, camera, colors=z, background=[0.0, 0.0, 0.0])[..., 0]
    depth = torch.where(alpha > 0, weighted / alpha.clamp_min(1e-12), torch.zeros_like(alpha))
    return color, depth, alpha


def find_scenes(folder: Path):
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / "scene.npz").is_file() and (p / "camera.json").is_file())


def export_scenes(folder: Path, binary):
    """Runs recon's CUDA test with RECON_SPLAT_EXPORT_DIR to write the scenes and its renders."""
    candidates = [binary] if binary else [
        Path(".bench/export/bin/render_gaussian_cuda"),
        Path(".gpu/bin/render_gaussian_cuda"),
    ]
    found = next((c for c in candidates if c and c.is_file()), None)
    if found is None:
        fail(
            f"no scenes under {folder} and no recon test binary ({', '.join(map(str, candidates))}): "
            "pass --scenes or --recon-test"
        )
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, RECON_SPLAT_EXPORT_DIR=str(folder.resolve()))
    command = [str(found), "--nocapture", "--test-threads", "1", "cuda_matches_cpu"]
    print(f"exporting scenes: RECON_SPLAT_EXPORT_DIR={folder} {' '.join(command)}")
    done = subprocess.run(command, env=env)
    if done.returncode != 0:
        print(f"warning: {found} exited with status {done.returncode}; comparing what it wrote")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def depth_error(ours, ref, alpha_ours, alpha_ref):
    both = (alpha_ours > 0) & (alpha_ref > 0)
    if not both.any():
        return 0.0
    return float(np.mean(np.abs(ours[both].astype(np.float64) - ref[both])))


def main():
    args = parse_args()
    try:
        import torch
    except ImportError:
        fail("torch is not importable: run with /opt/torch/.venv/bin/python")
    if not torch.cuda.is_available():
        fail("no CUDA device: the reference rasteriser needs one")
    if not args.rasterizer.is_dir():
        fail(f"--dgr-source {args.rasterizer} is not a folder")
    args.out.mkdir(parents=True, exist_ok=True)
    scenes = args.scenes or Path("/tmp/splat-scenes")
    scene_dirs = find_scenes(scenes)
    if not scene_dirs:
        export_scenes(scenes, args.recon_test)
        scene_dirs = find_scenes(scenes)
    if not scene_dirs:
        fail(f"no scenes under {scenes} (scene.npz + camera.json per folder)")

    module = prebuilt_rasterizer(args.rasterizer.resolve())
    if module is None:
        build_dir = (args.build_dir or args.out / "dgr-build").resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        module = build_rasterizer(args.rasterizer.resolve(), build_dir, args.verbose_build)
    print(f"device: {torch.cuda.get_device_name()}\n")

    header = (
        f"{'scene':34} {'gaussians':>9} {'size':>9} | {'ref ms':>7} | "
        f"{'CPU PSNR':>8} {'CUDA PSNR':>9} | {'CPU a':>6} {'CUDA a':>6} | {'CPU dz':>8} {'CUDA dz':>8}"
    )
    print("'ref ms': the reference's median render time (of 5, view matrices included);")
    print("PSNR (dB) of recon's colour and alpha ('a') against the reference; 'dz': mean |depth")
    print("difference| where both cover the pixel\n")
    print(header)
    print("-" * len(header))
    results = []
    worst = math.inf
    for d in scene_dirs:
        scene = load_npz(d / "scene.npz")
        camera = json.loads((d / "camera.json").read_text())
        g = upload(scene)
        n = g["n"]
        reference_render(module, g, camera)  # warm-up
        times = []
        for _ in range(5):
            torch.cuda.synchronize()
            started = time.time()
            reference_render(module, g, camera)
            torch.cuda.synchronize()
            times.append((time.time() - started) * 1e3)
        ref_ms = sorted(times)[len(times) // 2]
        color, depth, alpha = (t.cpu().numpy() for t in reference_all(module, g, camera))
        if args.save_reference:
            np.savez(d / "reference.npz", color=color, depth=depth, alpha=alpha)
        row = {"scene": d.name, "gaussians": n, "width": camera["width"], "height": camera["height"],
               "reference_ms": ref_ms}
        cells = {}
        for tag in ("cpu", "cuda"):
            path = d / f"{tag}.npz"
            if not path.is_file():
                cells[tag] = None
                continue
            ours = load_npz(path)
            result = {
                "color_psnr": psnr(ours["color"], color),
                "alpha_psnr": psnr(ours["alpha"], alpha),
                "depth_mean_abs": depth_error(ours["depth"], depth, ours["alpha"], alpha),
            }
            row[tag] = result
            cells[tag] = result
            worst = min(worst, result["color_psnr"])
        results.append(row)

        def cell(tag, key, fmt):
            return format(cells[tag][key], fmt) if cells.get(tag) else "-"

        print(
            f"{d.name:34} {n:>9} {camera['width']:>4}x{camera['height']:<4} | {ref_ms:>7.2f} | "
            f"{cell('cpu', 'color_psnr', '8.1f'):>8} {cell('cuda', 'color_psnr', '9.1f'):>9} | "
            f"{cell('cpu', 'alpha_psnr', '6.1f'):>6} {cell('cuda', 'alpha_psnr', '6.1f'):>6} | "
            f"{cell('cpu', 'depth_mean_abs', '8.1e'):>8} {cell('cuda', 'depth_mean_abs', '8.1e'):>8}"
        )
    print(f"\nlowest colour PSNR against the reference: {worst:.1f} dB")
    json_path = args.json or args.out / "render_reference.json"
    json_path.write_text(
        json.dumps({"device": torch.cuda.get_device_name(), "scenes": results}, indent=2)
    )
    print(f"wrote {json_path}")
    if args.min_psnr is not None and worst < args.min_psnr:
        print(f"FAIL: below --min-psnr {args.min_psnr}")
        sys.exit(1)


if __name__ == "__main__":
    main()

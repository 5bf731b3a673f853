#!/usr/bin/env python3
"""The reference side of issue 8's pipeline benchmark: Microsoft's TRELLIS image-to-3D pipeline
(PyPI trellis-3d-ms==0.1.0, its own `TrellisImageTo3DPipeline.run`) timed per stage on the same
model folder, input, seed and sampler settings as `recon bench`, and its results compared with
the tensors `recon bench --dump` wrote.

What is the reference's and what is ours:
  * The pipeline, its networks, samplers, preprocessing, decoders and FlexiCubes extraction are
    the reference's code, unchanged (trellis-3d-ms, FlexiCubes at the commit TRELLIS pins, the
    torch.hub DINOv2 code as vendored by trellis-3d-python).
  * Backends are the reference's production choices or their closest equivalents on this
    machine: spconv 2.3.8 (SPCONV_ALGO=native) for sparse convolution, torch's own
    FlashAttention-2 varlen kernels standing in for the flash_attn package (not installable
    here) in sparse attention, torch SDPA for dense attention. Without xformers, DINOv2's
    MemEffAttention falls back to its plain attention, as it does on any machine without it.
  * Stubs only for what the benchmark never reaches: rembg (inputs carry alpha), plyfile and
    utils3d (PLY writing), torchvision's Normalize (re-implemented: the same two operations).
  * `torch.hub.load` is redirected to build DINOv2 from the vendored hub code with weights read
    from the model folder's local file (hub layout) or from the Hugging Face cache `recon synth`
    writes (transformers layout, converted back to hub names).
  * `--voxels shell:R` replaces the voxels stage 1 decodes, as `recon bench --voxels` does, so
    both sample the structured latent on the same closed surface.

The noise: the reference's `run` seeds torch's CPU generator and draws both stages' noise on the
CPU, which recon reproduces bit for bit; with the same seed both start from the same noise.

Usage (see benches/RESULTS.md for the GPU machine's set-up):
  python3 benches/reference_pipeline.py --model DIR --image IMG [--device cuda] [--runs 5]
      [--warmup 1] [--formats gaussians,mesh] [--voxels shell:28] [--recon-dump FILE]
      [--json OUT] [--ss-steps N] [--slat-steps N] [--seed N]
Environment: REF_SITE (folder with trellis, spconv, cumm ... unpacked), REF_FALLBACK_SITE
(pure-Python or binary packages used only when the interpreter lacks them), DINOV2_HUB_CODE (the
vendored `dinov2` package folder), FLEXICUBES_DIR (flexicubes.py + tables.py), HF_HOME.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
import types
import importlib.util
from typing import Callable, Dict, List, Optional, Tuple

# Backends are read by trellis.modules at import: set them before anything imports it.
os.environ.setdefault("SPARSE_BACKEND", "spconv")
os.environ.setdefault("SPARSE_ATTN_BACKEND", "flash_attn")
os.environ.setdefault("ATTN_BACKEND", "sdpa")
os.environ.setdefault("SPCONV_ALGO", "native")
os.environ.setdefault("XFORMERS_DISABLED", "1")

for var, at_front in (("REF_SITE", True), ("REF_FALLBACK_SITE", False)):
    if os.environ.get(var):
        if at_front:
            sys.path.insert(0, os.environ[var])
        else:
            sys.path.append(os.environ[var])

import torch  # noqa: E402

GRID = 64


# --------------------------------------------------------------------------------------------
# Stand-ins for what the benchmark never reaches, and the flash_attn API on torch's kernels
# --------------------------------------------------------------------------------------------

def module(name: str, **attrs) -> types.ModuleType:
    """A module object registered under `name` with the given attributes."""
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def package(name: str, path: str) -> types.ModuleType:
    """A package whose submodules import from `path`, without running its __init__."""
    m = module(name)
    m.__path__ = [path]
    return m


def unreachable(what: str) -> Callable:
    def fail(*_a, **_k):
        raise RuntimeError(f"{what} is stubbed out in the benchmark")
    return fail


class Normalize:
    """torchvision.transforms.Normalize for a [B, 3, H, W] tensor: (x - mean) / std."""

    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


def varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    """flash_attn's varlen attention: torch's FlashAttention-2 kernel on CUDA; on the CPU
    (local checks of this script) one SDPA call per sequence."""
    if q.is_cuda:
        return torch.ops.aten._flash_attention_forward(
            q, k, v, cu_q.int(), cu_k.int(), int(max_q), int(max_k), 0.0, False, False,
            scale=scale)[0]
    out = torch.empty_like(q)
    for i in range(cu_q.numel() - 1):
        qs, qe, ks, ke = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        o = torch.nn.functional.scaled_dot_product_attention(
            q[qs:qe].transpose(0, 1).float(), k[ks:ke].transpose(0, 1).float(),
            v[ks:ke].transpose(0, 1).float(), scale=scale)
        out[qs:qe] = o.transpose(0, 1).to(q.dtype)
    return out


def dense_attention(q, k, v, scale):
    """flash_attn_func's [B, L, H, C] layout on SDPA."""
    return torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale).transpose(1, 2)


def install_flash_attn() -> None:
    def varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, **_):
        return varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale)

    def varlen_qkv(qkv, cu, max_len, dropout_p=0.0, softmax_scale=None, **_):
        q, k, v = qkv.unbind(dim=1)
        return varlen_attention(q, k, v, cu, cu, max_len, max_len, softmax_scale)

    def varlen_kv(q, kv, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, **_):
        k, v = kv.unbind(dim=1)
        return varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale)

    def dense(q, k, v, dropout_p=0.0, softmax_scale=None, **_):
        return dense_attention(q, k, v, softmax_scale)

    def dense_qkv(qkv, dropout_p=0.0, softmax_scale=None, **_):
        return dense_attention(*qkv.unbind(dim=2), softmax_scale)

    def dense_kv(q, kv, dropout_p=0.0, softmax_scale=None, **_):
        return dense_attention(q, *kv.unbind(dim=2), softmax_scale)

    module("flash_attn", __version__="torch-fa2-bench",
           flash_attn_varlen_func=varlen, flash_attn_varlen_qkvpacked_func=varlen_qkv,
           flash_attn_varlen_kvpacked_func=varlen_kv, flash_attn_func=dense,
           flash_attn_qkvpacked_func=dense_qkv, flash_attn_kvpacked_func=dense_kv)


def check_tensor(tensor, shape=None, dtype=None, device=None, throw=True):
    """kaolin.utils.testing.check_tensor, which FlexiCubes calls on its arguments: shape (None
    matches any size), dtype and device type; raises when `throw`, else returns False."""
    problems = []
    if shape is not None and (len(shape) != tensor.ndim or any(
            d is not None and tensor.shape[i] != d for i, d in enumerate(shape))):
        problems.append(f"shape {tuple(tensor.shape)}, expected {shape}")
    if dtype is not None and tensor.dtype != dtype:
        problems.append(f"dtype {tensor.dtype}, expected {dtype}")
    if device is not None and tensor.device.type != device:
        problems.append(f"device {tensor.device.type}, expected {device}")
    if problems and throw:
        raise ValueError("; ".join(problems))
    return not problems


def install_stubs() -> None:
    module("rembg", new_session=unreachable("rembg"), remove=unreachable("rembg"))
    kaolin = module("kaolin")
    kaolin.utils = module("kaolin.utils")
    kaolin.utils.testing = module("kaolin.utils.testing", check_tensor=check_tensor)
    tv = module("torchvision")
    tv.transforms = module("torchvision.transforms", Normalize=Normalize, Compose=Compose)
    module("utils3d")
    try:
        import plyfile  # noqa: F401
    except ImportError:
        module("plyfile", PlyData=unreachable("plyfile"), PlyElement=unreachable("plyfile"))
    install_flash_attn()


class CudaOnCpu(torch.overrides.TorchFunctionMode):
    """For checking this script on a machine without a GPU: the reference's representations
    create tensors on 'cuda' by default (Gaussian, SparseFeatures2Mesh, FlexiCubes); inside
    this mode every 'cuda' device argument means the CPU and `.cuda()` is a no-op."""

    @staticmethod
    def _cpu(device):
        cuda = (isinstance(device, torch.device) and device.type == "cuda") or (
            isinstance(device, str) and device.startswith("cuda"))
        return "cpu" if cuda else device

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if "device" in kwargs:
            kwargs["device"] = self._cpu(kwargs["device"])
        if func is torch.Tensor.to and len(args) > 1:
            args = (args[0], self._cpu(args[1]), *args[2:])
        return func(*args, **kwargs)


def spconv_training_mode(pipeline) -> None:
    """spconv's CPU path refuses a bias in eval mode ("cpu don't support act and bias"); in
    training mode it adds the bias itself, the same maths. No dropout or batch norm in these
    networks, so nothing else changes (CPU checks of this script only)."""
    from spconv.pytorch.conv import SparseConvolution
    for model in pipeline.models.values():
        for m in model.modules():
            if isinstance(m, SparseConvolution):
                m.train()


def import_trellis():
    """The installed `trellis` package without its __init__ (which imports the text pipeline,
    renderers, open3d, transformers ...), the pipelines package likewise, and FlexiCubes where
    the mesh extractor imports it (the wheel lacks that git submodule)."""
    spec = importlib.util.find_spec("trellis")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("trellis-3d-ms is not importable: set REF_SITE (benches/RESULTS.md)")
    root = spec.submodule_search_locations[0]
    package("trellis", root)
    package("trellis.pipelines", os.path.join(root, "pipelines"))
    flexicubes = os.environ.get("FLEXICUBES_DIR")
    if not flexicubes or not os.path.isfile(os.path.join(flexicubes, "flexicubes.py")):
        raise SystemExit("FLEXICUBES_DIR must name the folder with FlexiCubes' flexicubes.py")
    package("trellis.representations.mesh.flexicubes", flexicubes)
    from trellis.pipelines.trellis_image_to_3d import TrellisImageTo3DPipeline
    return TrellisImageTo3DPipeline


# --------------------------------------------------------------------------------------------
# DINOv2 through torch.hub.load, from local weights
# --------------------------------------------------------------------------------------------

def read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    """A safetensors file into CPU tensors (no dependency on the safetensors package)."""
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = bytearray(f.read())
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        t = torch.frombuffer(data, dtype=dtypes[info["dtype"]], count=(end - start) //
                             torch.tensor([], dtype=dtypes[info["dtype"]]).element_size(),
                             offset=start) if end > start else torch.empty(0, dtype=dtypes[info["dtype"]])
        out[name] = t.reshape(info["shape"]).clone()
    return out


def transformers_to_hub(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """facebook/dinov2-with-registers-* (transformers names) to the torch.hub names: the inverse
    of transformers' conversion script (query/key/value rows stacked back into qkv)."""
    import re
    rules = [
        (r"embeddings\.cls_token", "cls_token"),
        (r"embeddings\.mask_token", "mask_token"),
        (r"embeddings\.position_embeddings", "pos_embed"),
        (r"embeddings\.register_tokens", "register_tokens"),
        (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
        (r"encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
        (r"encoder\.layer\.(\d+)\.mlp\.fc([12])\.(weight|bias)", r"blocks.\1.mlp.fc\2.\3"),
        (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
        (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
        (r"layernorm\.(weight|bias)", r"norm.\1"),
    ]
    qkv = re.compile(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)")
    out, parts = {}, {}
    for key, value in sd.items():
        m = qkv.fullmatch(key)
        if m:
            parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, repl in rules:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            raise KeyError(f"DINOv2 checkpoint: no hub name for {key}")
    for (block, kind), p in parts.items():
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([p["query"], p["key"], p["value"]])
    return out


def hub_dinov2_module():
    code = os.environ.get("DINOV2_HUB_CODE")
    if not code or not os.path.isfile(os.path.join(code, "models", "vision_transformer.py")):
        raise SystemExit("DINOV2_HUB_CODE must name the vendored dinov2 package folder")
    if "dinov2_hub" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "dinov2_hub", os.path.join(code, "__init__.py"), submodule_search_locations=[code])
        m = importlib.util.module_from_spec(spec)
        sys.modules["dinov2_hub"] = m
        spec.loader.exec_module(m)
    from dinov2_hub.layers import MemEffAttention, NestedTensorBlock
    from dinov2_hub.models.vision_transformer import DinoVisionTransformer
    return DinoVisionTransformer, MemEffAttention, NestedTensorBlock


# torch.hub's `dinov2_vitl14_reg` and the transformers repo recon synth writes for it.
HUB_MODELS = {
    "dinov2_vitl14_reg": (
        dict(img_size=518, patch_size=14, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4,
             init_values=1.0, ffn_layer="mlp", block_chunks=0, num_register_tokens=4,
             interpolate_antialias=True, interpolate_offset=0.0),
        "facebook/dinov2-with-registers-large"),
}


def hf_snapshot_file(repo: str, filename: str) -> str:
    home = os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface"))
    base = os.path.join(home, "hub", "models--" + repo.replace("/", "--"))
    with open(os.path.join(base, "refs", "main")) as f:
        revision = f.read().strip()
    return os.path.join(base, "snapshots", revision, filename)


def make_hub_load(model_dir: str) -> Callable:
    """torch.hub.load's replacement: the pipeline names either a torch.hub model (weights from
    the HF cache) or, in recon's test models, a local `ckpts/<stem>` with a json config."""
    from functools import partial

    def load(_repo, name, pretrained=True, **_):
        DinoVisionTransformer, attn, block = hub_dinov2_module()
        local = os.path.join(model_dir, name)
        if os.path.isfile(local + ".json"):
            with open(local + ".json") as f:
                args = json.load(f)["args"]
            state = read_safetensors(local + ".safetensors")
        elif name in HUB_MODELS:
            args, repo = HUB_MODELS[name]
            state = transformers_to_hub(read_safetensors(hf_snapshot_file(repo, "model.safetensors")))
        else:
            raise SystemExit(f"image_cond_model {name!r}: neither a local checkpoint nor a known hub model")
        model = DinoVisionTransformer(block_fn=partial(block, attn_class=attn), **args)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if k != "mask_token"]:
            raise SystemExit(f"DINOv2 weights: missing {missing}, unexpected {unexpected}")
        return model

    return load


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------

def shell_voxels(radius: float, grid: int = GRID) -> torch.Tensor:
    """`recon bench --voxels shell:R`'s voxels, in the same order: [M, 4] int32 (0, x, y, z)."""
    axis = torch.arange(grid, dtype=torch.float64)
    g = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    keep = ((g - (grid - 1) / 2).norm(dim=-1) - radius).abs() < 1.0
    xyz = g[keep].int()
    return torch.cat([torch.zeros(xyz.shape[0], 1, dtype=torch.int32), xyz], 1)


class Recorder:
    """Wraps methods so that each call is timed (device synchronised on both sides, so the GPU
    work is charged to the method that queued it) and, optionally, its result kept."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: Dict[str, List[float]] = {}
        self.order: List[str] = []
        self.kept: Dict[str, object] = {}

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap(self, owner, attr: str, key: str, keep: Optional[Callable] = None,
             replace: Optional[Callable] = None):
        original = getattr(owner, attr)

        def timed(*a, **k):
            self.sync()
            start = time.perf_counter()
            result = original(*a, **k)
            self.sync()
            self.add(key, (time.perf_counter() - start) * 1e3)
            if keep is not None:
                keep(self.kept, a, k, result)
            return replace(result) if replace is not None else result

        setattr(owner, attr, timed)

    def add(self, key: str, ms: float):
        if key not in self.times:
            self.times[key] = []
            self.order.append(key)
        self.times[key].append(ms)


def median(xs: List[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def keep_sample(prefix: str) -> Callable:
    """A Recorder `keep` for a sampler's `sample(model, noise, ...)`: its noise and samples
    (features of a sparse tensor) as `{prefix}_noise` and `ss_latent` / `slat_sampled`."""
    def keep(kept, a, k, r):
        noise = k.get("noise", a[1] if len(a) > 1 else None)
        kept[prefix + "_noise"] = noise.feats if hasattr(noise, "feats") else noise
        samples = r.samples
        kept[prefix + ("_latent" if prefix == "ss" else "_sampled")] = (
            samples.feats if hasattr(samples, "feats") else samples)
    return keep


def keep_slat(kept, a, k, r):
    """A Recorder `keep` for `sample_slat`: the de-normalised latent and its voxels."""
    kept["slat_feats"] = r.feats
    kept["coords"] = r.coords


def instrument(pipeline, rec: Recorder, voxels: Optional[torch.Tensor]):
    """Per-stage timers and the intermediate results compared with recon's dump."""
    def keep_cond(kept, a, k, r):
        kept["cond"] = r["cond"]

    replace = None
    if voxels is not None:
        on_device = voxels.to(pipeline.device)
        replace = lambda _decoded: on_device  # noqa: E731

    rec.wrap(pipeline, "preprocess_image", "preprocess")
    rec.wrap(pipeline, "get_cond", "condition", keep=keep_cond)
    rec.wrap(pipeline, "sample_sparse_structure", "sparse_structure", replace=replace)
    rec.wrap(pipeline.sparse_structure_sampler, "sample", "ss_sampling", keep=keep_sample("ss"))
    rec.wrap(pipeline, "sample_slat", "structured_latent", keep=keep_slat)
    rec.wrap(pipeline.slat_sampler, "sample", "slat_sampling", keep=keep_sample("slat"))
    rec.wrap(pipeline, "decode_slat", "decode")
    for key in ("slat_decoder_gs", "slat_decoder_mesh"):
        if key in pipeline.models:
            rec.wrap(pipeline.models[key], "forward", key.replace("slat_decoder_", "decoder_"))


# --------------------------------------------------------------------------------------------
# Agreement with recon
# --------------------------------------------------------------------------------------------

def rel_l2(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.double().cpu(), ref.double().cpu()
    denom = ref.norm().item()
    return (ours - ref).norm().item() / denom if denom > 0 else (ours - ref).norm().item()


def compare(kept: Dict[str, object], decoded: dict, dump_path: str) -> dict:
    """Relative L2 of recon's tensors against the reference's; exact comparison of voxels."""
    recon = read_safetensors(dump_path)
    ref = {k: v for k, v in kept.items() if isinstance(v, torch.Tensor)}
    if "gaussian" in decoded:
        g = decoded["gaussian"][0]
        ref.update(gs_xyz=g._xyz, gs_features_dc=g._features_dc, gs_scaling=g._scaling,
                   gs_rotation=g._rotation, gs_opacity=g._opacity)
    report = {}
    for name, theirs in ref.items():
        if name not in recon:
            continue
        ours = recon[name]
        if tuple(ours.shape) != tuple(theirs.shape):
            report[name] = {"shape_recon": list(ours.shape), "shape_reference": list(theirs.shape)}
        elif name == "coords":
            report[name] = {"count": int(ours.shape[0]),
                            "identical": bool(torch.equal(ours.int(), theirs.int().cpu()))}
        else:
            report[name] = {"rel_l2": rel_l2(ours, theirs)}
    if "mesh" in decoded:
        m = decoded["mesh"][0]
        report["mesh"] = {"reference_vertices": int(m.vertices.shape[0]),
                          "reference_faces": int(m.faces.shape[0]),
                          "recon_vertices": int(recon["mesh_vertices"].shape[0]) if "mesh_vertices" in recon else None,
                          "recon_faces": int(recon["mesh_faces"].shape[0]) if "mesh_faces" in recon else None}
    return report


# --------------------------------------------------------------------------------------------

def common_arguments(description: str, runs: int, formats: str) -> argparse.ArgumentParser:
    """The options both reference benchmarks take (with their default runs and formats)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True, help="model folder (pipeline.json + ckpts/)")
    p.add_argument("--image", required=True, help="RGBA input image")
    p.add_argument("--device", default="cuda")
    p.add_argument("--runs", type=int, default=runs)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--formats", default=formats, help="gaussians, mesh or gaussians,mesh")
    p.add_argument("--voxels", default=None, help="shell:R, as recon bench --voxels")
    p.add_argument("--recon-dump", default=None, help="recon bench --dump's file, to compare with")
    p.add_argument("--json", default=None)
    return p


def formats_and_voxels(args) -> Tuple[List[str], Optional[torch.Tensor]]:
    """`--formats` as the reference's format names, and `--voxels shell:R`'s voxels (or None)."""
    formats = [{"gaussians": "gaussian", "mesh": "mesh"}[f] for f in args.formats.split(",")]
    voxels = None
    if args.voxels:
        if not args.voxels.startswith("shell:"):
            raise SystemExit(f"--voxels {args.voxels!r}: expected shell:R")
        voxels = shell_voxels(float(args.voxels[len("shell:"):]))
    return formats, voxels


def parse_args():
    p = common_arguments(__doc__.split("\n")[0], runs=5, formats="gaussians")
    p.add_argument("--ss-steps", type=int, default=None)
    p.add_argument("--slat-steps", type=int, default=None)
    return p.parse_args()


def main():
    args = parse_args()
    device = torch.device(args.device)
    install_stubs()
    Pipeline = import_trellis()
    from PIL import Image
    torch.hub.load = make_hub_load(args.model)
    if device.type == "cpu":
        CudaOnCpu().__enter__()

    started = time.perf_counter()
    pipeline = Pipeline.from_pretrained(args.model)
    pipeline.to(device)
    if device.type == "cpu":
        spconv_training_mode(pipeline)
    rec = Recorder(device)
    rec.sync()
    load_ms = (time.perf_counter() - started) * 1e3

    formats, voxels = formats_and_voxels(args)
    instrument(pipeline, rec, voxels)
    ss_params = {"steps": args.ss_steps} if args.ss_steps else {}
    slat_params = {"steps": args.slat_steps} if args.slat_steps else {}
    image = Image.open(args.image)
    image.load()

    peaks, decoded = [], None
    print(f"reference: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, loaded in {load_ms / 1e3:.1f} s", flush=True)
    for run in range(args.warmup + args.runs):
        timed = run >= args.warmup
        if not timed:
            saved = {k: list(v) for k, v in rec.times.items()}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rec.sync()
        start = time.perf_counter()
        with torch.no_grad():
            decoded = pipeline.run(image, seed=args.seed, formats=formats, preprocess_image=True,
                                   sparse_structure_sampler_params=ss_params,
                                   slat_sampler_params=slat_params)
        rec.sync()
        total = (time.perf_counter() - start) * 1e3
        if timed:
            rec.add("generate", total)
            if device.type == "cuda":
                peaks.append(torch.cuda.max_memory_allocated(device))
        else:
            rec.times = saved
            rec.order = [k for k in rec.order if k in saved]
        print(f"  {'run' if timed else 'warm-up'} {run + 1}: {total / 1e3:.2f} s", flush=True)

    print(f"{'stage':<20} {'median ms':>10} {'min ms':>10} {'max ms':>10}")
    for key in rec.order:
        xs = rec.times[key]
        print(f"{key:<20} {median(xs):>10.2f} {min(xs):>10.2f} {max(xs):>10.2f}")
    if peaks:
        print(f"peak GPU memory: {median(peaks) / 2**30:.2f} GiB median, {max(peaks) / 2**30:.2f} GiB max")
    voxel_count = int(rec.kept["coords"].shape[0]) if "coords" in rec.kept else None
    print(f"voxels: {voxel_count}")

    report = {
        "pipeline": "trellis-3d-ms TrellisImageTo3DPipeline",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "runs": args.runs, "warmup": args.warmup, "seed": args.seed,
        "formats": args.formats, "voxel_override": args.voxels, "voxels": voxel_count,
        "load_ms": load_ms,
    }
    finish_report(report, rec.times, peaks, rec.kept, decoded, args)


def finish_report(report: dict, times: Dict[str, List[float]], peaks: List[int],
                  kept: Dict[str, object], decoded: dict, args) -> None:
    """Completes `report` with the stage statistics, the peak memory, the backends and (with
    `args.recon_dump`) the agreement with recon, and writes it to `args.json` when given."""
    report["stages"] = {k: {"median_ms": median(v), "min_ms": min(v), "max_ms": max(v),
                            "runs_ms": v} for k, v in times.items()}
    report["peak_gpu_bytes"] = median(peaks) if peaks else None
    report["backends"] = {k: os.environ[k] for k in ("SPARSE_BACKEND", "SPARSE_ATTN_BACKEND",
                                                     "ATTN_BACKEND", "SPCONV_ALGO")}
    if args.recon_dump:
        report["agreement"] = compare(kept, decoded, args.recon_dump)
        for name, r in report["agreement"].items():
            print(f"agreement {name}: {r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

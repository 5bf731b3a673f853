"""Golden cases for DINOv2 (the image encoder TRELLIS conditions on, torch.hub
`facebookresearch/dinov2` `dinov2_vitl14_reg`), at small seeded configurations.

The reference is the hub code itself (`dinov2.models.vision_transformer.DinoVisionTransformer`),
taken from PyPI `trellis-3d-python==0.1.30` (its `trellis/dinov2/`, a vendored copy of
facebookresearch/dinov2). That wheel's top-level `trellis` package clashes with trellis-3d-ms,
so it is never installed: `hub_code_dir()` downloads it with `pip download --no-deps` (sha256
pinned in requirements-unpacked.txt), unpacks it into tools/golden/.cache/ (git-ignored) and
the `dinov2` package is loaded from there by path (as `dinov2_hub`).

What TRELLIS computes (trellis/pipelines/trellis_image_to_3d.py, encode_image):
    image = Normalize(ImageNet mean, std)(image01)                # [B, 3, 518, 518]
    x_prenorm = model(image, is_training=True)["x_prenorm"]      # [B, 1 + 4 + 37*37, 1024]
    tokens = F.layer_norm(x_prenorm, x_prenorm.shape[-1:])       # no affine, eps 1e-5
Each case stores the normalised `image` as input and `tokens`, `x_prenorm`, `x_norm` (the final
norm, i.e. the hub's x_norm_{clstoken,regtokens,patchtokens} concatenated) as outputs.

Checkpoint layouts: recon downloads the published weights from the Hugging Face repo
facebook/dinov2-with-registers-large (transformers layout), and also reads the torch.hub layout.
`dinov2_reg_native` writes the transformers layout (HUB_TO_TRANSFORMERS below, the rename of
transformers' convert_dinov2_with_registers_to_hf.py: q/k/v are the row blocks of the fused
qkv, in that order) plus a transformers-style `hf_config.json`; the other cases write the hub
layout as `state_dict()` gives it. The checkpoint json is {"name": "DinoVisionTransformer",
"args": <constructor kwargs>} in either case.
"""
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from generate import case, FixtureWriter, DEBUG_MAX_NUMEL, REL_L2_TOL, HERE, run_with_taps

CLASS_NAME = "DinoVisionTransformer"
REFERENCE_CLASS = "dinov2.models.vision_transformer.DinoVisionTransformer (trellis-3d-python 0.1.30, trellis/dinov2)"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Key listing of the published torch.hub checkpoint (research notes, outside the repo).
PUBLISHED_TSV = "dinov2_vitl14_reg4_pretrain.tsv"

CACHE_DIR = os.path.join(HERE, ".cache")
# The name the unpacked hub package is imported under.
PACKAGE = "dinov2_hub"
PIN_FILE = os.path.join(HERE, "requirements-unpacked.txt")


# --------------------------------------------------------------------------
# The hub code, from the trellis-3d-python wheel (unpacked, never installed)
# --------------------------------------------------------------------------

def _read_pin() -> Tuple[str, str, str]:
    """(name, version, sha256) of the one pinned line of requirements-unpacked.txt."""
    with open(PIN_FILE) as f:
        lines = [l.split("#")[0].strip() for l in f]
    lines = [l for l in lines if l]
    assert len(lines) == 1, f"{PIN_FILE}: expected one pinned package, got {lines}"
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.]+)\s+--hash=sha256:([0-9a-f]{64})", lines[0])
    assert m, f"{PIN_FILE}: expected 'name==version --hash=sha256:<hex>', got {lines[0]!r}"
    return m.group(1), m.group(2), m.group(3)


def hub_code_dir() -> str:
    """The unpacked `dinov2` package directory; downloads and unpacks the pinned wheel once."""
    name, version, digest = _read_pin()
    root = os.path.join(CACHE_DIR, f"{name}-{version}")
    pkg = os.path.join(root, "trellis", "dinov2")
    if os.path.isfile(os.path.join(pkg, "models", "vision_transformer.py")):
        return pkg
    wheels = os.path.join(CACHE_DIR, "wheels")
    os.makedirs(wheels, exist_ok=True)
    wheel_name = f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    wheel = os.path.join(wheels, wheel_name)
    if not os.path.exists(wheel):
        # pip's progress goes to stderr: callers read this module's answers from stdout.
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"{name}=={version}",
                        "-d", wheels], check=True, stdout=sys.stderr)
    with open(wheel, "rb") as f:
        got = hashlib.sha256(f.read()).hexdigest()
    if got != digest:
        raise RuntimeError(f"{wheel}: sha256 {got}, pinned {digest} ({PIN_FILE})")
    with zipfile.ZipFile(wheel) as z:
        members = [m for m in z.namelist() if m.startswith("trellis/dinov2/")]
        z.extractall(root, members)
    return pkg


def import_hub_dinov2():
    """Imports the unpacked package as top-level `dinov2_hub` (its imports are package-relative;
    `dinov2` itself is this case module's name)."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    # The reference attention: the hub's plain Attention (q·scale @ kᵀ, softmax, @ v) rather
    # than xformers (the shim on sys.path would otherwise be picked up). Read at import.
    os.environ["XFORMERS_DISABLED"] = "1"
    pkg = hub_code_dir()
    spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(pkg, "__init__.py"),
                                                  submodule_search_locations=[pkg])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


def build_reference(args: dict) -> nn.Module:
    import_hub_dinov2()
    from dinov2_hub.layers import MemEffAttention, NestedTensorBlock
    from dinov2_hub.models.vision_transformer import DinoVisionTransformer
    from functools import partial
    # vit_small/base/large build their blocks this way; the attention class is MemEffAttention,
    # which is the plain Attention without xformers.
    model = DinoVisionTransformer(block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention), **args)
    return model.eval()


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------

INIT_RULE = {
    "conv_linear_weight": "N(0, std=1/sqrt(fan_in)), fan_in = in_channels * prod(kernel)",
    "conv_linear_bias": "N(0, std=0.1)",
    "norm_weight": "1 + N(0, std=0.1)",
    "norm_bias": "N(0, std=0.1)",
    "layer_scale_gamma": "1 + N(0, std=0.1) (the hub initialises it to init_values)",
    "cls_token, register_tokens, mask_token, pos_embed": "N(0, 1) (pos_embed not smooth: every grid value matters "
                                                         "to the interpolation)",
    "order": "named_parameters() order, one torch.Generator, drawn in float32",
}


@torch.no_grad()
def init_dinov2_(model: nn.Module, gen: torch.Generator) -> None:
    from dinov2_hub.layers.layer_scale import LayerScale
    owners = {f"{mn}.{pn}" if mn else pn: m for mn, m in model.named_modules()
              for pn, _ in m.named_parameters(recurse=False)}
    for full, p in model.named_parameters():
        m = owners[full]
        leaf = full.rsplit(".", 1)[-1]
        if isinstance(m, (nn.Linear, nn.Conv2d)) and leaf == "weight":
            v = torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5
        elif isinstance(m, (nn.Linear, nn.Conv2d)) and leaf == "bias":
            v = torch.randn(p.shape, generator=gen) * 0.1
        elif isinstance(m, nn.LayerNorm) and leaf == "weight":
            v = 1.0 + torch.randn(p.shape, generator=gen) * 0.1
        elif isinstance(m, nn.LayerNorm) and leaf == "bias":
            v = torch.randn(p.shape, generator=gen) * 0.1
        elif isinstance(m, LayerScale) and leaf == "gamma":
            v = 1.0 + torch.randn(p.shape, generator=gen) * 0.1
        elif full in ("cls_token", "register_tokens", "mask_token", "pos_embed"):
            v = torch.randn(p.shape, generator=gen)
        else:
            raise NotImplementedError(f"no init rule for {full} ({type(m).__name__})")
        p.copy_(v)


# Hub name -> transformers name (transformers' convert_dinov2_with_registers_to_hf.py); `{i}` is
# the block index. `attn.qkv` is split into query/key/value separately (hub_to_transformers).
HUB_TO_TRANSFORMERS = [
    (r"cls_token", "embeddings.cls_token"),
    (r"mask_token", "embeddings.mask_token"),
    (r"pos_embed", "embeddings.position_embeddings"),
    (r"register_tokens", "embeddings.register_tokens"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embeddings.projection.\1"),
    (r"blocks\.(\d+)\.norm([12])\.(weight|bias)", r"encoder.layer.\1.norm\2.\3"),
    (r"blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)", r"encoder.layer.\1.mlp.fc\2.\3"),
    (r"blocks\.(\d+)\.mlp\.w12\.(weight|bias)", r"encoder.layer.\1.mlp.weights_in.\2"),
    (r"blocks\.(\d+)\.mlp\.w3\.(weight|bias)", r"encoder.layer.\1.mlp.weights_out.\2"),
    (r"blocks\.(\d+)\.ls([12])\.gamma", r"encoder.layer.\1.layer_scale\2.lambda1"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layer.\1.attention.output.dense.\2"),
    (r"norm\.(weight|bias)", r"layernorm.\1"),
]
QKV = re.compile(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)")


def hub_to_transformers(sd: Dict[str, torch.Tensor], embed_dim: int) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        m = QKV.fullmatch(key)
        if m:
            i, kind = m.groups()
            for j, part in enumerate(("query", "key", "value")):
                out[f"encoder.layer.{i}.attention.attention.{part}.{kind}"] = \
                    value[j * embed_dim:(j + 1) * embed_dim].clone()
            continue
        for pattern, repl in HUB_TO_TRANSFORMERS:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            raise KeyError(f"no transformers name for {key}")
    return out


def transformers_config(args: dict) -> dict:
    """A transformers Dinov2WithRegistersConfig config.json for these (register-model) args."""
    assert args["interpolate_offset"] == 0.0 and args["interpolate_antialias"], \
        "transformers interpolates like the hub's register models only"
    return {
        "architectures": ["Dinov2WithRegistersModel"],
        "model_type": "dinov2_with_registers",
        "hidden_size": args["embed_dim"],
        "num_hidden_layers": args["depth"],
        "num_attention_heads": args["num_heads"],
        "mlp_ratio": args["mlp_ratio"],
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "image_size": args["img_size"],
        "patch_size": args["patch_size"],
        "num_channels": 3,
        "qkv_bias": True,
        "layerscale_value": args["init_values"],
        "use_swiglu_ffn": False,
        "num_register_tokens": args["num_register_tokens"],
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
    }


def check_hub_layout(sd: Dict[str, torch.Tensor], depth: int, tsv_dir: Optional[str]) -> dict:
    """The hub-layout key set equals the published listing's, restricted to `depth` blocks."""
    path = os.path.join(tsv_dir or "", PUBLISHED_TSV)
    if not tsv_dir or not os.path.exists(path):
        print(f"    (published layout check skipped: {PUBLISHED_TSV} not found)")
        return {"published_tsv": PUBLISHED_TSV, "checked": False}
    with open(path) as f:
        next(f)
        keys = [line.split("\t")[0] for line in f if line.strip()]
    block = re.compile(r"blocks\.(\d+)\.")
    want = [k for k in keys if not block.match(k) or int(block.match(k).group(1)) < depth]
    assert list(sd) == want, f"hub key order/set differs from {PUBLISHED_TSV}: {set(sd) ^ set(want)}"
    print(f"    hub layout matches {PUBLISHED_TSV} for {depth} blocks: {len(want)} keys, same order")
    return {"published_tsv": PUBLISHED_TSV, "checked": True, "blocks": depth, "keys": len(want),
            "same_keys_and_order": True}


def copy_published_listing(w: FixtureWriter) -> None:
    """Copies the full-size published key listing next to the fixture, so the Rust test of the
    ViT-L/14-reg4 layout needs nothing outside the repo."""
    src = os.path.join(w.tsv_dir or "", PUBLISHED_TSV)
    if not w.tsv_dir or not os.path.exists(src):
        raise FileNotFoundError(f"{src}: the published DINOv2 key listing is needed by this case")
    with open(src) as f:
        text = f.read()
    with open(w.path(PUBLISHED_TSV), "w") as f:
        f.write(text)
    w.manifest["files"][PUBLISHED_TSV] = {
        "kind": "published_layout",
        "description": "key, shape and dtype of every tensor of dinov2_vitl14_reg4_pretrain.pth (torch.hub), "
                       "copied from the research notes (trellis_state_dicts/)",
    }


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

def imagenet_normalize(image01: torch.Tensor) -> torch.Tensor:
    """torchvision's Normalize as TRELLIS applies it: (x - mean) / std, float32 mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image01.dtype)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=image01.dtype)[:, None, None]
    return (image01 - mean) / std


def dinov2_golden(w: FixtureWriter, *, args: dict, image_hw: Tuple[int, int], batch: int, seed: int,
                  layout: str) -> None:
    assert layout in ("hub", "transformers")
    gen = torch.Generator().manual_seed(seed)
    model = build_reference(args)
    init_dinov2_(model, gen)
    hub_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layout_record = check_hub_layout(hub_sd, args["depth"], w.tsv_dir) \
        if args.get("block_chunks", 1) == 0 and args.get("num_register_tokens", 0) > 0 else None
    if layout == "transformers":
        saved = hub_to_transformers(hub_sd, args["embed_dim"])
        hf_cfg = transformers_config(args)
        with open(w.path("hf_config.json"), "w") as f:
            json.dump(hf_cfg, f, indent=2)
            f.write("\n")
        w.manifest["files"]["hf_config.json"] = {
            "kind": "config",
            "description": "transformers Dinov2WithRegistersConfig of this small model, as config.json of a "
                           "published repo; with ckpts/dinov2.safetensors it is what Dinov2::load_published reads",
        }
    else:
        saved = hub_sd
    stem = w.save_checkpoint("ckpts/dinov2", CLASS_NAME, args, saved)
    if layout == "transformers":
        copy_published_listing(w)

    # The reference runs on exactly the weights as stored (all F32, so no rounding).
    ref = build_reference(args)
    ref.load_state_dict(hub_sd, strict=True)

    h, wd = image_hw
    image01 = torch.rand([batch, 3, h, wd], generator=gen)
    image = imagenet_normalize(image01)

    taps = {f"debug.blocks.{i}": b for i, b in enumerate(
        blk for chunk in ref.blocks for blk in (chunk if isinstance(chunk, nn.ModuleList) else [chunk])
        if not isinstance(blk, nn.Identity))}
    with torch.no_grad():
        out, seen = run_with_taps(ref, taps, lambda: ref(image, is_training=True))
        x_prenorm = out["x_prenorm"]
        tokens = F.layer_norm(x_prenorm, x_prenorm.shape[-1:])
        x_norm = torch.cat([out["x_norm_clstoken"][:, None], out["x_norm_regtokens"],
                            out["x_norm_patchtokens"]], dim=1)
        pos = ref.interpolate_pos_encoding(torch.zeros(1, (h // args["patch_size"]) * (wd // args["patch_size"]) + 1,
                                                       args["embed_dim"]), h, wd)
        again = ref(image, is_training=True)["x_prenorm"]
    assert torch.equal(x_prenorm, again), "reference forward is not deterministic"
    assert torch.allclose(x_norm, ref.norm(x_prenorm))

    w.save_tensors("inputs.safetensors", "inputs", {
        "image": {"tensor": image, "description": "ImageNet-normalised image [B, 3, H, W] = "
                                                  "(image01 - mean) / std, the DINOv2 input"},
        "image01": {"tensor": image01, "description": "the same image in [0, 1] before normalisation "
                                                      "(U(0,1) from the case generator); not a network input"},
    })
    grid = (h // args["patch_size"], wd // args["patch_size"])
    outputs = {
        "tokens": {"tensor": tokens, "description": "TRELLIS condition tokens [B, 1 + registers + h*w, C]",
                   "produced_by": "F.layer_norm(x_prenorm, x_prenorm.shape[-1:])"},
        "x_prenorm": {"tensor": x_prenorm, "description": "last block output [B, 1 + registers + h*w, C]",
                      "produced_by": "ref(image, is_training=True)['x_prenorm']"},
        "x_norm": {"tensor": x_norm, "description": "final norm of x_prenorm [B, 1 + registers + h*w, C]",
                   "produced_by": "cat(x_norm_clstoken[:, None], x_norm_regtokens, x_norm_patchtokens) of "
                                  "ref(image, is_training=True)"},
    }
    skipped = []
    debug = dict(seen)
    debug["debug.pos_embed"] = pos
    for name, t in debug.items():
        if t.numel() <= DEBUG_MAX_NUMEL:
            what = "ref.interpolate_pos_encoding(x, H, W)" if name == "debug.pos_embed" else \
                f"forward hook on ref.{name[len('debug.'):]}"
            outputs[name] = {"tensor": t, "description": f"intermediate ({what})", "produced_by": what}
        else:
            skipped.append({"name": name, "shape": list(t.shape), "numel": t.numel()})
    w.save_tensors("outputs.safetensors", "outputs", outputs)

    trained = args["img_size"] // args["patch_size"]
    w.finish(
        module={"class": REFERENCE_CLASS, "args": args, "checkpoint": "ckpts/dinov2",
                "checkpoint_layout": layout, "init": INIT_RULE,
                "hub_to_transformers": [list(p) for p in HUB_TO_TRANSFORMERS] + [
                    ["blocks.{i}.attn.qkv.{weight,bias}", "rows [0:C] -> encoder.layer.{i}.attention.attention.query, "
                     "[C:2C] -> .key, [2C:3C] -> .value"]] if layout == "transformers" else None,
                "hf_config": "hf_config.json" if layout == "transformers" else None,
                "published_layout": layout_record},
        seed=seed,
        rng="one torch.Generator().manual_seed(seed): weights (INIT_RULE order), then image01 = U(0,1)",
        input_grid={"image_hw": list(image_hw), "patch_grid": list(grid), "trained_grid": [trained, trained],
                    "interpolated": not (grid[0] * grid[1] == trained * trained and h == wd)},
        precision={"checkpoint": "all F32 (the published DINOv2 weights are F32)",
                   "reference": "float32 on CPU, torch.set_num_threads(1), XFORMERS_DISABLED=1 (plain attention)"},
        reference_call=("x = ref(image, is_training=True); x_prenorm = x['x_prenorm']; "
                        "tokens = F.layer_norm(x_prenorm, x_prenorm.shape[-1:])  # TRELLIS encode_image"),
        debug={"max_numel": DEBUG_MAX_NUMEL, "skipped": skipped},
        tolerance={"rel_l2": REL_L2_TOL, "note": "fp32 CPU; also report max_abs"},
    )


# dinov2_vitl14_reg's constructor arguments, shrunk: vit_large -> 64 wide, 3 blocks, 4 heads;
# patch 14 at 70 (a 5x5 grid); LayerScale, MLP, 4 registers, antialias, no offset, no chunks.
REG_ARGS = {"img_size": 70, "patch_size": 14, "embed_dim": 64, "depth": 3, "num_heads": 4, "mlp_ratio": 4,
            "init_values": 1.0, "ffn_layer": "mlp", "block_chunks": 0, "num_register_tokens": 4,
            "interpolate_antialias": True, "interpolate_offset": 0.0}


@case("dinov2_reg_native",
      "DINOv2 with 4 registers (dinov2_vitl14_reg shrunk), transformers checkpoint layout + hf_config.json, "
      "batch 2 at the trained 70x70 (no interpolation)")
def case_dinov2_reg_native(w: FixtureWriter):
    dinov2_golden(w, args=REG_ARGS, image_hw=(70, 70), batch=2, seed=3001, layout="transformers")


@case("dinov2_reg_interp",
      "DINOv2 with 4 registers, hub checkpoint layout, 48 wide / 3 heads / 2 blocks, trained 4x4 grid, "
      "batch 2 at 98x42 (7x3 patches: position grid upsampled in rows, downsampled in columns, antialiased)")
def case_dinov2_reg_interp(w: FixtureWriter):
    args = dict(REG_ARGS, img_size=56, embed_dim=48, depth=2, num_heads=3)
    dinov2_golden(w, args=args, image_hw=(98, 42), batch=2, seed=3002, layout="hub")


@case("dinov2_offset_swiglu",
      "DINOv2 without registers and with the hub defaults the register models override (interpolate_offset "
      "0.1 via scale factors, no antialias), no LayerScale, SwiGLU FFN, qkv without bias, 2 block chunks; "
      "patch 7, trained 6x6 grid, input 21x84 (3x12 = 36 patches: same count, not square, so interpolated)")
def case_dinov2_offset_swiglu(w: FixtureWriter):
    args = {"img_size": 42, "patch_size": 7, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 3,
            "qkv_bias": False, "init_values": None, "ffn_layer": "swiglufused", "block_chunks": 2,
            "num_register_tokens": 0, "interpolate_antialias": False, "interpolate_offset": 0.1}
    dinov2_golden(w, args=args, image_hw=(21, 84), batch=1, seed=3003, layout="hub")

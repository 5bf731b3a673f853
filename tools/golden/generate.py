"""Golden-fixture generator: runs the original TRELLIS code (PyPI trellis-3d-ms)
on CPU and writes checkpoints, inputs and reference outputs that the Rust
tests compare against.

    bash tools/golden/setup.sh                                  # once
    tools/golden/.venv/bin/python tools/golden/generate.py      # every fixture
    tools/golden/.venv/bin/python tools/golden/generate.py --only ss_dec_fp32
    tools/golden/.venv/bin/python tools/golden/generate.py --list

Each case is a function registered with @case(...). A "golden" case writes
    <out>/<case>/manifest.json
    <out>/<case>/ckpts/<stem>.json + <stem>.safetensors   (published layout)
    <out>/<case>/inputs.safetensors
    <out>/<case>/outputs.safetensors
through a FixtureWriter, which also records every tensor (name, shape, dtype,
description, the reference call that produced it) in the manifest. A
"model_dir" case writes a model directory in the published HF layout
(pipeline.json + ckpts/). See README.md for how to add a case.

The output is deterministic: same versions -> byte-identical files.
"""
import reference_env  # noqa: F401  (must precede torch: threads, env vars, shim path)

import argparse
import importlib
import hashlib
import json
import os
import shutil
import sys
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(REPO_ROOT, "tests", "fixtures", "golden")
DEFAULT_MODEL_OUT = os.path.join(REPO_ROOT, "tests", "fixtures", "model_tiny")
# Key/dtype listings of the published checkpoints (research notes, outside the repo).
DEFAULT_PUBLISHED_TSV_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared", "research", "trellis_state_dicts")

# Intermediates ("debug.*" tensors) are stored only up to this many elements
# each, to keep the fixture folder small. Skipped ones are listed in the manifest.
DEBUG_MAX_NUMEL = 32768

# Relative L2 tolerance the Rust tests are expected to apply (DESIGN.md §5).
REL_L2_TOL = 1e-4

reference_env.import_trellis()


# --------------------------------------------------------------------------
# Case registry
# --------------------------------------------------------------------------

class Case:
    def __init__(self, name: str, fn: Callable, kind: str, description: str):
        self.name, self.fn, self.kind, self.description = name, fn, kind, description


CASES: Dict[str, Case] = {}


def case(name: str, description: str, kind: str = "golden"):
    """Register a fixture case. kind: 'golden' (written under --out/<name>) or
    'model_dir' (written to --model-out, a model folder in the published layout)."""
    assert kind in ("golden", "model_dir")

    def deco(fn):
        assert name not in CASES, f"duplicate case {name}"
        CASES[name] = Case(name, fn, kind, description)
        return fn
    return deco


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def dtype_name(dt: torch.dtype) -> str:
    return {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
            torch.int32: "I32", torch.int64: "I64", torch.uint8: "U8", torch.bool: "BOOL"}[dt]


def tensor_stats(t: torch.Tensor) -> dict:
    if not t.is_floating_point():
        return {"min": int(t.min()), "max": int(t.max())}
    f = t.double()
    return {"min": float(f.min()), "max": float(f.max()), "mean": float(f.mean()), "std": float(f.std()),
            "l2": float(f.norm())}


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


INIT_RULE = {
    "conv_linear_weight": "N(0, std=1/sqrt(fan_in)), fan_in = in_channels * prod(kernel)",
    "conv_linear_bias": "N(0, std=0.1)",
    "norm_weight": "1 + N(0, std=0.1)",
    "norm_bias": "N(0, std=0.1)",
    "order": "modules in named_modules() order, parameters in registration order, one torch.Generator; "
             "values drawn in float32 then copied into the parameter (rounded to fp16 where the parameter is fp16)",
    "note": "overrides TRELLIS's zero_module() init of ResBlock3d.conv2 so every weight matters",
}


@torch.no_grad()
def init_weights_(model: nn.Module, gen: torch.Generator) -> None:
    """Seeded init (INIT_RULE) so that every parameter influences the output.

    Raises on parameter types it has no rule for: a new network must decide
    explicitly how its special parameters are drawn."""
    conv_linear = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    norms = (nn.LayerNorm, nn.GroupNorm)
    seen = set()
    for mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if isinstance(m, conv_linear) and pname == "weight":
                fan_in = p[0].numel()
                v = torch.randn(p.shape, generator=gen) / fan_in ** 0.5
            elif isinstance(m, conv_linear) and pname == "bias":
                v = torch.randn(p.shape, generator=gen) * 0.1
            elif isinstance(m, norms) and pname == "weight":
                v = 1.0 + torch.randn(p.shape, generator=gen) * 0.1
            elif isinstance(m, norms) and pname == "bias":
                v = torch.randn(p.shape, generator=gen) * 0.1
            else:
                raise NotImplementedError(f"no init rule for {full} ({type(m).__name__})")
            p.copy_(v)  # casts to the parameter's dtype (fp16 torso stays fp16)
            seen.add(full)
    missing = {n for n, _ in model.named_parameters()} - seen
    assert not missing, f"parameters left uninitialised: {sorted(missing)}"


def read_published_tsv(path: str) -> Dict[str, str]:
    """key -> dtype ('float16'/'float32') from a research/trellis_state_dicts/*.tsv file."""
    out = {}
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        assert header[:3] == ["key", "shape", "dtype_in_file"], header
        for line in f:
            key, _shape, dt = line.rstrip("\n").split("\t")[:3]
            out[key] = dt
    return out


def check_published_layout(ckpt_path: str, tsv_name: str, tsv_dir: Optional[str]) -> dict:
    """Compare key set and per-key dtype of a written checkpoint with the published one
    (shapes differ by config). Returns a record for the manifest."""
    if not tsv_dir or not os.path.exists(os.path.join(tsv_dir, tsv_name)):
        print(f"    (published layout check skipped: {tsv_name} not found)")
        return {"published_tsv": tsv_name, "checked": False}
    pub = read_published_tsv(os.path.join(tsv_dir, tsv_name))
    ours = {k: str(v.dtype).replace("torch.", "") for k, v in load_file(ckpt_path).items()}
    if set(pub) != set(ours):
        raise AssertionError(f"key set differs from {tsv_name}: missing {sorted(set(pub) - set(ours))}, "
                             f"extra {sorted(set(ours) - set(pub))}")
    bad = {k: (ours[k], pub[k]) for k in pub if ours[k] != pub[k]}
    if bad:
        raise AssertionError(f"dtype pattern differs from {tsv_name}: {bad}")
    print(f"    layout matches {tsv_name}: {len(pub)} keys, same dtypes")
    return {"published_tsv": tsv_name, "checked": True, "keys": len(pub), "same_key_set": True,
            "same_dtypes": True}


class FixtureWriter:
    """Writes one case folder and accumulates its manifest."""

    def __init__(self, root: str, name: str, description: str, tsv_dir: Optional[str]):
        self.root, self.name, self.tsv_dir = root, name, tsv_dir
        if os.path.isdir(root):
            shutil.rmtree(root)  # no stale files from an older version of the case
        os.makedirs(root)
        self.manifest = {
            "case": name,
            "description": description,
            "generator": "tools/golden/generate.py",
            "versions": reference_env.versions(),
            "files": {},
        }

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def save_checkpoint(self, stem: str, class_name: str, args: dict, state_dict: Dict[str, torch.Tensor],
                        published_tsv: Optional[str] = None) -> str:
        """Write `<stem>.json` ({"name", "args"}) + `<stem>.safetensors` exactly like the
        published checkpoints: state_dict() as is, dtypes untouched. Returns the path stem."""
        p = self.path(stem)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p + ".json", "w") as f:
            json.dump({"name": class_name, "args": args}, f, indent=4)
            f.write("\n")
        sd = {k: v.detach().contiguous() for k, v in state_dict.items()}
        save_file(sd, p + ".safetensors", metadata={"format": "pt"})
        rec = {
            "kind": "checkpoint",
            "config": stem + ".json",
            "tensors": [{"name": k, "shape": list(v.shape), "dtype": dtype_name(v.dtype),
                         "description": "state_dict entry"} for k, v in sd.items()],
            "dtype_counts": {d: sum(1 for v in sd.values() if dtype_name(v.dtype) == d)
                             for d in sorted({dtype_name(v.dtype) for v in sd.values()})},
        }
        if published_tsv:
            rec["published_layout"] = check_published_layout(p + ".safetensors", published_tsv, self.tsv_dir)
        self.manifest["files"][stem + ".safetensors"] = rec
        return p

    def save_tensors(self, rel: str, kind: str, tensors: Dict[str, dict]) -> None:
        """tensors: name -> {"tensor": t, "description": str, optional "produced_by": str}."""
        data = {k: v["tensor"].detach().contiguous() for k, v in tensors.items()}
        save_file(data, self.path(rel))
        self.manifest["files"][rel] = {
            "kind": kind,
            "tensors": [dict({"name": k, "shape": list(data[k].shape), "dtype": dtype_name(data[k].dtype),
                              "description": v["description"]},
                             **({"produced_by": v["produced_by"]} if "produced_by" in v else {}),
                             stats=tensor_stats(data[k]))
                        for k, v in tensors.items()],
        }

    def finish(self, **fields) -> None:
        self.manifest.update(fields)
        for rel, rec in self.manifest["files"].items():
            rec["sha256"] = sha256(self.path(rel))
            rec["bytes"] = os.path.getsize(self.path(rel))
        with open(self.path("manifest.json"), "w") as f:
            json.dump(self.manifest, f, indent=2)
            f.write("\n")


def reference_eval_(model: nn.Module) -> nn.Module:
    """Put a reference model in inference mode the way the fixtures need it.

    Every TRELLIS module goes to eval(), except spconv's convolution layers:
    spconv 2.3.8's CPU path refuses a bias in eval mode ("cpu don't support act
    and bias"); in training mode it adds the bias after the GEMM, which is the
    same maths. spconv layers have no other train/eval-dependent behaviour."""
    model.eval()
    try:
        from spconv.pytorch.conv import SparseConvolution
    except ImportError:  # pragma: no cover - spconv is in requirements.txt
        return model
    for m in model.modules():
        if isinstance(m, SparseConvolution):
            m.train()
    return model


def run_with_taps(model: nn.Module, taps: Dict[str, nn.Module], call: Callable[[], torch.Tensor]):
    """Run `call()` once with forward hooks recording the output of each tapped module.
    Hooks only read; the computation is the model's own forward."""
    seen: Dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out.detach().clone()))
               for n, m in taps.items()]
    try:
        out = call()
    finally:
        for h in handles:
            h.remove()
    missing = set(taps) - set(seen)
    assert not missing, f"taps never fired: {missing}"
    return out, seen


# --------------------------------------------------------------------------
# SparseStructureDecoder  (trellis.models.sparse_structure_vae)
# --------------------------------------------------------------------------

SS_DEC_CLASS = "trellis.models.sparse_structure_vae.SparseStructureDecoder"


def build_ss_dec_checkpoint(w: FixtureWriter, stem: str, args: dict, gen: torch.Generator,
                            published_tsv: Optional[str]) -> str:
    """Build the decoder exactly as TRELLIS does for the published file (use_fp16 from
    args: convert_to_fp16() makes the torso F16 and leaves the rest F32), seed its
    weights and write state_dict() unchanged."""
    from trellis.models.sparse_structure_vae import SparseStructureDecoder
    model = SparseStructureDecoder(**args)
    init_weights_(model, gen)
    return w.save_checkpoint(stem, "SparseStructureDecoder", args, model.state_dict(), published_tsv)


def ss_dec_golden(w: FixtureWriter, *, args: dict, input_shape: List[int], seed: int,
                  published_tsv: Optional[str] = None) -> None:
    from trellis.models import from_pretrained
    from trellis.models.sparse_structure_vae import SparseStructureDecoder

    gen = torch.Generator().manual_seed(seed)
    stem = build_ss_dec_checkpoint(w, "ckpts/ss_dec", args, gen, published_tsv)

    # The published loading path must accept the file as written (strict load).
    loaded = from_pretrained(stem)
    assert loaded.use_fp16 == args.get("use_fp16", False)

    # Reference: the stored (possibly fp16-rounded) weights, upcast, in an fp32 model.
    ref_args = dict(args, use_fp16=False)
    ref = SparseStructureDecoder(**ref_args)
    ref.load_state_dict(load_file(stem + ".safetensors"), strict=True)  # copy_ upcasts F16 -> F32 exactly
    reference_eval_(ref)
    assert all(p.dtype == torch.float32 for p in ref.parameters())

    x = torch.randn(input_shape, generator=gen, dtype=torch.float32)

    taps = {"debug.input_layer": ref.input_layer, "debug.middle_block": ref.middle_block}
    taps.update({f"debug.blocks.{i}": b for i, b in enumerate(ref.blocks)})
    with torch.no_grad():
        logits, seen = run_with_taps(ref, taps, lambda: ref(x))
        again = ref(x)
    assert torch.equal(logits, again), "reference forward is not deterministic"

    w.save_tensors("inputs.safetensors", "inputs", {
        "x": {"tensor": x, "description": "latent z [B, latent_channels, D, H, W], N(0,1) from the case generator"},
    })
    outputs = {"logits": {"tensor": logits,
                          "description": "occupancy logits [B, out_channels, 4D, 4H, 4W] (occupied = logits > 0)",
                          "produced_by": "ref(x)"}}
    skipped = []
    for name, t in seen.items():
        mod = name[len("debug."):]
        if t.numel() <= DEBUG_MAX_NUMEL:
            outputs[name] = {"tensor": t, "description": f"output of ref.{mod} (fp32)",
                             "produced_by": f"forward hook on ref.{mod} during ref(x)"}
        else:
            skipped.append({"name": name, "shape": list(t.shape), "numel": t.numel()})
    w.save_tensors("outputs.safetensors", "outputs", outputs)

    w.finish(
        module={"class": SS_DEC_CLASS, "args": args, "checkpoint": "ckpts/ss_dec",
                "init": INIT_RULE},
        seed=seed,
        rng="one torch.Generator().manual_seed(seed): weights are drawn first (INIT_RULE order), then x",
        precision={
            "checkpoint": ("state_dict() of SparseStructureDecoder(**args) as constructed (use_fp16=True: "
                           "convert_to_fp16() -> middle_block/blocks conv weights+biases F16, everything else F32)"
                           if args.get("use_fp16") else "all F32 (use_fp16=False)"),
            "reference": "float32 on CPU: SparseStructureDecoder(**args, use_fp16=False) loaded with the "
                         "checkpoint's exact values (F16 entries upcast to F32), torch.set_num_threads(1)",
        },
        reference_call=("ref = SparseStructureDecoder(**{**args, 'use_fp16': False}); "
                        "ref.load_state_dict(safetensors.torch.load_file('ckpts/ss_dec.safetensors'), strict=True); "
                        "reference_eval_(ref)  # == ref.eval(): no spconv layers here; "
                        "with torch.no_grad(): logits = ref(x)"),
        debug={"max_numel": DEBUG_MAX_NUMEL, "skipped": skipped},
        tolerance={"rel_l2": REL_L2_TOL, "note": "fp32 CPU; also report max_abs; occupancy (logits > 0) "
                                                  "may flip only where |logit| is tiny"},
        occupancy={"positive_fraction": float((logits > 0).float().mean())},
    )


@case("ss_dec_fp16layout",
      "SparseStructureDecoder, published fp16 checkpoint layout (mixed F16/F32), batch 2, 6^3 latent; "
      "reference computed in fp32 from the fp16-rounded weights")
def case_ss_dec_fp16layout(w: FixtureWriter):
    ss_dec_golden(
        w,
        args={"out_channels": 1, "latent_channels": 8, "num_res_blocks": 2, "num_res_blocks_middle": 2,
              "channels": [32, 16, 8], "use_fp16": True},
        input_shape=[2, 8, 6, 6, 6],
        seed=1001,
        published_tsv="ss_dec_conv3d_16l8_fp16.tsv",
    )


@case("ss_dec_fp32",
      "SparseStructureDecoder, different config, all-F32 checkpoint, batch 1, non-cubic 5x7x4 latent")
def case_ss_dec_fp32(w: FixtureWriter):
    ss_dec_golden(
        w,
        args={"out_channels": 2, "latent_channels": 4, "num_res_blocks": 1, "num_res_blocks_middle": 1,
              "channels": [24, 12, 6], "use_fp16": False},
        input_shape=[1, 4, 5, 7, 4],
        seed=1002,
    )


# --------------------------------------------------------------------------
# Tiny model directory for the demo (published HF layout)
# --------------------------------------------------------------------------

# From research/trellis.md §1.1 (TRELLIS-image-large pipeline.json).
SLAT_NORMALIZATION = {
    "mean": [-2.1687545776367188, -0.004347046371549368, -0.13352349400520325, -0.08418072760105133,
             -0.5271206498146057, 0.7238689064979553, -1.1414450407028198, 1.2039363384246826],
    "std": [2.377650737762451, 2.386378288269043, 2.124418020248413, 2.1748552322387695,
            2.663944721221924, 2.371192216873169, 2.6217446327209473, 2.684523105621338],
}


def sampler_cfg(cfg_strength: float) -> dict:
    return {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-05},
            "params": {"steps": 25, "cfg_strength": cfg_strength, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}}


# The stage-1 networks beside the decoder: dinov2_vitl14_reg and ss_flow_img_dit_L_16l8_fp16 shrunk.
# DINOv2 keeps patch 14 at 518 (the pipeline always feeds 518x518); the flow keeps resolution 16
# (decoded to 64^3 as published) with 2x2x2 patches so the demo stays fast.
MODEL_TINY_DINOV2_ARGS = {"img_size": 518, "patch_size": 14, "embed_dim": 32, "depth": 1, "num_heads": 2,
                          "mlp_ratio": 4, "init_values": 1.0, "ffn_layer": "mlp", "block_chunks": 0,
                          "num_register_tokens": 4, "interpolate_antialias": True, "interpolate_offset": 0.0}
MODEL_TINY_FLOW_ARGS = {"resolution": 16, "in_channels": 8, "model_channels": 32, "cond_channels": 32,
                        "out_channels": 8, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 4, "patch_size": 2,
                        "pe_mode": "ape", "qk_rms_norm": True, "use_fp16": True}


# The stage-2 networks: slat_flow_img_dit_L_64l8p2_fp16 and slat_dec_{gs,rf,mesh}_swin8_B_64l8*_fp16 shrunk,
# at the published resolution 64 (the SS decoder's 64^3 grid) and latent width 8, in the published
# fp16 layouts. The flow's condition is the tiny DINOv2's 32-wide tokens. SLatMeshDecoder needs
# model_channels % 256 == 0 (32-group norms on model_channels // 8).
MODEL_TINY_SLAT_FLOW_ARGS = {"resolution": 64, "in_channels": 8, "out_channels": 8, "model_channels": 32,
                             "cond_channels": 32, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 4, "patch_size": 2,
                             "num_io_res_blocks": 2, "io_block_channels": [16], "pe_mode": "ape",
                             "qk_rms_norm": True, "use_fp16": True}
MODEL_TINY_GS_ARGS = {"resolution": 64, "model_channels": 32, "latent_channels": 8, "num_blocks": 1, "num_heads": 2,
                      "mlp_ratio": 4, "attn_mode": "swin", "window_size": 8, "use_fp16": True,
                      "representation_config": {
                          "lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
                          "perturb_offset": True, "voxel_size": 1.5, "num_gaussians": 4,
                          "2d_filter_kernel_size": 0.1, "3d_filter_kernel_size": 9e-4, "scaling_bias": 4e-3,
                          "opacity_bias": 0.1, "scaling_activation": "softplus"}}
MODEL_TINY_RF_ARGS = {"resolution": 64, "model_channels": 32, "latent_channels": 8, "num_blocks": 1, "num_heads": 2,
                      "mlp_ratio": 4, "attn_mode": "swin", "window_size": 8, "use_fp16": True,
                      "representation_config": {"rank": 4, "dim": 4}}
MODEL_TINY_MESH_ARGS = {"resolution": 64, "model_channels": 256, "latent_channels": 8, "num_blocks": 1,
                        "num_heads": 4, "mlp_ratio": 2, "attn_mode": "swin", "window_size": 8, "use_fp16": True,
                        "representation_config": {"use_color": True}}
# (pipeline.json models key, stem, class, args, published listing (checked with blocks abstracted), seed offset)
MODEL_TINY_SLAT_NETWORKS = [
    ("slat_flow_model", "ckpts/slat_flow_img_dit_tiny_fp16", "SLatFlowModel", MODEL_TINY_SLAT_FLOW_ARGS,
     "slat_flow_img_dit_L_64l8p2_fp16.tsv", 4),
    ("slat_decoder_gs", "ckpts/slat_dec_gs_swin8_tiny_fp16", "SLatGaussianDecoder", MODEL_TINY_GS_ARGS,
     "slat_dec_gs_swin8_B_64l8gs32_fp16.tsv", 5),
    ("slat_decoder_rf", "ckpts/slat_dec_rf_swin8_tiny_fp16", "SLatRadianceFieldDecoder", MODEL_TINY_RF_ARGS,
     "slat_dec_rf_swin8_B_64l8r16_fp16.tsv", 6),
    ("slat_decoder_mesh", "ckpts/slat_dec_mesh_swin8_tiny_fp16", "SLatMeshDecoder", MODEL_TINY_MESH_ARGS,
     "slat_dec_mesh_swin8_B_64l8m256c_fp16.tsv", 7),
]

# The demo (`make demo`: tests/fixtures/images/example.png, seed 42, pipeline.json's sampler
# parameters). The SS decoder's threshold is placed so that the demo's stage 1 gives this many
# voxels: the CPU demo then runs stage 2 in seconds.
MODEL_TINY_DEMO_IMAGE = os.path.join(REPO_ROOT, "tests", "fixtures", "images", "example.png")
MODEL_TINY_DEMO_SEED = 42
MODEL_TINY_VOXELS = (1000, 2000)


@torch.no_grad()
def place_tiny_threshold_(model_dir: str, decoder_stem: str) -> dict:
    """Runs the reference stage 1 of the demo on `model_dir` (fp32 from the stored weights) and lowers
    the SS decoder's last bias (`out_layer.2.bias`, F32) so that 0 sits in the middle of the widest
    gap between the demo's logits ranked MODEL_TINY_VOXELS from the top (as the stage1 case places
    its threshold); runs it again to check. Returns what the README states."""
    from PIL import Image
    from stage2 import CudaOnCpu, load_reference_pipeline, widest_gap

    def demo_stage1():
        pipeline = load_reference_pipeline(model_dir)
        seen = {}
        handle = pipeline.models["sparse_structure_decoder"].register_forward_hook(
            lambda _m, _i, out: seen.__setitem__("logits", out.detach().clone()))
        try:
            with CudaOnCpu():
                cond = pipeline.get_cond([pipeline.preprocess_image(Image.open(MODEL_TINY_DEMO_IMAGE))])
                torch.manual_seed(MODEL_TINY_DEMO_SEED)
                coords = pipeline.sample_sparse_structure(cond, 1, {})
        finally:
            handle.remove()
        return seen["logits"], coords

    logits, _ = demo_stage1()
    n = logits.numel()
    mid, half_gap = widest_gap(logits.flatten(), n - MODEL_TINY_VOXELS[1], n - MODEL_TINY_VOXELS[0])
    path = os.path.join(model_dir, decoder_stem + ".safetensors")
    sd = load_file(path)
    sd["out_layer.2.bias"] = sd["out_layer.2.bias"] - mid
    save_file(sd, path, metadata={"format": "pt"})
    logits, coords = demo_stage1()
    voxels = int(coords.shape[0])
    assert MODEL_TINY_VOXELS[0] <= voxels <= MODEL_TINY_VOXELS[1], voxels
    return {"voxels": voxels, "min_abs_logit": float(logits.abs().min()), "logit_std": float(logits.std()),
            "shift": mid, "half_gap": half_gap}


@case("model_tiny", "tiny model folder (pipeline.json + ckpts/: SS flow, SS decoder, SLat flow, Gaussian, "
      "radiance-field and mesh decoders, DINOv2 as a local image_cond_model stem) for the demo and the ABI "
      "tests", kind="model_dir")
def case_model_tiny(w: FixtureWriter):
    # Imported here: case modules are loaded by main() (cases/dinov2.py holds the hub DINOv2 code,
    # cases/stage2.py the SLat networks' reference environment).
    from dinov2 import CLASS_NAME as DINOV2_CLASS, build_reference, init_dinov2_
    from ss_flow import init_flow_weights_
    from stage2 import CudaOnCpu, flexicubes_record, save_slat_networks
    from trellis.models import from_pretrained
    from trellis.models.sparse_structure_flow import SparseStructureFlowModel

    stem_rel = "ckpts/ss_dec_conv3d_tiny_fp16"
    flow_rel = "ckpts/ss_flow_img_dit_tiny_fp16"
    dinov2_rel = "ckpts/dinov2_tiny"
    args = {"out_channels": 1, "latent_channels": 8, "num_res_blocks": 2, "num_res_blocks_middle": 2,
            "channels": [12, 8, 4], "use_fp16": True}
    seed = 2001
    build_ss_dec_checkpoint(w, stem_rel, args, torch.Generator().manual_seed(seed),
                                   "ss_dec_conv3d_16l8_fp16.tsv")
    # One generator per network: the decoder's draws stay those of the decoder-only fixture.
    flow = SparseStructureFlowModel(**MODEL_TINY_FLOW_ARGS)
    init_flow_weights_(flow, torch.Generator().manual_seed(seed + 1))
    w.save_checkpoint(flow_rel, "SparseStructureFlowModel", MODEL_TINY_FLOW_ARGS, flow.state_dict())
    dinov2 = build_reference(MODEL_TINY_DINOV2_ARGS)
    init_dinov2_(dinov2, torch.Generator().manual_seed(seed + 2))
    dinov2_stem = w.save_checkpoint(dinov2_rel, DINOV2_CLASS, MODEL_TINY_DINOV2_ARGS, dinov2.state_dict())
    for network in MODEL_TINY_SLAT_NETWORKS:
        save_slat_networks(w, "", [network[:5]], torch.Generator().manual_seed(seed + network[5]))
    pipeline = {"name": "TrellisImageTo3DPipeline", "args": {
        "models": {"sparse_structure_flow_model": flow_rel, "sparse_structure_decoder": stem_rel,
                   **{key: rel for key, rel, *_ in MODEL_TINY_SLAT_NETWORKS}},
        "sparse_structure_sampler": sampler_cfg(7.5),
        "slat_sampler": sampler_cfg(3.0),
        "slat_normalization": SLAT_NORMALIZATION,
        "image_cond_model": dinov2_rel,
    }}
    with open(w.path("pipeline.json"), "w") as f:
        json.dump(pipeline, f, indent=4)
        f.write("\n")
    demo = place_tiny_threshold_(w.root, stem_rel)
    print(f"    demo stage 1: {demo['voxels']} voxels, min |logit| {demo['min_abs_logit']:.3g} "
          f"(logit std {demo['logit_std']:.3g})")
    # The published repo has a README.md too; ours says where the files come from.
    v = reference_env.versions()
    fc = flexicubes_record()
    slat_lines = "".join(
        f"- `{rel}.{{json,safetensors}}`: {cls} {json.dumps(a)},\n  seed {seed + off}; use_fp16=True layout "
        f"(key and dtype pattern of the published `{tsv[:-4]}`).\n"
        for _key, rel, cls, a, tsv, off in MODEL_TINY_SLAT_NETWORKS)
    with open(w.path("README.md"), "w") as f:
        f.write(
            "# model_tiny (generated test fixture)\n\n"
            "A model folder in the published TRELLIS-image-large layout with a complete, tiny pipeline\n"
            "(image -> DINOv2 condition -> sparse-structure flow -> decoder -> voxels -> structured-latent\n"
            "flow -> mesh, Gaussian and radiance-field decoders), for the demo, the CLI and the ABI tests.\n"
            "Written by `tools/golden/generate.py` (case `model_tiny`); do not edit by hand. Weights are\n"
            "seeded random (init: weights N(0, 1/fan_in), sparse convolutions included, biases N(0, 0.1^2),\n"
            "norm weights 1 + N(0, 0.1^2); DINOv2 tokens and position embedding N(0, 1), LayerScale\n"
            "1 + N(0, 0.1^2); RMS-norm gammas 1 + N(0, 0.2^2); every zero-init of the reference is\n"
            "overwritten). Every checkpoint except DINOv2 is stored as TRELLIS writes it with\n"
            "use_fp16=True: the same mixed F16 (torso) / F32 (rest) layout as the published files.\n\n"
            f"- `{stem_rel}.{{json,safetensors}}`: SparseStructureDecoder {json.dumps(args)}, seed {seed}.\n"
            "  `out_layer.2.bias` is then lowered so that the demo (`make demo`: "
            f"`tests/fixtures/images/example.png`,\n  seed {MODEL_TINY_DEMO_SEED}, the sampler parameters below) "
            f"decodes to {demo['voxels']} occupied voxels of 64^3, the\n"
            "  threshold mid-gap between the reference's logits (smallest |logit| "
            f"{demo['min_abs_logit']:.2g}, logit std {demo['logit_std']:.2g}).\n"
            f"- `{flow_rel}.{{json,safetensors}}`: SparseStructureFlowModel {json.dumps(MODEL_TINY_FLOW_ARGS)},\n"
            f"  seed {seed + 1}.\n"
            f"- `{dinov2_rel}.{{json,safetensors}}`: DinoVisionTransformer (torch.hub layout)\n"
            f"  {json.dumps(MODEL_TINY_DINOV2_ARGS)}, seed {seed + 2}.\n"
            f"{slat_lines}"
            "- `pipeline.json`: the six networks under `models`; `image_cond_model` names the local DINOv2\n"
            f"  stem `{dinov2_rel}` (recon's extension; published pipelines name the torch.hub model\n"
            "  `dinov2_vitl14_reg`); sampler (25 steps, cfg 7.5 / 3.0, interval [0.5, 1], rescale_t 3) and\n"
            "  normalisation entries carry the published values.\n\n"
            f"Reference stack: torch {v['torch']}, trellis-3d-ms {v['trellis-3d-ms']}, spconv {v['spconv']},\n"
            f"FlexiCubes {fc['repo']}@{fc['commit'][:12]}.\n")
    # Not a golden case: no manifest.json, so the folder looks exactly like a published model.
    with CudaOnCpu():
        for rel in (stem_rel, flow_rel) + tuple(rel for _k, rel, *_ in MODEL_TINY_SLAT_NETWORKS):
            assert from_pretrained(w.path(rel)).use_fp16
    reference = build_reference(MODEL_TINY_DINOV2_ARGS)
    reference.load_state_dict(load_file(dinov2_stem + ".safetensors"), strict=True)


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

def human(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def dir_size(root: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


def load_case_modules() -> None:
    """Imports every tools/golden/cases/*.py; each registers its cases with @case.

    A case module does `from generate import case, FixtureWriter, ...`. When this file runs as
    a script it is `__main__`, so it is registered as `generate` too: the case modules then
    share this registry instead of importing a second copy of it.
    """
    sys.modules.setdefault("generate", sys.modules[__name__])
    cases_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cases")
    if cases_dir not in sys.path:
        sys.path.insert(0, cases_dir)
    for name in sorted(os.listdir(cases_dir)) if os.path.isdir(cases_dir) else []:
        if name.endswith(".py") and not name.startswith("_"):
            importlib.import_module(name[:-3])


def main(argv=None) -> int:
    load_case_modules()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="golden fixture root (default: tests/fixtures/golden)")
    ap.add_argument("--model-out", default=DEFAULT_MODEL_OUT,
                    help="where the model_dir case goes (default: tests/fixtures/model_tiny)")
    ap.add_argument("--published-tsv-dir", default=DEFAULT_PUBLISHED_TSV_DIR,
                    help="folder of published key/dtype listings (*.tsv) to check layouts against; "
                         "the check is skipped when absent")
    ap.add_argument("--only", nargs="+", metavar="CASE", help="generate only these cases")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    a = ap.parse_args(argv)

    if a.list:
        for c in CASES.values():
            print(f"{c.name:20s} [{c.kind}] {c.description}")
        return 0
    names = a.only or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        ap.error(f"unknown case(s): {unknown}; known: {list(CASES)}")

    print(f"versions: {json.dumps(reference_env.versions())}")
    for n in names:
        c = CASES[n]
        root = os.path.join(a.out, n) if c.kind == "golden" else a.model_out
        print(f"[{n}] -> {os.path.relpath(root, REPO_ROOT)}")
        w = FixtureWriter(root, n, c.description, a.published_tsv_dir)
        c.fn(w)
        print(f"    {human(dir_size(root))}")
    total = sum(dir_size(os.path.join(a.out, n)) for n in CASES
                if CASES[n].kind == "golden" and os.path.isdir(os.path.join(a.out, n)))
    print(f"golden total under {os.path.relpath(a.out, REPO_ROOT)}: {human(total)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

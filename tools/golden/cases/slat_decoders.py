"""Golden cases for the structured-latent decoders (trellis/models/structured_latent_vae/) that
the team's shared fixtures (../shared/golden/trellis_mesh) do not cover: SLatRadianceFieldDecoder
(no shared fixture at all) and a second SLatGaussianDecoder configuration (the shared one is all
F32, batch 2, 32 Gaussians, softplus scales, perturbed offsets, window 8).

Single-network cases for tests/golden_modules.rs (no "harness" field) and tests/slat_decoders.rs:
inputs coords int32 [N, 4] (batch, x, y, z; batch-contiguous, lexicographic) and feats
[N, latent_channels]; outputs named as recon's forward_named names them (and as the shared
fixtures do for the Gaussian decoder):
  torso_feats [N, C]        output of the last transformer block (fp32 reference)
  raw_coords, raw_feats     out_layer's output voxels and features
  GS: offset_perturbation, scale_bias [1], opacity_bias [1], and per batch element b
      gs{b}__xyz, gs{b}__features_dc, gs{b}__scaling, gs{b}__rotation, gs{b}__opacity (stored)
      gs{b}_get_xyz, gs{b}_get_features, gs{b}_get_scaling, gs{b}_get_rotation, gs{b}_get_opacity
  RF: per batch element b  rf{b}_position, rf{b}_depth (uint8), rf{b}_trivec, rf{b}_density,
      rf{b}_features_dc (the Strivec's fields)

Reference environment (nothing arithmetic is changed):
  * trellis/representations/__init__.py and trellis/models/structured_latent_vae/__init__.py
    import the mesh extractor, whose FlexiCubes git submodule the PyPI wheel lacks. These cases
    need only Gaussian and Strivec, so `decoder_modules()` registers both packages without
    running their __init__, imports the gaussian and radiance_field submodules and the two
    decoder modules directly, and removes everything it added from sys.modules afterwards, so
    other cases (stage2) import the packages normally. plyfile and utils3d (Gaussian.save_ply /
    load_ply only, never reached) get stand-ins that raise if used, only when not installed.
  * Devices: Gaussian and Strivec default to 'cuda' (device arguments and `.cuda()` calls).
    CpuForCuda, a TorchFunctionMode active while the reference decodes, turns every 'cuda'
    device argument into 'cpu' and `.cuda()` into the identity.
  * The decoders are built with their class and loaded with load_state_dict(strict=True) from
    the written file: what trellis.models.from_pretrained does for a local checkpoint.
"""
import contextlib
import importlib
import importlib.util
import sys
import types
from typing import Dict, List

import torch
import torch.nn as nn
from safetensors.torch import load_file
from torch.overrides import TorchFunctionMode

from generate import FixtureWriter, REL_L2_TOL, case, reference_eval_
from slat_flow import lexicographic_voxels
from ss_flow import check_published_pattern

INIT = {
    "order": "one torch.Generator; modules in named_modules() order, weight then bias",
    "linear_weight": "N(0, 0.02^2), except to_qkv and the final out_layer: N(0, 1/fan_in)",
    "linear_bias": "N(0, 0.02^2)",
    "buffers": "offset_perturbation keeps the constructor's value",
    "note": "the recipe of ../shared/golden/trellis_mesh (the decoders have no affine norms); "
            "overrides the reference's zero init of out_layer",
}

# Modules these cases import or stub; removed from sys.modules afterwards.
ISOLATED_PREFIXES = ("trellis.representations", "trellis.models.structured_latent_vae", "plyfile",
                     "utils3d")


class CpuForCuda(TorchFunctionMode):
    """'cuda' device arguments become 'cpu'; Tensor.cuda() returns the tensor itself."""

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "cuda":
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to:
            args = tuple("cpu" if isinstance(a, (str, torch.device)) and torch.device(a).type == "cuda"
                         else a for a in args)
        return func(*args, **kwargs)


def _stand_in(name: str) -> types.ModuleType:
    """A module whose every attribute raises when used (only save_ply / load_ply touch them)."""
    mod = types.ModuleType(name)

    def __getattr__(attr):
        def unavailable(*_a, **_k):
            raise RuntimeError(f"{name}.{attr} is a stand-in in tools/golden (not installed)")
        return unavailable

    mod.__getattr__ = __getattr__
    return mod


def _package_without_init(name: str) -> types.ModuleType:
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    spec = importlib.util.find_spec(name)
    mod = importlib.util.module_from_spec(spec)  # creates the package, runs nothing
    sys.modules[name] = mod
    return mod


@contextlib.contextmanager
def decoder_modules():
    """Yields (decoder_gs, decoder_rf) modules of the installed trellis (see the module docs);
    afterwards sys.modules and the parent packages' attributes are as before."""
    before = set(sys.modules)
    try:
        for name in ("plyfile", "utils3d"):
            if name not in sys.modules and importlib.util.find_spec(name) is None:
                sys.modules[name] = _stand_in(name)
        reps = _package_without_init("trellis.representations")
        if not hasattr(reps, "Gaussian"):
            reps.Gaussian = importlib.import_module("trellis.representations.gaussian").Gaussian
        if not hasattr(reps, "Strivec"):
            reps.Strivec = importlib.import_module("trellis.representations.radiance_field").Strivec
        _package_without_init("trellis.models.structured_latent_vae")
        yield (importlib.import_module("trellis.models.structured_latent_vae.decoder_gs"),
               importlib.import_module("trellis.models.structured_latent_vae.decoder_rf"))
    finally:
        for name in sorted(set(sys.modules) - before, reverse=True):
            if not name.startswith(ISOLATED_PREFIXES):
                continue
            module = sys.modules.pop(name)
            parent, _, child = name.rpartition(".")
            if parent in sys.modules and getattr(sys.modules[parent], child, None) is module:
                delattr(sys.modules[parent], child)


@torch.no_grad()
def init_decoder_weights_(model: nn.Module, gen: torch.Generator) -> None:
    """INIT: module by module in named_modules() order."""
    for name, m in model.named_modules():
        if not list(m.parameters(recurse=False)):
            continue
        if not isinstance(m, nn.Linear):
            raise NotImplementedError(f"no init rule for {name} ({type(m).__name__})")
        std = m.weight[0].numel() ** -0.5 if ("to_qkv" in name or name == "out_layer") else 0.02
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
        m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.02)


def build_reference(w: FixtureWriter, cls, class_name: str, args: dict, gen: torch.Generator,
                    published_tsv: str) -> nn.Module:
    """Writes the checkpoint in the published layout (built with args as given, so use_fp16
    makes the blocks F16) and returns the fp32 reference loaded strictly from it."""
    model = cls(**args)
    init_decoder_weights_(model, gen)
    stem = w.save_checkpoint("ckpts/decoder", class_name, args, model.state_dict())
    rec = w.manifest["files"]["ckpts/decoder.safetensors"]
    rec["published_layout"] = check_published_pattern(stem + ".safetensors", published_tsv,
                                                      args["num_blocks"])
    ref = cls(**dict(args, use_fp16=False))
    ref.load_state_dict(load_file(stem + ".safetensors"), strict=True)
    reference_eval_(ref)
    assert all(p.dtype == torch.float32 for p in ref.parameters())
    return ref


def run_reference(ref: nn.Module, coords: torch.Tensor, feats: torch.Tensor):
    """ref(x) with the torso and out_layer outputs recorded (forward hooks that only read);
    returns (torso feats, raw SparseTensor, representations)."""
    from trellis.modules.sparse import SparseTensor
    seen = {"torso": [], "raw": []}
    hooks = [ref.blocks[-1].register_forward_hook(lambda _m, _i, out: seen["torso"].append(out)),
             ref.out_layer.register_forward_hook(lambda _m, _i, out: seen["raw"].append(out))]
    try:
        with torch.no_grad(), CpuForCuda():
            reps = ref(SparseTensor(feats=feats, coords=coords))
            ref(SparseTensor(feats=feats, coords=coords))
    finally:
        for h in hooks:
            h.remove()
    (torso, _), (raw, raw_again) = seen["torso"], seen["raw"]
    assert torch.equal(raw.feats, raw_again.feats), "reference forward is not deterministic"
    assert torch.equal(raw.coords, coords), "out_layer changed the voxels"
    return torso.feats.float(), raw, reps


def input_tensors(coords: torch.Tensor, feats: torch.Tensor, counts: List[int], grid: int) -> Dict:
    return {
        "coords": {"tensor": coords, "description": f"int32 [N, 4] (batch, x, y, z), batch-contiguous, "
                                                    f"lexicographic, distinct voxels of a {grid}^3 grid; "
                                                    f"counts {counts}"},
        "feats": {"tensor": feats, "description": "latent features [N, latent_channels], N(0,1)"},
    }


def common_outputs(torso: torch.Tensor, raw) -> Dict:
    return {
        "torso_feats": {"tensor": torso, "description": "[N, C] output of the last transformer block",
                        "produced_by": "forward hook on ref.blocks[-1] (.feats)"},
        "raw_coords": {"tensor": raw.coords, "description": "[N, 4] int32 voxels of out_layer's output "
                                                            "(the input's, same order)",
                       "produced_by": "forward hook on ref.out_layer (.coords)"},
        "raw_feats": {"tensor": raw.feats, "description": "[N, out_channels] out_layer output (after the "
                                                          "final no-affine layer_norm, eps 1e-5)",
                      "produced_by": "forward hook on ref.out_layer (.feats)"},
    }


def save_outputs(w: FixtureWriter, outputs: Dict) -> None:
    """w.save_tensors for the outputs, with the statistics a single-element tensor has no value
    for (the sample std of [1] scalars is NaN, which is not JSON) recorded as null."""
    w.save_tensors("outputs.safetensors", "outputs", outputs)
    for rec in w.manifest["files"]["outputs.safetensors"]["tensors"]:
        rec["stats"] = {k: (None if v != v else v) for k, v in rec["stats"].items()}


def finish(w: FixtureWriter, *, class_path: str, args: dict, seed: int, grid: int, counts: List[int],
           call: str) -> None:
    w.finish(
        module={"class": class_path, "args": args, "checkpoint": "ckpts/decoder", "init": INIT},
        seed=seed, grid=grid, counts=counts,
        rng="one torch.Generator().manual_seed(seed): weights first (INIT order), then coords, feats",
        precision={
            "checkpoint": ("state_dict() of the class built with args (use_fp16=True: convert_to_fp16() -> "
                           "Linear weights+biases inside blocks F16; input_layer, out_layer, buffers F32)"
                           if args.get("use_fp16") else "all F32 (use_fp16=False)"),
            "reference": "float32 on CPU: the class with use_fp16=False loaded strictly with the checkpoint's "
                         "exact values (F16 upcast), torch.set_num_threads(1), SPARSE_ATTN_BACKEND=flash_attn "
                         "served by tools/golden/attention_shim",
        },
        reference_call=call,
        environment={"stand_ins": {
            "trellis.representations / trellis.models.structured_latent_vae __init__":
                "not executed (they import the mesh extractor, whose FlexiCubes submodule the wheel lacks); "
                "gaussian, radiance_field, decoder_gs, decoder_rf imported directly",
            "plyfile, utils3d": "inert stand-ins where not installed (only save_ply/load_ply use them; "
                                "never called)",
            "device defaults": "CpuForCuda TorchFunctionMode: 'cuda' device arguments -> 'cpu', "
                               ".cuda() -> identity",
        }},
        tolerance={"rel_l2": REL_L2_TOL, "integers": "exact (raw_coords, rf*_depth)",
                   "note": "fp32 CPU; also report max_abs"},
    )


def gaussian_golden(w: FixtureWriter, *, args: dict, counts: List[int], grid: int, seed: int) -> None:
    with decoder_modules() as (decoder_gs, _):
        gen = torch.Generator().manual_seed(seed)
        ref = build_reference(w, decoder_gs.SLatGaussianDecoder, "SLatGaussianDecoder", args, gen,
                              "slat_dec_gs_swin8_B_64l8gs32_fp16.tsv")
        coords = lexicographic_voxels(gen, counts, grid)
        feats = torch.randn(coords.shape[0], args["latent_channels"], generator=gen)
        torso, raw, reps = run_reference(ref, coords, feats)

        outputs = common_outputs(torso, raw)
        outputs["offset_perturbation"] = {"tensor": ref.offset_perturbation,
                                          "description": "[G, 3] buffer atanh((hammersley*2-1)/voxel_size)",
                                          "produced_by": "ref.offset_perturbation"}
        outputs["scale_bias"] = {"tensor": reps[0].scale_bias.reshape(1),
                                 "description": "[1] inverse scaling activation of scaling_bias (float32)",
                                 "produced_by": "gaussians[0].scale_bias"}
        outputs["opacity_bias"] = {"tensor": reps[0].opacity_bias.reshape(1),
                                   "description": "[1] logit(opacity_bias) (float32)",
                                   "produced_by": "gaussians[0].opacity_bias"}
        assert len(reps) == len(counts)
        for b, gs in enumerate(reps):
            stored = {"_xyz": "[n*G,3] stored _xyz (voxel-major)", "_features_dc": "[n*G,1,3]",
                      "_scaling": "[n*G,3] raw", "_rotation": "[n*G,4] raw*lr", "_opacity": "[n*G,1] raw"}
            for name, desc in stored.items():
                outputs[f"gs{b}_{name}"] = {"tensor": getattr(gs, name), "description": desc,
                                            "produced_by": f"gaussians[{b}].{name}"}
            with CpuForCuda():
                props = {p: getattr(gs, p).clone() for p in ("get_xyz", "get_features", "get_scaling",
                                                     "get_rotation", "get_opacity")}
            for name, tensor in props.items():
                outputs[f"gs{b}_{name}"] = {"tensor": tensor, "description": f"the {name} property",
                                            "produced_by": f"gaussians[{b}].{name}"}

        w.save_tensors("inputs.safetensors", "inputs", input_tensors(coords, feats, counts, grid))
        save_outputs(w, outputs)
        finish(w, class_path="trellis.models.structured_latent_vae.decoder_gs.SLatGaussianDecoder", args=args,
               seed=seed, grid=grid, counts=counts,
               call="ref = SLatGaussianDecoder(**{**args, 'use_fp16': False}); ref.load_state_dict(load_file("
                    "'ckpts/decoder.safetensors')); reference_eval_(ref); "
                    "gaussians = ref(SparseTensor(feats=feats, coords=coords))")


def radiance_field_golden(w: FixtureWriter, *, args: dict, counts: List[int], grid: int, seed: int) -> None:
    with decoder_modules() as (_, decoder_rf):
        gen = torch.Generator().manual_seed(seed)
        ref = build_reference(w, decoder_rf.SLatRadianceFieldDecoder, "SLatRadianceFieldDecoder", args, gen,
                              "slat_dec_rf_swin8_B_64l8r16_fp16.tsv")
        coords = lexicographic_voxels(gen, counts, grid)
        feats = torch.randn(coords.shape[0], args["latent_channels"], generator=gen)
        torso, raw, reps = run_reference(ref, coords, feats)

        outputs = common_outputs(torso, raw)
        assert len(reps) == len(counts)
        fields = {"position": "[n,3] (coords+0.5)/resolution", "depth": "[n,1] uint8 log2(resolution)",
                  "trivec": "[n,rank,3,dim] raw+1", "density": "[n,rank]", "features_dc": "[n,rank,1,3]"}
        for b, rf in enumerate(reps):
            assert rf.density_shift == 0.0
            for name, desc in fields.items():
                outputs[f"rf{b}_{name}"] = {"tensor": getattr(rf, name), "description": desc,
                                            "produced_by": f"fields[{b}].{name}"}

        w.save_tensors("inputs.safetensors", "inputs", input_tensors(coords, feats, counts, grid))
        save_outputs(w, outputs)
        finish(w, class_path="trellis.models.structured_latent_vae.decoder_rf.SLatRadianceFieldDecoder",
               args=args, seed=seed, grid=grid, counts=counts,
               call="ref = SLatRadianceFieldDecoder(**{**args, 'use_fp16': False}); ref.load_state_dict("
                    "load_file('ckpts/decoder.safetensors')); reference_eval_(ref); "
                    "fields = ref(SparseTensor(feats=feats, coords=coords))")


@case("slat_dec_rf_fp16layout",
      "SLatRadianceFieldDecoder, published fp16 key/dtype pattern, 64 wide, 2 swin-8 blocks, rank 8, dim 4, "
      "resolution 16, batch 2 (70 and 45 voxels of 16^3); Strivec fields per batch element")
def case_slat_dec_rf_fp16layout(w: FixtureWriter):
    radiance_field_golden(
        w,
        args={"resolution": 16, "model_channels": 64, "latent_channels": 8, "num_blocks": 2, "num_heads": 4,
              "mlp_ratio": 4, "attn_mode": "swin", "window_size": 8, "use_fp16": True,
              "representation_config": {"rank": 8, "dim": 4}},
        counts=[70, 45], grid=16, seed=3201,
    )


@case("slat_dec_gs_exp_fp16layout",
      "SLatGaussianDecoder, published fp16 key/dtype pattern, 50 wide (APE zero-padded), heads from "
      "num_head_channels, mlp_ratio 2, 3 swin-4 blocks, 8 Gaussians, exp scales, no offset perturbation, "
      "lr != 1, resolution 32, batch 3 (40, 25 and 33 voxels of 32^3)")
def case_slat_dec_gs_exp_fp16layout(w: FixtureWriter):
    gaussian_golden(
        w,
        args={"resolution": 32, "model_channels": 50, "latent_channels": 6, "num_blocks": 3,
              "num_head_channels": 10, "mlp_ratio": 2, "attn_mode": "swin", "window_size": 4, "use_fp16": True,
              "representation_config": {
                  "lr": {"_xyz": 0.5, "_features_dc": 1.0, "_opacity": 2.0, "_scaling": 1.5, "_rotation": 0.1},
                  "perturb_offset": False, "voxel_size": 2.0, "num_gaussians": 8, "2d_filter_kernel_size": 0.1,
                  "3d_filter_kernel_size": 0.002, "scaling_bias": 0.01, "opacity_bias": 0.2,
                  "scaling_activation": "exp"}},
        counts=[40, 25, 33], grid=32, seed=3202,
    )

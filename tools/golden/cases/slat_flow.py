"""Golden cases for SLatFlowModel (trellis/models/structured_latent_flow.py), the stage-2 flow
network on sparse structured latents, and through it SparseResBlock3d (sparse convs, down- and
upsampling, skips), ModulatedSparseTransformerCrossBlock and the absolute position code of the
downsampled voxels.

Single-network cases for tests/golden_modules.rs (no "harness" field): inputs x_coords int32
[N, 4] (batch, x, y, z; batch-contiguous, lexicographic as the pipeline's argwhere gives them),
x_feats [N, in_channels], t [B], cond [B, L, cond_channels]; output v_feats [N, out_channels]
in the input's row order (the reference's output has the input's coordinates, same order).
"""
from typing import List, Optional

import torch
import torch.nn as nn
from safetensors.torch import load_file

from generate import (case, FixtureWriter, DEBUG_MAX_NUMEL, INIT_RULE, REL_L2_TOL,
                      init_weights_, reference_eval_, run_with_taps)
from ss_flow import GAMMA_RULE, check_published_pattern

SLAT_FLOW_CLASS = "trellis.models.structured_latent_flow.SLatFlowModel"

SPCONV_RULE = ("spconv conv (KRSC weight [out, kx, ky, kz, in]): weight N(0, 1/sqrt(in * kernel volume)), "
               "bias N(0, 0.1)")
INIT = dict(INIT_RULE, rms_norm_gamma=GAMMA_RULE, sparse_conv=SPCONV_RULE,
            note="overrides TRELLIS's zero init of adaLN_modulation, conv2 and out_layer and its 0.02 init of "
                 "t_embedder, so every weight matters")


@torch.no_grad()
def init_slat_flow_weights_(model: nn.Module, gen: torch.Generator) -> None:
    """Module by module in named_modules() order: spconv convs by SPCONV_RULE, RMS norms by
    GAMMA_RULE, Linear/LayerNorm leaves by init_weights_."""
    from spconv.pytorch.conv import SparseConvolution
    from trellis.modules.sparse.attention.modules import SparseMultiHeadRMSNorm
    for _name, m in model.named_modules():
        if not list(m.parameters(recurse=False)):
            continue
        if isinstance(m, SparseConvolution):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / fan_in ** 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        elif isinstance(m, SparseMultiHeadRMSNorm):
            m.gamma.copy_(1.0 + torch.randn(m.gamma.shape, generator=gen) * 0.2)
        else:
            assert not list(m.children()), f"unexpected non-leaf with parameters: {type(m).__name__}"
            init_weights_(m, gen)


def lexicographic_voxels(gen: torch.Generator, counts: List[int], grid: int) -> torch.Tensor:
    """int32 [N, 4]: counts[b] distinct voxels of a grid³ per batch item, batch-contiguous and
    sorted by (x, y, z) within an item (torch.argwhere order, as stage 1 produces them)."""
    rows = []
    for b, n in enumerate(counts):
        cells = torch.randperm(grid ** 3, generator=gen)[:n].sort().values
        xyz = torch.stack([cells // grid ** 2, (cells // grid) % grid, cells % grid], dim=1)
        rows.append(torch.cat([torch.full((n, 1), b, dtype=torch.int64), xyz], dim=1))
    return torch.cat(rows).to(torch.int32)


def slat_flow_golden(w: FixtureWriter, *, args: dict, counts: List[int], grid: int, cond_tokens: int,
                     seed: int, published_tsv: Optional[str] = None) -> None:
    from trellis.models import from_pretrained
    from trellis.models.structured_latent_flow import SLatFlowModel
    from trellis.modules.sparse import SparseTensor

    gen = torch.Generator().manual_seed(seed)
    model = SLatFlowModel(**args)
    init_slat_flow_weights_(model, gen)
    stem = w.save_checkpoint("ckpts/slat_flow", "SLatFlowModel", args, model.state_dict())
    if published_tsv:
        rec = w.manifest["files"]["ckpts/slat_flow.safetensors"]
        rec["published_layout"] = check_published_pattern(stem + ".safetensors", published_tsv,
                                                          args["num_blocks"])
    loaded = from_pretrained(stem)
    assert loaded.use_fp16 == args.get("use_fp16", False)

    ref = SLatFlowModel(**dict(args, use_fp16=False))
    ref.load_state_dict(load_file(stem + ".safetensors"), strict=True)
    reference_eval_(ref)
    assert all(p.dtype == torch.float32 for p in ref.parameters())

    coords = lexicographic_voxels(gen, counts, grid)
    feats = torch.randn(coords.shape[0], args["in_channels"], generator=gen)
    t = torch.rand([len(counts)], generator=gen) * 1000.0
    cond = torch.randn([len(counts), cond_tokens, args["cond_channels"]], generator=gen)

    def call():
        return ref(SparseTensor(feats=feats, coords=coords), t, cond)

    taps = {"debug.t_embedder": ref.t_embedder}
    with torch.no_grad():
        out, seen = run_with_taps(ref, taps, call)
        again = call()
    assert torch.equal(out.coords, coords), "the output coordinates differ from the input's"
    assert torch.equal(out.feats, again.feats), "reference forward is not deterministic"

    w.save_tensors("inputs.safetensors", "inputs", {
        "x_coords": {"tensor": coords, "description": f"int32 [N, 4] (batch, x, y, z), batch-contiguous, "
                                                      f"lexicographic, distinct voxels of a {grid}^3 grid; "
                                                      f"counts {counts}"},
        "x_feats": {"tensor": feats, "description": "noisy latent features [N, in_channels], N(0,1)"},
        "t": {"tensor": t, "description": "timesteps [B] already scaled by 1000 (1000 * U(0,1))"},
        "cond": {"tensor": cond, "description": "condition tokens [B, L, cond_channels], N(0,1)"},
    })
    outputs = {"v_feats": {"tensor": out.feats, "description": "predicted velocity [N, out_channels], rows "
                                                               "in the input's order",
                           "produced_by": "ref(SparseTensor(feats=x_feats, coords=x_coords), t, cond).feats"}}
    for name, tensor in seen.items():
        if tensor.numel() <= DEBUG_MAX_NUMEL:
            outputs[name] = {"tensor": tensor, "description": f"output of ref.{name[6:]} (fp32)",
                             "produced_by": f"forward hook on ref.{name[6:]}"}
    w.save_tensors("outputs.safetensors", "outputs", outputs)

    w.finish(
        module={"class": SLAT_FLOW_CLASS, "args": args, "checkpoint": "ckpts/slat_flow", "init": INIT},
        seed=seed, grid=grid, counts=counts,
        rng="one torch.Generator().manual_seed(seed): weights first (INIT order), then coords, feats, t, cond",
        precision={
            "checkpoint": ("state_dict() of SLatFlowModel(**args) as constructed (use_fp16=True: convert_to_fp16() "
                           "-> conv and Linear weights+biases inside input_blocks, blocks, out_blocks F16; "
                           "norms, rms gammas, t_embedder, input_layer, out_layer F32)"
                           if args.get("use_fp16") else "all F32 (use_fp16=False)"),
            "reference": "float32 on CPU: SLatFlowModel(**args, use_fp16=False) loaded with the checkpoint's exact "
                         "values (F16 upcast), torch.set_num_threads(1), spconv native, SPARSE_ATTN_BACKEND="
                         "flash_attn served by tools/golden/attention_shim",
        },
        reference_call=("ref = SLatFlowModel(**{**args, 'use_fp16': False}); ref.load_state_dict(load_file("
                        "'ckpts/slat_flow.safetensors')); reference_eval_(ref); "
                        "v = ref(SparseTensor(feats=x_feats, coords=x_coords), t, cond).feats"),
        tolerance={"rel_l2": REL_L2_TOL, "note": "fp32 CPU; also report max_abs"},
    )


@case("slat_flow_fp16layout",
      "SLatFlowModel, published fp16 key/dtype pattern (io_block_channels [32], 2 io res blocks, patch 2, "
      "qk_rms_norm), 64 wide, 2 blocks, batch 2 (150 and 70 voxels of 16^3); reference fp32 from the "
      "fp16-rounded weights")
def case_slat_flow_fp16layout(w: FixtureWriter):
    slat_flow_golden(
        w,
        args={"resolution": 16, "in_channels": 5, "out_channels": 3, "model_channels": 64,
              "cond_channels": 48, "num_blocks": 2, "num_heads": 2, "mlp_ratio": 4, "patch_size": 2,
              "num_io_res_blocks": 2, "io_block_channels": [32], "pe_mode": "ape", "qk_rms_norm": True,
              "use_fp16": True},
        counts=[150, 70], grid=16, cond_tokens=9, seed=3101,
        published_tsv="slat_flow_img_dit_L_64l8p2_fp16.tsv",
    )


@case("slat_flow_noskip_f32",
      "SLatFlowModel, 3 io res blocks per stage (io_block_channels [16]), no skip connections, no qk norms, "
      "heads from num_head_channels, mlp_ratio 2.5, all F32; batch 2 (90 and 200 voxels of 16^3). "
      "(Upstream cannot run patch 4: its integer _scale gives both coarse levels the same upsample cache; "
      "nor share_mod / qk_rms_norm_cross: the io blocks get the 6C modulation, the sparse cross-attention "
      "norms a dense context)")
def case_slat_flow_noskip_f32(w: FixtureWriter):
    slat_flow_golden(
        w,
        args={"resolution": 16, "in_channels": 4, "out_channels": 4, "model_channels": 32,
              "cond_channels": 40, "num_blocks": 2, "num_head_channels": 16, "mlp_ratio": 2.5,
              "num_io_res_blocks": 3, "io_block_channels": [16], "use_skip_connection": False,
              "use_fp16": False},
        counts=[90, 200], grid=16, cond_tokens=6, seed=3102,
    )

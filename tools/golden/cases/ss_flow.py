"""Golden cases for SparseStructureFlowModel (trellis/models/sparse_structure_flow.py), the
stage-1 flow transformer, and through it the dense blocks of trellis/modules/transformer
and trellis/modules/attention (MultiHeadAttention self/cross, MultiHeadRMSNorm,
ModulatedTransformerCrossBlock, FeedForwardNet, TimestepEmbedder, AbsolutePositionEmbedder).

Single-network cases for tests/golden_modules.rs (no "harness" field): inputs x, t, cond;
output v. Dense attention runs through TRELLIS's default backend (flash_attn), served by the
exact CPU shim that reference_env puts on sys.path.
"""
import re
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from safetensors.torch import load_file

from generate import (case, FixtureWriter, DEBUG_MAX_NUMEL, INIT_RULE, REL_L2_TOL,
                      init_weights_, read_published_tsv, reference_eval_, run_with_taps)
import generate
import os

SS_FLOW_CLASS = "trellis.models.sparse_structure_flow.SparseStructureFlowModel"

# MultiHeadRMSNorm.gamma has no rule in init_weights_ (it is neither a conv/linear nor a norm).
GAMMA_RULE = "MultiHeadRMSNorm.gamma: 1 + N(0, std=0.2)"
INIT = dict(INIT_RULE, rms_norm_gamma=GAMMA_RULE,
            note="overrides TRELLIS's zero init of adaLN_modulation and out_layer and its 0.02 init of "
                 "t_embedder, so every weight matters; the pos_emb buffer keeps the value TRELLIS computes")


@torch.no_grad()
def init_flow_weights_(model: nn.Module, gen: torch.Generator) -> None:
    """init_weights_'s rules module by module (named_modules() order), plus GAMMA_RULE."""
    from trellis.modules.attention.modules import MultiHeadRMSNorm
    for _name, m in model.named_modules():
        if not list(m.parameters(recurse=False)):
            continue
        if isinstance(m, MultiHeadRMSNorm):
            m.gamma.copy_(1.0 + torch.randn(m.gamma.shape, generator=gen) * 0.2)
        else:
            # Leaves only (Linear, LayerNorm): init_weights_ draws exactly their own parameters,
            # and raises on any module it has no rule for.
            assert not list(m.children()), f"unexpected non-leaf with parameters: {type(m).__name__}"
            init_weights_(m, gen)


def block_pattern(key: str) -> str:
    return re.sub(r"^blocks\.\d+\.", "blocks.{i}.", key)


def check_published_pattern(ckpt_path: str, tsv_name: str, num_blocks: int) -> dict:
    """The checkpoint's keys and per-key dtypes against the published listing, with the block
    index abstracted (the published model has 24 blocks, ours fewer): same top-level keys, same
    per-block keys, same dtype for each."""
    tsv = os.path.join(generate.DEFAULT_PUBLISHED_TSV_DIR, tsv_name)
    if not os.path.exists(tsv):
        print(f"    (published layout check skipped: {tsv} not found)")
        return {"published_tsv": tsv_name, "checked": False}
    pub = {block_pattern(k): dt for k, dt in read_published_tsv(tsv).items()}
    ours_full = {k: str(v.dtype).replace("torch.", "") for k, v in load_file(ckpt_path).items()}
    ours = {block_pattern(k): dt for k, dt in ours_full.items()}
    if set(pub) != set(ours):
        raise AssertionError(f"key pattern differs from {tsv_name}: missing {sorted(set(pub) - set(ours))}, "
                             f"extra {sorted(set(ours) - set(pub))}")
    bad = {k: (ours[k], pub[k]) for k in pub if ours[k] != pub[k]}
    if bad:
        raise AssertionError(f"dtype pattern differs from {tsv_name}: {bad}")
    per_block = sum(1 for k in pub if k.startswith("blocks.{i}."))
    assert len(ours_full) == len(pub) - per_block + num_blocks * per_block
    counts = {d: sum(1 for v in ours_full.values() if v == d) for d in sorted(set(ours_full.values()))}
    print(f"    layout matches {tsv_name} with blocks.{{i}} abstracted: {per_block} keys per block, "
          f"same dtypes ({counts})")
    return {"published_tsv": tsv_name, "checked": True,
            "comparison": "key set and per-key dtype, with 'blocks.<n>.' replaced by 'blocks.{i}.' "
                          "(the published model has 24 blocks)",
            "keys_per_block": per_block, "same_key_pattern": True, "same_dtypes": True}


def ss_flow_golden(w: FixtureWriter, *, args: dict, batch: int, cond_tokens: int, seed: int,
                   published_tsv: Optional[str] = None) -> None:
    from trellis.models import from_pretrained
    from trellis.models.sparse_structure_flow import SparseStructureFlowModel

    gen = torch.Generator().manual_seed(seed)
    model = SparseStructureFlowModel(**args)
    init_flow_weights_(model, gen)
    stem = w.save_checkpoint("ckpts/ss_flow", "SparseStructureFlowModel", args, model.state_dict())
    if published_tsv:
        rec = w.manifest["files"]["ckpts/ss_flow.safetensors"]
        rec["published_layout"] = check_published_pattern(stem + ".safetensors", published_tsv,
                                                          args["num_blocks"])

    # The published loading path must accept the file as written (strict load).
    loaded = from_pretrained(stem)
    assert loaded.use_fp16 == args.get("use_fp16", False)

    # Reference: the stored (possibly fp16-rounded) weights, upcast, in an fp32 model.
    ref = SparseStructureFlowModel(**dict(args, use_fp16=False))
    ref.load_state_dict(load_file(stem + ".safetensors"), strict=True)
    reference_eval_(ref)
    assert all(p.dtype == torch.float32 for p in ref.parameters())

    r, c_in = args["resolution"], args["in_channels"]
    x = torch.randn([batch, c_in, r, r, r], generator=gen, dtype=torch.float32)
    t = torch.rand([batch], generator=gen, dtype=torch.float32) * 1000.0
    cond = torch.randn([batch, cond_tokens, args["cond_channels"]], generator=gen, dtype=torch.float32)

    taps = {"debug.t_embedder": ref.t_embedder, "debug.input_layer": ref.input_layer}
    taps.update({f"debug.blocks.{i}": b for i, b in enumerate(ref.blocks)})
    with torch.no_grad():
        v, seen = run_with_taps(ref, taps, lambda: ref(x, t, cond))
        again = ref(x, t, cond)
    assert torch.equal(v, again), "reference forward is not deterministic"

    w.save_tensors("inputs.safetensors", "inputs", {
        "x": {"tensor": x, "description": "noisy latent x_t [B, in_channels, R, R, R], N(0,1)"},
        "t": {"tensor": t, "description": "timesteps [B] already scaled by 1000 (1000 * U(0,1))"},
        "cond": {"tensor": cond, "description": "condition tokens [B, L, cond_channels], N(0,1)"},
    })
    outputs = {"v": {"tensor": v, "description": "predicted velocity [B, out_channels, R, R, R]",
                     "produced_by": "ref(x, t, cond)"}}
    skipped = []
    for name, tensor in seen.items():
        mod = name[len("debug."):]
        if tensor.numel() <= DEBUG_MAX_NUMEL:
            outputs[name] = {"tensor": tensor, "description": f"output of ref.{mod} (fp32)",
                             "produced_by": f"forward hook on ref.{mod} during ref(x, t, cond)"}
        else:
            skipped.append({"name": name, "shape": list(tensor.shape), "numel": tensor.numel()})
    w.save_tensors("outputs.safetensors", "outputs", outputs)

    w.finish(
        module={"class": SS_FLOW_CLASS, "args": args, "checkpoint": "ckpts/ss_flow", "init": INIT},
        seed=seed,
        rng="one torch.Generator().manual_seed(seed): weights first (INIT order), then x, t, cond",
        precision={
            "checkpoint": ("state_dict() of SparseStructureFlowModel(**args) as constructed (use_fp16=True: "
                           "convert_to_fp16() -> Linear weights+biases inside blocks F16, everything else "
                           "(pos_emb, t_embedder, input_layer, out_layer, norm2 affine, rms gammas) F32)"
                           if args.get("use_fp16") else "all F32 (use_fp16=False)"),
            "reference": "float32 on CPU: SparseStructureFlowModel(**args, use_fp16=False) loaded with the "
                         "checkpoint's exact values (F16 entries upcast to F32), torch.set_num_threads(1), "
                         "ATTN_BACKEND=flash_attn served by tools/golden/attention_shim (exact softmax attention)",
        },
        reference_call=("ref = SparseStructureFlowModel(**{**args, 'use_fp16': False}); "
                        "ref.load_state_dict(safetensors.torch.load_file('ckpts/ss_flow.safetensors'), strict=True); "
                        "ref.eval(); with torch.no_grad(): v = ref(x, t, cond)"),
        debug={"max_numel": DEBUG_MAX_NUMEL, "skipped": skipped},
        tolerance={"rel_l2": REL_L2_TOL, "note": "fp32 CPU; also report max_abs"},
    )


@case("ss_flow_fp16layout",
      "SparseStructureFlowModel, published fp16 checkpoint layout (mixed F16/F32), qk_rms_norm, patch 1, "
      "8^3 latent, batch 2; reference computed in fp32 from the fp16-rounded weights")
def case_ss_flow_fp16layout(w: FixtureWriter):
    # The published json's keys, smaller sizes: 2 heads of 32 channels, context width != model width.
    ss_flow_golden(
        w,
        args={"resolution": 8, "in_channels": 5, "out_channels": 3, "model_channels": 64,
              "cond_channels": 48, "num_blocks": 2, "num_heads": 2, "mlp_ratio": 4, "patch_size": 1,
              "pe_mode": "ape", "qk_rms_norm": True, "use_fp16": True},
        batch=2, cond_tokens=10, seed=3001,
        published_tsv="ss_flow_img_dit_L_16l8_fp16.tsv",
    )


@case("ss_flow_p2_sharemod",
      "SparseStructureFlowModel, patch_size 2 (the class default, not in the json), share_mod, "
      "qk_rms_norm_cross without qk_rms_norm, heads from num_head_channels, mlp_ratio 2.7, all F32")
def case_ss_flow_p2_sharemod(w: FixtureWriter):
    ss_flow_golden(
        w,
        args={"resolution": 8, "in_channels": 3, "out_channels": 4, "model_channels": 48,
              "cond_channels": 40, "num_blocks": 2, "num_head_channels": 16, "mlp_ratio": 2.7,
              "share_mod": True, "qk_rms_norm": False, "qk_rms_norm_cross": True, "use_fp16": False},
        batch=2, cond_tokens=7, seed=3002,
    )

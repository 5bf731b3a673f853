"""Golden cases for sparse attention (trellis/modules/sparse/attention/*): the
SparseMultiHeadAttention module in full self-attention, windowed (swin) self-attention with
and without a shift, and cross-attention from voxels to dense condition tokens.

Each case builds one SparseMultiHeadAttention at small dims with seeded weights, runs it on a
SparseTensor of random unique voxels (one or more batch elements, different voxel counts) and
records the output. Windowed cases also record the reference's window partition
(calc_window_partition: forward permutation and per-window lengths); the Rust side must
produce the same windows in the same order with the same voxels (the order inside a window is
not significant: the reference's argsort is unstable, and attention cannot see it).

Each case folder holds:
    manifest.json          harness "sparse_attention"; module args; grid; per-batch counts
    ckpts/attn.json        {"name": "SparseMultiHeadAttention", "args": {...}} (constructor kwargs)
    ckpts/attn.safetensors state_dict() (all F32: a sub-module, computed in fp32)
    inputs.safetensors     feats [N, C] f32, coords [N, 4] int32 (b, x, y, z), batch-contiguous;
                           context [B, L, ctx] f32 for cross-attention
    outputs.safetensors    out [N, C]; windowed: window.fwd_indices [N] i64,
                           window.seq_lens [W] i64 (non-empty windows in order)
"""
from typing import List, Optional

import torch
import torch.nn as nn

from generate import case, FixtureWriter, REL_L2_TOL

MODULE_CLASS = "trellis.modules.sparse.attention.modules.SparseMultiHeadAttention"

INIT_RULE = {
    "linear_weight": "N(0, std=1/sqrt(in_features))",
    "linear_bias": "N(0, std=0.1)",
    "rms_norm_gamma": "1 + N(0, std=0.2)",
    "order": "modules in named_modules() order, parameters in registration order, one torch.Generator",
}


@torch.no_grad()
def init_attention_weights_(model: nn.Module, gen: torch.Generator) -> None:
    """Seeded init (INIT_RULE); raises on a parameter it has no rule for."""
    from trellis.modules.sparse.attention.modules import SparseMultiHeadRMSNorm
    seen = set()
    for mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if isinstance(m, nn.Linear) and pname == "weight":
                v = torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5
            elif isinstance(m, nn.Linear) and pname == "bias":
                v = torch.randn(p.shape, generator=gen) * 0.1
            elif isinstance(m, SparseMultiHeadRMSNorm) and pname == "gamma":
                v = 1.0 + torch.randn(p.shape, generator=gen) * 0.2
            else:
                raise NotImplementedError(f"no init rule for {full} ({type(m).__name__})")
            p.copy_(v)
            seen.add(full)
    missing = {n for n, _ in model.named_parameters()} - seen
    assert not missing, f"parameters left uninitialised: {sorted(missing)}"


def random_voxels(gen: torch.Generator, counts: List[int], grid: int, shuffle: bool) -> torch.Tensor:
    """int32 [N, 4] (b, x, y, z): `counts[b]` distinct voxels of a grid^3 per batch element,
    batch-contiguous. Within a batch element the rows are in lexicographic (argwhere) order,
    or in random order when `shuffle` (the attention must not depend on it)."""
    rows = []
    for b, n in enumerate(counts):
        cells = torch.randperm(grid ** 3, generator=gen)[:n]
        if not shuffle:
            cells = cells.sort().values
        xyz = torch.stack([cells // (grid * grid), (cells // grid) % grid, cells % grid], dim=1)
        rows.append(torch.cat([torch.full((n, 1), b, dtype=torch.int64), xyz], dim=1))
    return torch.cat(rows).to(torch.int32)


def sparse_attention_golden(w: FixtureWriter, *, args: dict, counts: List[int], grid: int, seed: int,
                            shuffle: bool = False, context_len: Optional[int] = None) -> None:
    from trellis.modules.sparse import SparseTensor
    from trellis.modules.sparse.attention.modules import SparseMultiHeadAttention
    from trellis.modules.sparse.attention.windowed_attn import calc_window_partition

    gen = torch.Generator().manual_seed(seed)
    model = SparseMultiHeadAttention(**args)
    init_attention_weights_(model, gen)
    w.save_checkpoint("ckpts/attn", "SparseMultiHeadAttention", args, model.state_dict())
    model.eval()

    coords = random_voxels(gen, counts, grid, shuffle)
    feats = torch.randn(coords.shape[0], args["channels"], generator=gen)
    inputs = {
        "feats": {"tensor": feats, "description": "voxel features [N, channels], N(0,1)"},
        "coords": {"tensor": coords, "description": "int32 [N, 4] (batch, x, y, z), batch-contiguous, "
                                                    f"distinct voxels of a {grid}^3 grid"
                                                    + (", random order within a batch element" if shuffle
                                                       else ", lexicographic order")},
    }
    is_cross = args.get("type", "self") == "cross"
    if is_cross:
        ctx_channels = args.get("ctx_channels") or args["channels"]
        context = torch.randn(len(counts), context_len, ctx_channels, generator=gen)
        inputs["context"] = {"tensor": context, "description": "dense condition tokens [B, L, ctx_channels]"}

    x = SparseTensor(feats=feats, coords=coords)
    with torch.no_grad():
        out = model(x, context) if is_cross else model(x)
        again = model(SparseTensor(feats=feats, coords=coords), context) if is_cross else \
            model(SparseTensor(feats=feats, coords=coords))
    assert torch.equal(out.feats, again.feats), "reference forward is not deterministic"
    assert torch.equal(out.coords, coords)

    outputs = {"out": {"tensor": out.feats, "description": "attention output feats [N, channels] (fp32)",
                       "produced_by": "SparseMultiHeadAttention(**args)(SparseTensor(feats, coords)"
                                      + (", context)" if is_cross else ")") + ".feats"}}
    window = None
    if args.get("attn_mode") == "windowed":
        fwd, _bwd, seq_lens, _seq_batch = calc_window_partition(x, args["window_size"], args["shift_window"])
        outputs["window.fwd_indices"] = {
            "tensor": fwd.to(torch.int64),
            "description": "row order of the windowed sequences: rows sorted by window id (int64 [N])",
            "produced_by": "calc_window_partition(x, window_size, shift_window)[0]"}
        outputs["window.seq_lens"] = {
            "tensor": torch.tensor(seq_lens, dtype=torch.int64),
            "description": "voxel count of every non-empty window, in window-id order (int64 [W])",
            "produced_by": "calc_window_partition(x, window_size, shift_window)[2]"}
        window = {"count": len(seq_lens), "max_len": max(seq_lens), "min_len": min(seq_lens)}

    w.save_tensors("inputs.safetensors", "inputs", inputs)
    w.save_tensors("outputs.safetensors", "outputs", outputs)
    w.finish(
        harness="sparse_attention",
        module={"class": MODULE_CLASS, "args": args, "checkpoint": "ckpts/attn", "init": INIT_RULE},
        seed=seed,
        rng="one torch.Generator().manual_seed(seed): weights (INIT_RULE order), then per batch element "
            "randperm(grid^3) for the voxels, then feats, then context",
        voxels={"grid": grid, "counts": counts, "shuffled_within_batch": shuffle},
        context_len=context_len,
        windows=window,
        precision={"checkpoint": "all F32", "reference": "float32 on CPU, attention through the exact "
                                                        "flash_attn shim (varlen path)"},
        reference_call=("model = SparseMultiHeadAttention(**args); model.load_state_dict(ckpt); model.eval(); "
                        "with torch.no_grad(): out = model(SparseTensor(feats=feats, coords=coords)"
                        + (", context)" if is_cross else ")")),
        tolerance={"rel_l2": REL_L2_TOL,
                   "window_partition": "window.seq_lens exactly; each window holds exactly the same rows "
                                       "(order inside a window is not significant: the reference's argsort "
                                       "is unstable and attention within a window is permutation-invariant)"},
    )


@case("sparse_attention_full_b1",
      "SparseMultiHeadAttention self/full, qk_rms_norm, 64 ch / 4 heads, batch 1 (300 voxels of 16^3)")
def case_full_b1(w: FixtureWriter):
    sparse_attention_golden(
        w, args={"channels": 64, "num_heads": 4, "attn_mode": "full", "qk_rms_norm": True},
        counts=[300], grid=16, seed=4101)


@case("sparse_attention_full_b3",
      "SparseMultiHeadAttention self/full, no qkv bias, 48 ch / 2 heads, batch 3 (97, 1, 230 voxels of 24^3, "
      "shuffled within each batch element)")
def case_full_b3(w: FixtureWriter):
    sparse_attention_golden(
        w, args={"channels": 48, "num_heads": 2, "attn_mode": "full", "qkv_bias": False},
        counts=[97, 1, 230], grid=24, seed=4102, shuffle=True)


@case("sparse_attention_swin8_b3",
      "SparseMultiHeadAttention self/windowed (swin) window 8, no shift, 64 ch / 4 heads, batch 3 "
      "(250, 40, 400 voxels of 20^3)")
def case_swin8_b3(w: FixtureWriter):
    sparse_attention_golden(
        w, args={"channels": 64, "num_heads": 4, "attn_mode": "windowed", "window_size": 8, "shift_window": 0},
        counts=[250, 40, 400], grid=20, seed=4103)


@case("sparse_attention_swin8_shift4_b3",
      "SparseMultiHeadAttention self/windowed (swin) window 8, shift 4 (window/2), 64 ch / 4 heads, batch 3 "
      "(250, 40, 400 voxels of 20^3, shuffled)")
def case_swin8_shift4_b3(w: FixtureWriter):
    sparse_attention_golden(
        w, args={"channels": 64, "num_heads": 4, "attn_mode": "windowed", "window_size": 8, "shift_window": 4},
        counts=[250, 40, 400], grid=20, seed=4104, shuffle=True)


@case("sparse_attention_swin4_shift2_b1",
      "SparseMultiHeadAttention self/windowed (swin) window 4, shift 2, qk_rms_norm, 32 ch / 2 heads, batch 1 "
      "(500 voxels of 16^3)")
def case_swin4_shift2_b1(w: FixtureWriter):
    sparse_attention_golden(
        w, args={"channels": 32, "num_heads": 2, "attn_mode": "windowed", "window_size": 4, "shift_window": 2,
                 "qk_rms_norm": True},
        counts=[500], grid=16, seed=4105)


@case("sparse_attention_swin4_shift123_b2",
      "SparseMultiHeadAttention self/windowed window 4, per-axis shift (1, 2, 3), 32 ch / 4 heads, batch 2 "
      "(180, 260 voxels of 20^3)")
def case_swin4_shift123_b2(w: FixtureWriter):
    sparse_attention_golden(
        w, args={"channels": 32, "num_heads": 4, "attn_mode": "windowed", "window_size": 4,
                 "shift_window": [1, 2, 3]},
        counts=[180, 260], grid=20, seed=4106, shuffle=True)


@case("sparse_attention_cross_b3",
      "SparseMultiHeadAttention cross (voxels -> dense tokens), 64 ch / 4 heads, ctx 48, 13 tokens, batch 3 "
      "(120, 7, 210 voxels of 16^3)")
def case_cross_b3(w: FixtureWriter):
    sparse_attention_golden(
        w, args={"channels": 64, "num_heads": 4, "ctx_channels": 48, "type": "cross", "attn_mode": "full"},
        counts=[120, 7, 210], grid=16, seed=4107, context_len=13)


@case("sparse_attention_cross_b1",
      "SparseMultiHeadAttention cross, no qkv bias, 32 ch / 2 heads, ctx = channels, 29 tokens, batch 1 "
      "(150 voxels of 24^3)")
def case_cross_b1(w: FixtureWriter):
    sparse_attention_golden(
        w, args={"channels": 32, "num_heads": 2, "type": "cross", "attn_mode": "full", "qkv_bias": False},
        counts=[150], grid=24, seed=4108, context_len=29)

"""Golden cases for the sparse engine (trellis/modules/sparse/{conv,spatial,norm}.py):
submanifold convolution through TRELLIS's SparseConv3d (spconv 2.3.8 SubMConv3d, Native
algorithm, CPU), SparseDownsample / SparseUpsample / SparseSubdivide, SparseGroupNorm32 and
SparseLayerNorm32, on random sparse voxels of several sizes and batch sizes.

Each case folder holds (harness "sparse"; manifest "op" says what to run):
    manifest.json              harness "sparse", op, module args, voxel grid and counts
    ckpts/<stem>.json          {"name": <TRELLIS class>, "args": {...}}  (conv and norm ops)
    ckpts/<stem>.safetensors   state_dict() as the published files store it: sparse conv
                               "conv.weight" in spconv's KRSC layout [C_out, kx, ky, kz, C_in]
                               and "conv.bias" [C_out] (F16 where the case says so), norm
                               "weight"/"bias" [C] F32
    inputs.safetensors         coords int32 [N, 4] (batch, x, y, z), batch-contiguous;
                               feats f32 [N, C]
    outputs.safetensors        op "conv": out [N, C_out]
                               op "spatial": down.coords/down.feats (SparseDownsample),
                               up.coords/up.feats (SparseUpsample of the downsampled tensor),
                               sub.coords/sub.feats (SparseSubdivide of the input)
                               op "group_norm" / "layer_norm": out [N, C]
Coordinates compare exactly and in order; floats at rel L2 <= 1e-4.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch

from generate import case, FixtureWriter, REL_L2_TOL, reference_eval_

CONV_CLASS = "trellis.modules.sparse.conv.SparseConv3d"
SPATIAL_CLASSES = {
    "down": "trellis.modules.sparse.spatial.SparseDownsample",
    "up": "trellis.modules.sparse.spatial.SparseUpsample",
    "sub": "trellis.modules.sparse.spatial.SparseSubdivide",
}
NORM_CLASSES = {
    "group_norm": ("SparseGroupNorm32", "trellis.modules.sparse.norm.SparseGroupNorm32"),
    "layer_norm": ("SparseLayerNorm32", "trellis.modules.sparse.norm.SparseLayerNorm32"),
}

CONV_INIT_RULE = {
    "conv_weight": "N(0, std=1/sqrt(fan_in)), fan_in = C_in * kernel volume (KRSC tensor drawn directly)",
    "conv_bias": "N(0, std=0.1)",
    "order": "weight, then bias, from the case's torch.Generator",
}
NORM_INIT_RULE = {"weight": "1 + N(0, std=0.1)", "bias": "N(0, std=0.1)"}

Grid = Union[int, Sequence[int]]


def random_voxels(gen: torch.Generator, counts: List[int], grid: Grid, shuffle: bool) -> torch.Tensor:
    """int32 [N, 4] (b, x, y, z): counts[b] distinct voxels of a grid (gx, gy, gz) per batch item,
    batch-contiguous; lexicographic within an item, or in random order when `shuffle`."""
    gx, gy, gz = (grid,) * 3 if isinstance(grid, int) else tuple(grid)
    rows = []
    for b, n in enumerate(counts):
        assert n <= gx * gy * gz
        cells = torch.randperm(gx * gy * gz, generator=gen)[:n]
        if not shuffle:
            cells = cells.sort().values
        xyz = torch.stack([cells // (gy * gz), (cells // gz) % gy, cells % gz], dim=1)
        rows.append(torch.cat([torch.full((n, 1), b, dtype=torch.int64), xyz], dim=1))
    return torch.cat(rows).to(torch.int32)


def voxel_inputs(coords: torch.Tensor, feats: torch.Tensor, grid: Grid, shuffle: bool) -> dict:
    return {
        "coords": {"tensor": coords, "description": f"int32 [N, 4] (batch, x, y, z), batch-contiguous, distinct "
                                                    f"voxels of a {grid} grid per batch item"
                                                    + (", random order within an item" if shuffle
                                                       else ", lexicographic order")},
        "feats": {"tensor": feats, "description": "voxel features [N, C], N(0,1)"},
    }


# --------------------------------------------------------------------------
# SparseConv3d (spconv SubMConv3d)
# --------------------------------------------------------------------------

def sparse_conv_golden(w: FixtureWriter, *, args: dict, counts: List[int], grid: Grid, seed: int,
                       shuffle: bool, fp16_checkpoint: bool = False) -> None:
    from trellis.modules.sparse import SparseTensor
    from trellis.modules.sparse.conv import SparseConv3d

    gen = torch.Generator().manual_seed(seed)
    model = SparseConv3d(**args)
    weight = model.conv.weight
    k = tuple(model.conv.kernel_size)
    assert list(weight.shape) == [args["out_channels"], *k, args["in_channels"]], \
        f"spconv weight is not KRSC: {list(weight.shape)}"
    with torch.no_grad():
        fan_in = args["in_channels"] * weight[0, ..., 0].numel()
        weight.copy_(torch.randn(weight.shape, generator=gen) / fan_in ** 0.5)
        model.conv.bias.copy_(torch.randn(model.conv.bias.shape, generator=gen) * 0.1)
        if fp16_checkpoint:  # what the published files hold; the reference uses these values
            weight.copy_(weight.half().float())
            model.conv.bias.copy_(model.conv.bias.half().float())
    state = model.state_dict()
    assert set(state) == {"conv.weight", "conv.bias"}, sorted(state)
    if fp16_checkpoint:
        state = {name: t.half() for name, t in state.items()}
    w.save_checkpoint("ckpts/conv", "SparseConv3d", args, state)
    reference_eval_(model)  # spconv layers stay in training mode (CPU bias), see generate.py

    coords = random_voxels(gen, counts, grid, shuffle)
    feats = torch.randn(coords.shape[0], args["in_channels"], generator=gen)
    with torch.no_grad():
        out = model(SparseTensor(feats=feats, coords=coords))
        again = model(SparseTensor(feats=feats, coords=coords))
    assert torch.equal(out.feats, again.feats), "reference conv is not deterministic"
    assert torch.equal(out.coords, coords), "submanifold conv changed the coordinates"

    w.save_tensors("inputs.safetensors", "inputs", voxel_inputs(coords, feats, grid, shuffle))
    w.save_tensors("outputs.safetensors", "outputs", {
        "out": {"tensor": out.feats, "description": "conv output feats [N, C_out] (fp32), rows as the input",
                "produced_by": "SparseConv3d(**args)(SparseTensor(feats=feats, coords=coords)).feats"}})
    w.finish(
        harness="sparse", op="conv",
        module={"class": CONV_CLASS, "args": args, "checkpoint": "ckpts/conv", "init": CONV_INIT_RULE,
                "spconv": {"class": type(model.conv).__name__, "kernel_size": list(k),
                           "dilation": list(model.conv.dilation), "algo": str(model.conv.algo)}},
        seed=seed,
        rng="one torch.Generator().manual_seed(seed): weight, bias, then per batch item randperm(grid volume), "
            "then feats",
        voxels={"grid": grid, "counts": counts, "shuffled_within_batch": shuffle},
        precision={"checkpoint": "F16 (weights rounded to fp16 before the reference ran)" if fp16_checkpoint
                   else "all F32",
                   "reference": "float32 on CPU, spconv 2.3.8 Native, one thread"},
        reference_call="model = SparseConv3d(**args); reference_eval_(model); "
                       "with torch.no_grad(): out = model(SparseTensor(feats=feats, coords=coords))",
        tolerance={"rel_l2": REL_L2_TOL},
    )


@case("sparse_conv_k3_b1", "SparseConv3d 3x3x3 (SubMConv3d), 8 -> 12 ch, batch 1, 180 voxels of 8^3 (shuffled)")
def case_conv_k3_b1(w: FixtureWriter):
    sparse_conv_golden(w, args={"in_channels": 8, "out_channels": 12, "kernel_size": 3},
                       counts=[180], grid=8, seed=4401, shuffle=True)


@case("sparse_conv_k3_b3_fp16",
      "SparseConv3d 3x3x3, 16 -> 8 ch, F16 checkpoint (published layout), batch 3 (150, 1, 260 voxels of a "
      "10x7x9 grid)")
def case_conv_k3_b3_fp16(w: FixtureWriter):
    sparse_conv_golden(w, args={"in_channels": 16, "out_channels": 8, "kernel_size": 3},
                       counts=[150, 1, 260], grid=[10, 7, 9], seed=4402, shuffle=False, fp16_checkpoint=True)


@case("sparse_conv_k5_d2_b2",
      "SparseConv3d 5x5x5 dilation 2, 6 -> 10 ch, batch 2 (220, 90 voxels of 11^3, shuffled)")
def case_conv_k5_d2_b2(w: FixtureWriter):
    sparse_conv_golden(w, args={"in_channels": 6, "out_channels": 10, "kernel_size": 5, "dilation": 2},
                       counts=[220, 90], grid=11, seed=4403, shuffle=True)


@case("sparse_conv_k315_b2",
      "SparseConv3d kernel (3, 1, 5) (axis order of the KRSC weight), 5 -> 7 ch, batch 2 (120, 200 voxels of "
      "6x9x8)")
def case_conv_k315_b2(w: FixtureWriter):
    sparse_conv_golden(w, args={"in_channels": 5, "out_channels": 7, "kernel_size": [3, 1, 5]},
                       counts=[120, 200], grid=[6, 9, 8], seed=4404, shuffle=True)


@case("sparse_conv_k1_b2",
      "SparseConv3d kernel 1 (spconv's conv1x1: feats @ weight.view(C_in, C_out), not a transpose), "
      "12 -> 5 ch, batch 2 (40, 70 voxels of 6^3)")
def case_conv_k1_b2(w: FixtureWriter):
    sparse_conv_golden(w, args={"in_channels": 12, "out_channels": 5, "kernel_size": 1},
                       counts=[40, 70], grid=6, seed=4405, shuffle=True)


# --------------------------------------------------------------------------
# SparseDownsample / SparseUpsample / SparseSubdivide
# --------------------------------------------------------------------------

def sparse_spatial_golden(w: FixtureWriter, *, factor: Union[int, List[int]], channels: int, counts: List[int],
                          grid: Grid, seed: int, shuffle: bool) -> None:
    from trellis.modules.sparse import SparseTensor
    from trellis.modules.sparse.spatial import SparseDownsample, SparseSubdivide, SparseUpsample

    gen = torch.Generator().manual_seed(seed)
    coords = random_voxels(gen, counts, grid, shuffle)
    feats = torch.randn(coords.shape[0], channels, generator=gen)
    x = SparseTensor(feats=feats, coords=coords)
    with torch.no_grad():
        down = SparseDownsample(factor)(x)
        # Something between the pair, as in SparseResBlock3d: the cache must survive replace().
        mid = down.replace(down.feats * 2.0 - 1.0)
        up = SparseUpsample(factor)(mid)
        sub = SparseSubdivide()(x)
    assert torch.equal(up.coords, coords), "upsample did not restore the fine coordinates"

    w.save_tensors("inputs.safetensors", "inputs", voxel_inputs(coords, feats, grid, shuffle))
    w.save_tensors("outputs.safetensors", "outputs", {
        "down.coords": {"tensor": down.coords, "description": "int32 [M, 4] coarse voxels, sorted by (b, x, y, z)",
                        "produced_by": "SparseDownsample(factor)(x).coords"},
        "down.feats": {"tensor": down.feats, "description": "[M, C] sum(children) / (n_children + 1) "
                                                            "(scatter_reduce mean, include_self=True)",
                       "produced_by": "SparseDownsample(factor)(x).feats"},
        "up.coords": {"tensor": up.coords, "description": "int32 [N, 4] the input coordinates, same order",
                      "produced_by": "SparseUpsample(factor)(down.replace(down.feats * 2 - 1)).coords"},
        "up.feats": {"tensor": up.feats, "description": "[N, C] (down.feats * 2 - 1) of each voxel's parent",
                     "produced_by": "SparseUpsample(factor)(down.replace(down.feats * 2 - 1)).feats"},
        "sub.coords": {"tensor": sub.coords, "description": "int32 [8N, 4] children, row = parent * 8 + child",
                       "produced_by": "SparseSubdivide()(x).coords"},
        "sub.feats": {"tensor": sub.feats, "description": "[8N, C] parent features repeated",
                      "produced_by": "SparseSubdivide()(x).feats"},
    })
    w.finish(
        harness="sparse", op="spatial",
        module={"classes": SPATIAL_CLASSES, "args": {"factor": factor}},
        seed=seed,
        rng="one torch.Generator().manual_seed(seed): per batch item randperm(grid volume), then feats",
        voxels={"grid": grid, "counts": counts, "shuffled_within_batch": shuffle},
        precision={"reference": "float32 on CPU"},
        reference_call="x = SparseTensor(feats=feats, coords=coords); down = SparseDownsample(factor)(x); "
                       "up = SparseUpsample(factor)(down.replace(down.feats * 2.0 - 1.0)); "
                       "sub = SparseSubdivide()(x)",
        tolerance={"rel_l2": REL_L2_TOL, "coords": "exact, same order"},
    )


@case("sparse_spatial_b1", "SparseDownsample(2) / SparseUpsample(2) / SparseSubdivide, 6 ch, batch 1, "
                           "300 voxels of 12^3 (shuffled)")
def case_spatial_b1(w: FixtureWriter):
    sparse_spatial_golden(w, factor=2, channels=6, counts=[300], grid=12, seed=4501, shuffle=True)


@case("sparse_spatial_b3", "SparseDownsample(2) / SparseUpsample(2) / SparseSubdivide, 4 ch, batch 3 "
                           "(90, 1, 200 voxels of a 9x13x7 grid)")
def case_spatial_b3(w: FixtureWriter):
    sparse_spatial_golden(w, factor=2, channels=4, counts=[90, 1, 200], grid=[9, 13, 7], seed=4502, shuffle=False)


@case("sparse_spatial_f3_b2", "SparseDownsample(3) / SparseUpsample(3) / SparseSubdivide, 5 ch, batch 2 "
                              "(150, 60 voxels of 10^3, shuffled)")
def case_spatial_f3_b2(w: FixtureWriter):
    sparse_spatial_golden(w, factor=3, channels=5, counts=[150, 60], grid=10, seed=4503, shuffle=True)


# --------------------------------------------------------------------------
# SparseGroupNorm32 / SparseLayerNorm32
# --------------------------------------------------------------------------

def sparse_norm_golden(w: FixtureWriter, *, op: str, args: dict, counts: List[int], grid: Grid, seed: int,
                       offset: float = 0.0) -> None:
    import trellis.modules.sparse as sp
    from trellis.modules.sparse import SparseTensor

    class_name, class_path = NORM_CLASSES[op]
    gen = torch.Generator().manual_seed(seed)
    model = getattr(sp, class_name)(**args)
    with torch.no_grad():
        model.weight.copy_(1.0 + torch.randn(model.weight.shape, generator=gen) * 0.1)
        model.bias.copy_(torch.randn(model.bias.shape, generator=gen) * 0.1)
    w.save_checkpoint("ckpts/norm", class_name, args, model.state_dict())
    model.eval()

    channels = args.get("num_channels", args.get("normalized_shape"))
    coords = random_voxels(gen, counts, grid, shuffle=True)
    # Non-zero mean and a spread of scales so the statistics matter.
    feats = torch.randn(coords.shape[0], channels, generator=gen) * 3.0 + offset
    with torch.no_grad():
        out = model(SparseTensor(feats=feats, coords=coords))

    w.save_tensors("inputs.safetensors", "inputs", voxel_inputs(coords, feats, grid, True))
    w.save_tensors("outputs.safetensors", "outputs", {
        "out": {"tensor": out.feats, "description": "normalised feats [N, C] (fp32)",
                "produced_by": f"{class_name}(**args)(SparseTensor(feats=feats, coords=coords)).feats"}})
    w.finish(
        harness="sparse", op=op,
        module={"class": class_path, "args": args, "checkpoint": "ckpts/norm", "init": NORM_INIT_RULE},
        seed=seed,
        rng="one torch.Generator().manual_seed(seed): weight, bias, per batch item randperm(grid volume), feats",
        voxels={"grid": grid, "counts": counts, "shuffled_within_batch": True},
        precision={"reference": "float32 on CPU"},
        reference_call=f"model = {class_name}(**args); model.eval(); "
                       "with torch.no_grad(): out = model(SparseTensor(feats=feats, coords=coords))",
        tolerance={"rel_l2": REL_L2_TOL},
        note=("SparseLayerNorm32 applies nn.LayerNorm((C,)) to each item's [1, C, N_b] view, i.e. over the "
              "voxels: defined only when every item has exactly C voxels (otherwise the reference raises)"
              if op == "layer_norm" else "GroupNorm per batch item over [1, C, N_b]"),
    )


@case("sparse_group_norm_b3", "SparseGroupNorm32(4 groups, 16 ch), batch 3 (70, 1, 130 voxels of 8^3)")
def case_group_norm_b3(w: FixtureWriter):
    sparse_norm_golden(w, op="group_norm", args={"num_groups": 4, "num_channels": 16},
                       counts=[70, 1, 130], grid=8, seed=4601, offset=0.5)


@case("sparse_group_norm_b1", "SparseGroupNorm32(32 groups, 64 ch) as in the mesh decoder, batch 1 "
                              "(90 voxels of 6^3)")
def case_group_norm_b1(w: FixtureWriter):
    sparse_norm_golden(w, op="group_norm", args={"num_groups": 32, "num_channels": 64},
                       counts=[90], grid=6, seed=4602, offset=-1.0)


@case("sparse_layer_norm_b2", "SparseLayerNorm32(12), batch 2 with 12 voxels per item (the only shape the "
                              "reference accepts: it normalises over the voxels)")
def case_layer_norm_b2(w: FixtureWriter):
    sparse_norm_golden(w, op="layer_norm", args={"normalized_shape": 12},
                       counts=[12, 12], grid=5, seed=4603, offset=0.3)

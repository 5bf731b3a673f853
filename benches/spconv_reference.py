#!/usr/bin/env python3
"""The spconv side of the sparse-convolution benchmark (issue 4; see benches/RESULTS.md).

`benches/sparse_conv.rs` runs first: it writes the voxel sets, features, weights, its own
timings and its outputs at a sample of rows into DATA. This script then runs spconv's
`SubMConv3d` with the native algorithm (TRELLIS's `SPCONV_ALGO=native`:
`algo=spconv.ConvAlgo.Native`, `indice_key` set as TRELLIS's convs have) on the same voxels,
features and weights, in the same dtype, and times it with the Rust side's protocol:

* "spconv fresh": a new `SparseConvTensor` each call, so its `indice_dict` is empty and the
  forward builds the indice pairs, then convolves (ours: fresh `SparseTensor` + forward);
* "spconv prebuilt": the same `SparseConvTensor` whose `indice_dict` already holds the pairs
  under the conv's `indice_key` (ours: forward with the map in the level cache).

Agreement, on the sampled rows: recon vs spconv (relative L2, relative to spconv), and both
against a float64 evaluation of the convolution's definition (this file's `conv_fp64`).

Timing: 3 warm-up calls, one calibration call that sets `iters` so a run lasts about 10 ms
(1..=50 calls), 7 runs of `iters` calls between `torch.cuda.synchronize()`, host clock
(`time.perf_counter`), the median of the 7 per-call means.

Usage: spconv_reference.py --data DIR [--json OUT] [--cpu]
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("SPCONV_ALGO", "native")  # TRELLIS's switch; algo is passed below too

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
import spconv  # noqa: E402
import spconv.pytorch as spconv_torch  # noqa: E402

SIDE = 64
WARMUP = 3
RUNS = 7
RUN_TARGET_MS = 10.0
MAX_ITERS = 50
INDICE_KEY = "subm0"
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(f, device):
    """Median milliseconds per call of f (the protocol in the module docstring)."""
    for _ in range(WARMUP):
        f()
    synchronize(device)
    start = time.perf_counter()
    f()
    synchronize(device)
    single = (time.perf_counter() - start) * 1e3
    iters = min(max(int(-(-RUN_TARGET_MS // max(single, 1e-3))), 1), MAX_ITERS)
    runs = []
    for _ in range(RUNS):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            f()
        synchronize(device)
        runs.append((time.perf_counter() - start) * 1e3 / iters)
    return statistics.median(runs)


def rel_l2(value, reference):
    value, reference = value.double(), reference.double()
    return ((value - reference).norm() / reference.norm()).item()


def conv_fp64(coords, feats, weight, bias, rows, batch_size):
    """out[p] = bias + sum_k W_k in[p + r_k - 1] over active neighbours in the same batch item,
    W_k = weight[:, rx, ry, rz, :] (KRSC), for the output rows `rows`, in float64."""
    device = feats.device
    coords = coords.long()
    grid = torch.full((batch_size, SIDE, SIDE, SIDE), -1, dtype=torch.long, device=device)
    grid[coords[:, 0], coords[:, 1], coords[:, 2], coords[:, 3]] = torch.arange(
        coords.shape[0], device=device
    )
    x = feats.double()
    w = weight.double()
    centre = coords[rows]
    out = bias.double().expand(rows.shape[0], -1).clone()
    for rx in range(3):
        for ry in range(3):
            for rz in range(3):
                q = centre[:, 1:] + torch.tensor([rx - 1, ry - 1, rz - 1], device=device)
                inside = ((q >= 0) & (q < SIDE)).all(1)
                qc = q.clamp(0, SIDE - 1)
                nbr = grid[centre[:, 0], qc[:, 0], qc[:, 1], qc[:, 2]]
                nbr = torch.where(inside, nbr, torch.full_like(nbr, -1))
                valid = nbr >= 0
                contrib = x[nbr.clamp(min=0)] @ w[:, rx, ry, rz, :].T
                out += contrib * valid.unsqueeze(1)
    return out


def make_conv(channels, dtype, device, weights):
    conv = spconv_torch.SubMConv3d(
        channels,
        channels,
        3,
        bias=True,
        indice_key=INDICE_KEY,
        algo=spconv_torch.ConvAlgo.Native,
    ).to(device=device, dtype=dtype)
    expected = (channels, 3, 3, 3, channels)
    if tuple(conv.weight.shape) != expected:
        raise SystemExit(f"spconv weight is {tuple(conv.weight.shape)}, expected KRSC {expected}")
    conv.weight.copy_(weights["conv.weight"].to(device=device, dtype=dtype))
    conv.bias.copy_(weights["conv.bias"].to(device=device, dtype=dtype))
    return conv


def run_row(row, data, device, timed):
    name, channels, batch = row["set"], row["channels"], row["batch"]
    dtype = DTYPES[row["dtype"]]
    voxel_set = data["sets"][name]
    coords = voxel_set["coords"].to(device).int().contiguous()
    feats = voxel_set[f"feats_c{channels}"].to(device=device, dtype=dtype).contiguous()
    weights = data["weights"][channels]
    conv = make_conv(channels, dtype, device, weights)

    def fresh():
        return conv(spconv_torch.SparseConvTensor(feats, coords, [SIDE] * 3, batch))

    out = fresh()
    if not torch.equal(out.indices, coords):
        raise SystemExit(f"{name}: spconv's submanifold output rows are not the input rows")
    # The output carries the pairs under the conv's indice_key; the same coordinates with the
    # input features are what a second conv at this level receives.
    prebuilt_input = out.replace_feature(feats)
    if INDICE_KEY not in prebuilt_input.indice_dict:
        raise SystemExit("spconv kept no indice pairs under the conv's indice_key")

    def prebuilt():
        return conv(prebuilt_input)

    rows = data["samples"][f"{name}_rows"].to(device)
    ours = data["samples"][f"{name}_c{channels}_{row['dtype']}"].to(device)
    theirs = out.features[rows].float()
    reference = conv_fp64(coords, feats, weights["conv.weight"].to(device),
                          weights["conv.bias"].to(device), rows, batch)
    result = dict(row)
    result.update(
        rel_l2_recon_vs_spconv=rel_l2(ours, theirs),
        rel_l2_recon_vs_fp64=rel_l2(ours, reference),
        rel_l2_spconv_vs_fp64=rel_l2(theirs, reference),
        rel_l2_spconv_prebuilt_vs_fresh=rel_l2(prebuilt().features[rows], theirs),
        sample_rows=int(rows.shape[0]),
    )
    if timed:
        result["spconv_fresh_ms"] = time_ms(fresh, device)
        result["spconv_prebuilt_ms"] = time_ms(prebuilt, device)
        result["ratio_fresh"] = row["fresh_ms"] / result["spconv_fresh_ms"]
        result["ratio_prebuilt"] = row["conv_ms"] / result["spconv_prebuilt_ms"]
    return result


def load_data(directory, rows):
    sets = {
        name: load_file(os.path.join(directory, f"set_{name}.safetensors"))
        for name in dict.fromkeys(r["set"] for r in rows)
    }
    weights = {
        c: load_file(os.path.join(directory, f"weights_c{c}.safetensors"))
        for c in dict.fromkeys(r["channels"] for r in rows)
    }
    samples = load_file(os.path.join(directory, "recon_out.safetensors"))
    return {"sets": sets, "weights": weights, "samples": samples}


def fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def print_table(results):
    print(
        "| voxels (batch) | pairs | channels | dtype | recon map build | recon conv (built map) "
        "| recon fresh (map + conv) | spconv fresh (build + conv) | spconv prebuilt "
        "| fresh recon/spconv | conv recon/spconv | rel L2 recon vs spconv "
        "| recon vs fp64 | spconv vs fp64 |"
    )
    print("|" + " --- |" * 14)
    for r in results:
        print(
            f"| {r['voxels']} ({r['batch']}) | {r['pairs']} | {r['channels']}->{r['channels']} "
            f"| {r['dtype']} | {fmt(r['map_ms'], '.3f')} | {fmt(r['conv_ms'], '.3f')} "
            f"| {fmt(r['fresh_ms'], '.3f')} | {fmt(r.get('spconv_fresh_ms'), '.3f')} "
            f"| {fmt(r.get('spconv_prebuilt_ms'), '.3f')} | {fmt(r.get('ratio_fresh'), '.2f')} "
            f"| {fmt(r.get('ratio_prebuilt'), '.2f')} | {r['rel_l2_recon_vs_spconv']:.1e} "
            f"| {r['rel_l2_recon_vs_fp64']:.1e} | {r['rel_l2_spconv_vs_fp64']:.1e} |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="the directory sparse_conv.rs wrote")
    parser.add_argument("--json", help="where to write the combined results")
    parser.add_argument("--cpu", action="store_true", help="plumbing check on CPU, no timing")
    args = parser.parse_args()
    device = torch.device("cpu" if args.cpu else "cuda")
    with open(os.path.join(args.data, "recon_timings.json")) as f:
        rows = json.load(f)
    data = load_data(args.data, rows)
    print(f"spconv {spconv.__version__}, torch {torch.__version__}, device "
          f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
          f"SPCONV_ALGO={os.environ['SPCONV_ALGO']}")
    results = []
    with torch.no_grad():
        for row in rows:
            if args.cpu and row["dtype"] == "fp16":
                continue  # spconv's CPU half path is too slow for a plumbing check
            result = run_row(row, data, device, timed=not args.cpu)
            print(json.dumps(result), flush=True)
            results.append(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print_table(results)
    tolerance = {"fp32": 1e-5, "fp16": 1e-2}
    bad = [r for r in results if r["rel_l2_recon_vs_spconv"] > tolerance[r["dtype"]]]
    for r in bad:
        print(f"DISAGREE: {r['set']} {r['channels']} {r['dtype']}: "
              f"rel L2 {r['rel_l2_recon_vs_spconv']:.2e} > {tolerance[r['dtype']]:.0e}")
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()

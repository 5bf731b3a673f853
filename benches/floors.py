#!/usr/bin/env python3
"""Physical floors of issue 8: the FLOPs of each stage of TRELLIS-image-large at the published
defaults (one image, the benchmark's voxels), divided by the GPU's measured dense matmul rate
(benches/gpu_roofline.py), and each measured stage time (`recon bench --json`) as a multiple of
its floor. Only matrix products and attention count (2 FLOPs per multiply-add); norms,
activations and copies are memory-bound extras a fused implementation keeps small, so the
floor is optimistic.

usage: floors.py ROOFLINE.json RECON.json [--voxels shell:R] [--image-views 1]
"""
import argparse
import json
import math

D_MODEL = 1024          # both flows' width
BLOCKS = 24
MLP = 4
COND_TOKENS = 1 + 4 + 37 * 37   # DINOv2 ViT-L/14-reg at 518²: CLS + 4 registers + 37² patches


def sampler_forwards(steps=25, interval=(0.5, 1.0), rescale_t=3.0):
    """Flow forwards of a FlowEulerGuidanceIntervalSampler run: two inside the guidance
    interval (CFG), one outside."""
    forwards = 0
    for i in range(steps):
        t = 1.0 - i / steps
        t = rescale_t * t / (1 + (rescale_t - 1) * t)
        forwards += 2 if interval[0] <= t <= interval[1] else 1
    return forwards


def cross_block_flops(tokens, d=D_MODEL, cond=COND_TOKENS, mlp=MLP):
    """One modulated cross-attention transformer block: qkv + out (4d²), cross q + out (2d²),
    MLP (2·mlp·d²) per token; the condition's k, v (2d² per condition token); attention scores
    and weighted sums (4·L·L'·d) for self and cross attention."""
    per_token = (4 + 2 + 2 * mlp) * d * d
    return 2 * (tokens * per_token + cond * 2 * d * d) + 4 * tokens * tokens * d + 4 * tokens * cond * d


def dinov2_flops(tokens=COND_TOKENS, d=1024, layers=24, mlp=4):
    return layers * (2 * tokens * (4 + 2 * mlp) * d * d + 4 * tokens * tokens * d)


def swin_decoder_flops(voxels, d, blocks, window=8, mlp=4):
    """A SLat decoder's transformer: windowed self-attention over 8³ windows."""
    per_token = (4 + 2 * mlp) * d * d
    return blocks * (2 * voxels * per_token + 4 * voxels * min(window ** 3, voxels) * d)


def shell(radius, grid=64):
    c = (grid - 1) / 2
    return [(x, y, z) for x in range(grid) for y in range(grid) for z in range(grid)
            if abs(math.sqrt((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2) - radius) < 1.0]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("roofline")
    p.add_argument("recon")
    p.add_argument("--voxels", default="shell:28")
    args = p.parse_args()
    rates = json.load(open(args.roofline))
    recon = json.load(open(args.recon))
    half = rates["matmul_tflops_fp16"] * 1e12
    fp32 = rates["matmul_tflops_fp32"] * 1e12
    voxels = shell(float(args.voxels.split(":")[1]))
    n = len(voxels)
    tokens = len({(x // 2, y // 2, z // 2) for x, y, z in voxels})
    forwards = sampler_forwards()
    io_convs = 8 * 2 * n * 27 * 128 * 128   # 2 input + 2 output res blocks, 2 convs each (≤ 27 taps)
    stages = [
        ("condition (DINOv2 ViT-L, fp32 as the reference)", "condition", dinov2_flops(), fp32),
        (f"sparse structure ({forwards} flow forwards over 16³ tokens, fp16)", "sparse_structure",
         forwards * BLOCKS * cross_block_flops(16 ** 3), half),
        (f"structured latent ({forwards} forwards, {tokens} tokens from {n} voxels, fp16)",
         "structured_latent", forwards * (BLOCKS * cross_block_flops(tokens) + io_convs), half),
        (f"decode (Gaussian + mesh decoder torsos over {n} voxels, fp16)", "decode",
         swin_decoder_flops(n, 768, 12) * 2, half),
    ]
    print(f"rates: fp16 matmul {rates['matmul_tflops_fp16']:.0f} TFLOPS, fp32 "
          f"{rates['matmul_tflops_fp32']:.0f} TFLOPS, copy {rates['copy_gbps_read_plus_write']:.0f} GB/s\n")
    print("| stage | TFLOP | floor ms | recon ms | × floor |")
    print("| --- | --- | --- | --- | --- |")
    for label, key, flops, rate in stages:
        floor = flops / rate * 1e3
        measured = recon["stages"].get(key, {}).get("median_ms")
        ratio = f"{measured / floor:.1f}" if measured else "–"
        print(f"| {label} | {flops / 1e12:.2f} | {floor:.0f} | {measured:.0f} | {ratio} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The recon / reference table of issue 8 from `recon bench --json` and
benches/reference_pipeline.py --json (same model, input, seed, voxels): per-stage medians, their
ratio, ms per sampler step, peak GPU memory and the outputs' agreement, as Markdown."""
import json
import sys

# (row label, recon key, reference key, reference per-step source)
STAGES = [
    ("preprocess", "preprocess", "preprocess", None),
    ("condition (image encoders, condition networks)", "condition", "condition", None),
    ("sparse structure (flow + decoder)", "sparse_structure", "sparse_structure", "ss_sampling"),
    ("structured latent (flow)", "structured_latent", "structured_latent", "slat_sampling"),
    ("decode (decoders + extraction)", "decode", "decode", None),
    ("generate (end to end)", "generate", "generate", None),
]


def main(recon_path: str, reference_path: str) -> None:
    recon = json.load(open(recon_path))
    ref = json.load(open(reference_path))
    rs, fs = recon["stages"], ref["stages"]
    print(f"recon: {recon['pipeline']} on {recon['device']}, {recon['runs']} runs after "
          f"{recon['warmup']} warm-up, {recon['voxels']} voxels; reference: {ref['pipeline']}, "
          f"torch {ref['torch']}, backends {ref['backends']}, {ref['voxels']} voxels\n")
    print("| stage | reference ms | recon ms | recon / reference |")
    print("| --- | --- | --- | --- |")
    for label, rk, fk, per_step in STAGES:
        if rk not in rs or fk not in fs:
            continue
        r, f = rs[rk]["median_ms"], fs[fk]["median_ms"]
        extra = ""
        if per_step and rs[rk].get("per_step_ms") and per_step in fs:
            steps = rs[rk]["steps"]
            f_step = fs[per_step]["median_ms"] / steps
            extra = f" ({f_step:.1f} → {rs[rk]['per_step_ms']:.1f} ms/step)"
        print(f"| {label}{extra} | {f:.0f} | {r:.0f} | {r / f:.2f} |")
    if recon.get("peak_gpu_bytes") and ref.get("peak_gpu_bytes"):
        r, f = recon["peak_gpu_bytes"] / 2**30, ref["peak_gpu_bytes"] / 2**30
        print(f"| peak GPU memory (GiB) | {f:.2f} | {r:.2f} | {r / f:.2f} |")
    agreement = ref.get("agreement")
    if agreement:
        print("\nagreement (recon against the reference):")
        for name, a in agreement.items():
            print(f"- {name}: {a}")


if __name__ == "__main__":
    main(*sys.argv[1:3])

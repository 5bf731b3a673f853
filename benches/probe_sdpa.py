#!/usr/bin/env python3
"""Which of libtorch's SDPA backends is fastest on this GPU at the attention shapes of the
pipelines (issue 8): flash (FlashAttention-2, libtorch's default first choice), cuDNN and
memory-efficient, fp16 and bf16, with each output's relative L2 against flash's. Prints JSON."""
import json
import os
import sys

import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_timing import timed_ms  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel

# (name, heads, query tokens, key tokens, head dim)
SHAPES = [
    ("ss_flow self (16^3 tokens)", 16, 4096, 4096, 64),
    ("ss/slat cross (DINOv2 1374 tokens)", 16, 4096, 1374, 64),
    ("slat_flow self (r=28 shell, ~5.5k tokens)", 16, 5500, 5500, 64),
    ("dinov2 self", 16, 1374, 1374, 64),
    ("vggt global, 16 views", 16, 16 * 1374, 16 * 1374, 64),
]
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def main():
    torch.manual_seed(0)
    results = []
    for dtype in (torch.float16, torch.bfloat16):
        for name, h, lq, lk, d in SHAPES:
            q = torch.randn(1, h, lq, d, device="cuda", dtype=dtype)
            k = torch.randn(1, h, lk, d, device="cuda", dtype=dtype)
            v = torch.randn(1, h, lk, d, device="cuda", dtype=dtype)
            row = {"shape": name, "dtype": str(dtype)}
            ref = None
            for label, backend in BACKENDS.items():
                try:
                    with sdpa_kernel([backend]):
                        fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)  # noqa: E731
                        out = fn()
                        row[label + "_ms"] = round(timed_ms(fn), 3)
                    if ref is None:
                        ref = out.float()
                    else:
                        row[label + "_rel_l2"] = float((out.float() - ref).norm() / ref.norm())
                except RuntimeError as e:
                    row[label + "_ms"] = f"unavailable: {str(e)[:80]}"
            results.append(row)
            print(json.dumps(row), flush=True)
    if len(sys.argv) > 1:
        json.dump(results, open(sys.argv[1], "w"), indent=1)


if __name__ == "__main__":
    main()

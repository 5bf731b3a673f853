#!/usr/bin/env python3
"""The GPU's measured ceilings for issue 8's physical floors: dense matmul rate (bf16, fp16,
fp32 without TF32) and device memory copy bandwidth, each the median of repeated runs timed with
CUDA events. Prints JSON (and writes it to argv[1] when given)."""
import json
import os
import sys

import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_timing import timed_ms  # noqa: E402


def matmul_tflops(dtype, n=8192):
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    ms = timed_ms(lambda: torch.mm(a, b))
    return 2 * n**3 / (ms * 1e-3) / 1e12


def copy_gbps(nbytes=2 << 30):
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = timed_ms(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9  # read + write


def main():
    torch.backends.cuda.matmul.allow_tf32 = False
    result = {
        "device": torch.cuda.get_device_name(),
        "matmul_tflops_bf16": matmul_tflops(torch.bfloat16),
        "matmul_tflops_fp16": matmul_tflops(torch.float16),
        "matmul_tflops_fp32": matmul_tflops(torch.float32),
        "copy_gbps_read_plus_write": copy_gbps(),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if len(sys.argv) > 1:
        open(sys.argv[1], "w").write(text)


if __name__ == "__main__":
    main()

"""Median GPU time of a callable, measured with CUDA events (shared by the GPU probes in
benches/: gpu_roofline.py, probe_flows.py, probe_sdpa.py)."""
import torch


def timed_ms(fn, runs=20, warmup=3):
    """Median milliseconds of `fn()` over `runs` calls after `warmup` untimed ones, each timed
    between CUDA events and synchronised."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]

#!/usr/bin/env python3
"""Summarises a Kineto Chrome trace written by `recon bench --profile FILE` (issue 8): where a
stage's wall time goes on the GPU and on the host.

Prints the profiled window, the GPU's busy time (union of kernel and copy intervals) and idle
time, the kernels grouped by name (total, count, mean), the host's libtorch op count, the CUDA
runtime/driver calls that wait for the device (synchronisations, blocking copies) and the
launches. Standard library only.

usage: profile_summary.py TRACE.json [--top N] [--json OUT.json]
"""

import argparse
import collections
import json
import sys

BLOCKING_COPIES = ("cudaMemcpy", "cuMemcpy", "cuMemcpyDtoH_v2", "cuMemcpyHtoD_v2")
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cudaGraphLaunch",
            "cuLaunchKernelEx")


def union_length(intervals):
    """Total length covered by (start, end) intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def summarise(events, top):
    """The numbers `main` prints, from the trace's events."""
    timed = [e for e in events if e.get("ph") == "X" and "dur" in e]
    if not timed:
        return {"error": "no timed events in the trace"}
    start = min(e["ts"] for e in timed)
    end = max(e["ts"] + e["dur"] for e in timed)
    gpu = [e for e in timed if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    kernels = [e for e in timed if e.get("cat") == "kernel"]
    busy = union_length([(e["ts"], e["ts"] + e["dur"]) for e in gpu])
    by_name = collections.defaultdict(lambda: [0.0, 0])
    for e in kernels:
        entry = by_name[e["name"]]
        entry[0] += e["dur"]
        entry[1] += 1
    runtime = [e for e in timed if e.get("cat") in ("cuda_runtime", "cuda_driver")]
    waits = collections.defaultdict(lambda: [0.0, 0])
    launches = 0
    for e in runtime:
        name = e["name"]
        if "Synchronize" in name or name in BLOCKING_COPIES:
            entry = waits[name]
            entry[0] += e["dur"]
            entry[1] += 1
        if any(name.startswith(l) for l in LAUNCHES):
            launches += 1
    ops = collections.Counter(e["name"] for e in timed if e.get("cat") == "cpu_op")
    return {
        "window_ms": (end - start) / 1e3,
        "gpu_busy_ms": busy / 1e3,
        "gpu_idle_ms": (end - start - busy) / 1e3,
        "kernel_ms": sum(e["dur"] for e in kernels) / 1e3,
        "kernels": len(kernels),
        "launches": launches,
        "host_ops": sum(ops.values()),
        "top_kernels": [
            {"name": name, "ms": total / 1e3, "count": count, "mean_us": total / count}
            for name, (total, count) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
        ],
        "waits": [
            {"name": name, "ms": total / 1e3, "count": count}
            for name, (total, count) in sorted(waits.items(), key=lambda kv: -kv[1][0])
        ],
        "top_host_ops": ops.most_common(top),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json")
    args = parser.parse_args()
    with open(args.trace) as f:
        trace = json.load(f)
    s = summarise(trace.get("traceEvents", []), args.top)
    if "error" in s:
        sys.exit(f"{args.trace}: {s['error']}")
    print(f"window {s['window_ms']:.1f} ms: GPU busy {s['gpu_busy_ms']:.1f} ms, idle "
          f"{s['gpu_idle_ms']:.1f} ms; {s['kernels']} kernels ({s['kernel_ms']:.1f} ms), "
          f"{s['launches']} launches, {s['host_ops']} libtorch ops on the host")
    print("\nkernels by total time:")
    for k in s["top_kernels"]:
        print(f"  {k['ms']:9.2f} ms {k['count']:7d} × {k['mean_us']:8.1f} us  {k['name'][:110]}")
    print("\nhost waits for the device:")
    for w in s["waits"]:
        print(f"  {w['ms']:9.2f} ms {w['count']:7d} ×  {w['name']}")
    print("\nmost frequent host ops:")
    for name, count in s["top_host_ops"]:
        print(f"  {count:7d}  {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1)


if __name__ == "__main__":
    main()

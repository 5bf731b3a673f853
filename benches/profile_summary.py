#!/usr/bin/env python3
"""Summarises a Kineto Chrome trace written by `recon bench --profile FILE` (issue 8): where a
stage's wall time goes on the GPU and on the host.

Prints the profiled window, the GPU's busy time (union of kernel and copy intervals) and idle
time, the kernels grouped by name (total, count, mean), the host's libtorch op count, the CUDA
runtime/driver calls that wait for the device (synchronisations, blocking copies) with the
libtorch ops they happen in (to find what keeps a forward from being graph-captured) and the
launches, and the longest stretches where the GPU sat idle with what the host was doing
meanwhile (the outermost libtorch ops overlapping each gap; none means recon's own code), and
the spans recon names (`profiler::scope`, "user annotations") with their GPU busy and idle time;
each gap names the innermost span it falls in. Standard library only.

usage: profile_summary.py TRACE.json [--top N] [--json OUT.json]
"""

import argparse
import bisect
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


def enclosing_ops(waits, cpu_ops, depth=4):
    """For each wait event, the chain of libtorch ops (outermost first, at most `depth`) on the
    same host thread whose interval contains it, counted per chain."""
    by_thread = collections.defaultdict(list)
    for op in cpu_ops:
        by_thread[op.get("tid")].append(op)
    starts = {}
    for tid, ops in by_thread.items():
        ops.sort(key=lambda o: o["ts"])
        starts[tid] = [o["ts"] for o in ops]
    chains = collections.Counter()
    for w in waits:
        ops = by_thread.get(w.get("tid"), [])
        i = bisect.bisect_right(starts.get(w.get("tid"), []), w["ts"])
        around = []
        # Ops start before the wait; nested ones are short, so a bounded look back suffices.
        for op in reversed(ops[max(0, i - 20000):i]):
            if op["ts"] + op["dur"] >= w["ts"] + w["dur"]:
                around.append(op)
        around.sort(key=lambda o: (o["ts"], -o["dur"]))
        names = [o["name"] for o in around][:depth]
        chains[" > ".join(names) if names else "(no libtorch op: our own code)"] += 1
    return chains.most_common()


def merged_busy(gpu):
    """The GPU's busy intervals, overlapping ones merged."""
    merged = []
    for a, b in sorted((e["ts"], e["ts"] + e["dur"]) for e in gpu):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def busy_within(busy, starts, a, b):
    """How much of [a, b] the merged busy intervals cover."""
    total = 0.0
    i = max(0, bisect.bisect_right(starts, a) - 1)
    while i < len(busy) and busy[i][0] < b:
        total += max(0.0, min(b, busy[i][1]) - max(a, busy[i][0]))
        i += 1
    return total


def scope_table(scopes, gpu):
    """Per span name: how many, wall time, and the GPU's busy time within."""
    busy = merged_busy(gpu)
    starts = [m[0] for m in busy]
    table = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for e in scopes:
        entry = table[e["name"]]
        entry[0] += 1
        entry[1] += e["dur"]
        entry[2] += busy_within(busy, starts, e["ts"], e["ts"] + e["dur"])
    return sorted(([n, c, w / 1e3, g / 1e3] for n, (c, w, g) in table.items()),
                  key=lambda r: -r[2])


def innermost_scope(scopes, t):
    """The name of the shortest span containing time `t`, or ''."""
    inside = [e for e in scopes if e["ts"] <= t <= e["ts"] + e["dur"]]
    return min(inside, key=lambda e: e["dur"])["name"] if inside else ""


def idle_gaps(gpu, cpu_ops, start, end, scopes=(), shortest_us=200.0):
    """The stretches of at least `shortest_us` where no kernel or copy ran, each with the kernels
    on either side and the outermost host ops that overlap it (by overlap, longest first)."""
    spans = sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in gpu)
    merged = []
    for a, b, name in spans:
        if merged and a <= merged[-1][1]:
            if b > merged[-1][1]:
                merged[-1][1], merged[-1][3] = b, name
        else:
            merged.append([a, b, name, name])
    edges = [(start, None)] + [(m[0], m) for m in merged] + [(end, None)]
    outermost = outermost_ops(cpu_ops)
    starts = [o["ts"] for o in outermost]
    gaps, previous_end, previous_name = [], start, "(window start)"
    for a, m in edges[1:]:
        if a - previous_end >= shortest_us:
            overlap = collections.Counter()
            i = max(0, bisect.bisect_right(starts, previous_end) - 1)
            for op in outermost[i:]:
                if op["ts"] >= a:
                    break
                o = min(a, op["ts"] + op["dur"]) - max(previous_end, op["ts"])
                if o > 0:
                    overlap[op["name"]] += o
            gaps.append({
                "at_ms": (previous_end - start) / 1e3,
                "ms": (a - previous_end) / 1e3,
                "after": previous_name,
                "before": m[2] if m else "(window end)",
                "host_ops": [(n, o / 1e3) for n, o in overlap.most_common(3)],
                "host_ms": sum(overlap.values()) / 1e3,
                "scope": innermost_scope(scopes, (previous_end + a) / 2),
            })
        if m:
            previous_end, previous_name = max(previous_end, m[1]), m[3]
    return gaps


def outermost_ops(cpu_ops):
    """The libtorch ops no other op on their thread contains, by start time."""
    result = []
    by_thread = collections.defaultdict(list)
    for op in cpu_ops:
        by_thread[op.get("tid")].append(op)
    for ops in by_thread.values():
        ops.sort(key=lambda o: (o["ts"], -o["dur"]))
        reach = float("-inf")
        for op in ops:
            if op["ts"] >= reach:
                result.append(op)
                reach = op["ts"] + op["dur"]
            else:
                reach = max(reach, op["ts"] + op["dur"])
    result.sort(key=lambda o: o["ts"])
    return result


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
    wait_events = []
    launches = 0
    for e in runtime:
        name = e["name"]
        if "Synchronize" in name or name in BLOCKING_COPIES:
            entry = waits[name]
            entry[0] += e["dur"]
            entry[1] += 1
            wait_events.append(e)
        if any(name.startswith(l) for l in LAUNCHES):
            launches += 1
    cpu_ops = [e for e in timed if e.get("cat") == "cpu_op"]
    scopes = [e for e in timed if e.get("cat") == "user_annotation"]
    ops = collections.Counter(e["name"] for e in cpu_ops)
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
        "wait_sites": enclosing_ops(wait_events, cpu_ops)[:top],
        "top_host_ops": ops.most_common(top),
        "idle_gaps": idle_gaps(gpu, cpu_ops, start, end, scopes),
        "scopes": scope_table(scopes, gpu),
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
    print("\nhost waits by the libtorch ops they happen in (outermost first):")
    for chain, count in s["wait_sites"]:
        print(f"  {count:7d} ×  {chain[:150]}")
    print("\nmost frequent host ops:")
    for name, count in s["top_host_ops"]:
        print(f"  {count:7d}  {name}")
    if s["scopes"]:
        print("\nrecon's named spans (wall, GPU busy within, idle within):")
        for name, count, wall, busy in s["scopes"]:
            print(f"  {wall:9.2f} ms {count:5d} ×  busy {busy:8.2f}  idle {wall - busy:8.2f}  {name}")
    gaps = s["idle_gaps"]
    print(f"\nGPU idle stretches of 0.2 ms or more: {len(gaps)}, "
          f"{sum(g['ms'] for g in gaps):.1f} ms; the longest (offset in the window):")
    for g in sorted(gaps, key=lambda g: -g["ms"])[:args.top]:
        ops = ", ".join(f"{n} {o:.1f}" for n, o in g["host_ops"]) or "no libtorch op"
        print(f"  {g['ms']:7.2f} ms at {g['at_ms']:7.1f} [{g['scope']}]: after {g['after'][:40]} | before "
              f"{g['before'][:40]} | host ops {g['host_ms']:.1f} ms: {ops[:120]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1)


if __name__ == "__main__":
    main()

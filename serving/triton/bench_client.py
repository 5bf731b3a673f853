#!/usr/bin/env python3
"""Throughput of a recon Triton server: assets per minute with N concurrent clients.

    python bench_client.py --url 127.0.0.1:8000 --concurrency 2 --requests 8 --image a.png

Each client is a thread with its own HTTP connection that sends one request after another
(every output asked for, so the server exports both files, unless `--outputs counts`) until
`--requests` have been sent in all; `--warmup` requests go first, one at a time, and are not
counted (the first run of every kernel is slower). Prints one line per request and a summary,
and writes the summary as JSON with `--json`: wall time, assets/minute, latency percentiles,
and Triton's own averages of queue and compute time from its statistics (which show whether
clients waited for an instance or the instances were busy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import client as recon_client


@dataclass
class Settings:
    url: str
    images: List[bytes]
    parameters: Dict[str, Any]
    network_timeout: float
    outputs: Optional[List[str]]


@dataclass
class Tally:
    """What the client threads record, under one lock."""

    latencies: List[float] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    next_index: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, total: int) -> Optional[int]:
        """The next request's index, or None when all have been sent."""
        with self.lock:
            if self.next_index >= total:
                return None
            self.next_index += 1
            return self.next_index - 1


def make_client(settings: Settings) -> Any:
    import tritonclient.http as http

    return http.InferenceServerClient(settings.url, network_timeout=settings.network_timeout,
                                      connection_timeout=settings.network_timeout)


def one_request(client: Any, settings: Settings, seed: int) -> recon_client.Asset:
    return recon_client.generate(client, settings.images, seed=seed, outputs=settings.outputs,
                                 **settings.parameters)


def worker(settings: Settings, tally: Tally, total: int, seed_base: int) -> None:
    """Sends requests until `total` have been sent, recording each latency or error."""
    client = make_client(settings)
    try:
        while (index := tally.take(total)) is not None:
            start = time.perf_counter()
            try:
                asset = one_request(client, settings, seed_base + index)
            except Exception as error:  # noqa: BLE001 - counted and reported, the run goes on
                with tally.lock:
                    tally.errors.append(f"request {index}: {error}")
                print(f"request {index}: error {error}", flush=True)
                continue
            elapsed = time.perf_counter() - start
            with tally.lock:
                tally.latencies.append(elapsed)
            print(f"request {index}: {elapsed:.2f} s, {asset.num_gaussians} Gaussians, "
                  f"{asset.num_vertices} vertices, GLB {len(asset.glb) / 1e6:.1f} MB", flush=True)
    finally:
        client.close()


def server_stats(settings: Settings) -> Dict[str, int]:
    """Triton's cumulative counters for the recon model (success count, queue and compute ns)."""
    client = make_client(settings)
    try:
        stats = client.get_inference_statistics(recon_client.MODEL_NAME)["model_stats"][0]
    finally:
        client.close()
    infer = stats["inference_stats"]
    return {"count": int(infer["success"]["count"]), "queue_ns": int(infer["queue"]["ns"]),
            "compute_ns": int(infer["compute_infer"]["ns"]) + int(infer["compute_input"]["ns"])
            + int(infer["compute_output"]["ns"])}


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def mean_seconds(total_ns: int, count: int) -> float:
    return round(total_ns / count / 1e9, 3)


def summary(tally: Tally, wall: float, before: Dict[str, int], after: Dict[str, int],
            concurrency: int) -> Dict[str, Any]:
    done = len(tally.latencies)
    served = max(1, after["count"] - before["count"])
    return {
        "concurrency": concurrency, "requests": done + len(tally.errors),
        "errors": len(tally.errors), "wall_s": round(wall, 3),
        "assets_per_minute": round(60.0 * done / wall, 3) if wall else 0.0,
        "latency_mean_s": round(statistics.fmean(tally.latencies), 3) if done else None,
        "latency_p50_s": round(percentile(tally.latencies, 0.5), 3) if done else None,
        "latency_p95_s": round(percentile(tally.latencies, 0.95), 3) if done else None,
        "server_queue_mean_s": mean_seconds(after["queue_ns"] - before["queue_ns"], served),
        "server_compute_mean_s": mean_seconds(after["compute_ns"] - before["compute_ns"], served),
    }


def run(settings: Settings, concurrency: int, requests: int, warmup: int, seed_base: int
        ) -> Dict[str, Any]:
    """Warm-up requests one by one, then the timed ones from `concurrency` threads."""
    warm = make_client(settings)
    try:
        for i in range(warmup):
            start = time.perf_counter()
            one_request(warm, settings, seed_base - 1 - i)
            print(f"warm-up {i}: {time.perf_counter() - start:.2f} s", flush=True)
    finally:
        warm.close()
    tally = Tally()
    before = server_stats(settings)
    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(settings, tally, requests, seed_base),
                                name=f"client-{i}") for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return summary(tally, wall, before, server_stats(settings), concurrency)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="127.0.0.1:8000", help="Triton's HTTP host:port")
    p.add_argument("--image", action="append", required=True,
                   help="an encoded view (repeat for several views per request)")
    p.add_argument("--concurrency", type=int, default=1, help="client threads")
    p.add_argument("--requests", type=int, default=8, help="timed requests in all")
    p.add_argument("--warmup", type=int, default=1, help="untimed requests first")
    p.add_argument("--seed-base", type=int, default=1000, help="request i uses seed base + i")
    p.add_argument("--steps", type=int, help="both samplers' steps (default: the model's)")
    p.add_argument("--outputs", choices=("all", "counts"), default="all",
                   help="counts: ask only for the counts (the server still runs every decoder "
                   "but ships no GLB/PLY)")
    p.add_argument("--network-timeout", type=float, default=3600.0)
    p.add_argument("--json", help="write the summary here too")
    p.add_argument("--label", default="", help="a note stored with the summary")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    parameters = {"sparse_structure_steps": args.steps, "slat_steps": args.steps}
    outputs = ["num_gaussians", "num_vertices", "num_faces"] if args.outputs == "counts" else None
    settings = Settings(args.url, [Path(p).read_bytes() for p in args.image], parameters,
                        args.network_timeout, outputs)
    result = run(settings, args.concurrency, args.requests, args.warmup, args.seed_base)
    result.update(label=args.label, views=len(settings.images), steps=args.steps,
                  outputs=args.outputs)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

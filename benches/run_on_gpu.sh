#!/usr/bin/env bash
# Runs the sparse-conv benchmark on the GPU machine, from the repository root, with the
# bundle that `make bench-bundle` built (.bench/bundle, carried): recon's timings first, then
# spconv's on the same voxels, features and weights, and the comparison table.
# Writes gpu.txt, recon.txt, spconv.txt and results.json into $OUT (or /tmp/bench-out).
set -euo pipefail
bundle=.bench/bundle
out=${OUT:-/tmp/bench-out}
data=/tmp/recon-bench-data
site=/tmp/spconv_site
mkdir -p "$out" "$data" "$site"
sp=/opt/torch/.venv/lib/python3.12/site-packages
export LD_LIBRARY_PATH=$sp/torch/lib:$sp/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu \
  --format=csv | tee "$out/gpu.txt"
tar -xJf "$bundle/spconv_site.tar.xz" -C "$site"
"$bundle/bin/sparse_conv" --out "$data" 2>&1 | tee "$out/recon.txt"
PYTHONPATH=$site SPCONV_ALGO=native PYTHONUNBUFFERED=1 /opt/torch/.venv/bin/python3 \
  benches/spconv_reference.py --data "$data" --json "$out/results.json" 2>&1 \
  | grep -v is_fx_tracing | tee "$out/spconv.txt"

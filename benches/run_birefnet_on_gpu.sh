#!/usr/bin/env bash
# Runs the background-removal benchmark on the GPU machine, from the repository root, with the
# bundle tools/birefnet-bench-bundle.sh built (.bench/birefnet-bundle, carried): recon first
# (it writes the weights, the photo and its own results), then the reference BiRefNet code on the
# same weights and photo, and the comparison table. Writes gpu.txt, recon.txt, reference.txt and
# results.json into $OUT (or /tmp/birefnet-bench-out).
set -euo pipefail
bundle=.bench/birefnet-bundle
out=${OUT:-/tmp/birefnet-bench-out}
data=/tmp/recon-birefnet-data
site=/tmp/birefnet_ref_site
fallback=/tmp/birefnet_ref_fallback
mkdir -p "$out" "$data" "$site" "$fallback"
sp=/opt/torch/.venv/lib/python3.12/site-packages
export LD_LIBRARY_PATH=$sp/torch/lib:$sp/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu \
  --format=csv | tee "$out/gpu.txt"
tar -xJf "$bundle/ref_site.tar.xz" -C "$site"
tar -xJf "$bundle/fallback_site.tar.xz" -C "$fallback"
"$bundle/bin/birefnet" --out "$data" 2>&1 | tee "$out/recon.txt"
REF_SITE=$site REF_FALLBACK_SITE=$fallback PYTHONUNBUFFERED=1 /opt/torch/.venv/bin/python3 \
  benches/birefnet_reference.py --code "$site/code" --data "$data" --json "$out/results.json" 2>&1 \
  | tee "$out/reference.txt"

#!/usr/bin/env bash
# Builds what the background-removal benchmark (issue 10, item 4) needs on the GPU machine
# (no network, no Rust toolchain, at most 64 MiB per call with the work tree) into
# .bench/birefnet-bundle/:
#   bin/birefnet              the stripped bench binary (benches/birefnet.rs)
#   ref_site.tar.xz           the BiRefNet reference code at the commit tools/golden pins
#                             (under code/, from the golden tooling's hash-checked copy) and einops
#   fallback_site.tar.xz      torchvision 0.26.0, Pillow, safetensors: used only where the GPU
#                             image lacks them
# Then, on the GPU machine (device tool: carry .bench/birefnet-bundle):
#   bash benches/run_birefnet_on_gpu.sh
# Nothing here is committed (.bench/ is git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.bench/birefnet-bundle
wheels=.bench/wheels
mkdir -p "$out/bin" "$wheels"
[ -x tools/golden/.venv/bin/python ] || bash tools/golden/setup.sh
code=$(cd tools/golden && .venv/bin/python -c '
import sys
sys.path.insert(0, ".")
import generate
generate.load_case_modules()
import birefnet
print(birefnet.birefnet_dir())')
source tools/wheels.sh
ref_pins=(einops==0.8.2)
fallback_pins=(torchvision==0.26.0 pillow==13.0.0 safetensors==0.8.0)
download_wheels "$wheels" "${ref_pins[@]}" "${fallback_pins[@]}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/ref/code" "$tmp/fallback"
unpack_wheels "$wheels" "$tmp/ref" "${ref_pins[@]}"
cp -r "$code"/. "$tmp/ref/code/"
find "$tmp" -name __pycache__ -prune -exec rm -rf {} +
tar -C "$tmp/ref" -cf - . | xz -9 -T0 > "$out/ref_site.tar.xz"
unpack_wheels "$wheels" "$tmp/fallback" "${fallback_pins[@]}"
tar -C "$tmp/fallback" -cf - . | xz -9 -T0 > "$out/fallback_site.tar.xz"

exe=$(cargo build --release --bench birefnet --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
            and msg["target"]["name"] == "birefnet":
        print(msg["executable"])
')
cp "$exe" "$out/bin/birefnet"
strip "$out/bin/birefnet"
du -sh "$out"/bin/birefnet "$out"/*.tar.xz

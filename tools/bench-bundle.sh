#!/usr/bin/env bash
# Builds what the sparse-conv benchmark (benches/RESULTS.md) runs on the GPU machine into
# .bench/bundle/: the bench binary (benches/sparse_conv.rs) and spconv-cu126 2.3.8 with its
# Python dependencies that the GPU image lacks. The GPU machine has no network and a call
# carries at most 64 MiB, while spconv's wheel alone is 67 MiB (deflate); its unpacked files
# compress to about 40 MB with xz, so the bundle holds the wheels' contents (what
# `pip install --no-deps --target` would lay down) as one tar.xz, unpacked there into
# /tmp/spconv_site and put on PYTHONPATH: /opt/torch/.venv is not modified.
# Then, on the GPU machine (device tool: carry .bench/bundle): bash benches/run_on_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=.bench/bundle
wheels=.bench/wheels
mkdir -p "$bundle/bin" "$wheels"

# The pins: spconv 2.3.8 (CUDA 12.6 build) and the cumm it requires (>=0.7.11,<0.8.0), plus
# the pure-Python packages they import that the GPU image does not have.
pins=(spconv-cu126==2.3.8 cumm-cu126==0.7.11 pccm==0.4.16 ccimport==0.4.4 fire==0.7.1
      termcolor==3.3.0 lark==1.3.1)
site_tar=$bundle/spconv_site.tar.xz
stamp=$bundle/.spconv_site.pins
if [ ! -f "$site_tar" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${pins[*]}" ]; then
  source tools/wheels.sh
  download_wheels "$wheels" "${pins[@]}"
  site=$(mktemp -d)
  trap 'rm -rf "$site"' EXIT
  unpack_wheels "$wheels" "$site" "${pins[@]}"
  tar -C "$site" -cf - . | xz -9 -T0 > "$site_tar.tmp"
  mv "$site_tar.tmp" "$site_tar"
  echo "${pins[*]}" > "$stamp"
fi

exe=$(cargo build --release --bench sparse_conv --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
            and msg["target"]["name"] == "sparse_conv":
        print(msg["executable"])
')
cp "$exe" "$bundle/bin/sparse_conv"
strip "$bundle/bin/sparse_conv"
du -sh "$bundle"/bin/sparse_conv "$site_tar"

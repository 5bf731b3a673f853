#!/usr/bin/env bash
# Builds what the whole-pipeline benchmark against the reference (issue 8, benches/RESULTS.md)
# needs on the GPU machine, which has no network, no Rust toolchain and takes at most 64 MiB per
# call (the work tree included, ~25 MB):
#   .bench/spconv-part-{aa,ab}         spconv 2.3.8 + cumm + their pure-Python deps (~40 MB,
#                                      tools/bench-bundle.sh's tarball) in two halves, one per call
#   .bench/pipeline/ref_site.tar.xz    trellis-3d-ms 0.1.0, the torch.hub DINOv2 code (from
#                                      trellis-3d-python), FlexiCubes at TRELLIS's pinned commit
#   .bench/pipeline/fallback_site.tar.xz  packages used only where the GPU image lacks them
#                                      (Pillow, safetensors, easydict, tqdm, einops)
#   .bench/pipeline/bin/recon          the stripped recon binary (synth + bench)
#   .bench/pipeline/reconviagen.tar.xz ReconViaGen's trellis/ fork and vendored VGGT (the
#                                      TRELLIS-VGGT reference, GitHub only) when
#                                      RECONVIAGEN_GIT_DIR names a git copy of it
# then two calls of bash benches/run_pipeline_bench.sh (carry part aa; then part ab + .bench/pipeline).
# Reference sources come from the golden-fixture tooling's pinned, hash-checked copies
# (tools/golden/setup.sh makes its venv; nothing here is committed).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.bench/pipeline
wheels=.bench/wheels
mkdir -p "$out/bin" "$wheels"

bash tools/bench-bundle.sh >/dev/null   # spconv_site.tar.xz (kept when its pins are unchanged)

[ -x tools/golden/.venv/bin/python ] || bash tools/golden/setup.sh
read -r dinov2 flexicubes < <(cd tools/golden && .venv/bin/python -c '
import sys
sys.path.insert(0, ".")
import generate  # noqa: F401  (sets the reference environment up before torch is imported)
from cases.dinov2 import hub_code_dir
from cases.stage2 import flexicubes_dir
print(hub_code_dir(), flexicubes_dir())')

source tools/wheels.sh

ref_pins=(trellis-3d-ms==0.1.0)
fallback_pins=(pillow==13.0.0 safetensors==0.8.0 easydict==1.14 tqdm==4.70.1 einops==0.8.2)
download_wheels "$wheels" "${ref_pins[@]}" "${fallback_pins[@]}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/ref/extra" "$tmp/fallback"
unpack_wheels "$wheels" "$tmp/ref" "${ref_pins[@]}"
cp -r "$dinov2" "$tmp/ref/extra/dinov2"
mkdir -p "$tmp/ref/extra/flexicubes"
cp "$flexicubes"/*.py "$flexicubes"/LICENSE.txt "$tmp/ref/extra/flexicubes/"
find "$tmp" -name __pycache__ -prune -exec rm -rf {} +
tar -C "$tmp/ref" -cf - . | xz -9 -T0 > "$out/ref_site.tar.xz"
unpack_wheels "$wheels" "$tmp/fallback" "${fallback_pins[@]}"
tar -C "$tmp/fallback" -cf - . | xz -9 -T0 > "$out/fallback_site.tar.xz"

# TRELLIS-VGGT's reference is on no registry: its sources at the commit research/reconviagen.md
# describes, from a local git copy (a clone or mirror of GAP-LAB-CUHK-SZ/ReconViaGen).
reconviagen_commit=f6720923260927333e22761fa722144d214733d9
if [ -n "${RECONVIAGEN_GIT_DIR:-}" ]; then
  git --git-dir="$RECONVIAGEN_GIT_DIR" archive --format=tar "$reconviagen_commit" trellis wheels/vggt \
    > "$tmp/reconviagen.tar"
  xz -9 -T0 < "$tmp/reconviagen.tar" > "$out/reconviagen.tar.xz"
fi

rm -f .bench/spconv-part-*
split -n 2 -a 2 .bench/bundle/spconv_site.tar.xz .bench/spconv-part-

cargo build --release --bin recon
cp target/release/recon "$out/bin/recon"
# The GPU check of the fused kernels, run before the timings (graphs_cuda runs from the GPU
# bundle: with it the second call's carry would pass 64 MiB).
for test in fused_cuda; do
  exe=$(cargo test --release --test "$test" --no-run --message-format=json \
    | python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
            and msg["target"]["name"] == sys.argv[1]:
        print(msg["executable"])
' "$test")
  cp "$exe" "$out/bin/$test"
  strip "$out/bin/$test"
done
strip "$out/bin/recon"
du -sh .bench/spconv-part-* "$out"/*.tar.xz "$out/bin/recon"

#!/usr/bin/env bash
# The export benchmark on the GPU machine (issue 11): recon's textured export against the
# reference's to_glb (benches/reference_to_glb.py) on the same synthetic asset
# (benches/synthetic_asset.py), in the same call, plus the rasterisers' parity against the
# reference's own CUDA renderers (mip-splatting's diff-gaussian-rasterization, nvdiffrast).
#
# tools/export-bench-bundle.sh builds the carries; run from the repository root, back to back
# (/tmp survives between calls only while the machine stays warm; each call carries <= 64 MiB
# with the ~27 MB work tree):
#   call 1, carry .bench/export-vtk
#   call 2, carry .bench/export-cv2/cv2-part-aa .bench/export/site.tar.xz
#   call 3, carry .bench/export-cv2/cv2-part-ab .bench/export/src.tar.xz
#                 .bench/export/ref_site.tar.xz .bench/export/bin
# each time: bash benches/run_export_bench.sh (it keeps what arrives in /tmp and runs once all is
# there). Settings (environment): STAGES ("check export ab"), MESH_LEVEL (7), GAUSSIAN_LEVEL (8),
# RUNS (1), MODES ("opt fast"), BAKE_AB (1: recon's opt bake again on its tensor path).
set -euo pipefail
site=/tmp/glb_site
parts=/tmp/glb_parts
src=/tmp/glb_src
out=${OUT:-/tmp/export-bench-out}
mkdir -p "$site" "$parts" "$src" "$out"
sp=/opt/torch/.venv/lib/python3.12/site-packages
export LD_LIBRARY_PATH=$sp/torch/lib:$sp/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
python=/opt/torch/.venv/bin/python3

if [ -f .bench/export-vtk/vtk_site.tar.xz ] && [ ! -d "$site/vtkmodules" ]; then
  tar -xJf .bench/export-vtk/vtk_site.tar.xz -C "$site" && echo "unpacked VTK"
fi
cp .bench/export-cv2/cv2-part-* .bench/export/*.tar.xz "$parts"/ 2>/dev/null || true
if [ -f "$parts/cv2-part-aa" ] && [ -f "$parts/cv2-part-ab" ] && [ ! -d "$site/cv2" ]; then
  cat "$parts"/cv2-part-* | tar -xJf - -C "$site" && echo "unpacked OpenCV"
fi
if [ -f "$parts/site.tar.xz" ] && [ ! -d "$site/xatlas-0.0.11.dist-info" ]; then
  tar -xJf "$parts/site.tar.xz" -C "$site" && echo "unpacked the reference's other packages"
fi
if [ -d .bench/export/bin ]; then
  rm -rf /tmp/glb_bin && cp -r .bench/export/bin /tmp/glb_bin
fi
[ -d /tmp/glb_bin ] || { echo "carry received; waiting for the last call"; exit 0; }
for need in vtkmodules cv2 xatlas-0.0.11.dist-info; do
  [ -d "$site/$need" ] || { echo "$need is missing: run the earlier calls first"; exit 1; }
done
[ -d "$site/trellis" ] || tar -xJf "$parts/ref_site.tar.xz" -C "$site"
[ -f "$src/nvdiffrast/setup.py" ] || tar -xJf "$parts/src.tar.xz" -C "$src"
# STAGES: which parts run (a call has 10 minutes): check (the rasterisers' GPU tests and their
# parity with the reference renderers), export (recon vs reference to_glb), ab (issue 8's A/B).
stages=" ${STAGES:-check export ab} "

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
export PATH=$site/ninja/data/bin:$PATH TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
build() { # build DIR: the extension in place, once per machine
  [ -f "$1/.built" ] && return
  (cd "$1" && "$python" setup.py build_ext --inplace >build.log 2>&1) || { tail -30 "$1/build.log"; exit 1; }
  touch "$1/.built"
}
t0=$(date +%s)
build "$src/nvdiffrast" & build "$src/diff-gaussian-rasterization" & wait
echo "built nvdiffrast and diff-gaussian-rasterization in $(( $(date +%s) - t0 )) s"
mkdir -p "$site/nvdiffrast-0.4.0.dist-info"
printf 'Metadata-Version: 2.1\nName: nvdiffrast\nVersion: 0.4.0\n' > "$site/nvdiffrast-0.4.0.dist-info/METADATA"
export PYTHONPATH=$src/nvdiffrast:$src/diff-gaussian-rasterization:$site PYTHONUNBUFFERED=1
"$python" -c 'import pyvista, cv2, xatlas, igraph, pymeshfix, utils3d, nvdiffrast.torch, diff_gaussian_rasterization; print("reference imports ok")' \
  || echo "REFERENCE IMPORTS FAILED"

bin=/tmp/glb_bin
if [[ $stages == *" check "* ]]; then
for test in render_gaussian_cuda render_mesh_cuda fused_cuda bake_cuda; do
  "$bin/$test" --include-ignored --nocapture --test-threads 1 2>&1 | grep -v '^$' || echo "$test FAILED"
done
if [ -f benches/render_reference.py ]; then
  "$python" benches/render_reference.py --dgr-source "$src/diff-gaussian-rasterization" --out "$out" 2>&1 || true
fi

fi

if [[ $stages == *" export "* ]]; then
asset=/tmp/export_asset.safetensors
"$python" benches/synthetic_asset.py "$asset" --mesh-level "${MESH_LEVEL:-7}" --gaussian-level "${GAUSSIAN_LEVEL:-8}"
for mode in ${MODES:-opt fast}; do
  if [ -x "$bin/export_bench" ]; then
    "$bin/export_bench" "$asset" --device cuda --bake "$mode" --runs "${RUNS:-1}" --warmup 1 \
      --out "$out" --json "$out/recon_$mode.json" 2>&1 || echo "recon export ($mode) FAILED"
  fi
  "$python" benches/reference_to_glb.py "$asset" --out "$out" --bake-mode "$mode" \
    --runs "${RUNS:-1}" --json "$out/reference_$mode.json" 2>&1 | grep -v -e 'it/s]' -e '%|' \
    || echo "reference to_glb ($mode) FAILED"
done
# The optimisation bake's fused kernels against the tensor path (RECON_FUSED_KERNELS=0), recon
# only: the A/B of benches/RESULTS.md.
if [ "${BAKE_AB:-1}" = 1 ] && [ -x "$bin/export_bench" ]; then
  echo "== recon opt with RECON_FUSED_KERNELS=0 (the bake's tensor path)"
  RECON_FUSED_KERNELS=0 "$bin/export_bench" "$asset" --device cuda --bake opt --runs "${RUNS:-1}" \
    --warmup 1 --out "$out/tensor_bake" --json "$out/recon_opt_tensor_bake.json" 2>&1 \
    || echo "recon export (opt, tensor bake) FAILED"
fi
fi

# Issue 8's A/B of the FeedForwardNet GEMM epilogue (RECON_GEMM_EPILOGUE=0 turns it off alone),
# recon only (the reference pipeline comparison is benches/run_pipeline_bench.sh).
if [[ $stages == *" ab "* ]]; then
  model=/tmp/bench_large
  [ -f "$model/pipeline.json" ] || "$bin/recon" synth --pipeline trellis-image-large --out "$model" --seed 0
  for variant in RECON_GEMM_EPILOGUE=1 RECON_GEMM_EPILOGUE=0 RECON_GEMM_EPILOGUE=1; do
    echo "== $variant"
    env "$variant" HF_HOME=$model/hf HF_HUB_OFFLINE=1 "$bin/recon" bench --model "$model" --offline \
      --device cuda --image tests/fixtures/images/example.png --seed 42 --formats gaussians,mesh \
      --voxels shell:28 --runs 5 --warmup 1 --json "$out/recon_${variant}.json" 2>&1 | tail -14
  done
fi
ls -la "$out"
